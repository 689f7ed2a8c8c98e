"""Reading every supported format back exactly as written, and writing safely."""

from __future__ import annotations

import os
import pickle

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from tomoqc.errors import InputError, OptionError
from tomoqc.io import (
    ChunkReadError,
    atomic_path,
    detect_format,
    open_volume,
    volume_info,
    write_zarr,
)

SHAPE = (7, 11, 13)  # distinct sizes so that any axis mix-up changes the shape


def reference(dtype="uint16", seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100.0, 30.0, shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) > 0.5
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def oriented(vol, axis):
    """The expected result of opening ``vol`` along ``axis``: that axis first, others in order."""
    return np.moveaxis(vol, "zyx".index(axis), 0)


def assert_volume(v, expected, *, fmt, dtype=None):
    assert v.dims == ("z", "y", "x")
    assert isinstance(v.data, da.Array), "must be dask-backed, not numpy"
    # chunks hold whole slices
    assert v.chunks[1] == (v.shape[1],) and v.chunks[2] == (v.shape[2],)
    assert v.attrs["format"] == fmt
    assert v.attrs["dtype"] == str(np.dtype(dtype or expected.dtype))
    got = v.values
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- writers


def write_zarr_array(path, vol, fmt, chunks=(2, 11, 13)):
    arr = zarr.create_array(store=str(path), shape=vol.shape, chunks=chunks, dtype=vol.dtype, zarr_format=fmt)
    arr[:] = vol
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_zarr_array(tmp_path, zarr_format, axis):
    vol = reference("uint16")
    path = write_zarr_array(tmp_path / "v.zarr", vol, zarr_format)
    v = open_volume(path, axis=axis)
    assert_volume(v, oriented(vol, axis), fmt=f"zarr-v{zarr_format}")
    assert v.attrs["axis"] == axis
    assert v.attrs["source"] == str(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_with_dataset(tmp_path, zarr_format):
    vol = reference("float32")
    other = reference("int16", seed=1)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("scan/recon", shape=vol.shape, chunks=(3, 11, 13), dtype=vol.dtype)[:] = vol
    group.create_array("scan/other", shape=other.shape, chunks=other.shape, dtype=other.dtype)[:] = other
    v = open_volume(tmp_path / "g.zarr", dataset="scan/recon", axis="y")
    assert_volume(v, oriented(vol, "y"), fmt=f"zarr-v{zarr_format}")
    assert v.attrs["dataset"] == "scan/recon"
    with pytest.raises(InputError) as err:  # two 3-D arrays: the choice is the user's
        open_volume(tmp_path / "g.zarr")
    assert "scan/recon" in str(err.value) and "scan/other" in str(err.value)


def test_zarr_group_single_array_needs_no_dataset(tmp_path):
    vol = reference("uint8")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("volume", shape=vol.shape, dtype=vol.dtype)[:] = vol
    group.create_array("angles", shape=(7,), dtype="f8")[:] = np.arange(7.0)
    v = open_volume(tmp_path / "g.zarr")
    assert_volume(v, vol, fmt="zarr-v3")
    assert v.attrs["dataset"] == "volume"


def test_hdf5_single_dataset(tmp_path):
    vol = reference("int32")
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("entry/data/data", data=vol, chunks=(1, 11, 13))
        fh["entry/data/data"].attrs["voxel_size"] = [3.0, 2.0, 1.0]
        fh["entry/angles"] = np.linspace(0, 180, 7)  # 1-D: not a candidate
    v = open_volume(path)
    assert_volume(v, vol, fmt="hdf5")
    assert v.attrs["dataset"] == "entry/data/data"
    assert v.attrs["voxel_size"] == [3.0, 2.0, 1.0]
    vx = open_volume(path, axis="x")
    assert_volume(vx, oriented(vol, "x"), fmt="hdf5")
    assert vx.attrs["voxel_size"] == [1.0, 3.0, 2.0]


def test_hdf5_several_datasets(tmp_path):
    vol = reference("float64")
    flats = reference("uint16", seed=3, shape=(2, 11, 13))
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as fh:
        fh["exchange/data"] = vol
        fh["exchange/data_white"] = flats
    v = open_volume(path, dataset="exchange/data", axis="y")
    assert_volume(v, oriented(vol, "y"), fmt="hdf5")
    v2 = open_volume(path, dataset="/exchange/data_white")
    assert_volume(v2, flats, fmt="hdf5")


def test_hdf5_gzip_chunked_compressed(tmp_path):
    vol = reference("uint16")
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("v", data=vol, chunks=(2, 11, 13), compression="gzip")
    assert_volume(open_volume(path, axis="x"), oriented(vol, "x"), fmt="hdf5")


def test_tiff_folder_natural_sort(tmp_path):
    vol = reference("uint16", shape=(12, 11, 13))
    folder = tmp_path / "stack"
    folder.mkdir()
    for i in range(12):  # slice_2 must come before slice_10
        tifffile.imwrite(folder / f"slice_{i}.tif", vol[i])
    (folder / "notes.txt").write_text("not a slice")
    v = open_volume(folder)
    assert_volume(v, vol, fmt="tiff-stack")
    assert_volume(open_volume(folder, axis="y"), oriented(vol, "y"), fmt="tiff-stack")


def test_multipage_tiff(tmp_path):
    vol = reference("float32")
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, vol)
    assert_volume(open_volume(path), vol, fmt="tiff")
    assert_volume(open_volume(path, axis="x"), oriented(vol, "x"), fmt="tiff")


