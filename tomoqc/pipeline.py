"""Slice-wise quality scoring of whole volumes, fanned out on a dask cluster.

The volume is cut into *chunks* of consecutive scored slices. Each chunk is one
dask task: the worker reads its slices from the input (never the whole volume),
normalises them, cuts them into 224 x 224 patches, runs all the chunk's patches
through the TIQA network in batches, and returns the per-slice results, which
are small. The client writes every finished chunk into its own, chunk-aligned
region of the output zarr as soon as it arrives and then drops a "done" marker
for it, so that a run that is killed resumes where it stopped: a rerun skips the
chunks already written and gives identical outputs.

The output is built under a temporary name (``.<name>.partial`` beside the final
path); only when every chunk is written is it marked ``complete`` and renamed to
``<volume>.quality.zarr``.

Each worker process loads the model once (a cache keyed by the model file's
path and SHA-256), not once per task, and keeps the opened input volume.

The quality output is an :class:`xarray.Dataset`:

``score(z)`` float32
    The slice's quality on the 1-5 scale (5 best), the mean of its valid
    patches' scores; NaN when the slice cannot be scored.
``score_uncertainty(z)`` float32
    The uncertainty of the slice score, in units of the 1-5 score, roughly one
    standard deviation: the spread over test-time views of the patches and the
    standard error over the slice's patches, in quadrature, plus 1 in quadrature for
    an out-of-distribution slice (:meth:`tomoqc.models.tiqa.TiqaModel.score_slices`).
    NaN where the score is. Outputs of earlier versions have none.
``flag(z)`` int8
    One value per slice, the first that applies in this order: 1 constant slice (no
    contrast), 2 NaN or infinite values present (the slice is still scored from its
    finite pixels when possible), 3 no patch of the slice holds sample (see
    :func:`tomoqc.preprocess.patch_validity`), 4 out of distribution (the input is
    unlike the model's training data, :mod:`tomoqc.models.trust`, or the slice is so much
    smaller than a patch that reflection padding fills more than a quarter of it,
    :data:`tomoqc.models.tiqa.PADDED_OOD_SHARE`, or a dense minority of its pixels sets its
    intensity range, :data:`tomoqc.models.tiqa.TAIL_STRETCH_LIMIT`; its score is not to be
    trusted), 5 relaxed (no patch passed the usual test; scored from patches with
    any structure: a saturated, binary or mostly dark slice), 6 noise confounded (the
    score would be at least :data:`tomoqc.models.tiqa.NOISE_CONFOUND_GAP` higher with
    the noise read from the flattest wavelet coefficients: structure may be read as
    noise, ``noise_confound_gap``); 0 ok. Values 4 and 5 are new in format version 2,
    value 6 in format version 3.
``valid_fraction(z)`` float32
    Share of the slice's patches that were scored.
``patch_score(z, py, px)`` float32
    The score of every patch of the grid (:func:`tomoqc.models.tiqa.patch_grid`),
    NaN for excluded patches.
``severity(z, distortion)`` float32
    Severity (0-1) of each distortion of :data:`tomoqc.models.tiqa.DISTORTIONS` (noise,
    blur, ring, streak): measured from the indicators below when the model card has
    measured terms, else the network's mean over the valid patches (NaN for streak).
``ring_index(z)`` float32
    The slice's ring index (:func:`tomoqc.metrics.rings.ring_index`: RMS amplitude of
    the concentric structure about the rotation axis, in units of the slice's robust
    range; about 0 without rings), NaN when it cannot be measured. The axis is found
    once per volume unless given (attrs ``ring_center`` and ``ring_center_source``).
``noise_index(z)``, ``blur_index(z)``, ``streak_index(z)``, ``missing_wedge(z)``, ``view_spacing(z)`` float32
    The other measured indicators (:mod:`tomoqc.metrics.nr`): noise over contrast, the
    Gaussian width of the strongest edges in pixels (about 0.4 when sharp), the spokes
    of too few projections, the degrees of the half turn a limited-angle scan left
    without data (0 for a complete scan), and the degrees between the directions of a
    sparse scan (0 when the spectrum shows no separate spokes).
``noise_confound_gap(z)`` float32
    How much higher the slice's score would be with its noise read from the low quantiles
    of the wavelet bands instead of their median (score units; about 0 for white noise;
    :meth:`tomoqc.models.measured.MeasuredTerms.noise_confound_gap`). NaN without a noise term.
    New in format version 3.
``inclusion_fraction(z)`` float32
    Share of the slice's pixels filled as dense inclusions before it was scored (metal
    particles and the like far denser than the sample, :mod:`tomoqc.inclusions`; 0 when it
    has none or with ``fill_inclusions=False``). New in format version 4.

``z`` holds the indices of the scored slices along the slicing axis.

References
----------
The network and its training follow the TIQA method for tomography image
quality assessment (EfficientNet-B0 ranked, then fine-tuned on generated
scores); see :mod:`tomoqc.models.tiqa` for the papers and DOIs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from tomoqc.engine import SliceJob, _now, partial_path, prepare_output, run_job
from tomoqc.errors import InputError, OptionError

__all__ = [
    "FLAG_OK",
    "FLAG_CONSTANT",
    "FLAG_NONFINITE",
    "FLAG_NO_VALID_PATCH",
    "FLAG_OOD",
    "FLAG_RELAXED",
    "FLAG_NOISE_CONFOUNDED",
    "FLAG_VALUES",
    "FLAG_MEANINGS",
    "DEFAULT_CHUNK_SLICES",
    "output_path",
    "partial_path",
    "score",
    "score_block",
]

FLAG_OK = 0
FLAG_CONSTANT = 1
FLAG_NONFINITE = 2
FLAG_NO_VALID_PATCH = 3
FLAG_OOD = 4
FLAG_RELAXED = 5
FLAG_NOISE_CONFOUNDED = 6
FLAG_VALUES = [0, 1, 2, 3, 4, 5, 6]
FLAG_MEANINGS = "ok constant nonfinite no_valid_patch out_of_distribution relaxed noise_confounded"
#: The per-slice variables of a quality output.
#: Per-slice measured indicators written beside the score (name in the output, indicator).
INDICATOR_VARIABLES = (("noise_index", "noise"), ("blur_index", "blur"), ("ring_index", "ring"),
                       ("streak_index", "streak"), ("missing_wedge", "wedge"),
                       ("view_spacing", "spacing"))
OUTPUT_VARIABLES = ("score", "score_uncertainty", "flag", "valid_fraction", "patch_score", "severity",
                    *(name for name, _ in INDICATOR_VARIABLES), "noise_confound_gap", "inclusion_fraction")
_INCLUSION_ATTRS = {"long_name": "share of the slice filled as dense inclusions before scoring", "units": "1"}
_GAP_ATTRS = {"long_name": "score gained with the noise read from the flattest wavelet coefficients "
                           "(structure read as noise)", "units": "score units (1-5 scale)"}
_INDICATOR_ATTRS = {
    "noise_index": {"long_name": "noise index (robust noise sigma over the slice's contrast)", "units": "1"},
    "blur_index": {"long_name": "blur index (Gaussian width of the strongest edges, from their crests' "
                                "gradient-energy ratio at 2 and 4 px; about 0.4 when sharp)",
                   "units": "pixel"},
    "ring_index": {"long_name": "ring index (RMS concentric amplitude about the rotation axis)",
                   "units": "fraction of the slice's robust intensity range"},
    "streak_index": {"long_name": "streak index (angular contrast of the power spectrum's spokes)", "units": "1"},
    "missing_wedge": {"long_name": "missing wedge (directions of the half turn absent from the power spectrum: "
                                   "limited-angle data; 0 for a complete scan)", "units": "degree"},
    "view_spacing": {"long_name": "view spacing (angle between the directions of a sparse scan whose spokes "
                                  "the power spectrum shows apart; 0 when it shows none)", "units": "degree"},
}

DEFAULT_CHUNK_SLICES = 8
#: Longest task chunk (slices, input bytes) chosen automatically.
MAX_ALIGNED_CHUNK = 64
MAX_ALIGNED_BYTES = 256 * 2**20
#: Fewest patches a task should hold (see ``_default_chunk``).
MIN_TASK_PATCHES = 64
OUTPUT_SUFFIX = ".quality.zarr"
_FORMAT_VERSION = 4

# ----------------------------------------------------------------------------- the job


class ScoreJob(SliceJob):
    """The ``score`` job: TIQA network and measured indicators, per slice (see the module docs)."""

    kind = "score"
    verb = "scoring"

    def __init__(self, path: str, sha256: str, batch_size: int, measured_terms: bool, ring_center, tta: int,
                 grid: tuple[int, int, np.ndarray] | None = None, axis_error: float | None = None,
                 relative_terms: bool = False, patch: int | None = None, fill_inclusions: bool = True):
        self.path, self.sha256, self.batch_size = path, sha256, int(batch_size)
        self.fill_inclusions = bool(fill_inclusions)
        self.patch = patch  # side of the scored patches (the model card's), for the output layout
        self.measured_terms, self.ring_center, self.tta = bool(measured_terms), tuple(ring_center), tta
        self.axis_error = axis_error  # the volume's rotation-axis error (px), measured once
        self.relative_terms = bool(relative_terms)
        self.grid = grid  # (py, px, starts) of the patch grid, for the output layout

    def resource_key(self) -> tuple:
        return (self.path, self.sha256, self.batch_size)

    def load_resource(self):
        from tomoqc.models.tiqa import load_model

        model = load_model(self.path, batch_size=self.batch_size)
        if self.sha256 and model.sha256 and model.sha256 != self.sha256:
            raise InputError(self.path, "the model file changed while scoring (SHA-256 differs)")
        return model

    def process(self, model, block):
        return score_block(model, block, measured_terms=self.measured_terms, ring_center=self.ring_center,
                           tta=self.tta, axis_error=self.axis_error, relative_terms=self.relative_terms,
                           fill_inclusions=self.fill_inclusions)

    def create_store(self, path, zsel, chunk, attrs):
        py, px, starts = self.grid
        _template(zsel, py, px, starts, chunk, attrs, self.patch).to_zarr(str(path), mode="w", compute=False,
                                                                     consolidated=False)

    def store_arrays(self, path):
        import zarr

        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        return {name: (group[name], 0) for name in OUTPUT_VARIABLES}

    def memory_arrays(self, n):
        from tomoqc.models.tiqa import DISTORTIONS

        py, px, _ = self.grid
        return {
            "score": (np.full(n, np.nan, np.float32), 0),
            "score_uncertainty": (np.full(n, np.nan, np.float32), 0),
            "flag": (np.zeros(n, np.int8), 0),
            "valid_fraction": (np.zeros(n, np.float32), 0),
            "patch_score": (np.full((n, py, px), np.nan, np.float32), 0),
            "severity": (np.full((n, len(DISTORTIONS)), np.nan, np.float32), 0),
            **{name: (np.full(n, np.nan, np.float32), 0) for name, _ in INDICATOR_VARIABLES},
            "noise_confound_gap": (np.full(n, np.nan, np.float32), 0),
            "inclusion_fraction": (np.full(n, np.nan, np.float32), 0),
        }


def _encode_flags(bits: np.ndarray) -> np.ndarray:
    """Turn the model's per-slice bit mask into this output's one-value flag."""
    from tomoqc.models import tiqa

    bits = np.asarray(bits, dtype=np.int64)
    out = np.full(bits.shape, FLAG_OK, np.int8)
    # the lowest priority first: later assignments win
    out[(bits & tiqa.FLAG_NOISE_CONFOUNDED) != 0] = FLAG_NOISE_CONFOUNDED
    out[(bits & tiqa.FLAG_RELAXED) != 0] = FLAG_RELAXED
    out[(bits & tiqa.FLAG_OOD) != 0] = FLAG_OOD
    out[(bits & tiqa.FLAG_NO_VALID_PATCH) != 0] = FLAG_NO_VALID_PATCH
    out[(bits & tiqa.FLAG_CONSTANT) != 0] = FLAG_CONSTANT
    out[(bits & tiqa.FLAG_NONFINITE) != 0] = FLAG_NONFINITE
    return out


def _volume_ring_center(vol, zsel, ring_center, *, probes: int = 5):
    """The rotation axis of a volume: ``ring_center`` when given, else found on a few slices.

    Up to ``probes`` slices spread over the scored ones (away from the ends) are normalised
    and handed together to :func:`tomoqc.metrics.rings.resolve_ring_center`. Returns
    ``((row, col), source)``.
    """
    from tomoqc.metrics.rings import resolve_ring_center
    from tomoqc.preprocess import normalize_slice_flagged

    h, w = (int(s) for s in vol.shape[1:])
    if ring_center not in (None, "auto"):
        return tuple(float(c) for c in ring_center), "given"
    k = min(int(probes), len(zsel))
    picks = zsel[np.unique(np.linspace(0, len(zsel) - 1, k + 2).round().astype(int)[1:-1])] if k else []
    if len(picks) == 0 and len(zsel):
        picks = zsel[:1]
    slices = []
    for z in picks:
        img, constant = normalize_slice_flagged(np.asarray(vol[int(z)]))
        if not constant:
            slices.append(img)
    if not slices:
        return ((h - 1) / 2.0, (w - 1) / 2.0), "slice centre"
    return resolve_ring_center(np.stack(slices))


def _volume_axis_error(vol, zsel, model_path: str, *, probes: int = 3) -> float | None:
    """The volume's rotation-axis error (px), measured once on up to ``probes`` slices spread
    over the scored ones (:func:`tomoqc.metrics.axis.volume_axis_error`); None when the
    model's measured terms do not weigh it (nothing is measured then)."""
    from tomoqc.metrics.axis import volume_axis_error
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import _read_card

    terms = MeasuredTerms.from_card(_read_card(Path(model_path)))
    if terms is None or not terms.weighs("axis", relative=True) or len(zsel) == 0:
        return None
    k = min(int(probes), len(zsel))
    picks = zsel[np.unique(np.linspace(0, len(zsel) - 1, k + 2).round().astype(int)[1:-1])]
    if len(picks) == 0:
        picks = zsel[:1]
    value = volume_axis_error([np.asarray(vol[int(z)]) for z in picks], max_slices=len(picks))
    return value if math.isfinite(value) else None


