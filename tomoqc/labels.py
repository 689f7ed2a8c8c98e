"""Label projection: quality scores for distorted images from full-reference observers.

The report's data generation (II.1, IV.3, Figure 2) replaces human raters by several
full-reference IQA metrics ("observers"). Each distorted image is compared with its
reference by every observer; each observer's value is normalised and rescaled to the
score range ``[1, s_ref]`` of its reference (``s_ref`` = the reference's human mean
opinion score when one exists, a default otherwise); the generated label is the mean
over the observers. Every observer's raw value and its projection are kept.

Normalisation (what makes labels comparable across references)
--------------------------------------------------------------
Each observer value ``v`` is first turned into a *goodness* ``g`` (higher is better):

==========  =====================================  ==========================
observer    goodness g                             identity (best anchor)
==========  =====================================  ==========================
mse         ``-MSE / data_range**2``               0
psnr        ``min(PSNR, 60 dB)``                   60 dB
ssim        SSIM                                   1
ms_ssim     MS-SSIM                                1
gmsd        ``-GMSD``                              0
mdsi        ``-MDSI``                              0
==========  =====================================  ==========================

(60 dB is about the PSNR of 8-bit quantisation, ``10 log10(12 * 255**2)`` = 58.9 dB:
smaller differences cannot be seen, so they count as identity.) The anchors are fixed
per observer over the whole dataset, not per reference: the best anchor is the
identity value above, the worst anchor is the worst goodness any distorted image of the
dataset reaches (or given explicitly, e.g. those of a training set, so that a test set
is labelled on the same scale). The projection is linear between them::

    q = clip((g - g_worst) / (g_best - g_worst), 0, 1)
    proj = 1 + q * (s_ref - 1)

so the reference itself maps to ``s_ref``, the dataset's worst image to 1, and the same
observer value gives the same projection whichever reference it came from (up to the
reference's own score). ``label`` is the mean of ``proj`` over the observers.

Data range
----------
Images are float32 arrays. The data range of a reference and its distorted versions is
1.0 when the reference lies within [0, 1] (the data engine's convention), otherwise the
reference's ``max - min`` (1.0 if that is zero).

Intensity scale
---------------
With ``intensity="absolute"`` (the default) the observers compare the images in their
own units, with the data range above. With ``intensity="reference"`` both images are
first mapped by the same affine map that sends the reference's robust percentiles
(0.5 and 99.5, those of :func:`tomoqc.preprocess.normalize_slice`) to 0 and 1, and the
data range is 1. Labels then do not change when a reconstruction's intensity units do
(a gain or an offset applied to the reference and its distorted versions alike), which
is what a no-reference network sees: it only ever gets normalised slices. The
bundled model's training script offers it (``--label-intensity reference``); the
bundled model itself was labelled in absolute units (its model card says which).

Calibrated mode
---------------
Where human annotations exist for distorted images, a monotone map (isotonic
regression by pool-adjacent-violators, or the VQEG four-parameter logistic) is fitted
from each observer's goodness to the MOS; each observer's calibrated score is that map,
and the label is their mean. The quality of every fit (n, SROCC, PLCC, RMSE against
the MOS) is reported.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics import fr, stats

__all__ = [
    "DEFAULT_OBSERVERS",
    "project_labels",
    "labelled_phantom_set",
    "PSNR_CAP",
    "data_range_of",
    "INTENSITY_MODES",
    "reference_affine",
    "goodness",
    "best_goodness",
    "observe",
    "project",
    "isotonic_fit",
    "IsotonicMap",
    "Calibration",
    "calibrate",
    "project_dataset",
    "read_manifest_rows",
    "write_manifest_rows",
]

DEFAULT_OBSERVERS = ("mse", "psnr", "ssim", "ms_ssim", "gmsd", "mdsi")
INTENSITY_MODES = ("absolute", "reference")
#: Percentiles of the reference mapped to 0 and 1 in ``intensity="reference"`` mode.
REFERENCE_PERCENTILES = (0.5, 99.5)
PSNR_CAP = 60.0
_NEW_PREFIXES = ("obs_", "proj_", "cal_")
_NEW_COLUMNS = ("label", "label_projected", "mos", "mos_ci")


# ---------------------------------------------------------------------------------------
# observer values and their projection
# ---------------------------------------------------------------------------------------

def data_range_of(reference) -> float:
    """1.0 for a reference within [0, 1], else its ``max - min`` (1.0 when constant)."""
    ref = np.asarray(reference)
    lo, hi = float(np.min(ref)), float(np.max(ref))
    if lo >= 0.0 and hi <= 1.0:
        return 1.0
    span = hi - lo
    return span if span > 0 else 1.0


def reference_affine(reference) -> tuple[float, float] | None:
    """``(lo, hi)``: the reference's robust percentiles mapped to 0 and 1 in
    ``intensity="reference"`` mode; None for a reference without spread (or without a
    finite value), which is then compared in absolute units."""
    ref = np.asarray(reference, dtype=np.float64)
    vals = ref[np.isfinite(ref)]
    if vals.size == 0:
        return None
    lo, hi = np.percentile(vals, REFERENCE_PERCENTILES)
    if not hi > lo:
        return None
    return float(lo), float(hi)


def _unit_map(reference, intensity: str, data_range: float | None = None):
    """``(to_units, data_range)``: the map that takes the reference and its distorted
    versions to the units the observers compare them in, and the data range there."""
    aff = reference_affine(reference) if intensity == "reference" else None
    if aff is None:
        return (lambda a: a), (data_range_of(reference) if data_range is None else float(data_range))
    lo, hi = aff
    return (lambda a: (np.asarray(a, dtype=np.float64) - lo) / (hi - lo)), (
        1.0 if data_range is None else float(data_range))


def _check_intensity(intensity) -> str:
    if intensity not in INTENSITY_MODES:
        raise OptionError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got {intensity!r}")
    return intensity


def _check_names(observers) -> tuple[str, ...]:
    names = tuple(observers)
    if not names:
        raise OptionError("at least one observer is needed")
    bad = [n for n in names if n not in fr.OBSERVERS]
    if bad:
        raise OptionError(
            f"unknown observer(s) {', '.join(bad)}; choose from {', '.join(fr.OBSERVERS)}"
        )
    return names


def goodness(name: str, values, data_range=1.0) -> np.ndarray:
    """Observer values turned into a goodness (higher is better), see the module doc."""
    v = np.asarray(values, dtype=np.float64)
    if name == "mse":
        return -v / np.asarray(data_range, dtype=np.float64) ** 2
    if name == "psnr":
        return np.minimum(v, PSNR_CAP)
    if name in ("ssim", "ms_ssim"):
        return v
    if name in ("gmsd", "mdsi"):
        return -v
    raise OptionError(f"unknown observer {name!r}")


def best_goodness(name: str) -> float:
    """The goodness of identical images (the best anchor)."""
    return {"mse": 0.0, "psnr": PSNR_CAP, "ssim": 1.0, "ms_ssim": 1.0, "gmsd": 0.0, "mdsi": 0.0}[name]


def observe(reference, distorted, *, data_range: float | None = None, observers=DEFAULT_OBSERVERS,
            intensity: str = "absolute") -> dict:
    """Raw observer values of a stack of distorted images against one reference.

    Parameters
    ----------
    reference : (H, W) array
    distorted : (n, H, W) array
    data_range : float, optional
        Defaults to :func:`data_range_of` of the reference (absolute mode) or 1
        (reference mode).
    intensity : {"absolute", "reference"}
        ``reference``: both images are mapped by the reference's
        :func:`reference_affine` first (see the module doc).

    Returns
    -------
    dict
        ``{name: (n,) array}`` of raw values (MSE in the images' units, PSNR in dB, ...).
    """
    names = _check_names(observers)
    ref = np.asarray(reference)
    dist = np.asarray(distorted)
    if dist.ndim == 2:
        dist = dist[None]
    to_units, dr = _unit_map(ref, _check_intensity(intensity), data_range)
    ref, dist = to_units(ref), to_units(dist)
    return {n: fr.OBSERVERS[n].batch(ref, dist, data_range=dr) for n in names}


def project(name: str, values, s_ref, *, worst: float, data_range: float = 1.0) -> np.ndarray:
    """Project raw values of one observer onto ``[1, s_ref]`` with the dataset's worst anchor.

    ``worst`` is in goodness units (see :func:`goodness`).
    """
    g = goodness(name, values, data_range)
    best = best_goodness(name)
    s = np.asarray(s_ref, dtype=np.float64)
    if not best > worst:
        return np.broadcast_to(s, g.shape).astype(np.float64)
    q = np.clip((g - worst) / (best - worst), 0.0, 1.0)
    return 1.0 + q * (s - 1.0)


def project_labels(reference, distorted, *, worst: dict, s_ref: float = 5.0, intensity: str = "absolute",
                   data_range: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Projected labels of a stack of distorted images against one reference, with fixed anchors.

    The per-image step of :func:`project_dataset` when the worst anchors are known (e.g. those a
    labelled dataset recorded): every observer of ``worst`` (``{observer: worst goodness}``)
    that the images are large enough for compares each image with the reference
    (:func:`observe`), its value is projected onto ``[1, s_ref]`` (:func:`project`) and the
    label is the mean over those observers. ``data_range`` as in :func:`observe`. Returns the
    labels ``(n,)`` and the observers used.
    """
    ref = np.asarray(reference, dtype=np.float64)
    side = min(ref.shape)
    used = [n for n in _check_names(worst) if side >= fr.OBSERVERS[n].min_side]
    if not used:
        raise OptionError(f"no observer can score images of {ref.shape[0]}x{ref.shape[1]} px")
    values = observe(ref, distorted, data_range=data_range, observers=used, intensity=intensity)
    _, dr = _unit_map(ref, _check_intensity(intensity), data_range)
    proj = [project(n, values[n], s_ref, worst=float(worst[n]), data_range=dr) for n in used]
    return np.mean(proj, axis=0), used


# ---------------------------------------------------------------------------------------
# calibration: isotonic (pool adjacent violators) and logistic maps
# ---------------------------------------------------------------------------------------

@dataclass
class IsotonicMap:
    """A non-decreasing piecewise-linear map through fitted knots, constant beyond them."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, values) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if self.x.size == 1:
            return np.full(v.shape, self.y[0])
        return np.interp(v, self.x, self.y)


def isotonic_fit(x, y, weights=None, *, increasing: bool = True) -> IsotonicMap:
    """Least-squares isotonic regression by the pool-adjacent-violators algorithm.

    Equal ``x`` values are first merged (weighted mean of their ``y``); then adjacent
    blocks that violate the order are pooled into their weighted mean until the fitted
    values are monotone. The result interpolates linearly between the distinct ``x``.

    References
    ----------
    M. Ayer, H. D. Brunk, G. M. Ewing, W. T. Reid and E. Silverman, "An empirical
    distribution function for sampling with incomplete information", Ann. Math. Statist.
    26(4), 641-647, 1955. https://doi.org/10.1214/aoms/1177728423
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    wa = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not (xa.size == ya.size == wa.size) or xa.size == 0:
        raise fr.MetricInputError("x, y and weights must be non-empty and of equal length")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all() and np.isfinite(wa).all()) or (wa <= 0).any():
        raise fr.MetricInputError("x, y must be finite and weights positive")
    if not increasing:
        ya = -ya
    ux, inv = np.unique(xa, return_inverse=True)
    w = np.bincount(inv, weights=wa)
    m = np.bincount(inv, weights=wa * ya) / w
    # blocks as parallel stacks: mean, weight, count of merged knots
    means: list[float] = []
    wts: list[float] = []
    counts: list[int] = []
    for mi, wi in zip(m, w):
        means.append(float(mi))
        wts.append(float(wi))
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w2 = wts[-2] + wts[-1]
            mu = (means[-2] * wts[-2] + means[-1] * wts[-1]) / w2
            c = counts[-2] + counts[-1]
            del means[-1], wts[-1], counts[-1]
            means[-1], wts[-1], counts[-1] = mu, w2, c
    fitted = np.repeat(np.asarray(means), counts)
    if not increasing:
        fitted = -fitted
    return IsotonicMap(ux, fitted)


