"""Reading tomography volumes lazily and writing them safely.

Every supported input becomes the same thing: an :class:`xarray.DataArray` with dims
``("z", "y", "x")`` backed by a dask array whose chunks hold whole slices along ``z``.
Nothing is read until a chunk is computed, so volumes much larger than memory can be
opened, inspected and streamed.

Supported inputs
----------------
=============  =========================================================================
format         what is accepted
=============  =========================================================================
``zarr-v3``    a zarr v3 array, or a group plus ``dataset`` (the array's path inside it)
``zarr-v2``    the same for zarr v2
``hdf5``       an HDF5 file plus ``dataset``; without ``dataset`` the file must hold
               exactly one 3-D dataset (or, failing that, exactly one 2-D dataset)
``tiff-stack`` a folder of 2-D TIFF files, one per slice, in natural order
               (``slice_2`` before ``slice_10``)
``tiff``       one TIFF file: a multi-page stack, or a single 2-D image
``npy``        a NumPy ``.npy`` file, memory-mapped
``png``,       single 2-D images; they become volumes of one slice
``jpeg``,
``bmp``
=============  =========================================================================

Data types: integers, unsigned integers, floating point and booleans (read as the
values 0 and 1) are accepted. Complex, string, object, structured and date types are
refused. Colour images (a trailing channel axis of 3 or 4 samples) are reduced to one
channel: exactly when all colour channels are equal, otherwise to the ITU-R BT.601 luma
``0.299 R + 0.587 G + 0.114 B`` as float32; an alpha channel is ignored.

Every reader opens its file read-only, per chunk, inside the task that needs it, so a
dask graph can run on threads or on other processes without sharing file handles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.locks import OutputLock, pid_alive  # noqa: F401  (pid_alive: used by callers of tomoqc.io)

__all__ = [
    "open_volume",
    "volume_info",
    "atomic_path",
    "check_output_path",
    "write_zarr",
    "detect_format",
    "ChunkReadError",
    "AXES",
]

#: the slicing axes a volume can be opened along
AXES = ("z", "y", "x")

#: dask chunks are sized to hold about this many bytes (whole slices, at least one)
CHUNK_BYTES = 32 * 2**20
#: :func:`write_zarr` computes and writes at most about this many bytes at a time
SLAB_BYTES = 64 * 2**20
#: output zarr chunks hold about this many bytes unless ``chunks`` is given
OUT_CHUNK_BYTES = 8 * 2**20

_HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".nx5", ".nx", ".cxi"}
_TIFF_SUFFIXES = {".tif", ".tiff"}
_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp"}
_VOXEL_KEYS = ("voxel_size", "voxel_size_um", "pixel_size", "element_size_um", "spacing")

_EXPECTED = "a zarr array or group, an HDF5 file, a TIFF file or folder of TIFFs, a .npy file, or a PNG/JPEG/BMP image"


class ChunkReadError(InputError):
    """A chunk of an input could not be read (corrupt or truncated storage).

    Raised from inside dask tasks; unlike a plain exception it survives pickling, so
    the same message reaches the caller from threads or from worker processes.
    """

    def __reduce__(self):
        return (self.__class__, (self.path, self.problem))


# --------------------------------------------------------------------------- checks


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or err.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_dtype(path: str | os.PathLike, dtype: np.dtype, what: str = "data") -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return dtype
    if dtype.kind == "c":
        raise InputError(path, f"{what} has complex dtype {dtype}; only real numbers are supported")
    raise InputError(
        path, f"{what} has non-numeric dtype {dtype}; expected integers, floating point or booleans"
    )


def _check_shape(path: str | os.PathLike, shape: tuple[int, ...], what: str = "data") -> None:
    if len(shape) not in (2, 3):
        raise InputError(
            path, f"{what} is {len(shape)}-D with shape {tuple(shape)}; expected a 3-D volume or a 2-D slice"
        )
    if any(int(s) == 0 for s in shape):
        raise InputError(path, f"{what} is empty (shape {tuple(int(s) for s in shape)})")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _voxel_from_attrs(attrs: Any) -> list[float] | None:
    """Read a voxel size from common metadata keys: a number or three numbers (z, y, x)."""
    try:
        items = dict(attrs)
    except Exception:
        return None
    for key in _VOXEL_KEYS:
        if key not in items:
            continue
        value = np.asarray(items[key], dtype=object).ravel().tolist()
        try:
            vals = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(vals) == 1:
            vals = vals * 3
        if len(vals) == 3 and all(math.isfinite(v) and v > 0 for v in vals):
            return vals
    return None


# --------------------------------------------------------------------------- format detection


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of ``path``: one of ``zarr-v3``, ``zarr-v2``, ``hdf5``,
    ``tiff-stack``, ``tiff``, ``npy``, ``png``, ``jpeg``, ``bmp``.

    Files are recognised by their leading bytes first and by their suffix second.

    Raises
    ------
    InputError
        When the path does not exist, is empty, or is of no known format.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        if (p / "zarr.json").is_file():
            return "zarr-v3"
        if (p / ".zarray").is_file() or (p / ".zgroup").is_file():
            return "zarr-v2"
        names = [n for n in os.listdir(p) if not n.startswith(".")]
        if any(Path(n).suffix.lower() in _TIFF_SUFFIXES for n in names):
            return "tiff-stack"
        if not names:
            raise InputError(p, "empty folder: no zarr metadata and no TIFF files")
        raise InputError(p, f"unknown format: folder holds neither zarr metadata nor TIFF files (expected {_EXPECTED})")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise InputError(p, f"cannot read file: {_short(err)}") from None
    if not head:
        raise InputError(p, "empty file (0 bytes)")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    suffix = p.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npy":
        return "npy"
    if suffix in _TIFF_SUFFIXES:
        return "tiff"
    if suffix in _IMAGE_SUFFIXES:
        return _IMAGE_SUFFIXES[suffix]
    raise InputError(p, f"unknown format (expected {_EXPECTED})")


# --------------------------------------------------------------------------- sources
#
# A source reads boxes of a 3-D array in its stored axis order.  Sources hold only
# paths and small metadata, so they pickle cheaply; files are opened per read.


class _Source:
    fmt: str = ""

    def __init__(self, path: str, dataset: str = ""):
        self.path = path
        self.dataset = dataset
        self.shape: tuple[int, int, int] = (0, 0, 0)
        self.dtype = np.dtype("f4")  # dtype of the arrays this source returns
        self.stored_dtype = np.dtype("f4")  # dtype as stored on disk
        self.storage_chunks: tuple[int, ...] | None = None
        self.voxel_size: list[float] | None = None

    def read(self, key: tuple[slice, slice, slice]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def read_error(self, key: tuple[slice, slice, slice], err: BaseException) -> ChunkReadError:
        z = key[0]
        return ChunkReadError(
            self.path,
            f"cannot read slices {z.start}..{z.stop - 1}{self._where()}: {_short(err)} (corrupt or truncated file?)",
        )

    def _where(self) -> str:
        return f" of dataset '{self.dataset}'" if self.dataset else ""

    def token(self) -> tuple:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = 0
        return (self.__class__.__name__, self.path, self.dataset, mtime, self.shape, str(self.dtype))


def _as_3d_key(key: tuple[slice, slice, slice], shape) -> tuple[int, int, int, int, int, int]:
    out = []
    for k, n in zip(key, shape):
        start, stop, step = k.indices(n)
        if step != 1:
            raise ValueError("strided reads are not supported")
        out += [start, stop]
    return tuple(out)  # type: ignore[return-value]


class _ZarrSource(_Source):
    def __init__(self, path: str, dataset: str, arr):
        super().__init__(path, dataset)
        self.fmt = f"zarr-v{arr.metadata.zarr_format}"
        self.stored_dtype = np.dtype(arr.dtype)
        self.two_d = arr.ndim == 2
        shape = tuple(int(s) for s in arr.shape)
        # the unit stored in one file: the shard when the array is sharded, else the chunk
        shards = getattr(arr, "shards", None)
        chunks = tuple(int(c) for c in (shards or arr.chunks))
        self.file_chunks = chunks
        self.shape = (1, *shape) if self.two_d else shape
        self.storage_chunks = (1, *chunks) if self.two_d else chunks
        self.dtype = self.stored_dtype.newbyteorder("=")
        self.voxel_size = _voxel_from_attrs(arr.attrs)
        self.attrs_extra = {}

    def _open(self):
        import zarr

        node = zarr.open(self.path, mode="r")
        return node[self.dataset] if self.dataset else node

    def read(self, key):
        arr = self._open()
        if self.two_d:
            data = arr[key[1], key[2]]
            return np.asarray(data)[None][key[0]]
        return np.asarray(arr[key])

    def read_error(self, key, err):
        # find the first chunk of the failing box that does not decode, to name its file
        try:
            arr = self._open()
            c = self.storage_chunks
            z0, z1, y0, y1, x0, x1 = _as_3d_key(key, self.shape)
            for iz in range(z0 // c[0], (z1 - 1) // c[0] + 1):
                for iy in range(y0 // c[1], (y1 - 1) // c[1] + 1):
                    for ix in range(x0 // c[2], (x1 - 1) // c[2] + 1):
                        coords = (iy, ix) if self.two_d else (iz, iy, ix)
                        box = tuple(slice(i * n, (i + 1) * n) for i, n in zip(coords, self.file_chunks))
                        try:
                            arr[box]
                        except Exception as chunk_err:  # noqa: BLE001
                            chunk_key = arr.metadata.encode_chunk_key(coords)
                            chunk_file = os.path.join(self.path, self.dataset, chunk_key)
                            return ChunkReadError(
                                chunk_file,
                                f"corrupt or truncated zarr chunk {chunk_key}{self._where()} "
                                f"(slices {iz * c[0]}..{min((iz + 1) * c[0], self.shape[0]) - 1}): {_short(chunk_err)}",
                            )
        except Exception:  # noqa: BLE001 - fall back to naming the slices
            pass
        return super().read_error(key, err)


class _H5Source(_Source):
    fmt = "hdf5"

    def __init__(self, path: str, dataset: str, dset):
        super().__init__(path, dataset)
        self.stored_dtype = np.dtype(dset.dtype)
        self.two_d = dset.ndim == 2
        shape = tuple(int(s) for s in dset.shape)
        self.shape = (1, *shape) if self.two_d else shape
        self.dtype = self.stored_dtype.newbyteorder("=")
        if dset.chunks is not None:
            self.storage_chunks = ((1,) if self.two_d else ()) + tuple(int(c) for c in dset.chunks)
        self.voxel_size = _voxel_from_attrs(dset.attrs)

    def read(self, key):
        import h5py

        with h5py.File(self.path, "r") as fh:
            dset = fh[self.dataset]
            if self.two_d:
                return np.asarray(dset[key[1], key[2]])[None][key[0]]
            return np.asarray(dset[key])


class _NpySource(_Source):
    fmt = "npy"

    def __init__(self, path: str):
        super().__init__(path)
        mm = self._open()
        self.stored_dtype = mm.dtype
        self.two_d = mm.ndim == 2
        shape = tuple(int(s) for s in mm.shape)
        _check_shape(path, shape)
        self.shape = (1, *shape) if self.two_d else shape
        self.dtype = self.stored_dtype.newbyteorder("=")
        del mm

    def _open(self):
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def read(self, key):
        mm = self._open()  # unmapped again when it goes out of scope
        if self.two_d:
            return np.array(mm[key[1], key[2]])[None][key[0]]
        return np.array(mm[key])


def _reduce_channels(img: np.ndarray) -> np.ndarray:
    """(H, W, C) colour to (H, W): exact when all colours agree, otherwise BT.601 luma."""
    if img.ndim == 2:
        return img
    colour = img[..., :3] if img.shape[-1] >= 3 else img[..., :1]
    first = colour[..., 0]
    if all(np.array_equal(first, colour[..., c]) for c in range(1, colour.shape[-1])):
        return np.ascontiguousarray(first)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (colour.astype(np.float32) @ weights).astype(np.float32)


def _is_colour(shape: tuple[int, ...], axes: str | None) -> bool:
    if axes is not None:
        return len(shape) == 3 and axes.endswith("S")
    return len(shape) == 3 and shape[-1] in (3, 4)


def _box_shape(key: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``np.empty(shape)[key]`` for a tuple of slices."""
    return tuple(len(range(*k.indices(n))) for k, n in zip(key, shape))