def score_block(model, block: np.ndarray, *, measured_terms: bool = True, ring_center=None,
                tta: int | None = None, axis_error: float | None = None, relative_terms: bool = False,
                fill_inclusions: bool = True) -> dict:
    """Score a stack of raw slices with a loaded model.

    Parameters
    ----------
    model : tomoqc.models.tiqa.TiqaModel
    block : ndarray, shape (n, H, W)
        Raw slices, any real dtype.
    tta : int, optional
        Test-time views per patch (default: the model's, 2).
    fill_inclusions : bool
        Fill dense inclusions before scoring (:mod:`tomoqc.inclusions`).

    Returns
    -------
    dict
        ``score`` (n,), ``score_uncertainty`` (n,), ``flag`` (n,) int8,
        ``valid_fraction`` (n,), ``patch_score`` (n, py, px), ``severity``
        (n, len(DISTORTIONS)), and the indicators ``noise_index``, ``blur_index``,
        ``ring_index``, ``streak_index``, ``missing_wedge``, ``view_spacing`` (n,) and
        ``noise_confound_gap`` (n,); float32 unless said.
    """
    res = model.score_slices(block, mode="grid", measured_terms=measured_terms, ring_center=ring_center, tta=tta,
                             axis_error=axis_error, relative_terms=relative_terms,
                             fill_inclusions=fill_inclusions)
    return {
        "score": np.asarray(res["score"], np.float32),
        "score_uncertainty": np.asarray(res["score_uncertainty"], np.float32),
        "flag": _encode_flags(res["flags"]),
        "valid_fraction": np.asarray(res["valid_fraction"], np.float32),
        "patch_score": np.asarray(res["patch_score"], np.float32),
        "severity": np.asarray(res["severity"], np.float32),
        **{name: np.asarray(res["indicators"][k], np.float32) for name, k in INDICATOR_VARIABLES},
        "noise_confound_gap": np.asarray(res["noise_confound_gap"], np.float32),
        "inclusion_fraction": np.asarray(res["inclusion_fraction"], np.float32),
    }


