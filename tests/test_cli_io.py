"""`tomoqc info` and `tomoqc convert`: round trips, one clear error per bad input, no half outputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from tomoqc.cli import main
from tomoqc.io import open_volume


def tree_hash(path: Path) -> str:
    """Hash of a file, or of every file (names and bytes) under a folder."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def volume(shape=(9, 11, 13), dtype="float32", seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(dtype)


# --------------------------------------------------------------------------- good inputs


def test_info_table_and_json(tmp_path, capsys):
    vol = volume()
    vol[0, 0, 0], vol[8, 10, 12] = -50.0, 75.0
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh.create_dataset("entry/data", data=vol, chunks=(1, 11, 13))
    code, out, err = run(capsys, "info", tmp_path / "scan.h5", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["shape"] == [9, 11, 13] and info["dtype"] == "float32" and info["format"] == "hdf5"
    assert info["dataset"] == "entry/data" and info["storage_chunks"] == [1, 11, 13]
    assert info["min"] == -50.0 and info["max"] == 75.0  # slices 0 and 8 are always sampled
    code, out, err = run(capsys, "info", tmp_path / "scan.h5")
    assert code == 0
    for text in ("hdf5", "entry/data", "9 x 11 x 13", "float32", "-50 .. 75"):
        assert text in out


@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_convert_round_trip_exact(tmp_path, capsys, axis):
    vol = (np.arange(10 * 11 * 13).reshape(10, 11, 13) * 7919 % 65521).astype(np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh["a"] = vol
        fh["b"] = vol[:2]
    before = tree_hash(tmp_path / "scan.h5")
    code, out, err = run(capsys, "convert", tmp_path / "scan.h5", tmp_path / "o.zarr", "--dataset", "a",
                         "--axis", axis, "--chunks", "3", "--quiet")
    assert code == 0, err
    arr = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    expected = np.moveaxis(vol, "zyx".index(axis), 0)
    np.testing.assert_array_equal(arr[:], expected)
    assert arr.dtype == np.uint16 and arr.chunks[0] == 3
    assert arr.attrs["axis"] == axis and arr.attrs["dataset"] == "a"
    assert tree_hash(tmp_path / "scan.h5") == before
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "scan.h5"]


def test_convert_overwrite_replaces(tmp_path, capsys):
    vol = volume()
    np.save(tmp_path / "v.npy", vol)
    (tmp_path / "o.zarr").mkdir()
    (tmp_path / "o.zarr" / "old").write_text("old")
    code, _, err = run(capsys, "convert", tmp_path / "v.npy", tmp_path / "o.zarr", "--overwrite", "-q")
    assert code == 0, err
    assert not (tmp_path / "o.zarr" / "old").exists()
    np.testing.assert_array_equal(open_volume(tmp_path / "o.zarr").values, vol)


# --------------------------------------------------------------------------- bad inputs


def _h5(path, **datasets):
    with h5py.File(path, "w") as fh:
        for name, data in datasets.items():
            fh[name.replace("__", "/")] = data
    return path


def make_missing(d):
    return d / "nowhere.h5", [], ("no such file",)


def make_unknown(d):
    p = d / "notes.txt"
    p.write_text("a volume? no.")
    return p, [], ("unknown format",)


def make_unknown_folder(d):
    p = d / "folder"
    p.mkdir()
    (p / "readme.md").write_text("x")
    return p, [], ("unknown format",)


def make_truncated_hdf5(d):
    p = _h5(d / "scan.h5", data=volume(shape=(40, 32, 32)))
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)
    return p, [], ("HDF5", "truncated")


def make_corrupt_hdf5(d):
    p = d / "scan.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    return p, [], ("HDF5", "corrupt")


def make_wrong_hdf5_path(d):
    p = _h5(d / "scan.h5", entry__data=volume(), entry__dark=volume(shape=(2, 11, 13)))
    return p, ["--dataset", "entry/recon"], ("no dataset 'entry/recon'", "entry/data (9, 11, 13)", "entry/dark (2, 11, 13)")