@dataclass
class Calibration:
    """A monotone map from an observer's goodness to human scores, and how well it fits."""

    observer: str
    method: str
    func: object
    n: int
    srocc: float
    plcc: float
    rmse: float

    def __call__(self, g) -> np.ndarray:
        return np.clip(self.func(g), 1.0, 5.0)

    def summary(self) -> dict:
        d = {"observer": self.observer, "method": self.method, "n": self.n,
             "srocc": self.srocc, "plcc": self.plcc, "rmse": self.rmse}
        if isinstance(self.func, IsotonicMap):
            d["knots"] = {"x": self.func.x.tolist(), "y": self.func.y.tolist()}
        else:
            d["params"] = np.asarray(self.func.params).tolist()
        return d


def calibrate(g, mos, *, method: str = "isotonic", observer: str = "", weights=None) -> Calibration:
    """Fit a monotone non-decreasing map from goodness ``g`` to human scores ``mos``.

    ``method`` is ``"isotonic"`` (:func:`isotonic_fit`) or ``"logistic"`` (the VQEG
    four-parameter logistic, :func:`tomoqc.metrics.stats.logistic_fit`).
    """
    ga = np.asarray(g, dtype=np.float64).ravel()
    ma = np.asarray(mos, dtype=np.float64).ravel()
    if ga.size < 3:
        raise OptionError(f"calibration needs at least 3 annotated images, got {ga.size}")
    if method == "isotonic":
        func = isotonic_fit(ga, ma, weights)
    elif method == "logistic":
        func = stats.logistic_fit(ga, ma, kind=4)
    else:
        raise OptionError(f"calibration method must be 'isotonic' or 'logistic', got {method!r}")
    fitted = np.clip(func(ga), 1.0, 5.0)
    return Calibration(
        observer=observer,
        method=method,
        func=func,
        n=int(ga.size),
        srocc=stats.srocc(fitted, ma) if ga.size > 1 else math.nan,
        plcc=stats.plcc(fitted, ma) if ga.size > 1 else math.nan,
        rmse=stats.rmse(fitted, ma),
    )