def test_multipage_tiff_compressed_pages(tmp_path):
    vol = reference("uint8")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol, compression="zlib")
    assert_volume(open_volume(path, axis="y"), oriented(vol, "y"), fmt="tiff")


def test_multipage_tiff_appended_page_by_page(tmp_path):
    """Slices appended one at a time (one TIFF series per page) are all read, in page order."""
    vol = reference("uint16", shape=(6, 11, 13))
    path = tmp_path / "appended.tif"
    for img in vol:
        tifffile.imwrite(path, img, append=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 6  # the layout this test is about
    assert_volume(open_volume(path), vol, fmt="tiff")
    assert_volume(open_volume(path, axis="x", chunk_slices=4), oriented(vol, "x"), fmt="tiff")


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd"])
def test_compressed_tiff_codecs(tmp_path, compression):
    """LZW (ImageJ/Fiji's usual export), Deflate and Zstandard pages read exactly (through
    imagecodecs, a dependency: without it LZW pages failed to read)."""
    vol = reference("uint16", shape=(6, 21, 17))
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, vol, compression=compression)
    assert_volume(open_volume(path), vol, fmt="tiff")


@pytest.mark.parametrize("n", [3, 4])
def test_stack_of_three_or_four_slices_stored_as_one_page(tmp_path, n):
    """tifffile stores a (3 or 4, H, W) array as one page of that many planar samples: its
    slices are samples, not pages, and each must still read as itself."""
    vol = reference("float32", shape=(n, 40, 48))
    path = tmp_path / "few.tif"
    tifffile.imwrite(path, vol)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # the layout this test is about
    assert_volume(open_volume(path), vol, fmt="tiff")
    assert_volume(open_volume(path, axis="y"), oriented(vol, "y"), fmt="tiff")


def test_imagej_tiff_voxel_size(tmp_path):
    vol = reference("uint8")
    path = tmp_path / "ij.tif"
    # 0.5 um pixels (2 pixels per unit), 2 um between slices
    tifffile.imwrite(path, vol, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 2.0, "unit": "um"})
    v = open_volume(path)
    assert_volume(v, vol, fmt="tiff")
    assert v.attrs["voxel_size"] == [2.0, 0.5, 0.5]
    assert open_volume(path, axis="y").attrs["voxel_size"] == [0.5, 2.0, 0.5]


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64", "bool"])
@pytest.mark.parametrize("axis", ["z", "x"])
def test_npy(tmp_path, dtype, axis):
    vol = reference(dtype)
    np.save(tmp_path / "v.npy", vol)
    assert_volume(open_volume(tmp_path / "v.npy", axis=axis), oriented(vol, axis), fmt="npy")


def test_npy_fortran_order(tmp_path):
    vol = np.asfortranarray(reference("int32"))
    np.save(tmp_path / "f.npy", vol)
    assert_volume(open_volume(tmp_path / "f.npy", axis="y"), oriented(vol, "y"), fmt="npy")