class _TiffSource(_Source):
    """One TIFF file: a multi-page stack or one 2-D (possibly colour) image."""

    fmt = "tiff"

    def __init__(self, path: str):
        import tifffile

        super().__init__(path)
        with tifffile.TiffFile(path) as tif:
            all_series = tif.series
            series = all_series[0]
            shape = tuple(int(s) for s in series.shape)
            axes = series.axes
            self.stored_dtype = np.dtype(series.dtype)
            # Slices appended one at a time are often stored as one series per page;
            # read such a file as a stack of its pages rather than as its first image.
            self.page_stack = (
                len(all_series) > 1
                and len(tif.pages) == len(all_series)
                and not _is_colour(shape, axes)
                and all(
                    tuple(int(n) for n in s.shape if n != 1) == tuple(n for n in shape if n != 1)
                    and len(tuple(n for n in shape if n != 1)) == 2
                    and np.dtype(s.dtype) == self.stored_dtype
                    for s in all_series
                )
            )
            if self.page_stack:
                plane = tuple(n for n in shape if n != 1)
                shape, axes = (len(all_series), *plane), "QYX"
            # a stack of 3 or 4 slices can be stored as one page of as many samples per
            # pixel (planar, as tifffile writes such an array): its slices are not pages
            self.one_page = len(tif.pages) == 1
            ij = tif.imagej_metadata or {}
            page = tif.pages[0]
            res = None
            if ij.get("unit") or ij.get("spacing"):
                try:
                    xr = page.tags["XResolution"].value
                    yr = page.tags["YResolution"].value
                    res = (yr[1] / yr[0], xr[1] / xr[0])
                except Exception:  # noqa: BLE001
                    res = None
        # drop singleton axes other than the image plane (e.g. ImageJ T or C of size 1)
        self.colour = _is_colour(shape, axes)
        core = shape[:-1] if self.colour else shape
        squeezed = tuple(s for i, s in enumerate(core) if s != 1 or i >= len(core) - 2)
        _check_shape(path, squeezed)
        self.two_d = len(squeezed) == 2
        self.shape = (1, *squeezed) if self.two_d else squeezed
        self.dtype = np.dtype(np.float32) if self.colour else self.stored_dtype.newbyteorder("=")
        if self.colour and not self.two_d:
            raise InputError(path, f"colour TIFF stacks (shape {shape}) are not supported; save one channel")
        if res is not None:
            spacing = float(ij.get("spacing", 1.0) or 1.0)
            self.voxel_size = [spacing, float(res[0]), float(res[1])]

    def read(self, key):
        import tifffile

        if self.two_d:
            img = tifffile.imread(self.path, series=0)
            img = img.reshape(img.shape[-3:] if self.colour else img.shape[-2:])
            if self.colour:
                img = _reduce_channels(img)
            return img[None][key]
        if self.one_page:  # the whole stack is one page: it can only be read whole
            return np.asarray(tifffile.imread(self.path, series=0)).reshape(self.shape)[key]
        # page by page, keeping only the requested rows and columns of each page, so
        # that a box across all pages (slicing along y or x) never holds every page
        z0, z1 = key[0].start, key[0].stop
        box = _box_shape(key[1:], self.shape[1:])
        if box == self.shape[1:] and not self.page_stack:
            # whole pages: the box is all that is held, read it in one call
            pages = tifffile.imread(self.path, key=range(z0, z1), series=0)
            return np.asarray(pages).reshape(z1 - z0, *box)
        out = np.empty((z1 - z0, *box), dtype=self.dtype)
        with tifffile.TiffFile(self.path) as tif:
            for i in range(z0, z1):
                img = tif.pages[i].asarray() if self.page_stack else tif.asarray(key=i, series=0)
                out[i - z0] = np.asarray(img).reshape(self.shape[1:])[key[1], key[2]]
        return out


