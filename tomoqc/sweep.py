"""Reading parameter sweeps: the same slices reconstructed with each value of one parameter.

Reconstruction frameworks write a sweep (centre of rotation, ring-removal strength,
Paganin delta/beta, iterations) as a folder with one entry per value, or as one HDF5 or
zarr file with a parameter axis. :func:`read_sweep` turns either into a list of
:class:`SweepEntry`, sorted by parameter value, each of which opens lazily as an
:class:`xarray.DataArray` ``(z, y, x)`` like :func:`tomoqc.io.open_volume`.

Layouts accepted
----------------
**A folder**, one entry per value. Each entry is anything :func:`tomoqc.io.open_volume`
reads (a 2-D or multi-page TIFF, a PNG/JPEG/BMP image, a ``.npy`` file, a zarr array, an
HDF5 file holding one volume, a folder of 2-D TIFFs) or a folder of 2-D PNG (JPEG, BMP)
images, one per slice in natural order. The parameter value is the *last number in the
entry's name* (without its extension), its name the text before that number::

    cor_sweep/                     centre of rotation 101, 101.5 and 102
        center_101.tif             (one slice or a stack each)
        center_101.5.tif
        center_102.tif
    ring_sweep/
        strength=0/  strength=2/  strength=5/     (folders of TIFF or PNG slices)

TomoPy's ``write_center`` (``101.50.tiff``, ...) and similar layouts read as they are.
Hidden files and files of other types (``.json``, ``.txt``, ...) are ignored; an entry
whose name holds no number, or two entries with the same value, are an error.

**An HDF5 file or zarr group**, in one of two forms:

* one array whose *first axis is the parameter*: ``(n_values, z, y, x)`` or, for one
  slice per value, ``(n_values, y, x)``, with the values in an attribute of the array
  named ``parameter_values`` (or ``values``, ``sweep_values``, ``parameters``), or in a
  1-D array of that name beside it; the parameter's name, when known, in the attribute
  ``parameter_name``. Without ``dataset`` the file must hold exactly one such array.
* a group of 2-D or 3-D arrays (``dataset`` names the group; without ``dataset``, the
  root), one per value, each with the attribute ``parameter_value`` or else the value
  as the last number in its name (``/sweep/cor_101.5``); the group's attribute
  ``parameter_name`` names the parameter.

**One entry** of any sweep is addressed as ``PATH::VALUE`` (:func:`sweep_entry`), e.g.
``cor_sweep/::101.5`` or ``sweep.h5::0.25``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = ["SweepEntry", "read_sweep", "sweep_entry", "parameter_from_name", "VALUE_KEYS", "ENTRY_SEPARATOR"]

#: Attribute (or sibling array) names that hold the values of a parameter axis, in order.
VALUE_KEYS = ("parameter_values", "values", "sweep_values", "parameters")
#: Separates a sweep's path from the value of one of its entries.
ENTRY_SEPARATOR = "::"

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_VOLUME_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy", ".zarr", ".h5", ".hdf5", ".hdf",
                    ".nxs", ".he5", ".nx5", ".nx", ".cxi")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")


def _stem(name: str) -> str:
    low = name.lower()
    for suf in _VOLUME_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def parameter_from_name(name: str) -> tuple[str, float] | None:
    """``(parameter name, value)`` read from an entry's name, or None without a number.

    The value is the last number in the name without its extension; the parameter's
    name is the text before it, without trailing separators (``_``, ``-``, ``=``, spaces
    and dots). ``"center_101.5.tif"`` gives ``("center", 101.5)``, ``"strength=2"``
    ``("strength", 2.0)``, ``"101.50.tiff"`` ``("", 101.5)``. A ``-`` directly after a
    letter is read as a separator, not a sign (``"cor-3"`` gives 3); write ``cor_-3``
    for negative values.
    """
    stem = _stem(name)
    last = None
    for m in _NUMBER.finditer(stem):
        last = m
    if last is None:
        return None
    text = last.group(0)
    start = last.start()
    if text[0] in "+-" and start > 0 and stem[start - 1].isalnum():
        text, start = text[1:], start + 1
    try:
        value = float(text)
    except ValueError:  # pragma: no cover - the pattern only matches numbers
        return None
    prefix = stem[:start].rstrip("_-= .")
    return prefix, value


@dataclass(frozen=True)
class SweepEntry:
    """One value of a parameter sweep.

    Attributes
    ----------
    source : str
        The sweep's path (folder or file).
    value : float
        The parameter value.
    name : str
        The parameter's name (``"parameter"`` when the sweep does not say).
    path : str
        The entry's own file or folder (folder sweeps), else the sweep file.
    dataset : str
        The array inside an HDF5 file or zarr group (``""`` for folder entries that
        are files of their own).
    index : int
        Position along the parameter axis of an array with one (else -1).
    kind : str
        ``"volume"`` (anything :func:`tomoqc.io.open_volume` reads, at ``path``),
        ``"image-stack"`` (a folder of 2-D images), ``"axis"`` (entry ``index`` of an
        array with a parameter axis) or ``"member"`` (an array of a group).
    """

    source: str
    value: float
    name: str
    path: str
    dataset: str = ""
    index: int = -1
    kind: str = "volume"

    @property
    def label(self) -> str:
        """``name=value`` (``value`` alone when the parameter has no name)."""
        v = f"{self.value:g}"
        return v if self.name in ("", "parameter") else f"{self.name}={v}"

    @property
    def readable_file(self) -> bool:
        """True when :func:`tomoqc.io.open_volume` reads the entry from ``path`` (and ``dataset``)."""
        return self.kind in ("volume", "member")

    def open(self, axis: str = "z"):
        """The entry as a lazy :class:`xarray.DataArray` ``(z, y, x)`` sliced along ``axis``."""
        from tomoqc.io import open_volume

        if self.kind in ("volume", "member"):
            vol = open_volume(self.path, dataset=self.dataset or None, axis=axis)
        elif self.kind == "image-stack":
            vol = _orient(_image_stack(Path(self.path)), axis, self.path)
        elif self.kind == "axis":
            vol = _orient(_axis_entry(self.path, self.dataset, self.index), axis, self.path)
        else:  # pragma: no cover - kinds are fixed above
            raise OptionError(f"unknown sweep entry kind {self.kind!r}")
        vol.attrs["sweep"] = self.source
        vol.attrs["parameter_name"] = self.name
        vol.attrs["parameter_value"] = float(self.value)
        return vol


# ----------------------------------------------------------------------------- lazy arrays


class _AxisEntry:
    """Array-like view of entry ``index`` along the first axis of an HDF5 or zarr array.

    Opens the file read-only for every read, so a dask graph can run anywhere.
    """

    def __init__(self, path: str, dataset: str, index: int, shape, dtype):
        self.path, self.dataset, self.index = path, dataset, int(index)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        full = (self.index, *key)
        if _is_hdf5(self.path):
            import h5py

            with h5py.File(self.path, "r") as fh:
                data = fh[self.dataset][full]
        else:
            import zarr

            node = zarr.open(self.path, mode="r")
            data = (node[self.dataset] if self.dataset else node)[full]
        return np.asarray(data, dtype=self.dtype)


def _is_hdf5(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except (IsADirectoryError, PermissionError, FileNotFoundError):
        return False


def _numeric(path, dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise InputError(path, f"the sweep holds {dt} data; numbers are needed")
    return np.dtype(np.uint8) if dt.kind == "b" else dt


def _axis_entry(path: str, dataset: str, index: int):
    import dask.array as da
    import xarray as xr

    node = _open_node(path, dataset)
    shape = tuple(int(s) for s in node.shape[1:])
    dtype = _numeric(path, node.dtype)
    view = _AxisEntry(path, dataset, index, shape, dtype)
    if len(shape) == 2:
        arr = da.from_array(view, chunks=shape, asarray=False, fancy=False, lock=False,
                            meta=np.empty((0, 0), dtype))[None]
    else:
        depth = max(1, min(shape[0], (32 * 2**20) // max(1, shape[1] * shape[2] * dtype.itemsize)))
        arr = da.from_array(view, chunks=(depth, shape[1], shape[2]), asarray=False, fancy=False, lock=False,
                            meta=np.empty((0, 0, 0), dtype))
    attrs = {"source": os.path.abspath(path), "dataset": dataset, "dtype": str(dtype), "format": "sweep"}
    return xr.DataArray(arr, dims=("z", "y", "x"), attrs=attrs)


def _image_stack(folder: Path):
    """A folder of 2-D PNG/JPEG/BMP (or TIFF) images as one lazy volume, natural order."""
    import dask.array as da
    import xarray as xr

    from tomoqc.io import open_volume

    files = sorted((f for f in folder.iterdir() if not f.name.startswith(".")
                    and f.suffix.lower() in _IMAGE_SUFFIXES + _TIFF_SUFFIXES),
                   key=lambda f: _natural(f.name))
    if not files:
        raise InputError(folder, "no images in this sweep entry")
    parts = []
    first = None
    for f in files:
        v = open_volume(f, check=False)
        if v.shape[0] != 1:
            raise InputError(f, f"a {v.shape[0]}-slice stack inside an image-stack entry; one 2-D image per "
                                "file is needed")
        if first is None:
            first = v
        elif v.shape[1:] != first.shape[1:]:
            raise InputError(f, f"image is {v.shape[1]} x {v.shape[2]} px but {files[0].name} is "
                                f"{first.shape[1]} x {first.shape[2]}")
        parts.append(v.data)
    dtype = np.result_type(*[p.dtype for p in parts])
    arr = da.concatenate([p.astype(dtype) for p in parts], axis=0)
    attrs = {"source": os.path.abspath(folder), "dataset": "", "dtype": str(dtype), "format": "image-stack"}
    return xr.DataArray(arr, dims=("z", "y", "x"), attrs=attrs)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _orient(vol, axis: str, path):
    """(z, y, x) volume sliced along ``axis`` (the stored axis that becomes z), as open_volume does."""
    if axis not in ("z", "y", "x"):
        raise OptionError(f"axis must be one of z, y, x, not {axis!r}")
    if axis == "z":
        return vol
    if vol.shape[0] == 1:
        raise InputError(path, f"a single slice cannot be sliced along {axis}")
    order = {"y": ("y", "z", "x"), "x": ("x", "z", "y")}[axis]
    out = vol.transpose(*order).rename(dict(zip(order, ("z", "y", "x"))))
    out.attrs = dict(vol.attrs)
    return out


# ----------------------------------------------------------------------------- files with an axis


def _open_root(path: str):
    """The root of an HDF5 file or zarr store, opened read-only (an h5py File must be closed)."""
    if _is_hdf5(path):
        import h5py

        try:
            return h5py.File(path, "r")
        except OSError as err:
            raise InputError(path, f"cannot open as HDF5 ({err})") from None
    import zarr

    try:
        return zarr.open(path, mode="r")
    except Exception as err:  # noqa: BLE001 - the message names the file
        raise InputError(path, f"not an HDF5 file or zarr store ({type(err).__name__})") from None


def _node(root, path: str, dataset: str):
    if not dataset:
        return root
    try:
        return root[dataset]
    except KeyError:
        raise InputError(path, f"no array or group {dataset!r} in the file") from None


def _open_node(path: str, dataset: str):
    """Shape and dtype holder of the array at ``dataset`` (read once, file closed again)."""
    root = _open_root(path)
    try:
        node = _node(root, path, dataset)
        if not _is_array(node):
            raise InputError(path, f"{dataset!r} is a group, not an array")
        return _Meta(tuple(int(s) for s in node.shape), np.dtype(node.dtype))
    finally:
        if hasattr(root, "close"):
            root.close()


@dataclass(frozen=True)
class _Meta:
    shape: tuple
    dtype: np.dtype


def _is_array(node) -> bool:
    return hasattr(node, "shape") and hasattr(node, "dtype")


def _walk(node, prefix=""):
    """(path, node) of every array below a group, depth first, sorted by name."""
    keys = sorted(node.keys())
    for k in keys:
        child = node[k]
        p = f"{prefix}/{k}" if prefix else k
        if _is_array(child):
            yield p, child
        else:
            yield from _walk(child, p)


def _attr_text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_text(v.item())
    return str(v)


def _values_of(path: str, array_path: str, node, parent) -> tuple[np.ndarray | None, str]:
    """The parameter values of an array with a parameter axis, from its attributes or a sibling."""
    name = _attr_text(node.attrs.get("parameter_name", "")) if "parameter_name" in node.attrs else ""
    for key in VALUE_KEYS:
        if key in node.attrs:
            return _as_values(path, array_path, node.attrs[key], key), name
    if parent is not None:
        for key in VALUE_KEYS:
            if key in parent.keys() and _is_array(parent[key]) and len(parent[key].shape) == 1:
                if not name and "parameter_name" in parent[key].attrs:
                    name = _attr_text(parent[key].attrs["parameter_name"])
                return _as_values(path, array_path, parent[key][()], key), name
    return None, name


def _as_values(path, array_path, raw, key) -> np.ndarray:
    try:
        vals = np.asarray(raw, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError(path, f"{array_path}: {key} must be numbers") from None
    if not np.isfinite(vals).all():
        raise InputError(path, f"{array_path}: {key} holds NaN or infinite values")
    return vals


def _read_file_sweep(path: Path, dataset: str | None) -> list[SweepEntry]:
    spath = str(path)
    ds = (dataset or "").strip("/")
    root = _open_root(spath)
    try:
        node = _node(root, spath, ds)
        if _is_array(node):
            parent = None
            if hasattr(root, "keys"):
                parent = _node(root, spath, ds.rsplit("/", 1)[0] if "/" in ds else "")
            return _axis_entries(spath, ds, node, parent)
        if ds:
            return _member_entries(spath, ds, node)
        # no dataset: the one array with parameter values, else the root's members
        with_values = []
        for p, arr in _walk(node):
            if p.rsplit("/", 1)[-1] in VALUE_KEYS and len(arr.shape) == 1:
                continue
            parent = _node(root, spath, p.rsplit("/", 1)[0] if "/" in p else "")
            vals, _ = _values_of(spath, p, arr, parent)
            if vals is not None and len(arr.shape) in (3, 4):
                with_values.append((p, arr, parent))
        if len(with_values) == 1:
            p, arr, parent = with_values[0]
            return _axis_entries(spath, p, arr, parent)
        if len(with_values) > 1:
            names = ", ".join("/" + p for p, _, _ in with_values)
            raise InputError(path, f"several arrays with parameter values ({names}); choose one as the dataset")
        return _member_entries(spath, "", node)
    finally:
        if hasattr(root, "close"):
            root.close()


def _axis_entries(path: str, array_path: str, node, parent) -> list[SweepEntry]:
    shape = tuple(int(s) for s in node.shape)
    where = "/" + array_path if array_path else "the root array"
    if len(shape) not in (3, 4):
        raise InputError(path, f"{where} is {len(shape)}-D {shape}; a sweep array is (values, z, y, x) or "
                               "(values, y, x)")
    _numeric(path, node.dtype)
    vals, name = _values_of(path, array_path, node, parent)
    if vals is None:
        raise InputError(path, f"{where} has no parameter values (an attribute {VALUE_KEYS[0]!r} with one value "
                               f"per entry of its first axis)")
    if vals.size != shape[0]:
        raise InputError(path, f"{where} has {shape[0]} entries along its first axis but {vals.size} parameter values")
    _check_unique(path, vals, [f"{where}[{i}]" for i in range(vals.size)])
    entries = [SweepEntry(source=path, value=float(v), name=name or "parameter", path=path, dataset=array_path,
                          index=i, kind="axis") for i, v in enumerate(vals)]
    return sorted(entries, key=lambda e: e.value)


def _member_entries(path: str, group_path: str, group) -> list[SweepEntry]:
    name = _attr_text(group.attrs["parameter_name"]) if "parameter_name" in group.attrs else ""
    entries, names, seen_name = [], [], []
    for k in sorted(group.keys()):
        child = group[k]
        if not _is_array(child) or len(child.shape) not in (2, 3) or k in VALUE_KEYS:
            continue
        member = f"{group_path}/{k}" if group_path else k
        if "parameter_value" in child.attrs:
            value = _as_values(path, member, child.attrs["parameter_value"], "parameter_value")
            if value.size != 1:
                raise InputError(path, f"/{member}: parameter_value must be one number")
            value = float(value[0])
            prefix = ""
        else:
            got = parameter_from_name(k)
            if got is None:
                raise InputError(path, f"/{member}: no parameter_value attribute and no number in its name")
            prefix, value = got
        seen_name.append(prefix)
        _numeric(path, child.dtype)
        entries.append(SweepEntry(source=path, value=value, name="", path=path, dataset=member, kind="member"))
        names.append("/" + member)
    where = "/" + group_path if group_path else "the file"
    if len(entries) < 2:
        raise InputError(path, f"{where} holds no sweep: an array (values, z, y, x) with {VALUE_KEYS[0]!r}, or a "
                               "group of at least two arrays, one per value")
    _check_unique(path, np.array([e.value for e in entries]), names)
    if not name:
        name = seen_name[0] if seen_name and all(s == seen_name[0] for s in seen_name) and seen_name[0] else "parameter"
    entries = [SweepEntry(source=e.source, value=e.value, name=name, path=e.path, dataset=e.dataset, kind=e.kind)
               for e in entries]
    return sorted(entries, key=lambda e: e.value)


def _check_unique(path, values: np.ndarray, names: list[str]) -> None:
    order = np.argsort(values, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if values[a] == values[b]:
            raise InputError(path, f"{names[a]} and {names[b]} have the same parameter value {values[a]:g}")


# ----------------------------------------------------------------------------- folders


def _is_zarr_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def _folder_kind(p: Path) -> str | None:
    """How a child of a sweep folder is read: "volume", "image-stack" or None (ignored)."""
    if p.name.startswith("."):
        return None
    if p.is_dir():
        if _is_zarr_dir(p):
            return "volume"
        kids = [f for f in p.iterdir() if not f.name.startswith(".")]
        sufs = {f.suffix.lower() for f in kids if f.is_file()}
        if sufs & set(_TIFF_SUFFIXES) and not sufs & set(_IMAGE_SUFFIXES):
            return "volume"  # a folder of TIFFs: open_volume's tiff-stack
        if sufs & set(_IMAGE_SUFFIXES):
            return "image-stack"
        return None
    return "volume" if p.suffix.lower() in _VOLUME_SUFFIXES else None


def _read_folder_sweep(folder: Path) -> list[SweepEntry]:
    entries, names, prefixes = [], [], []
    for child in sorted(folder.iterdir(), key=lambda f: _natural(f.name)):
        kind = _folder_kind(child)
        if kind is None:
            continue
        got = parameter_from_name(child.name)
        if got is None:
            raise InputError(child, "no parameter value in the name of this sweep entry (name entries like "
                                    "center_101.5.tif or strength=2)")
        prefix, value = got
        prefixes.append(prefix)
        entries.append(SweepEntry(source=str(folder), value=value, name="", path=str(child), kind=kind))
        names.append(child.name)
    if len(entries) < 2:
        raise InputError(folder, f"a sweep folder needs at least two entries (volumes, images or image folders "
                                 f"named with their parameter value); found {len(entries)}")
    _check_unique(folder, np.array([e.value for e in entries]), names)
    name = prefixes[0] if prefixes[0] and all(p == prefixes[0] for p in prefixes) else "parameter"
    entries = [SweepEntry(source=e.source, value=e.value, name=name, path=e.path, kind=e.kind) for e in entries]
    return sorted(entries, key=lambda e: e.value)


# ----------------------------------------------------------------------------- public


def read_sweep(path, *, dataset: str | None = None) -> list[SweepEntry]:
    """The entries of a parameter sweep, sorted by parameter value.

    Parameters
    ----------
    path : path
        A sweep folder, or an HDF5 file or zarr group with a parameter axis (see the
        module documentation for the layouts).
    dataset : str, optional
        For a file: the array with the parameter axis, or the group of per-value arrays.

    Returns
    -------
    list of SweepEntry
        At least two, sorted by ``value``; open each with :meth:`SweepEntry.open`.

    Raises
    ------
    InputError
        A missing path, a layout that is not a sweep, entries without parameter values
        or with the same value, or a number of values that does not match the axis.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir() and not _is_zarr_dir(p):
        if dataset:
            raise OptionError("a dataset can only be chosen in an HDF5 file or zarr group, not in a sweep folder")
        return _read_folder_sweep(p)
    if p.is_file() and not _is_hdf5(p):
        raise InputError(p, "not a sweep: a sweep is a folder of entries, or an HDF5 file or zarr group with a "
                            "parameter axis")
    return _read_file_sweep(p, dataset)