# ----------------------------------------------------------------------------- paths


def output_path(volume_path, out=None) -> Path:
    """Where the quality output of ``volume_path`` goes: ``<out or its folder>/<name>.quality.zarr``."""
    p = Path(volume_path)
    name = p.name.rstrip("/")
    if not name:
        name = p.resolve().name
    base = Path(out) if out is not None else p.resolve().parent
    return base / (name + OUTPUT_SUFFIX)


def _model_spec(model, batch_size):
    """Resolve ``model`` to (path, sha256, model_id) without loading TensorFlow here."""
    from tomoqc.models import tiqa

    if model is None:
        path = tiqa.default_weights_path()
        if not path.is_file():
            raise InputError(path, "the bundled default model is not installed; pass --model PATH")
    elif isinstance(model, tiqa.TiqaModel):
        if model.path is None or not Path(model.path).is_file():
            raise OptionError("a TiqaModel without a file cannot be sent to dask workers; pass its path")
        path = Path(model.path)
    else:
        path = Path(model)
        if not path.is_file():
            raise InputError(path, "model weights file not found")
    path = path.resolve()
    sha = tiqa.file_sha256(path)
    card = tiqa._read_card(path) if hasattr(tiqa, "_read_card") else {}
    model_id = card.get("model_id") or f"{path.stem}-{sha[:12]}"
    return str(path), sha, str(model_id)