def make_ambiguous_hdf5(d):
    p = _h5(d / "scan.h5", data=volume(), flats=volume(shape=(3, 11, 13)))
    return p, [], ("--dataset", "data (9, 11, 13)", "flats (3, 11, 13)")


def make_corrupt_zarr_chunk(d):
    p = d / "v.zarr"
    arr = zarr.create_array(store=str(p), shape=(9, 11, 13), chunks=(3, 11, 13), dtype="float32")
    arr[:] = volume()
    chunk = p / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    return p, [], (str(chunk), "corrupt or truncated zarr chunk c/1/0/0")


def make_truncated_npy(d):
    p = d / "v.npy"
    np.save(p, volume(shape=(30, 32, 32)))
    with open(p, "r+b") as fh:
        fh.truncate(4000)
    return p, [], ("truncated",)


def make_1d(d):
    p = d / "line.npy"
    np.save(p, np.arange(10.0))
    return p, [], ("1-D", "expected a 3-D volume")


def make_4d(d):
    p = d / "time.npy"
    np.save(p, np.zeros((2, 3, 4, 5), np.float32))
    return p, [], ("4-D", "(2, 3, 4, 5)")


def make_4d_hdf5(d):
    p = _h5(d / "t.h5", data=np.zeros((2, 3, 4, 5), np.uint8))
    return p, ["--dataset", "data"], ("4-D",)


def make_empty(d):
    p = d / "empty.npy"
    np.save(p, np.zeros((0, 11, 13), np.float32))
    return p, [], ("empty", "(0, 11, 13)")


def make_strings(d):
    p = d / "names.npy"
    np.save(p, np.full((2, 3, 4), "abc"))
    return p, [], ("non-numeric dtype",)


def make_strings_hdf5(d):
    p = d / "s.h5"
    with h5py.File(p, "w") as fh:
        fh.create_dataset("s", data=np.full((2, 3, 4), b"ab"))
    return p, ["--dataset", "s"], ("non-numeric dtype",)


def make_complex(d):
    p = d / "c.npy"
    np.save(p, np.ones((2, 3, 4), np.complex64))
    return p, [], ("complex",)


BAD = [
    make_missing, make_unknown, make_unknown_folder, make_truncated_hdf5, make_corrupt_hdf5,
    make_wrong_hdf5_path, make_ambiguous_hdf5, make_corrupt_zarr_chunk, make_truncated_npy,
    make_1d, make_4d, make_4d_hdf5, make_empty, make_strings, make_strings_hdf5, make_complex,
]


@pytest.mark.parametrize("make", BAD, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("command", ["convert", "info"])
def test_bad_input_one_clear_line(tmp_path, capsys, make, command):
    src, extra, expected = make(tmp_path)
    before = tree_hash(src) if src.exists() else None
    listing = sorted(os.listdir(tmp_path))
    out = tmp_path / "out.zarr"
    args = [command, src, *extra] + ([out] if command == "convert" else [])
    code, stdout, err = run(capsys, *args)
    assert code == 1, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("tomoqc: error: ")
    assert str(src) in line  # names the file (or the chunk file inside it)
    for text in expected:
        assert text in line, line
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == listing, "nothing may be written, not even a temporary"
    if before is not None:
        assert tree_hash(src) == before, "the input must stay untouched"


def test_output_exists(tmp_path, capsys):
    np.save(tmp_path / "v.npy", volume())
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "keep").write_text("mine")
    before = tree_hash(tmp_path / "out.zarr"), tree_hash(tmp_path / "v.npy")
    code, _, err = run(capsys, "convert", tmp_path / "v.npy", tmp_path / "out.zarr")
    assert code == 1
    assert err.strip() == f"tomoqc: error: {tmp_path / 'out.zarr'}: output already exists (use --overwrite to replace it)"
    assert (tree_hash(tmp_path / "out.zarr"), tree_hash(tmp_path / "v.npy")) == before
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "v.npy"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_inside_input(tmp_path, capsys, overwrite):
    src = tmp_path / "in.zarr"
    zarr.create_array(store=str(src), shape=(9, 11, 13), chunks=(3, 11, 13), dtype="float32")[:] = volume()
    before = tree_hash(src)
    out = src / "copy.zarr"
    code, _, err = run(capsys, "convert", src, out, *(["--overwrite"] if overwrite else []))
    assert code == 1
    assert err.strip().startswith(f"tomoqc: error: {out}: output lies inside the input")
    assert not out.exists() and tree_hash(src) == before