class _TiffStackSource(_Source):
    """A folder of 2-D TIFF files, one slice each, in natural order."""

    fmt = "tiff-stack"

    def __init__(self, path: str):
        import tifffile

        super().__init__(path)
        names = sorted(
            (n for n in os.listdir(path) if not n.startswith(".") and Path(n).suffix.lower() in _TIFF_SUFFIXES),
            key=_natural_key,
        )
        self.files = [os.path.join(path, n) for n in names]
        first_shape = None
        for f in (self.files[0], self.files[-1]):
            try:
                with tifffile.TiffFile(f) as tif:
                    series = tif.series[0]
                    shape = tuple(int(s) for s in series.shape)
                    dtype = np.dtype(series.dtype)
            except Exception as err:  # noqa: BLE001
                raise InputError(f, f"cannot read TIFF slice of folder {path}: {_short(err)}") from None
            squeezed = tuple(s for i, s in enumerate(shape) if s != 1 or i >= len(shape) - 2)
            if len(squeezed) != 2:
                raise InputError(f, f"a TIFF folder must hold 2-D images, this one has shape {shape}")
            if first_shape is None:
                first_shape, self.stored_dtype = squeezed, dtype
            elif squeezed != first_shape or dtype != self.stored_dtype:
                raise InputError(
                    f,
                    f"slice has shape {squeezed} and dtype {dtype}, but {self.files[0]} has "
                    f"{first_shape} and {self.stored_dtype}; all slices must match",
                )
        self.shape = (len(self.files), *first_shape)
        self.dtype = self.stored_dtype.newbyteorder("=")
        self.storage_chunks = (1, *first_shape)

    def read(self, key):
        import tifffile

        z0, z1 = key[0].start, key[0].stop
        out = np.empty((z1 - z0, *_box_shape(key[1:], self.shape[1:])), dtype=self.dtype)
        for i in range(z0, z1):
            f = self.files[i]
            try:
                img = np.asarray(tifffile.imread(f))
                img = img.reshape(img.shape[-2:]) if img.ndim > 2 else img
            except Exception as err:  # noqa: BLE001
                raise ChunkReadError(f, f"cannot read slice {i} of TIFF folder: {_short(err)}") from None
            if img.shape != self.shape[1:]:
                raise ChunkReadError(f, f"slice {i} has shape {img.shape}, expected {self.shape[1:]}")
            out[i - z0] = img[key[1], key[2]]
        return out

    def token(self):
        return super().token() + (tuple(self.files),)