# ----------------------------------------------------------------------------- output store


_UNCERTAINTY_ATTRS = {
    "long_name": "slice score uncertainty (about one standard deviation: test-time views and patch "
                 "spread in quadrature, inflated when out of distribution)",
    "units": "score units (1-5 scale)",
}


def _template(z, py, px, starts, chunk, attrs, patch):
    import dask.array as da
    import xarray as xr

    from tomoqc.models.tiqa import DISTORTIONS

    n = len(z)
    nd = len(DISTORTIONS)
    c = max(1, min(chunk, n))

    def nan(shape, chunks):
        return da.full(shape, np.nan, dtype=np.float32, chunks=chunks)

    ds = xr.Dataset(
        {
            "score": (("z",), nan((n,), (c,)), {"long_name": "slice quality score", "units": "1 (worst) to 5 (best)"}),
            "score_uncertainty": (("z",), nan((n,), (c,)), _UNCERTAINTY_ATTRS),
            "flag": (
                ("z",),
                da.zeros((n,), dtype=np.int8, chunks=(c,)),
                {"flag_values": FLAG_VALUES, "flag_meanings": FLAG_MEANINGS},
            ),
            "valid_fraction": (("z",), nan((n,), (c,)), {"long_name": "share of patches scored"}),
            "patch_score": (("z", "py", "px"), nan((n, py, px), (c, py, px)), {"long_name": "patch quality score"}),
            "severity": (
                ("z", "distortion"),
                nan((n, nd), (c, nd)),
                {"long_name": "distortion severity", "units": "0 (none) to 1 (strong)"},
            ),
            **{name: (("z",), nan((n,), (c,)), _INDICATOR_ATTRS[name]) for name, _ in INDICATOR_VARIABLES},
            "noise_confound_gap": (("z",), nan((n,), (c,)), _GAP_ATTRS),
            "inclusion_fraction": (("z",), nan((n,), (c,)), _INCLUSION_ATTRS),
        },
        coords={
            "z": ("z", np.asarray(z, dtype=np.int64), {"long_name": "slice index along the slicing axis"}),
            "distortion": ("distortion", np.array(DISTORTIONS, dtype=object)),
            "patch_y0": ("py", np.unique(starts[:, 0]).astype(np.int64)),
            "patch_x0": ("px", np.unique(starts[:, 1]).astype(np.int64)),
        },
        attrs=attrs,
    )
    ds.attrs["patch_size"] = int(patch)
    return ds