def test_overwrite_that_would_delete_the_input(tmp_path, capsys):
    folder = tmp_path / "project.zarr"
    folder.mkdir()
    np.save(folder / "v.npy", volume())
    before = tree_hash(folder)
    code, _, err = run(capsys, "convert", folder / "v.npy", folder, "--overwrite")
    assert code == 1
    assert "would delete the input" in err and str(folder) in err
    assert tree_hash(folder) == before


def test_bad_chunks_option(tmp_path, capsys):
    np.save(tmp_path / "v.npy", volume())
    code, _, err = run(capsys, "convert", tmp_path / "v.npy", tmp_path / "o.zarr", "--chunks", "0")
    assert code == 1 and "--chunks" in err
    code, _, err = run(capsys, "convert", tmp_path / "v.npy", tmp_path / "o.zarr", "--axis", "w")
    assert code == 1 and "axis" in err
    assert sorted(os.listdir(tmp_path)) == ["v.npy"]


# --------------------------------------------------------------------------- interrupted conversion


def test_killed_conversion_leaves_no_output(tmp_path):
    vol = np.random.default_rng(5).random((400, 64, 64), dtype=np.float32)
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "o.zarr"
    cmd = [sys.executable, "-c", "from tomoqc.cli import entry; entry()", "convert",
           str(tmp_path / "v.npy"), str(out), "--chunks", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tmp_path / f".o.zarr.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (tmp / "zarr.json").exists():  # the array exists, its slices are being written
        assert proc.poll() is None, "conversion finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    # a new run clears the dead run's temporary and completes
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], vol)
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "v.npy"]


def test_interrupted_conversion_cleans_up(tmp_path):
    """Ctrl-C midway: the conversion stops, and neither the output nor its temporary remains."""
    # enough slices that an idle machine cannot finish them before the signal lands
    vol = np.random.default_rng(6).random((3000, 64, 64), dtype=np.float32)
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "o.zarr"
    cmd = [sys.executable, "-c", "from tomoqc.cli import entry; entry()", "convert",
           str(tmp_path / "v.npy"), str(out), "--chunks", "1", "--quiet"]
    # Ctrl-C as a terminal delivers it: a suite started in the background of a
    # non-interactive shell inherits SIGINT ignored, and so would the child (Python then
    # installs no KeyboardInterrupt handler at all)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tmp = tmp_path / f".o.zarr.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (tmp / "zarr.json").exists():
        assert proc.poll() is None, "conversion finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert "wrote" not in stdout, "the conversion must not complete after Ctrl-C"
    assert sorted(os.listdir(tmp_path)) == ["v.npy"]


def test_tiff_folder_with_a_mismatched_slice(tmp_path, capsys):
    import tifffile

    folder = tmp_path / "stack"
    folder.mkdir()
    for i in range(5):
        tifffile.imwrite(folder / f"s{i}.tif", np.full((11, 13), i, np.uint16))
    tifffile.imwrite(folder / "s2.tif", np.zeros((11, 12), np.uint16))  # one odd slice in the middle
    code, _, err = run(capsys, "convert", folder, tmp_path / "o.zarr", "-q")
    assert code == 1
    assert str(folder / "s2.tif") in err and "slice 2 has shape (11, 12), expected (11, 13)" in err
    assert sorted(os.listdir(tmp_path)) == ["stack"]