# ---------------------------------------------------------------------------------------
# the dataset manifest
# ---------------------------------------------------------------------------------------

REQUIRED_COLUMNS = ("reference", "distortion", "level", "file")


def read_manifest_rows(directory) -> tuple[list[str], list[dict]]:
    """Read ``DIR/manifest.csv`` as strings: ``(columns, rows)``."""
    d = Path(directory)
    path = d / "manifest.csv"
    if not d.is_dir():
        raise InputError(d, "dataset folder not found")
    if not path.is_file():
        raise InputError(path, "manifest not found (build the dataset with `tomoqc dataset build`)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(path, f"missing column(s): {', '.join(missing)}")
        rows = [dict(r) for r in reader]
    if not rows:
        raise InputError(path, "manifest has no rows")
    return columns, rows


def write_manifest_rows(directory, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """Write ``DIR/manifest.csv`` atomically (temporary sibling, then rename)."""
    path = Path(directory) / "manifest.csv"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow(r)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def _load(directory: Path, manifest: Path, row: dict, line: int) -> np.ndarray:
    rel = row.get("file", "")
    if not rel:
        raise InputError(manifest, f"line {line}: empty file")
    path = directory / rel
    if not path.is_file():
        raise InputError(path, f"image listed on manifest line {line} not found")
    try:
        arr = np.load(path, allow_pickle=False) if path.suffix == ".npy" else _read_image(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read image: {err}") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2-D image, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(path, "image contains NaN or Inf values")
    return arr


def _read_image(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _is_reference(row: dict) -> bool:
    dist = (row.get("distortion") or "").strip().lower()
    try:
        level = float(row.get("level") or 0)
    except ValueError:
        level = math.nan
    return dist in ("none", "", "reference") and level == 0


def _validate_with_dataset_module(directory: Path) -> None:
    """Use the dataset module's reader when it exists, for its checks of the manifest."""
    try:
        from tomoqc.dataset import read_manifest  # type: ignore
    except ImportError:
        return
    read_manifest(directory)



def labelled_phantom_set(directory, *, references: int, seed: int, card: dict | None, size: int = 256,
                         log=print) -> Path:
    """``directory``: phantoms of both domains with every impairment (:func:`tomoqc.dataset.build_dataset`),
    labelled on the anchors of a model ``card`` (``data.labels``) as that model's training data
    were (:func:`project_dataset`); built once, reused when its ``labels.json`` is there."""
    import time

    from tomoqc.dataset import build_dataset

    d = Path(directory)
    if (d / "labels.json").is_file():
        return d
    t0 = time.time()
    if not (d / "manifest.csv").is_file():
        build_dataset(d, references=references, domain="both", size=size, seed=seed, workers=1, progress=False)
    lab = (card or {}).get("data", {}).get("labels") or {}
    anchors = (lab.get("anchors") or {}).get("worst_goodness")
    project_dataset(d, intensity=lab.get("intensity", "absolute"), anchors=anchors, progress=False)
    log(f"built and labelled {d} ({time.time() - t0:.0f} s)")
    return d

def project_dataset(
    directory,
    *,
    reference_score: float = 5.0,
    annotations=None,
    observers: Sequence[str] = DEFAULT_OBSERVERS,
    calibrate_method: str | None = None,
    anchors: dict | None = None,
    intensity: str = "absolute",
    progress: bool = True,
) -> dict:
    """Label every image of a dataset and write the labels into its manifest.

    Parameters
    ----------
    directory : path
        Dataset folder with ``manifest.csv`` (columns at least ``reference``,
        ``distortion``, ``level``, ``file``; references have distortion ``none`` and level
        0). Distorted rows are compared with the reference row of the same ``reference``
        and ``domain``, else of the same ``reference``.
    reference_score : float
        ``s_ref`` of references without a human score (1 < s <= 5).
    annotations : path or dict, optional
        Human ratings (:mod:`tomoqc.annotations` CSV, or ``{image: Mos}``). A reference's
        MOS replaces ``reference_score``; MOS of distorted images feed the calibrated mode.
    observers : sequence of str
        Subset of ``mse, psnr, ssim, ms_ssim, gmsd, mdsi``. MS-SSIM is skipped (and the
        summary says so) when the images are smaller than 161 px.
    calibrate_method : {None, "isotonic", "logistic"}
        Calibrated mode: fit a monotone map from each observer to the MOS of the annotated
        images; ``label`` is then the mean of the calibrated observers.
    anchors : dict, optional
        ``{observer: worst_goodness}`` to use instead of the dataset's own worst values.
        Anchors are in goodness units of the intensity mode they were measured in.
    intensity : {"absolute", "reference"}
        Units the observers compare the images in (module doc, "Intensity scale").
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        Summary: counts, observers used and skipped, anchors, calibration fits. It is also
        written to ``DIR/labels.json``. The manifest gains the columns ``label``,
        ``obs_<name>`` (raw value), ``proj_<name>`` (projection onto ``[1, s_ref]``),
        ``mos``/``mos_ci`` (where annotated) and, in calibrated mode, ``cal_<name>`` and
        ``label_projected``.

    Raises
    ------
    InputError
        The dataset is missing or malformed, or another live process writes it (labels
        it, or builds it): the message names that process and nothing is written.
    """
    # not `from tomoqc import annotations`: the package's `from __future__ import
    # annotations` binds that name to a __future__ feature until the module is imported
    import importlib

    ann = importlib.import_module("tomoqc.annotations")

    directory = Path(directory)
    names = list(_check_names(observers))
    try:
        s_default = float(reference_score)
    except (TypeError, ValueError):
        raise OptionError(f"reference score must be a number, got {reference_score!r}") from None
    if not (1.0 < s_default <= 5.0):
        raise OptionError(f"reference score must be in (1, 5], got {reference_score!r}")
    if calibrate_method not in (None, "isotonic", "logistic"):
        raise OptionError(f"calibration must be 'isotonic' or 'logistic', got {calibrate_method!r}")
    _check_intensity(intensity)
    if calibrate_method and annotations is None:
        raise OptionError("calibrated mode needs human annotations (--annotations CSV)")

    if not directory.is_dir():  # before the lock: its file goes beside the folder
        raise InputError(directory, "dataset folder not found")
    from tomoqc.locks import OutputLock

    # one writer of a dataset at a time: the same lock as `tomoqc dataset build` (tomoqc.io.atomic_path)
    with OutputLock(directory):
        columns, rows = read_manifest_rows(directory)
        _validate_with_dataset_module(directory)
        manifest = directory / "manifest.csv"

        mos_by_file: dict = {}
        if annotations is not None:
            table = ann.read_annotations(annotations) if not isinstance(annotations, dict) else annotations
            mos_by_file = ann.match_images(table, [r["file"] for r in rows])
            if not mos_by_file:
                raise InputError(
                    annotations if not isinstance(annotations, dict) else manifest,
                    "no annotated image matches a file of the dataset manifest",
                )

        # group rows: reference rows by (reference, domain) and by reference
        ref_rows: dict = {}
        for i, r in enumerate(rows):
            if _is_reference(r):
                ref_rows.setdefault((r["reference"], r.get("domain", "")), i)
                ref_rows.setdefault((r["reference"], None), i)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            if _is_reference(r):
                continue
            key = ref_rows.get((r["reference"], r.get("domain", "")), ref_rows.get((r["reference"], None)))
            if key is None:
                raise InputError(manifest, f"line {i + 2}: no reference row (distortion none, level 0) for reference {r['reference']!r}")
            groups.setdefault(key, []).append(i)
        for i, r in enumerate(rows):
            if _is_reference(r) and i not in groups and ref_rows.get((r["reference"], r.get("domain", ""))) == i:
                groups.setdefault(i, [])

        # which observers can run on these images
        skipped: dict[str, str] = {}
        raw = {n: np.full(len(rows), np.nan) for n in names}
        dr_of = np.full(len(rows), np.nan)
        s_ref_of = np.full(len(rows), np.nan)
        ref_index = np.full(len(rows), -1, dtype=np.int64)

        from rich.progress import Progress

        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("labelling", total=len(groups))
            for ri, members in groups.items():
                ref = _load(directory, manifest, rows[ri], ri + 2)
                side = min(ref.shape)
                for n in list(names):
                    need = fr.OBSERVERS[n].min_side
                    if side < need and n not in skipped:
                        skipped[n] = f"images of {ref.shape[0]}x{ref.shape[1]} px are under the {need} px {n} needs"
                to_units, dr = _unit_map(ref, intensity)
                ref = to_units(ref)
                rf = rows[ri]["file"]
                s_ref = mos_by_file[rf].mos if rf in mos_by_file else s_default
                if s_ref <= 1.0:
                    s_ref = 1.0
                for i in [ri, *members]:
                    dr_of[i] = dr
                    s_ref_of[i] = s_ref
                    ref_index[i] = ri
                for n in names:
                    raw[n][ri] = fr.OBSERVERS[n].best
                if members:
                    stack = np.empty((len(members),) + ref.shape, dtype=np.float64)
                    for k, i in enumerate(members):
                        img = _load(directory, manifest, rows[i], i + 2)
                        if img.shape != ref.shape:
                            raise InputError(
                                directory / rows[i]["file"],
                                f"shape {img.shape} differs from its reference {rows[ri]['file']} {ref.shape}",
                            )
                        stack[k] = to_units(img)
                    active = [n for n in names if n not in skipped]
                    values = observe(ref.astype(np.float64), stack, data_range=dr, observers=active)
                    for n, v in values.items():
                        raw[n][members] = v
                bar.advance(task)

        used = [n for n in names if n not in skipped]
        if not used:
            raise OptionError("no observer can score these images: " + "; ".join(skipped.values()))
        labelled = ref_index >= 0
        distorted = labelled & np.array([not _is_reference(r) for r in rows])

        # anchors: the worst goodness of any distorted image, per observer
        worst: dict[str, float] = {}
        for n in used:
            if anchors and n in anchors:
                worst[n] = float(anchors[n])
            elif distorted.any():
                worst[n] = float(np.min(goodness(n, raw[n][distorted], 1.0) if n != "mse"
                                        else goodness(n, raw[n][distorted], dr_of[distorted])))
            else:
                worst[n] = best_goodness(n)

        proj = {}
        for n in used:
            p = np.full(len(rows), np.nan)
            p[labelled] = project(n, raw[n][labelled], s_ref_of[labelled], worst=worst[n], data_range=dr_of[labelled])
            proj[n] = p
        label_projected = np.mean([proj[n] for n in used], axis=0)

        summary: dict = {
            "dataset": str(directory),
            "n_images": int(labelled.sum()),
            "n_references": len(groups),
            "observers": used,
            "skipped": skipped,
            "reference_score": s_default,
            "intensity": intensity,
            "psnr_cap_db": PSNR_CAP,
            "anchors": {n: {"best": best_goodness(n), "worst": worst[n]} for n in used},
            "annotated_images": len(mos_by_file),
            "calibration": None,
        }

        label = label_projected
        cal_values = {}
        if calibrate_method:
            idx = np.array([i for i, r in enumerate(rows) if r["file"] in mos_by_file and labelled[i]])
            if idx.size < 3:
                raise OptionError(f"calibration needs at least 3 annotated images in the dataset, found {idx.size}")
            mos = np.array([mos_by_file[rows[i]["file"]].mos for i in idx])
            fits = {}
            for n in used:
                g = goodness(n, raw[n], dr_of if n == "mse" else 1.0)
                cal = calibrate(g[idx], mos, method=calibrate_method, observer=n)
                fits[n] = cal.summary()
                c = np.full(len(rows), np.nan)
                c[labelled] = cal(g[labelled])
                cal_values[n] = c
            label = np.mean([cal_values[n] for n in used], axis=0)
            summary["calibration"] = {
                "method": calibrate_method,
                "n": int(idx.size),
                "observers": fits,
                "label": {
                    "srocc": stats.srocc(label[idx], mos),
                    "plcc": stats.plcc(label[idx], mos),
                    "rmse": stats.rmse(label[idx], mos),
                },
                "label_projected": {
                    "srocc": stats.srocc(label_projected[idx], mos),
                    "plcc": stats.plcc(label_projected[idx], mos),
                    "rmse": stats.rmse(label_projected[idx], mos),
                },
            }

        # manifest columns: keep the dataset's own, replace any earlier labelling columns
        keep = [c for c in columns if c not in _NEW_COLUMNS and not c.startswith(_NEW_PREFIXES)]
        new_cols = ["label"]
        if calibrate_method:
            new_cols.append("label_projected")
        if mos_by_file:
            new_cols += ["mos", "mos_ci"]
        new_cols += [f"obs_{n}" for n in used] + [f"proj_{n}" for n in used]
        if calibrate_method:
            new_cols += [f"cal_{n}" for n in used]
        out_rows = []
        for i, r in enumerate(rows):
            o = {c: r.get(c, "") for c in keep}
            if labelled[i]:
                o["label"] = _fmt(label[i])
                if calibrate_method:
                    o["label_projected"] = _fmt(label_projected[i])
                for n in used:
                    o[f"obs_{n}"] = _fmt(raw[n][i])
                    o[f"proj_{n}"] = _fmt(proj[n][i])
                    if calibrate_method:
                        o[f"cal_{n}"] = _fmt(cal_values[n][i])
            m = mos_by_file.get(r["file"])
            if m is not None:
                o["mos"] = _fmt(m.mos)
                o["mos_ci"] = _fmt(m.ci_half_width)
            out_rows.append(o)
        write_manifest_rows(directory, keep + new_cols, out_rows)

        label_json = directory / "labels.json"
        tmp = label_json.with_name(f".{label_json.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, default=_json_default)
        os.replace(tmp, label_json)
        return summary


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