# ----------------------------------------------------------------------------- main entry


def _as_volume(volume, dataset, axis):
    """Return (DataArray, source_path or None) for a path or an array."""
    import xarray as xr

    if axis not in ("z", "y", "x"):
        raise OptionError(f"--axis must be one of z, y, x, got {axis!r}")
    if isinstance(volume, (str, os.PathLike)):
        from tomoqc.io import open_volume

        vol = open_volume(volume, dataset=dataset, axis=axis)
        return vol, str(Path(volume).resolve())
    if isinstance(volume, xr.DataArray):
        da_ = volume
    elif isinstance(volume, np.ndarray) or hasattr(volume, "__array__"):
        da_ = xr.DataArray(np.asarray(volume))
    else:
        raise OptionError(f"volume must be a path or an array, got {type(volume).__name__}")
    if da_.ndim == 2:
        da_ = da_.expand_dims("z" if "z" not in da_.dims else "_slice")
    if da_.ndim != 3:
        raise InputError(None, f"a volume must be 3-D (z, y, x), got shape {da_.shape}")
    dims = tuple(da_.dims)
    if set(dims) != {"z", "y", "x"}:
        da_ = da_.rename(dict(zip(dims, ("z", "y", "x"))))
    order = {"z": ("z", "y", "x"), "y": ("y", "z", "x"), "x": ("x", "z", "y")}[axis]
    da_ = da_.transpose(*order)
    if axis != "z":
        da_ = da_.rename(dict(zip(order, ("z", "y", "x"))))
    if da_.dtype.kind not in "biuf":
        raise InputError(None, f"a volume must hold real numbers, got dtype {da_.dtype}")
    if 0 in da_.shape:
        raise InputError(None, f"the volume is empty (shape {da_.shape})")
    return da_, None


