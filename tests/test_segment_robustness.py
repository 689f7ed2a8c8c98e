"""``tomoqc segment`` survives being killed: a SIGKILLed run resumes to the same output, and a
worker killed mid-run loses no slice.

Both tests compare against an uninterrupted in-process run of the same volume and model: a
resumed or rescheduled run must write exactly what an undisturbed one writes (labels bit for
bit, probabilities and uncertainties to float32 rounding), and every slice must be there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

#: Slices of the test volume; with one slice per chunk, also the number of chunks.
N_SLICES = 8
#: The output arrays a run with test-time augmentation writes.
ARRAYS = ("label", "probability", "uncertainty", "aleatoric", "epistemic")
#: Generous waits: the machine running the tests is shared and may be slow.
WAIT_S = 300


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 3-class D-LinkNet of width 0.125 (with dropout) and its card."""
    from tomoqc.models.dlinknet import build_dlinknet

    d = tmp_path_factory.mktemp("robust-model")
    net = build_dlinknet(3, width=0.125, dropout=0.2, seed=7)
    path = d / "tiny.keras"
    net.save(path)
    (d / "tiny.json").write_text(json.dumps({"kind": "dlinknet", "n_classes": 3, "width": 0.125, "dropout": 0.2,
                                             "class_names": ["pore", "carbon-binder", "active material"]}))
    return path


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """An 8-slice phantom volume of 128 x 128 px, uint16, stored one slice per zarr chunk."""
    from tomoqc.phantom import electrode_volume

    img = electrode_volume((N_SLICES, 128, 128), seed=11)[0]
    raw = np.clip(img * 4000 + 500, 0, 65535).astype(np.uint16)
    path = tmp_path_factory.mktemp("robust-vol") / "scan.zarr"
    z = zarr.create_array(str(path), shape=raw.shape, chunks=(1, 128, 128), dtype="uint16")
    z[:] = raw
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, volume, tmp_path_factory):
    """The reference: one undisturbed in-process run, one slice per chunk, loaded into memory.

    Test-time augmentation (8 passes per slice) makes every chunk slow enough that a run can
    be stopped between two of them, and adds the aleatoric and epistemic maps to compare.
    """
    from tomoqc.segmentation import segment

    out = tmp_path_factory.mktemp("robust-clean")
    ds = segment(volume, model=tiny_model, out=out, workers=0, chunk_slices=1, uncertainty="tta", progress=False)
    assert ds.attrs["complete"] is True and ds.attrs["chunks_resumed"] == 0
    return {name: np.asarray(ds[name].values) for name in ARRAYS}


def _assert_same_output(ds, ref):
    """Every slice present, labels bit-identical, float maps equal to float32 rounding."""
    np.testing.assert_array_equal(ds["label"].values, ref["label"])
    for name in ARRAYS[1:]:
        values = np.asarray(ds[name].values)
        assert np.isfinite(values).all(), f"{name} has unwritten (NaN) pixels"
        np.testing.assert_allclose(values, ref[name], rtol=0, atol=1e-6, err_msg=name)


def _markers(part):
    from tomoqc.engine import DONE_DIR

    d = part / DONE_DIR
    return sorted(d.glob("chunk-??????")) if d.is_dir() else []


def test_sigkill_mid_run_then_rerun_is_identical(tiny_model, volume, uninterrupted, tmp_path):
    from tomoqc.engine import partial_path
    from tomoqc.locks import lock_path, pid_alive, read_lock
    from tomoqc.segmentation import open_segmentation, segmentation_path

    out = tmp_path / "out"
    final = segmentation_path(volume, out)
    part = partial_path(final)
    args = ["segment", str(volume), "--model", str(tiny_model), "--out", str(out), "--workers", "0",
            "--chunk-slices", "1", "--uncertainty", "tta", "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", "from tomoqc.cli import entry; entry()", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(_markers(part)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"tomoqc segment ended (exit code {proc.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail(f"no 2 chunks done within {WAIT_S} s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-run: a partial output, no final one, and the dead writer's lock left behind
    assert not final.exists() and part.exists()
    seen = [int(m.name.split("-")[1]) for m in _markers(part)]
    assert 2 <= len(seen) < N_SLICES
    holder, _ = read_lock(lock_path(final))
    assert holder is not None and holder.pid == proc.pid and not pid_alive(proc.pid)
    # a chunk with a marker was written completely before its marker
    g = zarr.open_group(str(part), mode="r")
    for k in seen:
        np.testing.assert_array_equal(g["labels/phases/0"][k], uninterrupted["label"][k])

    # the rerun takes over the stale lock and computes only the chunks without a marker
    from tomoqc.cli import main

    assert main(args) == 0
    ds = open_segmentation(final)
    assert ds.attrs["complete"] is True
    assert ds.attrs["chunks_total"] == N_SLICES
    assert ds.attrs["chunks_resumed"] == len(seen)
    assert ds.attrs["chunk_slices"] == 1
    assert not part.exists() and not lock_path(final).exists()
    _assert_same_output(ds, uninterrupted)


@pytest.fixture(scope="module")
def two_workers():
    from tomoqc.cluster import start_cluster

    with start_cluster("local", workers=2) as client:
        yield client


def _segment_tasks_by_pid(client) -> dict[int, list[str]]:
    """{worker pid: keys of the segment tasks it is running now}."""
    pids = client.run(os.getpid)
    processing = client.processing()
    return {pid: [k for k in processing.get(addr, ()) if str(k).startswith("tomoqc-segment-")]
            for addr, pid in pids.items()}


def test_killed_worker_loses_no_slices(two_workers, tiny_model, volume, uninterrupted, tmp_path):
    from tomoqc.engine import partial_path
    from tomoqc.segmentation import segment, segmentation_path

    client = two_workers
    out = tmp_path / "out"
    part = partial_path(segmentation_path(volume, out))
    result = {}

    def run():
        try:
            result["ds"] = segment(volume, model=tiny_model, out=out, client=client, chunk_slices=1,
                                   uncertainty="tta", progress=False)
        except BaseException as err:  # reported by the test below
            result["err"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + WAIT_S
    victim = None
    while victim is None:
        if not t.is_alive():
            pytest.fail(f"the run ended before a worker could be killed: {result}")
        if time.monotonic() > deadline:
            pytest.fail(f"no chunk done within {WAIT_S} s")
        if _markers(part):
            # kill a worker that is running a chunk right now, so that its task must be redone
            busy = sorted(pid for pid, keys in _segment_tasks_by_pid(client).items() if keys)
            victim = busy[0] if busy else None
        if victim is None:
            time.sleep(0.005)
    done_at_kill = len(_markers(part))
    os.kill(victim, signal.SIGKILL)
    t.join(WAIT_S)
    assert not t.is_alive()
    assert "err" not in result, result.get("err")
    assert done_at_kill < N_SLICES
    ds = result["ds"]
    assert ds.attrs["complete"] is True and ds.attrs["chunks_total"] == N_SLICES
    _assert_same_output(ds, uninterrupted)
    # the worker really died (its nanny started a new one)
    assert victim not in set(client.run(os.getpid).values())