class _ImageSource(_Source):
    """A single PNG, JPEG or BMP image: a volume of one slice."""

    def __init__(self, path: str, fmt: str):
        super().__init__(path)
        self.fmt = fmt
        img = self._load()
        self.stored_dtype = self._stored
        self.two_d = True
        self.shape = (1, *img.shape)
        self.dtype = img.dtype

    def _load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
            elif mode == "LA":
                im = im.getchannel("L")
            arr = np.asarray(im)
        if arr.dtype == np.dtype(">u2"):
            arr = arr.astype(np.uint16)
        self._stored = arr.dtype
        _check_shape(self.path, arr.shape[:2])
        return _reduce_channels(arr)

    def read(self, key):
        return self._load()[None][key]


# --------------------------------------------------------------------------- opening


def _hdf5_candidates(fh) -> list[tuple[str, tuple[int, ...], str]]:
    import h5py

    found: list[tuple[str, tuple[int, ...], str]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append((name, tuple(int(s) for s in (obj.shape or ())), str(obj.dtype)))

    fh.visititems(visit)
    return found


def _ambiguity(n3: int, n2: int, noun: str) -> str:
    """Why no dataset could be chosen automatically, given the numbers of 3-D and 2-D candidates."""
    if n3 > 1:
        return f"several 3-D {noun}s"
    if n2 > 1:
        return f"no 3-D {noun} but several 2-D ones"
    return f"no numeric 3-D or 2-D {noun}"


def _describe(cands) -> str:
    if not cands:
        return "none"
    shown = ", ".join(f"{name} {shape}" for name, shape, _ in cands[:20])
    return shown + (f", ... ({len(cands)} in all)" if len(cands) > 20 else "")


def _open_hdf5(path: str, dataset: str | None) -> _H5Source:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"cannot open as HDF5 (truncated or corrupt file?): {_short(err)}") from None
    with fh:
        try:
            cands = _hdf5_candidates(fh)
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"cannot list HDF5 contents (corrupt file?): {_short(err)}") from None
        if dataset is None:
            dataset = _default_member(path, cands, "dataset", "", "Datasets")
        key = dataset.strip("/")
        if not key or key not in fh:
            raise InputError(path, f"no dataset '{dataset}' in file. Datasets: {_describe(cands)}")
        obj = fh[key]
        if not isinstance(obj, h5py.Dataset):
            inside = [c for c in cands if c[0].startswith(key + "/")]
            raise InputError(path, f"'{dataset}' is a group, not a dataset. Datasets in it: {_describe(inside)}")
        _check_dtype(path, obj.dtype, f"dataset '{key}'")
        _check_shape(path, tuple(obj.shape), f"dataset '{key}'")
        return _H5Source(path, key, obj)