def score(
    volume,
    *,
    model=None,
    out=None,
    dataset: str | None = None,
    axis: str = "z",
    step: int = 1,
    batch_size: int = 16,
    cluster="local",
    workers: int | None = None,
    overwrite: bool = False,
    chunk_slices: int | None = None,
    client=None,
    cluster_options: dict | None = None,
    max_in_flight: int | None = None,
    progress: bool = True,
    measured_terms: bool = True,
    ring_center=None,
    tta: int | None = None,
    relative_terms: bool = False,
    fill_inclusions: bool = True,
):
    """Score every ``step``-th slice of a volume with the TIQA network.

    Parameters
    ----------
    volume : path or xarray.DataArray or ndarray
        A volume file or folder (anything :func:`tomoqc.io.open_volume` reads), or a
        3-D array. Arrays are scored in memory; their output is written only when
        ``out`` is given.
    model : path or TiqaModel, optional
        The ``.keras`` model; default: the bundled one.
    out : path, optional
        For a file input: the folder that receives ``<volume>.quality.zarr`` (default:
        beside the input). For an array input: the full output path, or None to keep
        the result in memory.
    dataset : str, optional
        The array inside an HDF5 file or zarr group.
    axis : {"z", "y", "x"}
        Axis to slice along.
    step : int
        Score every ``step``-th slice (0, step, 2 step, ...).
    batch_size : int
        Patches per network call.
    cluster : str
        ``"local"``, ``"local-cuda"``, ``"slurm"``, ``"none"`` or a scheduler address;
        see :func:`tomoqc.cluster.start_cluster`. Ignored when ``client`` is given.
    workers : int, optional
        Number of workers (``0``: score in this process).
    overwrite : bool
        Replace an existing complete output.
    chunk_slices : int, optional
        Scored slices per task and per output chunk. Default: 8, more for small slices
        (at least 64 patches per task), rounded up to whole stored chunks of the input
        along the slicing axis when every slice is scored; never more than 64 slices or
        256 MiB of input. A resumed run keeps the chunking of the interrupted one.
    client : distributed.Client, optional
        An existing client to run on (e.g. to score several volumes on one cluster).
    cluster_options : dict, optional
        Passed to :func:`tomoqc.cluster.start_cluster` (SLURM queue, account, ...).
    max_in_flight : int, optional
        Most chunks submitted at once (default: twice the workers, plus one); bounds
        memory on the workers and the scheduler.
    progress : bool
        Show a progress bar with slices/s on stderr.
    measured_terms : bool
        Apply the model's measured terms (:meth:`tomoqc.models.tiqa.TiqaModel.score_slices`);
        False scores with the network alone. The indicators are written either way.
    ring_center : None, "auto" or (float, float)
        ``(row, col)`` of the rotation axis in the (sliced) slices, for the ring index;
        by default found once for the volume from up to 5 slices spread over it
        (:func:`tomoqc.metrics.rings.resolve_ring_center`), and recorded in the attrs.
    relative_terms : bool
        Also apply the model card's relative measured terms (the rotation-axis error,
        measured once for the volume and recorded as ``axis_error_px``): they order
        reconstructions of one scan (:func:`tomoqc.compare` turns them on) but do not enter
        the absolute score (see :class:`tomoqc.models.measured.MeasuredTerms`).
    tta : int, optional
        Test-time views per patch for ``score_uncertainty``: 1, 2 (default: identity and
        transpose, about twice the inference of one view), 4 or 8 (every flip and
        rotation of the square).
    fill_inclusions : bool
        Fill each slice's dense inclusions (metal particles and the like, far denser than
        the sample) with their surroundings' texture before scoring, so that they do not
        move the score (:mod:`tomoqc.inclusions`; the share is ``inclusion_fraction``).
        False scores every slice as it is.

    Returns
    -------
    xarray.Dataset
        The quality output (see the module documentation), opened from disk when
        written there.

    Raises
    ------
    InputError
        Missing or unreadable volume or model; an existing output without ``overwrite``.
    OptionError
        Bad ``axis``, ``step``, ``batch_size`` or cluster options.
    """
    from tomoqc import __version__

    if int(step) < 1:
        raise OptionError(f"--step must be >= 1, got {step}")
    if int(batch_size) < 1:
        raise OptionError(f"--batch-size must be >= 1, got {batch_size}")
    if chunk_slices is not None and int(chunk_slices) < 1:
        raise OptionError(f"chunk_slices must be >= 1, got {chunk_slices}")
    step, batch_size = int(step), int(batch_size)
    from tomoqc.models.tiqa import DEFAULT_TTA_VIEWS, _check_views

    tta = DEFAULT_TTA_VIEWS if tta is None else _check_views(tta)
    from tomoqc.metrics.rings import check_center

    ring_center = check_center(ring_center, "ring_center")

    vol, src_path = _as_volume(volume, dataset, axis)
    mpath, msha, model_id = _model_spec(model, batch_size)
    nz, h, w = (int(s) for s in vol.shape)
    zsel = np.arange(0, nz, step, dtype=np.int64)
    if ring_center not in (None, "auto") and not (0 <= ring_center[0] < h and 0 <= ring_center[1] < w):
        raise OptionError(f"--ring-center {ring_center[0]:g},{ring_center[1]:g} is outside the {h} x {w} slices")
    ring_center, ring_source = _volume_ring_center(vol, zsel, ring_center)
    # recorded in the output's attrs, the centre as a JSON string
    ring_attrs = {"measured_terms": bool(measured_terms), "ring_center": json.dumps(list(ring_center)),
                  "ring_center_source": ring_source}
    axis_px = _volume_axis_error(vol, zsel, mpath) if measured_terms and relative_terms else None
    ring_attrs["relative_terms"] = bool(relative_terms)
    ring_attrs["fill_inclusions"] = bool(fill_inclusions)
    if axis_px is not None:
        ring_attrs["axis_error_px"] = round(float(axis_px), 3)

    from tomoqc.models.tiqa import DISTORTIONS, _read_card, card_sha256, patch_from_card, patch_grid

    patch = patch_from_card(_read_card(Path(mpath)))
    py, px, starts = patch_grid((max(h, patch), max(w, patch)), patch)

    params = {
        "input": src_path,
        "dataset": dataset or (vol.attrs.get("dataset") if src_path else "") or "",
        "axis": axis,
        "step": step,
        "shape": [nz, h, w],
        "model_sha256": msha,
        "model_card_sha256": card_sha256(mpath),
        "relative_terms": bool(relative_terms),
        "format_version": _FORMAT_VERSION,
        "measured_terms": bool(measured_terms),
        "ring_center": list(ring_center),
        "tta_views": tta,
        "fill_inclusions": bool(fill_inclusions),
    }

    final = None
    if src_path is not None:
        final = output_path(src_path, out)
    elif out is not None:
        final = Path(out)
    if final is not None:
        final = prepare_output(final, src_path, overwrite)

    dataset_name = params["dataset"]
    chunk = int(chunk_slices or _default_chunk(vol, step, py * px))
    attrs = {
        "title": "tomoqc slice quality",
        "tomoqc_version": __version__,
        "model_id": model_id,
        "model_sha256": msha,
        "model_path": mpath,
        "input": src_path or "",
        "dataset": dataset_name,
        **ring_attrs,
        "axis": axis,
        "step": step,
        "batch_size": batch_size,
        "input_shape": [nz, h, w],
        "input_dtype": str(vol.attrs.get("dtype", vol.dtype)),
        "parameters": json.dumps(
            {"axis": axis, "step": step, "batch_size": batch_size, "chunk_slices": chunk,
             "dataset": dataset_name, "sampling": "grid", "patch": patch,
             "measured_terms": bool(measured_terms), "ring_center": list(ring_center),
             "ring_center_source": ring_source, "tta_views": tta}
        ),
        "tta_views": tta,
    }
    job = ScoreJob(mpath, msha, batch_size, measured_terms, ring_center, tta, grid=(py, px, starts),
                   axis_error=axis_px, relative_terms=relative_terms, patch=patch,
                   fill_inclusions=fill_inclusions)
    run = run_job(
        job, vol, zsel, src_path=src_path, dataset=dataset_name, axis=axis, final=final, params=params,
        attrs=attrs, chunk=chunk, contiguous=step == 1, client=client, cluster=cluster, workers=workers,
        cluster_options=cluster_options, max_in_flight=max_in_flight, progress=progress,
        label=Path(src_path).name if src_path else "volume", overwrite=overwrite,
    )
    if final is not None:
        return open_quality(final)

    import xarray as xr

    attrs.update({"chunk_slices": run.chunk, "created": _now(), "complete": True,
                  "chunks_total": run.chunks_total, "chunks_resumed": 0, "seconds": round(run.seconds, 3)})
    a = run.arrays
    return xr.Dataset(
        {
            "score": (("z",), a["score"]),
            "score_uncertainty": (("z",), a["score_uncertainty"], _UNCERTAINTY_ATTRS),
            "flag": (("z",), a["flag"], {"flag_values": FLAG_VALUES, "flag_meanings": FLAG_MEANINGS}),
            "valid_fraction": (("z",), a["valid_fraction"]),
            "patch_score": (("z", "py", "px"), a["patch_score"]),
            "severity": (("z", "distortion"), a["severity"]),
            **{name: (("z",), a[name], _INDICATOR_ATTRS[name]) for name, _ in INDICATOR_VARIABLES},
            "noise_confound_gap": (("z",), a["noise_confound_gap"], _GAP_ATTRS),
            "inclusion_fraction": (("z",), a["inclusion_fraction"], _INCLUSION_ATTRS),
        },
        coords={
            "z": zsel,
            "distortion": list(DISTORTIONS),
            "patch_y0": ("py", np.unique(starts[:, 0])),
            "patch_x0": ("px", np.unique(starts[:, 1])),
        },
        attrs=attrs,
    )