@pytest.mark.parametrize("suffix,fmt", [(".png", "png"), (".bmp", "bmp"), (".tif", "tiff")])
def test_single_images_exact(tmp_path, suffix, fmt):
    img = reference("uint8", shape=(11, 13))
    path = tmp_path / f"slice{suffix}"
    if fmt == "tiff":
        tifffile.imwrite(path, img)
    else:
        Image.fromarray(img).save(path)
    v = open_volume(path)
    assert_volume(v, img[None], fmt=fmt)


def test_png_16bit(tmp_path):
    img = reference("uint16", shape=(11, 13))
    path = tmp_path / "deep.png"
    Image.fromarray(img).save(path)
    assert_volume(open_volume(path), img[None], fmt="png")


def test_jpeg_lossy_loosely(tmp_path):
    yy, xx = np.mgrid[0:64, 0:80]
    img = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)
    path = tmp_path / "slice.jpg"
    Image.fromarray(img).save(path, quality=95)
    v = open_volume(path)
    assert v.shape == (1, 64, 80) and v.attrs["format"] == "jpeg" and v.dtype == np.uint8
    err = np.abs(v.values[0].astype(int) - img.astype(int))
    assert err.mean() < 2.0 and err.max() < 20


def test_colour_png_equal_channels_is_exact(tmp_path):
    img = reference("uint8", shape=(11, 13))
    Image.fromarray(np.stack([img] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    assert_volume(open_volume(tmp_path / "grey_rgb.png"), img[None], fmt="png")


def test_colour_png_becomes_bt601_luma(tmp_path):
    rgb = reference("uint8", shape=(11, 13, 3))
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    v = open_volume(tmp_path / "colour.png")
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert v.attrs["dtype"] == "uint8" and v.dtype == np.float32
    np.testing.assert_allclose(v.values[0], expected, rtol=1e-5, atol=1e-3)


def test_chunks_are_whole_slices_and_lazy_graph_pickles(tmp_path):
    vol = reference("float32", shape=(40, 11, 13))
    with h5py.File(tmp_path / "v.h5", "w") as fh:
        fh["v"] = vol
    v = open_volume(tmp_path / "v.h5", chunk_slices=3)
    assert v.chunks[0] == (3,) * 13 + (1,)
    # the graph holds paths, not open handles: it survives pickling (as for worker processes)
    again = pickle.loads(pickle.dumps(v.data))
    np.testing.assert_array_equal(again.compute(), vol)
    np.testing.assert_array_equal(v.data[17:23].compute(scheduler="threads"), vol[17:23])


def test_volume_info_range_from_sample(tmp_path):
    vol = np.zeros((9, 11, 13), np.float32)
    vol[0, 0, 0] = -5.0
    vol[8, 1, 1] = 7.5
    vol[4, 2, 2] = np.nan
    np.save(tmp_path / "v.npy", vol)
    info = volume_info(tmp_path / "v.npy", sample=3)  # slices 0, 4 and 8
    assert info["sample_slices"] == [0, 4, 8]
    assert info["min"] == -5.0 and info["max"] == 7.5
    assert info["nonfinite"] == 1
    assert info["shape"] == [9, 11, 13] and info["dtype"] == "float32" and info["format"] == "npy"
    assert info["nbytes"] == 9 * 11 * 13 * 4


def test_detect_format_by_content_not_name(tmp_path):
    vol = reference("uint8")
    np.save(tmp_path / "v.npy", vol)
    os.rename(tmp_path / "v.npy", tmp_path / "volume.raw")
    assert detect_format(tmp_path / "volume.raw") == "npy"
    assert_volume(open_volume(tmp_path / "volume.raw"), vol, fmt="npy")


def test_bad_axis_is_an_option_error(tmp_path):
    np.save(tmp_path / "v.npy", reference("uint8"))
    with pytest.raises(OptionError, match="axis"):
        open_volume(tmp_path / "v.npy", axis="w")


# --------------------------------------------------------------------------- corrupt chunks


def test_corrupt_zarr_chunk_names_the_chunk_file(tmp_path):
    vol = reference("float32", shape=(8, 11, 13))
    path = write_zarr_array(tmp_path / "v.zarr", vol, 3, chunks=(2, 11, 13))
    chunk = path / "c" / "2" / "0" / "0"  # slices 4..5
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    v = open_volume(path, chunk_slices=2)  # the first slice is fine, so opening succeeds
    np.testing.assert_array_equal(v.data[:4].compute(), vol[:4])
    with pytest.raises(ChunkReadError) as err:
        v.values
    msg = str(err.value)
    assert str(chunk) in msg and "corrupt or truncated zarr chunk c/2/0/0" in msg and "slices 4..5" in msg
    # the error crosses process boundaries intact
    again = pickle.loads(pickle.dumps(err.value))
    assert isinstance(again, InputError) and str(again) == msg


def test_corrupt_first_zarr_chunk_fails_at_open(tmp_path):
    vol = reference("uint16")
    path = write_zarr_array(tmp_path / "v.zarr", vol, 2)
    (path / "0.0.0").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match=r"0\.0\.0"):
        open_volume(path)


# --------------------------------------------------------------------------- writing


def test_write_zarr_round_trip_exact(tmp_path):
    vol = reference("float32", shape=(30, 11, 13))
    vol[3, 4, 5] = np.nan
    np.save(tmp_path / "v.npy", vol)
    src = open_volume(tmp_path / "v.npy", chunk_slices=7)
    out = write_zarr(src, tmp_path / "o.zarr", chunks=4, progress=False)
    arr = zarr.open_array(str(out), mode="r")
    assert arr.metadata.zarr_format == 3
    assert arr.chunks == (4, 11, 13)
    assert tuple(arr.metadata.dimension_names) == ("z", "y", "x")
    assert arr.attrs["dtype"] == "float32" and arr.attrs["format"] == "npy"
    np.testing.assert_array_equal(arr[:], vol)  # NaN compares equal to NaN here
    back = open_volume(out)
    assert_volume(back, vol, fmt="zarr-v3")
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "v.npy"]  # no temporaries left


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "float64"])
def test_write_zarr_dtypes_and_numpy_input(tmp_path, dtype):
    vol = reference(dtype)
    out = write_zarr(vol, tmp_path / "o.zarr", progress=False)
    assert_volume(open_volume(out), vol, fmt="zarr-v3")


