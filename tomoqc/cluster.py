"""Which dask cluster to start or join for slice-wise scoring.

:func:`start_cluster` is a context manager that yields a
:class:`distributed.Client` (or ``None`` for in-process work) and shuts
everything it started down on exit, also on Ctrl-C.

Kinds
-----
``"local"`` (default)
    A :class:`distributed.LocalCluster` of worker *processes* with one dask
    thread each, as many as the cores this process may use. Every worker gets
    ``OMP_NUM_THREADS`` and TensorFlow's intra/inter-op thread counts in its
    environment before TensorFlow is imported, so that ``n`` workers use ``n``
    cores instead of ``n * n``. Two dask defaults that cost a CPU-bound network
    time are turned off for these workers (measured by
    ``benchmarks/score_throughput.py``): the statistical profiler that samples
    every worker thread 100 times a second, and ``MALLOC_TRIM_THRESHOLD_=65536``,
    which makes glibc hand TensorFlow's large temporary buffers back to the
    system after every call only to map them again on the next.
``"local-cuda"``
    :class:`dask_cuda.LocalCUDACluster`, one worker per visible GPU, with
    TensorFlow's GPU memory growth enabled so that workers never fight over one
    device's memory. Needs the ``gpu`` extra (``pip install tomoqc[gpu]``).
``"slurm"``
    Workers submitted as SLURM jobs through dask-jobqueue
    (:func:`tomoqc.slurm.make_slurm_cluster`), options from ``options``.
``"tcp://HOST:PORT"`` (or any scheduler address)
    Join a running scheduler; nothing is started or stopped.
``"none"`` (or ``workers=0``)
    No cluster: the work runs in this process, one chunk after another.
    Handy for tiny volumes, tests and notebooks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tomoqc.errors import OptionError

__all__ = ["KINDS", "available_cores", "start_cluster", "tf_thread_env", "worker_count"]

KINDS = ("local", "local-cuda", "slurm", "none")

#: dask settings for the worker processes tomoqc starts on this machine (see above).
_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def available_cores() -> int:
    """Number of CPU cores this process may run on (respects CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def tf_thread_env(threads: int) -> dict[str, str]:
    """Environment that caps the threads TensorFlow and BLAS libraries start.

    Parameters
    ----------
    threads : int
        Threads each worker process may use for its numerical work.

    Returns
    -------
    dict
        Variables to set in a worker's environment before TensorFlow loads.
        ``TOMOQC_TF_THREADS`` is read by :mod:`tomoqc.pipeline`, which also sets
        TensorFlow's thread pools explicitly before the first model is built.
    """
    t = str(max(1, int(threads)))
    return {
        "OMP_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "TF_NUM_INTRAOP_THREADS": t,
        "TF_NUM_INTEROP_THREADS": "1",
        "TOMOQC_TF_THREADS": t,
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


def _is_address(kind: str) -> bool:
    return "://" in kind


def worker_count(client) -> int:
    """Number of workers currently connected to ``client``'s scheduler (0 for in-process)."""
    if client is None:
        return 0
    try:
        return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except TypeError:  # older distributed without n_workers
        return len(client.scheduler_info().get("workers", {}))


@contextlib.contextmanager
def start_cluster(
    kind: str = "local",
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    options: dict | None = None,
) -> Iterator["object | None"]:
    """Start (or join) a dask cluster for scoring and yield a client.

    Parameters
    ----------
    kind : str
        ``"local"``, ``"local-cuda"``, ``"slurm"``, ``"none"`` or a scheduler
        address such as ``"tcp://10.0.0.5:8786"``.
    workers : int, optional
        Number of workers. ``local``: default one per available core;
        ``local-cuda``: ignored (one per visible GPU); ``slurm``: fixed number
        of worker jobs (default: adaptive scaling, see
        :func:`tomoqc.slurm.make_slurm_cluster`). ``0`` means in-process work
        (same as ``kind="none"``).
    threads_per_worker : int, optional
        Threads per worker for TensorFlow (``local``: default 1, or the cores
        left per worker when fewer workers than cores are asked for).
    options : dict, optional
        Extra options. For ``slurm`` they are passed to
        :func:`tomoqc.slurm.make_slurm_cluster` (queue, account, walltime,
        cores, memory, gpus, ...). For ``local`` keys ``memory_limit`` and
        ``local_directory`` are honoured.

    Yields
    ------
    distributed.Client or None
        ``None`` when the work should run in this process.

    Raises
    ------
    OptionError
        Unknown kind, bad worker count, or a missing optional dependency.
    """
    options = dict(options or {})
    if workers is not None and int(workers) < 0:
        raise OptionError(f"--workers must be >= 0, got {workers}")
    if threads_per_worker is not None and int(threads_per_worker) < 1:
        raise OptionError(f"threads per worker must be >= 1, got {threads_per_worker}")
    if kind is None:
        kind = "local"
    kind = str(kind).strip()
    if kind in ("none", "sync", "synchronous") or (workers == 0 and not _is_address(kind)):
        yield None
        return
    if _is_address(kind):
        from distributed import Client

        try:
            client = Client(kind, timeout=options.get("timeout", "20s"))
        except (OSError, TimeoutError) as err:
            raise OptionError(f"cannot connect to the dask scheduler at {kind}: {err}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if kind == "local":
        yield from _local(workers, threads_per_worker, options)
    elif kind == "local-cuda":
        yield from _local_cuda(options)
    elif kind == "slurm":
        yield from _slurm(workers, options)
    else:
        raise OptionError(
            f"unknown cluster {kind!r}; use one of local, local-cuda, slurm, none or a scheduler "
            "address such as tcp://HOST:8786"
        )


def _client_of(cluster):
    """Yield a client of ``cluster``; close the client, then the cluster, however the block ends."""
    from distributed import Client

    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _local(workers, threads_per_worker, options):
    import dask
    from distributed import LocalCluster

    cores = available_cores()
    n = int(workers) if workers else cores
    threads = int(threads_per_worker) if threads_per_worker else max(1, cores // n)
    env = tf_thread_env(threads)
    kwargs = dict(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=options.get("dashboard_address", ":0"),
        memory_limit=options.get("memory_limit", "auto"),
        env=env,
    )
    if options.get("local_directory"):
        kwargs["local_directory"] = options["local_directory"]
    with dask.config.set(_WORKER_CONFIG):
        cluster = LocalCluster(**kwargs)
    yield from _client_of(cluster)


def _local_cuda(options):
    import dask

    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise OptionError(
            "--cluster local-cuda needs dask-cuda and TensorFlow with CUDA: install tomoqc[gpu]"
        ) from None

    env = tf_thread_env(options.get("threads", 2))
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env["TOMOQC_TF_GPU_GROWTH"] = "1"
    kwargs = dict(threads_per_worker=1, env=env, dashboard_address=options.get("dashboard_address", ":0"))
    if options.get("devices"):
        kwargs["CUDA_VISIBLE_DEVICES"] = options["devices"]
    if options.get("local_directory"):
        kwargs["local_directory"] = options["local_directory"]
    try:
        with dask.config.set(_WORKER_CONFIG):
            cluster = LocalCUDACluster(**kwargs)
    except Exception as err:  # no GPU, no driver
        raise OptionError(f"--cluster local-cuda could not start: {err}") from None
    yield from _client_of(cluster)


def _slurm(workers, options):
    try:
        from tomoqc.slurm import make_slurm_cluster
    except ImportError as err:
        raise OptionError(f"--cluster slurm needs dask-jobqueue: install tomoqc[slurm] ({err})") from None

    opts = dict(options)
    if workers:
        opts["max_jobs"] = int(workers)
    cluster = make_slurm_cluster(opts)  # adaptive: jobs come and go with the tasks
    yield from _client_of(cluster)
