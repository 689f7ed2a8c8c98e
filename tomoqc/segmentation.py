"""Segmentation of whole volumes with uncertainty: the ``segment`` job on the slice-wise engine.

:func:`segment` runs a D-LinkNet (:mod:`tomoqc.models.segmenter`) over every slice of a
volume on the same engine, clusters, resume and progress as scoring
(:mod:`tomoqc.engine`): chunks of consecutive slices go to the workers, each worker loads
the network once, and every finished chunk is written into its region of the output.

The output ``<volume>.seg.zarr`` is an OME-Zarr 0.5 image (zarr v3) that napari and other
OME-Zarr readers open, and each of its arrays opens with xarray (their
``dimension_names`` are set):

================================ ============================== ==============================
path in the group                what                           array
================================ ============================== ==============================
``0``                            ``probability``: every class   float32 (c, z, y, x); one
                                 (binary networks: the          channel for a binary network
                                 foreground probability)
``labels/<name>/0``              ``label``: most probable class uint8 (z, y, x), an OME-Zarr
                                                                label image (``image-label``
                                                                with colours and class names)
``uncertainty/0``                per-pixel entropy of the       float32 (z, y, x), bits, an
                                 predicted class distribution   image of its own
``aleatoric/0``, ``epistemic/0`` with ``--uncertainty mc`` or   float32 (z, y, x), bits
                                 ``tta``: the mean entropy of
                                 the samples and the mutual
                                 information
================================ ============================== ==============================

``<name>`` is ``phases`` for a multi-class network and ``material`` for a binary one. The
arrays are chunked like the input: along z by the engine's chunks (aligned on the input's
stored chunks when possible), along y and x like the input's stored chunks. The group's
attributes hold, besides the ``ome`` metadata, the tomoqc version, the model's id and
SHA-256, the input path and the options; :func:`open_segmentation` reads everything back
as one :class:`xarray.Dataset`.

Like a quality output, the segmentation is built under a temporary name, resumes after a
kill, and is renamed to its final name only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tomoqc.engine import SliceJob, _now, prepare_output, run_job
from tomoqc.errors import InputError, OptionError

__all__ = ["segment", "open_segmentation", "segmentation_path", "OUTPUT_SUFFIX", "UNCERTAINTY_MODES"]

OUTPUT_SUFFIX = ".seg.zarr"
UNCERTAINTY_MODES = ("entropy", "mc", "tta")
OME_VERSION = "0.5"
_FORMAT_VERSION = 1
#: Largest input slab of one task, in bytes of the outputs and work arrays it needs.
MAX_TASK_BYTES = 512 * 2**20
DEFAULT_CHUNK_SLICES = 4
_SAMPLED = ("aleatoric", "epistemic")
#: Label colours (RGBA) for label values 0, 1, 2, ... in viewers.
_COLOURS = [[0, 0, 0, 0], [230, 159, 0, 255], [86, 180, 233, 255], [0, 158, 115, 255], [240, 228, 66, 255],
            [0, 114, 178, 255], [213, 94, 0, 255], [204, 121, 167, 255]]


def segmentation_path(volume_path, out=None) -> Path:
    """Where the segmentation of ``volume_path`` goes: ``<out or its folder>/<name>.seg.zarr``."""
    p = Path(volume_path)
    name = p.name.rstrip("/") or p.resolve().name
    base = Path(out) if out is not None else p.resolve().parent
    return base / (name + OUTPUT_SUFFIX)


def _label_name(n_classes: int) -> str:
    return "material" if n_classes == 1 else "phases"


class SegmentJob(SliceJob):
    """The ``segment`` job: a D-LinkNet with uncertainty on each block of slices."""

    kind = "segment"
    verb = "segmenting"

    def __init__(self, path: str, sha256: str, *, n_classes: int, class_names: list[str], tile: int, overlap: int,
                 uncertainty: str, samples: int, batch_size: int, layout: dict | None = None):
        self.path, self.sha256 = path, sha256
        self.n_classes, self.class_names = int(n_classes), list(class_names)
        self.tile, self.overlap, self.uncertainty = int(tile), int(overlap), uncertainty
        self.samples, self.batch_size = int(samples), int(batch_size)
        self.layout = layout or {}  # shape (h, w), yx chunks, voxel size, attrs of the arrays

    @property
    def channels(self) -> int:
        return 1 if self.n_classes == 1 else self.n_classes

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("label", "probability", "uncertainty") + (_SAMPLED if self.uncertainty != "entropy" else ())

    def resource_key(self) -> tuple:
        return (self.path, self.sha256)

    def load_resource(self):
        from tomoqc.models.segmenter import load_segment_model

        model = load_segment_model(self.path)
        if self.sha256 and model.sha256 and model.sha256 != self.sha256:
            raise InputError(self.path, "the model file changed while segmenting (SHA-256 differs)")
        return model

    def process(self, model, block):
        res = model.segment_slices(block, tile=self.tile, overlap=self.overlap, uncertainty=self.uncertainty,
                                   samples=self.samples, batch_size=self.batch_size)
        return {name: res[name] for name in self.outputs}

    # -- output layout -------------------------------------------------------------
    def _paths(self) -> dict[str, tuple[str, int]]:
        """{result name: (array path in the group, axis of the slices)}"""
        paths = {"probability": ("0", 1), "label": (f"labels/{_label_name(self.n_classes)}/0", 0),
                 "uncertainty": ("uncertainty/0", 0)}
        for name in _SAMPLED:
            paths[name] = (f"{name}/0", 0)
        return {name: paths[name] for name in self.outputs}

    def create_store(self, path, zsel, chunk, attrs):
        import zarr

        n = len(zsel)
        h, w = self.layout["shape"]
        cy, cx = self.layout.get("yx_chunks") or (h, w)
        voxel = self.layout.get("voxel_size") or [1.0, 1.0, 1.0]
        cz = max(1, min(int(chunk), n))
        zyx_axes = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"}]
        unit = self.layout.get("unit")
        if unit:
            for a in zyx_axes:
                a["unit"] = unit

        def multiscale(name, axes, scale):
            return {"version": OME_VERSION, "multiscales": [{
                "name": name, "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }]}

        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        image_axes = [{"name": "c", "type": "channel"}, *zyx_axes]
        channel_names = ([self.class_names[-1]] if self.n_classes == 1 else self.class_names)
        root.attrs.update({
            **attrs,
            "ome": {**multiscale("probability", image_axes, [1.0, *voxel]),
                    "omero": {"channels": [{"label": f"P({c})", "window": {"start": 0.0, "end": 1.0, "min": 0.0,
                                                                          "max": 1.0}} for c in channel_names]}},
        })
        # float maps are stored uncompressed: they hardly compress (about 20 %) and compressing them
        # cost a quarter of the end-to-end time (benchmarks/segment_throughput.py); labels compress well
        root.create_array("0", shape=(self.channels, n, h, w), chunks=(1, cz, cy, cx), dtype="float32",
                          fill_value=np.nan, dimension_names=("c", "z", "y", "x"), compressors=None)
        label = _label_name(self.n_classes)
        labels = root.create_group("labels")
        labels.attrs.update({"ome": {"version": OME_VERSION, "labels": [label]}})
        lab = labels.create_group(label)
        meta = multiscale(label, zyx_axes, list(voxel))
        meta["image-label"] = {
            "version": OME_VERSION,
            "colors": [{"label-value": i, "rgba": _COLOURS[i % len(_COLOURS)]} for i in range(len(self.class_names))],
            "properties": [{"label-value": i, "class": name} for i, name in enumerate(self.class_names)],
            "source": {"image": "../../"},
        }
        lab.attrs.update({"ome": meta})
        lab.create_array("0", shape=(n, h, w), chunks=(cz, cy, cx), dtype="uint8", fill_value=0,
                         dimension_names=("z", "y", "x"))
        for name in ("uncertainty", *_SAMPLED):
            if name not in self.outputs:
                continue
            g = root.create_group(name)
            g.attrs.update({"ome": multiscale(name, zyx_axes, list(voxel)),
                            "long_name": _LONG_NAMES[name], "units": "bit"})
            g.create_array("0", shape=(n, h, w), chunks=(cz, cy, cx), dtype="float32", fill_value=np.nan,
                           dimension_names=("z", "y", "x"), compressors=None)

    def store_arrays(self, path):
        import zarr

        root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        return {name: (root[p], axis) for name, (p, axis) in self._paths().items()}

    def memory_arrays(self, n):
        h, w = self.layout["shape"]
        arrays = {"label": (np.zeros((n, h, w), np.uint8), 0),
                  "probability": (np.full((self.channels, n, h, w), np.nan, np.float32), 1)}
        for name in ("uncertainty", *_SAMPLED):
            if name in self.outputs:
                arrays[name] = (np.full((n, h, w), np.nan, np.float32), 0)
        return arrays


_LONG_NAMES = {
    "uncertainty": "total predictive entropy of the class distribution",
    "aleatoric": "aleatoric part: mean entropy of the samples",
    "epistemic": "epistemic part: mutual information between prediction and sample",
}


def _model_card(model, kind: str):
    """(path, sha256, card) of the segmentation weights, read without loading TensorFlow."""
    from tomoqc.models import segmenter

    p = segmenter.default_segment_weights(kind) if model is None else Path(model)
    if not p.is_file():
        hint = " (the bundled default segmentation model is not installed; pass --model PATH)" if model is None else ""
        raise InputError(p, f"segmentation weights file not found{hint}")
    p = p.resolve()
    card = segmenter._read_card(segmenter.card_path_for(p), p)
    return str(p), segmenter._file_sha256(p), card


def _default_chunk(vol, channels: int, sampled: bool) -> int:
    """Slices per task: the input's stored depth when it fits, else DEFAULT_CHUNK_SLICES,
    never more than MAX_TASK_BYTES of outputs and work arrays (about 90 bytes per pixel for
    three classes, as measured by benchmarks/segment_throughput.py)."""
    h, w = (int(s) for s in vol.shape[1:])
    per_slice = h * w * (32 + 16 * channels + (16 if sampled else 0) + vol.dtype.itemsize)
    fits = max(1, MAX_TASK_BYTES // max(1, per_slice))
    depth = int(vol.attrs.get("storage_depth", 0) or 0)
    chunk = depth if depth > 1 else DEFAULT_CHUNK_SLICES
    return int(max(1, min(chunk, fits)))


def _yx_chunks(vol, h, w):
    """The input's stored chunk shape across the slices, when it is known and smaller."""
    chunks = vol.attrs.get("storage_chunks") or []
    if len(chunks) != 3:
        return None
    cy, cx = min(int(chunks[1]), h), min(int(chunks[2]), w)
    return (cy, cx) if (cy, cx) != (h, w) else None