def _default_member(path, cands, noun: str, prefix: str, listing: str) -> str:
    """The one numeric 3-D member of a container (else the one 2-D member), or a clear error
    listing every candidate. ``cands`` holds (name, shape, dtype) tuples."""
    numeric = [c for c in cands if _dtype_ok(c[2])]
    three = [c for c in numeric if len(c[1]) == 3]
    two = [c for c in numeric if len(c[1]) == 2]
    pick = three if three else two
    if len(pick) != 1:
        what = _ambiguity(len(three), len(two), noun)
        raise InputError(
            path, f"{prefix}{what}; choose one with --dataset (dataset=...). {listing}: {_describe(cands)}"
        )
    return pick[0][0]


def _zarr_candidates(group) -> list[tuple[str, tuple[int, ...], str]]:
    import zarr

    out = []
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            out.append((name, tuple(int(s) for s in node.shape), str(node.dtype)))
    return out


def _open_zarr(path: str, dataset: str | None) -> _ZarrSource:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"cannot open as zarr (corrupt metadata?): {_short(err)}") from None
    if isinstance(node, zarr.Group):
        try:
            cands = _zarr_candidates(node)
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"cannot list zarr group (corrupt metadata?): {_short(err)}") from None
        if dataset is None:
            dataset = _default_member(path, cands, "array", "zarr group with ", "Arrays")
        key = dataset.strip("/")
        try:
            arr = node[key] if key else None
        except KeyError:
            arr = None
        if not isinstance(arr, zarr.Array):
            what = "is a group, not an array" if isinstance(arr, zarr.Group) else "not found"
            raise InputError(path, f"array '{dataset}' {what} in zarr group. Arrays: {_describe(cands)}")
        dataset = key
    else:
        arr = node
        if dataset:
            raise InputError(path, f"is a zarr array, not a group; it has no dataset '{dataset}' (omit --dataset)")
        dataset = ""
    what = f"array '{dataset}'" if dataset else "array"
    _check_dtype(path, arr.dtype, what)
    _check_shape(path, tuple(arr.shape), what)
    return _ZarrSource(path, dataset, arr)


def _dtype_ok(dtype) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except (TypeError, ValueError, SyntaxError):
        return False


