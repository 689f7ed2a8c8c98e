"""Starting and joining dask clusters for scoring."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from tomoqc.cluster import available_cores, start_cluster, tf_thread_env, worker_count
from tomoqc.errors import OptionError


def test_in_process_kinds_yield_no_client():
    with start_cluster("none") as c:
        assert c is None
    with start_cluster("local", workers=0) as c:
        assert c is None


@pytest.mark.parametrize("kwargs", [dict(kind="bogus"), dict(kind="local", workers=-1),
                                    dict(kind="local", threads_per_worker=0)])
def test_bad_options_raise_option_error(kwargs):
    with pytest.raises(OptionError):
        with start_cluster(**kwargs):
            pass


def test_thread_env_caps_every_library():
    env = tf_thread_env(3)
    for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TOMOQC_TF_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[k] == "3"
    assert env["TF_NUM_INTEROP_THREADS"] == "1"
    assert tf_thread_env(0)["OMP_NUM_THREADS"] == "1"


def test_available_cores_matches_affinity():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_local_cluster_processes_one_thread_each_with_capped_tf_threads():
    with start_cluster("local", workers=2) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == 2 == worker_count(client)
        assert all(w["nthreads"] == 1 for w in info.values())
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids  # separate processes
        env = client.run(lambda: {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")})
        # 2 workers on this machine's cores: no worker may start more threads than its share
        share = str(max(1, available_cores() // 2))
        assert all(e == {"OMP_NUM_THREADS": share, "TF_NUM_INTRAOP_THREADS": share} for e in env.values())
        assert client.submit(sum, [1, 2, 3]).result() == 6
        # no statistical profiler and no aggressive malloc trimming in the workers
        cfg = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                  __import__("dask").config.get("distributed.worker.profile.enabled")))
        assert all(c == (None, False) for c in cfg.values())
    # ... and the settings did not leak into this process's dask configuration
    import dask

    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_join_existing_scheduler_by_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        with start_cluster(cluster.scheduler_address) as client:
            assert client.submit(lambda x: x * 2, 21).result() == 42
            assert worker_count(client) == 1
        # joining does not shut the cluster down
        assert len(cluster.scheduler_info["workers"]) == 1


def test_unreachable_address_is_a_clear_error():
    with pytest.raises(OptionError, match="cannot connect"):
        with start_cluster("tcp://127.0.0.1:9", options={"timeout": "1s"}):
            pass


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda is installed")
def test_local_cuda_without_gpu_extra_says_what_to_install():
    with pytest.raises(OptionError, match=r"tomoqc\[gpu\]"):
        with start_cluster("local-cuda"):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None or importlib.util.find_spec("dask_cuda") is None,
                    reason="needs a CUDA GPU and dask-cuda")
def test_local_cuda_one_worker_per_gpu():  # pragma: no cover - needs a GPU
    import subprocess

    n_gpus = len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines())
    with start_cluster("local-cuda") as client:
        assert worker_count(client) == n_gpus
        growth = client.run(lambda: os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"))
        assert set(growth.values()) == {"true"}


def test_in_flight_limit_counts_workers_an_adaptive_cluster_may_start():
    from distributed import Client, LocalCluster

    from tomoqc.engine import in_flight_limit as _in_flight_limit

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            assert _in_flight_limit(client, None) == 3  # no worker yet: still submit some work
            cluster.adapt(minimum=0, maximum=3)
            assert _in_flight_limit(client, None) == 7  # enough queued work to scale up to 3
            assert _in_flight_limit(client, 2) == 2