def _default_chunk(vol, step: int, patches_per_slice: int) -> int:
    """Scored slices per task.

    At least DEFAULT_CHUNK_SLICES, and enough slices for MIN_TASK_PATCHES patches so that
    the fixed cost of a task (scheduling, result transfer, output write) stays small next
    to its inference when slices are small. When every slice is scored, the count is
    rounded up to whole stored chunks along the slicing axis, so that each stored chunk is
    decoded by one task only. Neither rule may take a task past MAX_ALIGNED_CHUNK slices or
    MAX_ALIGNED_BYTES of input.
    """
    slice_bytes = int(np.prod(vol.shape[1:])) * vol.dtype.itemsize
    fits = max(1, min(MAX_ALIGNED_CHUNK, MAX_ALIGNED_BYTES // max(1, slice_bytes)))
    chunk = max(DEFAULT_CHUNK_SLICES, -(-MIN_TASK_PATCHES // max(1, int(patches_per_slice))))
    chunk = min(chunk, max(DEFAULT_CHUNK_SLICES, fits))
    depth = int(vol.attrs.get("storage_depth", 0) or 0)
    if step == 1 and depth > 1:
        aligned = depth * -(-chunk // depth)
        if aligned <= fits:
            chunk = aligned
    return int(chunk)


def open_quality(path, *, require_complete: bool = True):
    """Open a quality output (``<volume>.quality.zarr``) as an :class:`xarray.Dataset`.

    Raises
    ------
    InputError
        The path is missing, not a quality output, or (with ``require_complete``) an
        interrupted run that was never completed.
    """
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such quality output")
    try:
        ds = xr.open_zarr(str(p), consolidated=False)
    except Exception as err:
        raise InputError(p, f"not a quality output (cannot open as zarr: {type(err).__name__})") from None
    if "score" not in ds or "z" not in ds.dims:
        raise InputError(p, "not a quality output (no 'score' variable along z)")
    if require_complete and ds.attrs.get("complete") is not True:
        raise InputError(p, "incomplete quality output (an interrupted run); rerun `tomoqc score` to finish it")
    ds.encoding["source"] = str(p.resolve())
    return ds