def split_entry(spec: str) -> tuple[str, float] | None:
    """``(path, value)`` of a ``PATH::VALUE`` string, or None when it names no entry."""
    s = str(spec)
    if ENTRY_SEPARATOR not in s or Path(s).exists():
        return None
    path, _, value = s.rpartition(ENTRY_SEPARATOR)
    try:
        v = float(value)
    except ValueError:
        raise OptionError(f"{s!r}: the part after '{ENTRY_SEPARATOR}' must be a parameter value (a number)") from None
    if not math.isfinite(v):
        raise OptionError(f"{s!r}: the parameter value must be finite")
    return path, v


def sweep_entry(spec: str, *, dataset: str | None = None) -> SweepEntry:
    """The entry of a sweep addressed as ``PATH::VALUE`` (relative tolerance 1e-9).

    Raises
    ------
    OptionError
        ``spec`` has no ``::VALUE`` part or its value is not a number.
    InputError
        The sweep has no entry with that value (the message lists the values it has).
    """
    got = split_entry(spec)
    if got is None:
        raise OptionError(f"{spec!r} does not name a sweep entry (PATH{ENTRY_SEPARATOR}VALUE)")
    path, value = got
    entries = read_sweep(path, dataset=dataset)
    for e in entries:
        if abs(e.value - value) <= 1e-9 * max(1.0, abs(value)):
            return e
    have = ", ".join(f"{e.value:g}" for e in entries)
    raise InputError(path, f"no sweep entry with the value {value:g} (values: {have})")
