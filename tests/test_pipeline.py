"""Slice-wise scoring of volumes: equality with direct model calls, resume, cluster, flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from tomoqc.errors import InputError, OptionError
from tomoqc.pipeline import (
    FLAG_CONSTANT,
    FLAG_NO_VALID_PATCH,
    FLAG_NONFINITE,
    FLAG_OK,
    open_quality,
    output_path,
    partial_path,
    score,
    score_block,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model(model_path):
    from tomoqc.models.tiqa import load_model

    return load_model(model_path)


def _volume(n=10, seed=0):
    from tomoqc.phantom import electrode_volume

    vol, _ = electrode_volume((n, 256, 256), seed=seed)
    vol = vol.astype(np.float32)
    rng = np.random.default_rng(seed)
    vol += rng.normal(0, 1, vol.shape).astype(np.float32) * np.linspace(0.0, 0.15, n, dtype=np.float32)[:, None, None]
    return vol


@pytest.fixture(scope="module")
def special_volume(tmp_path_factory):
    """10 slices in zarr v3: slice 3 constant, 5 all NaN, 7 partly NaN, 8 almost all empty."""
    vol = _volume(10)
    vol[3] = 0.25
    vol[5] = np.nan
    vol[7, :20, :] = np.nan
    vol[8] = 0.0
    vol[8, 100:140, 100:140] = np.random.default_rng(3).random((40, 40))
    p = tmp_path_factory.mktemp("vol") / "special.zarr"
    z = zarr.create_array(str(p), shape=vol.shape, chunks=(2, 256, 256), dtype="float32")
    z[:] = vol
    return p, vol


@pytest.fixture(scope="module")
def h5_volume(tmp_path_factory):
    vol = (np.clip(_volume(9, seed=1), 0, 1.5) * 20000).astype(np.uint16)
    p = tmp_path_factory.mktemp("h5") / "scan.h5"
    with h5py.File(p, "w") as fh:
        fh.create_dataset("entry/data", data=vol, chunks=(1, 256, 256))
    return p, vol


def direct(model, vol, indices):
    """Each slice scored alone, straight through the model, about the rotation axis found for
    the volume as the pipeline finds it (once, from the scored slices)."""
    from tomoqc.pipeline import _volume_ring_center

    centre, _ = _volume_ring_center(vol, np.asarray(list(indices)), None)
    rows = [score_block(model, vol[i : i + 1], ring_center=centre) for i in indices]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def assert_same(ds, ref):
    np.testing.assert_allclose(ds["score"].values, ref["score"], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ds["patch_score"].values, ref["patch_score"], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ds["severity"].values, ref["severity"], atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(ds["flag"].values, ref["flag"])
    np.testing.assert_allclose(ds["ring_index"].values, ref["ring_index"], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(ds["score_uncertainty"].values, ref["score_uncertainty"], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ds["noise_confound_gap"].values, ref["noise_confound_gap"], atol=1e-5, equal_nan=True)


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_scores_equal_direct_model_any_chunking(special_volume, model, model_path, tmp_path, chunk):
    path, vol = special_volume
    ds = score(path, model=model_path, out=tmp_path, workers=0, chunk_slices=chunk, progress=False)
    assert_same(ds, direct(model, vol, range(10)))
    assert ds["score"].dtype == np.float32 and ds["flag"].dtype == np.int8
    # the uncertainty round-trips through the zarr: float32, finite exactly where the score is
    u = ds["score_uncertainty"].values
    assert ds["score_uncertainty"].dtype == np.float32
    assert np.array_equal(np.isfinite(u), np.isfinite(ds["score"].values)) and (u[np.isfinite(u)] >= 0).all()
    assert ds.attrs["tta_views"] == 2 and "out_of_distribution" in ds["flag"].attrs["flag_meanings"]
    assert ds["flag"].attrs["flag_meanings"].split()[6] == "noise_confounded"
    assert list(ds["z"].values) == list(range(10))
    from tomoqc.models.tiqa import DISTORTIONS

    assert list(ds["distortion"].values) == list(DISTORTIONS)
    assert ds["patch_score"].shape == (10, 2, 2)  # 256 px: two overlapping 224-px patches per axis
    s = ds["score"].values
    assert np.all((s[np.isfinite(s)] >= 1) & (s[np.isfinite(s)] <= 5))
    assert ds.attrs["complete"] is True
    assert ds.attrs["model_sha256"] == model.sha256
    assert ds.attrs["input"] == str(path.resolve())
    assert ds.attrs["tomoqc_version"]
    assert "created" in ds.attrs and ds.attrs["step"] == 1
    # the output sits at the documented name and nothing temporary is left behind
    assert Path(ds.encoding.get("source", output_path(path, tmp_path))).name == "special.zarr.quality.zarr"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["special.zarr.quality.zarr"]


@pytest.mark.parametrize(
    "shape, stored, step, expected",
    [
        # 1000 x 1000 slices: 5 x 5 = 25 patches, so 8 slices already hold 200 >= 64 patches
        ((300, 1000, 1000), 0, 1, 8),
        ((300, 1000, 1000), 16, 1, 16),  # whole stored chunks of 16 slices
        ((300, 1000, 1000), 3, 1, 9),  # 3 stored chunks of 3 slices
        ((300, 1000, 1000), 16, 2, 8),  # every 2nd slice: stored chunks are read partly anyway
        ((300, 1000, 1000), 128, 1, 8),  # a 128-slice stored chunk is longer than the 64-slice cap
        # 256 x 256 slices: 2 x 2 = 4 patches, so 16 slices make 64 patches
        ((300, 256, 256), 0, 1, 16),
        ((300, 256, 256), 0, 3, 16),
        ((300, 256, 256), 12, 1, 24),
        ((300, 256, 256), 48, 1, 48),
        # 8000 x 8000 float32 slices are 244 MiB each: the 256 MiB cap forbids rounding 8
        # slices up to 9 (three stored chunks of 3) and never goes below the default 8
        ((10, 8000, 8000), 3, 1, 8),
    ],
)
def test_default_chunk_rules(shape, stored, step, expected):
    import dask.array as da
    import xarray as xr

    from tomoqc.models.tiqa import patch_grid
    from tomoqc.pipeline import _default_chunk

    vol = xr.DataArray(da.zeros(shape, dtype=np.float32, chunks=(1,) + shape[1:]), dims=("z", "y", "x"),
                       attrs={"storage_depth": stored})
    py, px, _ = patch_grid(shape[1:])
    assert _default_chunk(vol, step, py * px) == expected


def test_chunks_aligned_on_stored_chunks_give_the_same_scores(model, model_path, tmp_path):
    # stored chunks of 12 slices that do not divide the 26 (the chunk arithmetic itself, for
    # other storage depths, is checked on _default_chunk above)
    stored = 12
    vol = _volume(26, seed=4)
    p = tmp_path / f"c{stored}.zarr"
    z = zarr.create_array(str(p), shape=vol.shape, chunks=(stored, 256, 256), dtype="float32")
    z[:] = vol
    ds = score(p, model=model_path, out=tmp_path / "out", workers=0, progress=False)
    assert ds.attrs["chunk_slices"] == 24  # >= 16 slices, whole stored chunks
    assert_same(ds, direct(model, vol, range(26)))


def test_flags_for_constant_nan_and_empty_slices(special_volume, model_path, tmp_path):
    path, _ = special_volume
    ds = score(path, model=model_path, out=tmp_path, workers=0, progress=False)
    s, f = ds["score"].values, ds["flag"].values
    assert f[3] == FLAG_CONSTANT and np.isnan(s[3])
    assert f[5] == FLAG_NONFINITE and np.isnan(s[5])
    assert f[7] == FLAG_NONFINITE and np.isfinite(s[7])  # scored from its finite part
    assert f[8] == FLAG_NO_VALID_PATCH and np.isnan(s[8])
    assert np.all(f[[0, 1, 2, 4, 6, 9]] == FLAG_OK) and np.all(np.isfinite(s[[0, 1, 2, 4, 6, 9]]))
    assert np.all(np.isnan(ds["patch_score"].values[[3, 5, 8]]))


def test_hdf5_step_and_in_memory_array(h5_volume, model, model_path, tmp_path):
    path, vol = h5_volume
    ds = score(path, model=model_path, out=tmp_path, workers=0, step=2, chunk_slices=2, progress=False)
    assert list(ds["z"].values) == [0, 2, 4, 6, 8]
    ref = direct(model, vol, [0, 2, 4, 6, 8])
    assert_same(ds, ref)
    # the same volume as an in-memory array (no output written), any chunking
    mem = score(vol, model=model_path, out=None, workers=0, step=2, chunk_slices=3, progress=False)
    assert_same(mem, ref)
    # scores do not depend on the storage dtype / scale
    mem2 = score(vol.astype(np.float64) / 65535.0, model=model_path, workers=0, step=2, progress=False)
    np.testing.assert_allclose(mem2["score"].values, ref["score"], atol=2e-3)


def test_existing_output_needs_overwrite(special_volume, model_path, tmp_path):
    path, _ = special_volume
    score(path, model=model_path, out=tmp_path, workers=0, step=5, progress=False)
    with pytest.raises(InputError, match="already exists"):
        score(path, model=model_path, out=tmp_path, workers=0, step=5, progress=False)
    ds = score(path, model=model_path, out=tmp_path, workers=0, step=3, overwrite=True, progress=False)
    assert list(ds["z"].values) == [0, 3, 6, 9]


def test_bad_options(special_volume, model_path, tmp_path):
    path, _ = special_volume
    with pytest.raises(OptionError):
        score(path, model=model_path, out=tmp_path, workers=0, step=0)
    with pytest.raises(OptionError):
        score(path, model=model_path, out=tmp_path, workers=0, axis="w")
    with pytest.raises(InputError):
        score(tmp_path / "missing.zarr", model=model_path, out=tmp_path, workers=0)
    with pytest.raises(InputError, match="model"):
        score(path, model=tmp_path / "nope.keras", out=tmp_path, workers=0)
    with pytest.raises(OptionError):
        score(path, model=model_path, out=tmp_path, cluster="bogus")


def test_input_is_not_modified(special_volume, model_path, tmp_path):
    path, _ = special_volume
    before = {p: p.stat().st_mtime_ns for p in Path(path).rglob("*")}
    score(path, model=model_path, out=tmp_path, workers=0, step=4, progress=False)
    assert {p: p.stat().st_mtime_ns for p in Path(path).rglob("*")} == before


# ----------------------------------------------------------------------------- resume


def test_sigkill_mid_run_then_resume_is_identical(model, model_path, tmp_path):
    vol = _volume(12, seed=4)
    path = tmp_path / "long.zarr"
    z = zarr.create_array(str(path), shape=vol.shape, chunks=(1, 256, 256), dtype="float32")
    z[:] = vol
    out = tmp_path / "out"
    final = output_path(path, out)
    part = partial_path(final)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-c", "from tomoqc.cli import entry; entry()", "score", str(path), "--model", str(model_path),
           "--out", str(out), "--workers", "0", "--chunk-slices", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            done_dir = part / "_done"
            if done_dir.is_dir() and len(list(done_dir.glob("chunk-??????"))) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the scoring process ended before it could be killed")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists() and part.exists()
    markers = list((part / "_done").glob("chunk-??????"))
    n_done = len(markers)
    assert 3 <= n_done < 12
    # the written chunks already hold the right numbers
    ref = direct(model, vol, range(12))
    g = zarr.open_group(str(part), mode="r")
    for m in markers:
        k = int(m.name.split("-")[1])
        np.testing.assert_allclose(g["score"][k], ref["score"][k], atol=1e-5)

    from tomoqc.cli import main

    assert main(["score", str(path), "--model", str(model_path), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    ds = open_quality(final)
    assert ds.attrs["complete"] is True
    assert ds.attrs["chunks_total"] == 12
    assert ds.attrs["chunks_resumed"] == n_done  # only the missing chunks were scored again
    assert ds.attrs["chunk_slices"] == 1  # the interrupted run's chunking was kept
    assert not part.exists()
    assert_same(ds, ref)
    # identical to an uninterrupted run
    clean = score(path, model=model_path, out=tmp_path / "clean", workers=0, chunk_slices=1, progress=False)
    for v in ("score", "patch_score", "severity", "flag"):
        np.testing.assert_array_equal(ds[v].values, clean[v].values)


def test_partial_from_other_parameters_is_restarted(special_volume, model_path, tmp_path):
    path, _ = special_volume
    final = output_path(path, tmp_path)
    part = partial_path(final)
    score(path, model=model_path, out=tmp_path, workers=0, step=2, progress=False)
    os.replace(final, part)  # pretend a step-2 run was interrupted
    import zarr as _z

    _z.open_group(str(part), mode="r+").attrs["complete"] = False
    ds = score(path, model=model_path, out=tmp_path, workers=0, step=3, progress=False)
    assert list(ds["z"].values) == [0, 3, 6, 9]
    assert ds.attrs["chunks_resumed"] == 0
    first = ds["ring_index"].values.copy()
    # a partial of the same job written without one of today's output variables (an
    # earlier version) is restarted too, not resumed into a store that lacks it
    os.replace(final, part)
    _z.open_group(str(part), mode="r+").attrs["complete"] = False
    shutil.rmtree(part / "ring_index")
    ds = score(path, model=model_path, out=tmp_path, workers=0, step=3, progress=False)
    assert ds.attrs["chunks_resumed"] == 0
    np.testing.assert_array_equal(ds["ring_index"].values, first)  # written again (NaN for the constant slice)


# ----------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def two_workers():
    from tomoqc.cluster import start_cluster

    with start_cluster("local", workers=2) as client:
        yield client


def test_local_cluster_two_workers_model_loaded_once_per_worker(two_workers, special_volume, model, model_path, tmp_path):
    path, vol = special_volume
    client = two_workers
    ds = score(path, model=model_path, out=tmp_path, client=client, chunk_slices=1, progress=False)
    assert_same(ds, direct(model, vol, range(10)))
    loads = client.run(lambda: __import__("tomoqc.engine", fromlist=["x"]).RESOURCE_LOADS)
    # 10 tasks ran, but each worker process loaded the model at most once
    assert all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1
    threads = client.run(lambda: os.environ.get("TF_NUM_INTRAOP_THREADS"))
    assert all(t == "1" for t in threads.values())


def test_killed_worker_loses_no_slices(two_workers, model, model_path, tmp_path):
    client = two_workers
    vol = _volume(12, seed=5)
    path = tmp_path / "kill.zarr"
    z = zarr.create_array(str(path), shape=vol.shape, chunks=(1, 256, 256), dtype="float32")
    z[:] = vol
    part = partial_path(output_path(path, tmp_path / "out"))
    result = {}

    def run():
        try:
            result["ds"] = score(path, model=model_path, out=tmp_path / "out", client=client, chunk_slices=1,
                                 progress=False)
        except BaseException as err:  # reported below
            result["err"] = err

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not ((part / "_done").is_dir() and any((part / "_done").glob("chunk-*"))):
        time.sleep(0.02)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive()
    assert "err" not in result, result.get("err")
    ds = result["ds"]
    assert ds.attrs["complete"] is True
    assert np.isfinite(ds["score"].values).all()
    assert_same(ds, direct(model, vol, range(12)))
    assert victim not in set(client.run(os.getpid).values())  # the worker really died (and was replaced)


def test_output_locked_by_a_live_process_is_not_shared(special_volume, model_path, tmp_path):
    path, _ = special_volume
    final = output_path(path, tmp_path)
    part = partial_path(final)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from tomoqc.locks import OutputLock; l = OutputLock(sys.argv[1]).acquire(); "
         "print('held', flush=True); time.sleep(120)", str(final)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid}"):
            score(path, model=model_path, out=tmp_path, workers=0, step=5, progress=False)
        assert not part.exists() and not final.exists()  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # once that process is gone (killed: its lock is stale), the run goes ahead
    ds = score(path, model=model_path, out=tmp_path, workers=0, step=5, progress=False)
    assert list(ds["z"].values) == [0, 5] and not part.exists()


def test_ring_center_and_measured_terms_options(model_path, tmp_path):
    """Rings about an off-centre axis are measured where the axis is when told; the options are
    recorded, and a centre outside the slices is refused before anything is written."""
    from tomoqc.distort.image import ring_artifact

    vol = np.clip(_volume(8, seed=4)[:2], 0, 1)
    axis = (100.0, 140.0)
    vol[1] = ring_artifact(vol[1], 0.4, rng=0, center=axis)
    h, w = vol.shape[1:]
    plain = score(vol, model=model_path, workers=0, progress=False, ring_center=((h - 1) / 2, (w - 1) / 2))
    told = score(vol, model=model_path, workers=0, progress=False, ring_center=axis)
    assert told["ring_index"].values[1] > 3 * plain["ring_index"].values[1]
    # by default the axis is found once for the volume
    found = score(vol, model=model_path, workers=0, progress=False)
    assert found.attrs["ring_center_source"] == "found"
    assert np.hypot(*np.subtract(json.loads(found.attrs["ring_center"]), axis)) <= 2.0
    assert told["ring_index"].values[1] > 5 * told["ring_index"].values[0]
    assert told.attrs["ring_center"] == "[100.0, 140.0]" and told.attrs["measured_terms"] is True
    alone = score(vol, model=model_path, workers=0, progress=False, measured_terms=False)
    assert alone.attrs["measured_terms"] is False
    for bad in ((300.0, 10.0), (1.0,), ("a", "b")):
        with pytest.raises(OptionError):
            score(vol, model=model_path, out=tmp_path / "x.quality.zarr", workers=0, progress=False, ring_center=bad)
    assert not list(tmp_path.iterdir())