def test_write_zarr_refuses_existing_and_output_inside_input(tmp_path):
    vol = reference("uint8")
    write_zarr_array(tmp_path / "in.zarr", vol, 3)
    (tmp_path / "taken.zarr").mkdir()
    v = open_volume(tmp_path / "in.zarr")
    with pytest.raises(InputError, match="already exists"):
        write_zarr(v, tmp_path / "taken.zarr", progress=False)
    with pytest.raises(InputError, match="inside the input"):
        write_zarr(v, tmp_path / "in.zarr" / "copy.zarr", overwrite=True, progress=False)
    with pytest.raises(InputError, match="inside the input"):
        write_zarr(v, tmp_path / "in.zarr", overwrite=True, progress=False)
    np.testing.assert_array_equal(open_volume(tmp_path / "in.zarr").values, vol)


# --------------------------------------------------------------------------- atomic_path


def test_atomic_path_renames_on_success(tmp_path):
    final = tmp_path / "out.zarr"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".out.zarr.tmp-{os.getpid()}"
        assert not final.exists()
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    assert not tmp.exists()


def test_atomic_path_removes_temporary_on_error(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_atomic_path_refuses_existing_unless_overwrite(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(InputError, match="already exists"):
        with atomic_path(final):
            pass
    # overwrite: the old output survives a failure ...
    with pytest.raises(ValueError):
        with atomic_path(final, overwrite=True) as tmp:
            tmp.write_text("new")
            raise ValueError
    assert final.read_text() == "old"
    # ... and is replaced on success
    with atomic_path(final, overwrite=True) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_clears_temporaries_of_dead_processes(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.zarr.tmp-{pid}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_path(tmp_path / "out.zarr") as tmp:
        tmp.mkdir()
    assert sorted(os.listdir(tmp_path)) == ["out.zarr"]


@pytest.mark.parametrize("kind", ["npy", "hdf5"])
def test_big_endian_values_kept_native_order_returned(tmp_path, kind):
    vol = reference("float32").astype(">f4")
    if kind == "npy":
        path = tmp_path / "be.npy"
        np.save(path, vol)
    else:
        path = tmp_path / "be.h5"
        with h5py.File(path, "w") as fh:
            fh["v"] = vol
    v = open_volume(path, axis="y")
    assert v.attrs["dtype"] == ">f4"  # as stored
    assert v.dtype == np.dtype("float32") and v.dtype.isnative
    np.testing.assert_array_equal(v.values, oriented(vol, "y"))


def test_sharded_zarr_chunks_follow_shards_and_name_the_shard(tmp_path):
    vol = reference("uint16", shape=(8, 12, 10))
    arr = zarr.create_array(
        store=str(tmp_path / "s.zarr"), shape=vol.shape, chunks=(1, 4, 5), shards=(4, 12, 10), dtype=vol.dtype
    )
    arr[:] = vol
    v = open_volume(tmp_path / "s.zarr", chunk_slices=None)
    assert all(c % 4 == 0 for c in v.chunks[0])  # whole shards per dask chunk
    assert_volume(v, vol, fmt="zarr-v3")
    shard = tmp_path / "s.zarr" / "c" / "1" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:30])
    with pytest.raises(ChunkReadError) as err:
        open_volume(tmp_path / "s.zarr", chunk_slices=4).values
    assert str(shard) in str(err.value) and "slices 4..7" in str(err.value)


def test_reads_on_a_dask_cluster_of_processes(tmp_path):
    """HDF5 and zarr volumes compute on worker processes; a corrupt chunk's error arrives intact."""
    distributed = pytest.importorskip("distributed")
    vol = reference("float32", shape=(12, 11, 13))
    with h5py.File(tmp_path / "v.h5", "w") as fh:
        fh.create_dataset("v", data=vol, chunks=(2, 11, 13), compression="gzip")
    path = write_zarr_array(tmp_path / "v.zarr", vol, 3, chunks=(3, 11, 13))
    bad = path / "c" / "2" / "0" / "0"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        h5 = open_volume(tmp_path / "v.h5", chunk_slices=2)
        np.testing.assert_array_equal(client.compute(h5.data).result(), vol)
        zv = open_volume(path, chunk_slices=3)
        np.testing.assert_array_equal(client.compute(zv.data).result(), vol)
        bad.write_bytes(b"\x00" * 7)
        with pytest.raises(InputError) as err:
            client.compute(open_volume(path, chunk_slices=3).data).result()
    assert str(bad) in str(err.value) and "slices 6..8" in str(err.value)


def test_hdf5_without_a_clear_choice_explains_why(tmp_path):
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as fh:
        fh["dark"] = np.zeros((11, 13), np.uint16)
        fh["flat"] = np.ones((11, 13), np.uint16)
    with pytest.raises(InputError) as err:
        open_volume(two)
    msg = str(err.value)
    assert msg.startswith(f"{two}: no 3-D dataset but several 2-D ones")
    assert "dark (11, 13)" in msg and "flat (11, 13)" in msg
    none = tmp_path / "none.h5"
    with h5py.File(none, "w") as fh:
        fh["angles"] = np.linspace(0.0, 180.0, 5)
        fh["names"] = np.full((2, 3, 4), b"ab")
    with pytest.raises(InputError, match=r"no numeric 3-D or 2-D dataset.*angles \(5,\).*names \(2, 3, 4\)"):
        open_volume(none)
    # a single 2-D dataset is a volume of one slice
    with h5py.File(two, "a") as fh:
        del fh["flat"]
    img = np.arange(11 * 13, dtype=np.uint16).reshape(11, 13)
    with h5py.File(two, "a") as fh:
        fh["dark"][...] = img
    assert_volume(open_volume(two), img[None], fmt="hdf5")


@pytest.mark.parametrize("layout", ["folder", "multipage", "appended"])
def test_tiff_slicing_along_y_reads_page_by_page(tmp_path, layout):
    """Opening a TIFF stack along y must not hold every page of a chunk's box in memory."""
    import tracemalloc

    vol = reference("float32", shape=(64, 96, 256))  # 6 MiB in all, 96 KiB a page
    if layout == "folder":
        path = tmp_path / "stack"
        path.mkdir()
        for i, img in enumerate(vol):
            tifffile.imwrite(path / f"s{i}.tif", img)
    else:
        path = tmp_path / "stack.tif"
        if layout == "multipage":
            tifffile.imwrite(path, vol)
        else:
            for img in vol:
                tifffile.imwrite(path, img, append=True)
    v = open_volume(path, axis="y", chunk_slices=4)  # a chunk: 4 rows of every page, 256 KiB
    tracemalloc.start()
    try:
        got = v.data[8:12].compute(scheduler="synchronous")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, oriented(vol, "y")[8:12])
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MiB while reading a 0.25 MiB chunk of a 6 MiB volume"