def segment(
    volume,
    *,
    model=None,
    kind: str = "phases",
    out=None,
    dataset: str | None = None,
    axis: str = "z",
    tile: int = 512,
    overlap: int = 64,
    uncertainty: str = "entropy",
    samples: int = 8,
    batch_size: int = 4,
    cluster="local",
    workers: int | None = None,
    overwrite: bool = False,
    chunk_slices: int | None = None,
    client=None,
    cluster_options: dict | None = None,
    max_in_flight: int | None = None,
    progress: bool = True,
):
    """Segment every slice of a volume with a D-LinkNet, with per-pixel uncertainty.

    Parameters
    ----------
    volume : path or xarray.DataArray or ndarray
        A volume file or folder (anything :func:`tomoqc.io.open_volume` reads), or a 3-D
        array (segmented in memory; written only when ``out`` is given).
    model : path, optional
        A D-LinkNet ``.keras`` file with its JSON card beside it; default: the bundled
        model of ``kind``.
    kind : {"phases", "binary"}
        Which bundled model, when ``model`` is None: electrode phases (pore,
        carbon-binder, active material) or material vs void.
    out : path, optional
        For a file input: the folder of ``<volume>.seg.zarr`` (default: beside the
        input). For an array: the full output path, or None to keep it in memory.
    dataset, axis
        As for :func:`tomoqc.pipeline.score`.
    tile, overlap : int
        Tile side (a multiple of 32) and least overlap for large slices; tiles are
        blended without seams (:mod:`tomoqc.models.segmenter`).
    uncertainty : {"entropy", "mc", "tta"}
        Entropy of one pass; Monte-Carlo dropout with ``samples`` passes; 8-fold
        flip/rotate test-time augmentation. The last two add ``aleatoric`` and
        ``epistemic`` maps.
    samples : int
        Passes for ``"mc"``.
    batch_size : int
        Tiles per network call.
    cluster, workers, client, cluster_options, max_in_flight, chunk_slices, overwrite, progress
        As for :func:`tomoqc.pipeline.score` (default chunk: the input's stored depth
        along the slices when it fits in memory, else 4 slices).

    Returns
    -------
    xarray.Dataset
        ``label(z, y, x)`` uint8, ``probability(class, z, y, x)`` float32,
        ``uncertainty(z, y, x)`` float32 bits (and ``aleatoric``, ``epistemic``); opened
        from disk (lazily) when written there.

    Raises
    ------
    InputError
        Missing or unreadable volume or model; an existing output without ``overwrite``.
    OptionError
        A bad option.
    """
    from tomoqc import __version__
    from tomoqc.models.segmenter import _check_options
    from tomoqc.pipeline import _as_volume

    if uncertainty not in UNCERTAINTY_MODES:
        raise OptionError(f"--uncertainty must be one of {', '.join(UNCERTAINTY_MODES)}, got {uncertainty!r}")
    tile, overlap, samples, batch_size = _check_options(tile, overlap, uncertainty, samples, batch_size)
    if chunk_slices is not None and int(chunk_slices) < 1:
        raise OptionError(f"chunk_slices must be >= 1, got {chunk_slices}")
    if model is None and kind not in ("phases", "binary"):
        raise OptionError(f"--kind must be 'phases' or 'binary', got {kind!r}")

    vol, src_path = _as_volume(volume, dataset, axis)
    mpath, msha, card = _model_card(model, kind)
    n_classes = int(card.get("n_classes", 1))
    from tomoqc.models.segmenter import _class_names

    class_names = _class_names(card.get("class_names"), n_classes, mpath)
    if uncertainty == "mc" and not float(card.get("dropout", 0) or 0) > 0:
        raise OptionError(f"--uncertainty mc needs a model trained with dropout; {Path(mpath).name} has none "
                          "(use --uncertainty tta)")
    nz, h, w = (int(s) for s in vol.shape)
    zsel = np.arange(nz, dtype=np.int64)
    dataset_name = dataset or (vol.attrs.get("dataset") if src_path else "") or ""
    voxel = vol.attrs.get("voxel_size")
    layout = {"shape": (h, w), "yx_chunks": _yx_chunks(vol, h, w),
              "voxel_size": [float(v) for v in voxel] if voxel else None,
              "unit": vol.attrs.get("voxel_unit")}
    job = SegmentJob(mpath, msha, n_classes=n_classes, class_names=class_names, tile=tile, overlap=overlap,
                     uncertainty=uncertainty, samples=samples, batch_size=batch_size, layout=layout)

    final = None
    if src_path is not None:
        final = segmentation_path(src_path, out)
    elif out is not None:
        final = Path(out)
    if final is not None:
        final = prepare_output(final, src_path, overwrite)

    options = {"tile": tile, "overlap": overlap, "uncertainty": uncertainty,
               "samples": samples if uncertainty == "mc" else None, "batch_size": batch_size}
    params = {"input": src_path, "dataset": dataset_name, "axis": axis, "shape": [nz, h, w], "model_sha256": msha,
              "format_version": _FORMAT_VERSION, **options}
    model_id = card.get("model_id") or f"{Path(mpath).stem}-{msha[:12]}"
    attrs = {
        "title": "tomoqc segmentation",
        "tomoqc_version": __version__,
        "tomoqc_output": "segmentation",
        "format_version": _FORMAT_VERSION,
        "model_id": model_id,
        "model_sha256": msha,
        "model_path": mpath,
        "class_names": class_names,
        "input": src_path or "",
        "dataset": dataset_name,
        "axis": axis,
        "input_shape": [nz, h, w],
        "input_dtype": str(vol.attrs.get("dtype", vol.dtype)),
        "parameters": json.dumps(options),
    }
    chunk = int(chunk_slices or _default_chunk(vol, job.channels, uncertainty != "entropy"))
    run = run_job(job, vol, zsel, src_path=src_path, dataset=dataset_name, axis=axis, final=final, params=params,
                  attrs=attrs, chunk=chunk, contiguous=True, client=client, cluster=cluster, workers=workers,
                  cluster_options=cluster_options, max_in_flight=max_in_flight, progress=progress,
                  label=Path(src_path).name if src_path else "volume", overwrite=overwrite)
    if final is not None:
        return open_segmentation(final)
    attrs.update({"chunk_slices": run.chunk, "created": _now(), "complete": True, "chunks_total": run.chunks_total,
                  "chunks_resumed": 0, "seconds": round(run.seconds, 3)})
    return _dataset(run.arrays, class_names, n_classes, attrs)