def _open_source(path: str | os.PathLike, dataset: str | None) -> _Source:
    p = os.fspath(path)
    fmt = detect_format(p)
    if dataset is not None and fmt not in ("hdf5", "zarr-v2", "zarr-v3"):
        raise InputError(p, f"--dataset applies to HDF5 and zarr inputs, not to {fmt}")
    if fmt.startswith("zarr"):
        return _open_zarr(p, dataset)
    if fmt == "hdf5":
        return _open_hdf5(p, dataset)
    if fmt == "npy":
        try:
            with open(p, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(fh)
        except Exception as err:  # noqa: BLE001
            raise InputError(p, f"cannot read .npy header (corrupt file?): {_short(err)}") from None
        _check_dtype(p, dtype)
        _check_shape(p, tuple(shape))
        try:
            return _NpySource(p)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001
            raise InputError(p, f"cannot memory-map .npy (truncated file?): {_short(err)}") from None
    try:
        if fmt == "tiff":
            src: _Source = _TiffSource(p)
        elif fmt == "tiff-stack":
            src = _TiffStackSource(p)
        else:
            src = _ImageSource(p, fmt)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(p, f"cannot read {fmt} (corrupt or truncated file?): {_short(err)}") from None
    _check_dtype(p, src.stored_dtype)
    return src


class _Oriented:
    """Array-like view of a source with the slicing axis first; what dask reads from."""

    def __init__(self, source: _Source, perm: tuple[int, int, int]):
        self.source = source
        self.perm = perm
        self.inv = tuple(int(i) for i in np.argsort(perm))
        self.shape = tuple(source.shape[p] for p in perm)
        self.dtype = source.dtype
        self.ndim = 3

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = tuple(key) + (slice(None),) * (3 - len(key))
        full = []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                raise TypeError("integer indexing is not supported; use slices")
            start, stop, step = k.indices(n)
            full.append(slice(start, stop, step))
        native = tuple(full[self.inv[i]] for i in range(3))
        if any(s.stop <= s.start for s in native):
            shape = tuple(max(0, s.stop - s.start) for s in full)
            return np.empty(shape, dtype=self.dtype)
        try:
            data = self.source.read(native)
        except InputError:
            raise
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            raise self.source.read_error(native, err) from None
        data = np.asarray(data, dtype=self.dtype)
        return np.transpose(data, self.perm) if self.perm != (0, 1, 2) else data

    def __dask_tokenize__(self):
        return (self.source.token(), self.perm)


def _auto_depth(shape: tuple[int, int, int], itemsize: int, storage: int | None) -> int:
    slice_bytes = max(1, shape[1] * shape[2] * itemsize)
    depth = max(1, CHUNK_BYTES // slice_bytes)
    if storage and storage < shape[0]:
        # a whole number of storage chunks per dask chunk, so no chunk is read twice
        depth = max(storage, (depth // storage) * storage)
    return int(min(depth, shape[0]))


def open_volume(
    path: str | os.PathLike,
    dataset: str | None = None,
    axis: str = "z",
    *,
    chunk_slices: int | None = None,
    check: bool = True,
):
    """Open a tomography volume lazily as a dask-backed :class:`xarray.DataArray`.

    Parameters
    ----------
    path : str or path-like
        A zarr array or group folder (v2 or v3), an HDF5 file, a folder of 2-D TIFFs,
        a multi-page TIFF, a ``.npy`` file, or a single 2-D image (PNG, JPEG, BMP,
        TIFF), which becomes a volume of one slice.
    dataset : str, optional
        Path of the array inside an HDF5 file or zarr group. When omitted, the file
        must hold exactly one 3-D numeric dataset (or, if none, exactly one 2-D one).
    axis : {"z", "y", "x"}
        The axis to slice along, named in the stored order (z, y, x). The result always
        has dims ``("z", "y", "x")`` with ``z`` the slicing axis: for ``axis="y"`` the
        stored axes (y, z, x) become (z, y, x); for ``axis="x"``, (x, z, y).
    chunk_slices : int, optional
        Slices per dask chunk. By default about 32 MiB of whole slices, rounded to
        whole storage chunks when the storage is chunked along the slicing axis.
    check : bool
        Read the first stored slice now, so that an unreadable file fails here rather
        than in the middle of a computation.

    Returns
    -------
    xarray.DataArray
        Dims ``("z", "y", "x")``, dask-backed, chunks of whole slices. attrs:
        ``source`` (absolute path), ``format``, ``dtype`` (stored dtype), ``dataset``
        (``""`` when not applicable), ``axis`` (the stored axis that became ``z``),
        ``stored_shape``, ``storage_depth`` (slices per stored chunk along the slicing
        axis; 0 when the file is not chunked), ``storage_chunks`` (the stored chunk shape
        in the result's z, y, x order; empty when not chunked) and, when the metadata give it,
        ``voxel_size`` (z, y, x of the result, in the file's unit).

    Raises
    ------
    InputError
        For a missing path, unknown format, corrupt or truncated file, wrong dataset,
        data that is not 2-D or 3-D, an empty volume or a non-numeric dtype. Reading a
        corrupt chunk later raises :class:`ChunkReadError` naming the chunk's file.
    """
    import dask.array as da
    import xarray as xr

    if axis not in AXES:
        raise OptionError(f"axis must be one of {', '.join(AXES)}, not {axis!r}")
    if chunk_slices is not None and int(chunk_slices) < 1:
        raise OptionError(f"chunk_slices must be at least 1, not {chunk_slices}")
    src = _open_source(path, dataset)
    _check_dtype(src.path, src.stored_dtype)
    _check_shape(src.path, src.shape)
    ax = AXES.index(axis)
    perm = (ax,) + tuple(i for i in range(3) if i != ax)
    view = _Oriented(src, perm)  # type: ignore[arg-type]
    if check:
        first = tuple(slice(0, 1) if i == 0 else slice(0, n) for i, n in enumerate(src.shape))
        _Oriented(src, (0, 1, 2))[first]
    storage = src.storage_chunks[ax] if src.storage_chunks else None
    depth = int(chunk_slices) if chunk_slices else _auto_depth(view.shape, src.dtype.itemsize, storage)
    depth = min(depth, view.shape[0])
    from dask.base import tokenize

    name = "tomoqc-volume-" + tokenize(view, depth)
    arr = da.from_array(
        view,
        chunks=(depth, view.shape[1], view.shape[2]),
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=src.dtype),
    )
    attrs: dict[str, Any] = {
        "source": os.path.abspath(src.path),
        "format": src.fmt,
        "dtype": str(src.stored_dtype),
        "dataset": src.dataset or "",
        "axis": axis,
        "stored_shape": [int(s) for s in src.shape],
        "storage_depth": int(storage or 0),
        "storage_chunks": [int(src.storage_chunks[p]) for p in perm] if src.storage_chunks else [],
    }
    if src.voxel_size:
        attrs["voxel_size"] = [float(src.voxel_size[p]) for p in perm]
    label = (src.dataset.rsplit("/", 1)[-1] if src.dataset else Path(src.path).name.split(".")[0]) or "volume"
    return xr.DataArray(arr, dims=AXES, attrs=attrs, name=label)


def volume_info(path: str | os.PathLike, dataset: str | None = None, *, sample: int = 8) -> dict:
    """Describe a volume without reading all of it.

    Parameters
    ----------
    path, dataset
        As for :func:`open_volume`.
    sample : int
        How many slices, evenly spaced along z, to read for the value statistics.

    Returns
    -------
    dict
        ``path``, ``format``, ``dataset``, ``shape`` (z, y, x as stored), ``dtype``,
        ``storage_chunks`` (None when unchunked), ``chunks`` (dask chunk shape),
        ``nbytes``, ``voxel_size`` (or None), and from the sampled slices:
        ``sample_slices``, ``min``, ``max``, ``mean``, ``std`` of the finite values and
        ``nonfinite`` (count of NaN/Inf values).
    """
    vol = open_volume(path, dataset)
    src_view = vol.data
    nz = vol.shape[0]
    k = max(1, min(int(sample), nz))
    idx = sorted({int(round(i)) for i in np.linspace(0, nz - 1, k)})
    lo, hi, total, total_sq, count, nonfinite = math.inf, -math.inf, 0.0, 0.0, 0, 0
    for i in idx:
        sl = np.asarray(src_view[i : i + 1].compute(scheduler="synchronous"))
        if sl.dtype.kind == "b":
            sl = sl.astype(np.uint8)
        if sl.dtype.kind == "f":
            fin = np.isfinite(sl)
            nonfinite += int(sl.size - fin.sum())
            sl = sl[fin]
        if sl.size:
            v = sl.astype(np.float64)
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            total += float(v.sum())
            total_sq += float((v * v).sum())
            count += v.size
    mean = total / count if count else float("nan")
    std = math.sqrt(max(0.0, total_sq / count - mean * mean)) if count else float("nan")
    src = _open_source(path, dataset)
    return {
        "path": vol.attrs["source"],
        "format": vol.attrs["format"],
        "dataset": vol.attrs["dataset"],
        "shape": [int(s) for s in vol.shape],
        "dtype": vol.attrs["dtype"],
        "storage_chunks": list(src.storage_chunks) if src.storage_chunks else None,
        "chunks": [int(c[0]) for c in vol.chunks],
        "nbytes": int(np.prod(vol.shape)) * np.dtype(vol.attrs["dtype"]).itemsize,
        "voxel_size": vol.attrs.get("voxel_size"),
        "sample_slices": idx,
        "min": lo if count else None,
        "max": hi if count else None,
        "mean": mean if count else None,
        "std": std if count else None,
        "nonfinite": nonfinite,
    }


# --------------------------------------------------------------------------- writing


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_path(
    out: str | os.PathLike, *, sources: tuple | list = (), overwrite: bool = False
) -> Path:
    """Refuse an output that would damage an input or replace something by accident.

    Parameters
    ----------
    out : path-like
        The output to be written.
    sources : sequence of path-like
        Inputs that must stay untouched.
    overwrite : bool
        Whether an existing output may be replaced (on success only).

    Returns
    -------
    pathlib.Path
        ``out`` as an absolute path.

    Raises
    ------
    InputError
        When ``out`` exists and ``overwrite`` is false, when ``out`` is an input or lies
        inside an input folder, or when replacing ``out`` would delete an input.
    """
    final = Path(os.path.abspath(out))
    real_final = Path(os.path.realpath(final))
    for s in sources:
        if not s:
            continue
        src = Path(os.path.realpath(s))
        if real_final == src or _inside(real_final, src):
            raise InputError(final, f"output lies inside the input {src}; choose an output outside it")
        if overwrite and _inside(src, real_final):
            raise InputError(final, f"replacing this output would delete the input {src} inside it")
    if os.path.lexists(final) and not overwrite:
        raise InputError(final, "output already exists (use --overwrite to replace it)")
    return final


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.lexists(p):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write to a temporary sibling and rename it to ``final_path`` when done, one writer at a time.

    Holds the output's :class:`~tomoqc.locks.OutputLock` for the whole ``with`` block,
    so that a second process writing the same output is refused at once, with one line
    naming the process that writes it, and touches nothing. Yields
    ``<parent>/.<name>.tmp-<pid>`` (nothing is created there yet). When the ``with``
    block finishes normally, what was written there is renamed to ``final_path``; with
    ``overwrite`` an existing output is replaced only then. When the block raises
    (including on Ctrl-C), the temporary is removed and an existing output is left as it
    was. Temporaries left by killed runs (on any host: whoever holds the lock is the
    only writer) are removed when the lock is taken.

    Raises
    ------
    InputError
        When ``final_path`` exists and ``overwrite`` is false, or when another live
        process writes it.
    """
    final = Path(os.path.abspath(final_path))
    if os.path.lexists(final) and not overwrite:
        raise InputError(final, "output already exists (use --overwrite to replace it)")
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(final) as lock:
        if os.path.lexists(final) and not overwrite:  # written by the run that held the lock before us
            raise InputError(final, "output already exists (use --overwrite to replace it)")
        pattern = re.compile(r"^\." + re.escape(final.name) + r"\.(?:tmp|old)-(\d+)$")
        for name in os.listdir(parent):
            if pattern.match(name):
                _remove(parent / name)
        tmp = parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            yield tmp
            if os.path.lexists(tmp):
                lock.check()  # never rename over the output of a run that took the lock over
        except BaseException:
            _remove(tmp)
            raise
        if not os.path.lexists(tmp):
            return
        if os.path.lexists(final):
            if not overwrite:
                _remove(tmp)
                raise InputError(final, "output appeared while it was being written; not replaced")
            old = parent / f".{final.name}.old-{os.getpid()}"
            _remove(old)
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                _remove(tmp)
                raise
            _remove(old)
        else:
            os.rename(tmp, final)


def _json_attrs(attrs: dict) -> dict:
    def conv(v):
        if isinstance(v, (str, bool, int, float)) or v is None:
            return v
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple, np.ndarray)):
            return [conv(x) for x in np.asarray(v, dtype=object).ravel().tolist()] if isinstance(v, np.ndarray) else [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return str(v)

    out = {str(k): conv(v) for k, v in attrs.items()}
    json.dumps(out)
    return out


def write_zarr(
    data,
    out: str | os.PathLike,
    *,
    chunks: int | tuple[int, int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    attrs: dict | None = None,
) -> Path:
    """Stream a (lazy) volume into a zarr v3 array, a slab of slices at a time.

    Memory stays bounded by the slab (about :data:`SLAB_BYTES`, at least one output
    chunk along z, plus the input chunks it overlaps), whatever the volume's size: each
    slab is computed and written before the next one is read. The array is written to
    a temporary sibling of ``out`` and renamed when complete (:func:`atomic_path`).

    Parameters
    ----------
    data : xarray.DataArray, dask.array.Array or numpy.ndarray
        A 3-D (or 2-D, written as one slice) volume; z is the first axis.
    out : path-like
        The zarr folder to create.
    chunks : int or (int, int, int), optional
        Slices per chunk, or a full chunk shape. By default about 8 MiB of whole slices.
    overwrite : bool
        Replace an existing ``out`` (only once the new one is complete).
    progress : bool
        Show a progress bar on stderr.
    attrs : dict, optional
        Extra attributes; a DataArray's own attrs are written as well.

    Returns
    -------
    pathlib.Path
        The absolute path of the written array. The zarr metadata carry
        ``dimension_names`` ("z", "y", "x") and the attrs.
    """
    import dask.array as da
    import zarr

    meta: dict[str, Any] = {}
    if hasattr(data, "dims") and hasattr(data, "attrs"):
        meta.update(dict(data.attrs))
        data = data.data
    if not isinstance(data, da.Array):
        data = da.asarray(data)
    if data.ndim == 2:
        data = data[None]
    _check_shape(out, tuple(data.shape), "volume")
    _check_dtype(out, data.dtype, "volume")
    meta.update(attrs or {})
    source = meta.get("source")
    final = check_output_path(out, sources=[source] if source else [], overwrite=overwrite)

    nz, ny, nx = (int(s) for s in data.shape)
    slice_bytes = ny * nx * data.dtype.itemsize
    if chunks is None:
        cz = max(1, min(nz, OUT_CHUNK_BYTES // max(1, slice_bytes)))
        out_chunks = (cz, ny, nx)
    elif isinstance(chunks, (int, np.integer)):
        if int(chunks) < 1:
            raise OptionError(f"chunks must be at least 1 slice, not {chunks}")
        out_chunks = (min(int(chunks), nz), ny, nx)
    else:
        if len(chunks) != 3 or any(int(c) < 1 for c in chunks):
            raise OptionError(f"chunks must be 3 positive integers, not {chunks}")
        out_chunks = tuple(min(int(c), s) for c, s in zip(chunks, (nz, ny, nx)))
    cz = out_chunks[0]
    in_depth = max(int(c) for c in data.chunks[0])
    slab = cz * max(1, -(-in_depth // cz))  # cover a whole input chunk when memory allows
    if slab * slice_bytes > SLAB_BYTES:
        slab = cz * max(1, SLAB_BYTES // max(1, cz * slice_bytes))
    # keep dask chunks within the slab so a slab never computes more than it needs
    if in_depth > slab:
        data = data.rechunk({0: slab})

    with atomic_path(final, overwrite=overwrite) as tmp:
        arr = zarr.create_array(
            store=str(tmp),
            shape=(nz, ny, nx),
            chunks=out_chunks,
            dtype=data.dtype,
            dimension_names=("z", "y", "x"),
            attributes=_json_attrs(meta),
            zarr_format=3,
        )
        bar = _progress_bar(nz, f"writing {final.name}") if progress else contextlib.nullcontext()
        with bar as (update):
            for z0 in range(0, nz, slab):
                z1 = min(nz, z0 + slab)
                block = np.asarray(data[z0:z1].compute(scheduler="threads"))
                arr[z0:z1] = block
                del block
                if update is not None:
                    update(z1 - z0)
    return final


@contextlib.contextmanager
def _progress_bar(total: int, label: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slices"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.advance(task, n)