def _dataset(arrays: dict, class_names, n_classes: int, attrs: dict):
    import xarray as xr

    channel_names = [class_names[-1]] if n_classes == 1 else list(class_names)
    data = {
        "label": (("z", "y", "x"), arrays["label"],
                  {"long_name": "most probable class", "flag_values": list(range(len(class_names))),
                   "flag_meanings": " ".join(c.replace(" ", "_") for c in class_names)}),
        "probability": (("class", "z", "y", "x"), arrays["probability"],
                        {"long_name": "class probability" if n_classes > 1 else "foreground probability"}),
    }
    for name in ("uncertainty", *_SAMPLED):
        if name in arrays:
            data[name] = (("z", "y", "x"), arrays[name], {"long_name": _LONG_NAMES[name], "units": "bit"})
    n = arrays["label"].shape[0]
    return xr.Dataset(data, coords={"z": np.arange(n), "class": channel_names}, attrs=attrs)


def open_segmentation(path, *, require_complete: bool = True):
    """Open a segmentation output (``<volume>.seg.zarr``) as one lazy :class:`xarray.Dataset`.

    Raises
    ------
    InputError
        The path is missing, not a tomoqc segmentation, or (with ``require_complete``) an
        interrupted run that was never completed.
    """
    import dask.array as da
    import zarr

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such segmentation output")
    try:
        root = zarr.open_group(str(p), mode="r")
        attrs = dict(root.attrs)
    except Exception as err:
        raise InputError(p, f"not a segmentation output (cannot open as zarr: {type(err).__name__})") from None
    if attrs.get("tomoqc_output") != "segmentation":
        raise InputError(p, "not a tomoqc segmentation output (no 'tomoqc_output: segmentation' attribute)")
    if require_complete and attrs.get("complete") is not True:
        raise InputError(p, "incomplete segmentation output (an interrupted run); rerun `tomoqc segment` to finish it")
    class_names = list(attrs.get("class_names") or [])
    n_classes = 1 if len(class_names) == 2 and root["0"].shape[0] == 1 else len(class_names)
    arrays = {"probability": da.from_zarr(root["0"]),
              "label": da.from_zarr(root[f"labels/{_label_name(n_classes)}/0"])}
    for name in ("uncertainty", *_SAMPLED):
        if name in root:
            arrays[name] = da.from_zarr(root[f"{name}/0"])
    attrs.pop("ome", None)
    ds = _dataset(arrays, class_names, n_classes, attrs)
    ds.encoding["source"] = str(p.resolve())
    return ds
