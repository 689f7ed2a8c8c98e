"""The TIQA network: an EfficientNet-B0 that scores patches of tomography slices.

The network follows the score-prediction module of the TIQA method: an EfficientNet-B0
feature extractor [1]_ with global pooling and a small dense head with dropout, first
trained to rank images by distortion level (RankIQA [2]_), then fine-tuned to regress a
1-5 quality score. A second output gives the severity of each distortion type (noise,
blur, ring) in [0, 1], so that a report can say which impairment drives a low score.

Inputs are gray patches normalised to [0, 1] by :func:`tomoqc.preprocess.normalize_slice`.
Inside the model they are scaled to 0-255 and replicated to three channels, the input the
Keras EfficientNet expects (its first layer divides by 255). The backbone is fully
convolutional, so the model accepts any patch size; slices are scored on a grid of
224 x 224 patches.

A model card may add two maps that do not change the network: ``score_calibration`` (a
rising logistic from the raw score to the label scale, per patch) and ``ring_term``
(:class:`RingTerm`: the slice score is bounded by what the slice's measured ring index,
:func:`tomoqc.metrics.rings.ring_index`, allows, and the ring severity is the measured
one). ``raw=True`` gives the network's own outputs.

References
----------
.. [1] M. Tan and Q. V. Le, "EfficientNet: Rethinking model scaling for convolutional
   neural networks", ICML 2019, arXiv:1905.11946.
.. [2] X. Liu, J. van de Weijer and A. D. Bagdanov, "RankIQA: Learning from rankings for
   no-reference image quality assessment", ICCV 2017, doi:10.1109/ICCV.2017.118.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.preprocess import normalize_slice_flagged, patch_validity

__all__ = [
    "severity_baseline",
    "score_calibration",
    "calibration_from_scores",
    "from_baseline",
    "RingTerm",
    "fit_ring_term",
    "DISTORTIONS",
    "PATCH",
    "RESIZE_SHORT_SIDE",
    "FLAG_CONSTANT",
    "FLAG_NO_VALID_PATCH",
    "FLAG_PADDED",
    "FLAG_NONFINITE",
    "FLAG_NAMES",
    "SAMPLING_MODES",
    "build_tiqa",
    "set_batchnorm_momentum",
    "patch_grid",
    "extract_patches",
    "resize_crop",
    "random_crops",
    "TiqaModel",
    "load_model",
    "default_weights_path",
    "file_sha256",
]

DISTORTIONS = ("noise", "blur", "ring")
PATCH = 224
RESIZE_SHORT_SIDE = 255
SCORE_RANGE = (1.0, 5.0)
SAMPLING_MODES = ("grid", "resize_crop", "random")

# Per-slice flags, a bit mask.
FLAG_CONSTANT = 1  #: the slice has no contrast (constant or no finite value)
FLAG_NO_VALID_PATCH = 2  #: no patch holds sample; the score is NaN
FLAG_PADDED = 4  #: the slice is smaller than a patch and was padded by reflection
FLAG_NONFINITE = 8  #: the slice held NaN or infinite values (set to 0 before scoring)
FLAG_NAMES = {
    FLAG_CONSTANT: "constant",
    FLAG_NO_VALID_PATCH: "no_valid_patch",
    FLAG_PADDED: "padded",
    FLAG_NONFINITE: "nonfinite",
}

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_DEFAULT_NAME = "tiqa_default.keras"


def default_weights_path() -> Path:
    """Path of the bundled default model, ``tomoqc/models/weights/tiqa_default.keras``."""
    return _WEIGHTS_DIR / _DEFAULT_NAME


def file_sha256(path) -> str:
    """Hex SHA-256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- model


def set_batchnorm_momentum(model, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNormalization layer in ``model``.

    Keras' EfficientNet uses momentum 0.99: the moving statistics then need several
    hundred steps to follow the batch statistics, longer than a short training run on a
    small generated data set. A smaller momentum (e.g. 0.9) lets inference-mode outputs
    track the weights. Returns the number of layers changed.
    """
    import keras

    n = 0
    stack = [model]
    while stack:
        m = stack.pop()
        for layer in getattr(m, "layers", []):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(momentum)
                n += 1
            elif hasattr(layer, "layers"):
                stack.append(layer)
    return n


def build_tiqa(
    *,
    backbone_weights: str | os.PathLike | None = None,
    input_size: int | None = PATCH,
    dense_units: int = 256,
    dropout: float = 0.5,
    bn_momentum: float | None = None,
    seed: int | None = None,
):
    """Build the TIQA network (Keras 3).

    Parameters
    ----------
    backbone_weights : path or None
        None: a randomly initialised backbone. A path: a local Keras weights file for
        ``keras.applications.EfficientNetB0(include_top=False)`` (e.g. ImageNet weights
        downloaded beforehand); nothing is fetched from the network.
    input_size : int or None
        Side of the square input patches; None accepts any size (fully convolutional).
    dense_units : int
        Width of the hidden dense layer of each head.
    dropout : float
        Dropout rate in the heads (0.5 as in the TIQA report).
    bn_momentum : float or None
        Momentum of the backbone's BatchNormalization layers (None keeps Keras' 0.99).
    seed : int or None
        Seed of the weight initialisers of the heads and of the dropout layers.

    Returns
    -------
    keras.Model
        Input ``patch`` of shape (n, s, s, 1), values in [0, 1]; outputs a dict with
        ``score`` (n, 1), a raw quality score (1-5 after fine-tuning; higher is better), and
        ``severity`` (n, 3), sigmoids for noise, blur and ring.
    """
    import keras
    from keras import layers

    if backbone_weights is not None:
        p = Path(backbone_weights)
        if not p.is_file():
            raise InputError(p, "backbone weights file not found")
        backbone_weights = os.fspath(p)
    if input_size is not None and int(input_size) < 32:
        raise OptionError(f"input_size must be at least 32 pixels, got {input_size}")
    if not 0.0 <= dropout < 1.0:
        raise OptionError(f"dropout must be in [0, 1), got {dropout}")

    side = None if input_size is None else int(input_size)
    inp = keras.Input(shape=(side, side, 1), name="patch")
    x = layers.Rescaling(255.0, name="to_8bit_range")(inp)
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    backbone = keras.applications.EfficientNetB0(
        include_top=False,
        weights=backbone_weights,
        input_shape=(side, side, 3),
        pooling=None,
    )
    if bn_momentum is not None:
        set_batchnorm_momentum(backbone, bn_momentum)
    feat = backbone(x)
    feat = layers.GlobalAveragePooling2D(name="pool")(feat)

    def init(k):
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + k)

    h = layers.Dense(dense_units, activation="relu", kernel_initializer=init(1), name="score_dense")(feat)
    h = layers.Dropout(dropout, seed=seed, name="score_dropout")(h)
    score = layers.Dense(1, kernel_initializer=init(2), name="score")(h)

    s = layers.Dense(dense_units // 2, activation="relu", kernel_initializer=init(3), name="severity_dense")(feat)
    s = layers.Dropout(dropout, seed=None if seed is None else seed + 7, name="severity_dropout")(s)
    severity = layers.Dense(len(DISTORTIONS), activation="sigmoid", kernel_initializer=init(4), name="severity")(s)

    return keras.Model(inp, {"score": score, "severity": severity}, name="tiqa")


# --------------------------------------------------------------------------- patches


def _axis_starts(length: int, patch: int) -> np.ndarray:
    if length <= patch:
        return np.zeros(1, dtype=np.int64)
    n = int(np.ceil(length / patch))
    return np.round(np.linspace(0, length - patch, n)).astype(np.int64)


def patch_grid(shape, patch: int = PATCH):
    """The grid of square patches that covers a slice, overlapping where needed.

    Along each axis of length ``L`` there are ``ceil(L / patch)`` patches whose starts are
    spread evenly from 0 to ``L - patch``, so the first and last patches touch the borders
    and every pixel is covered. A side shorter than ``patch`` gets one patch (the slice is
    padded to ``patch`` before scoring).

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the slice (extra leading dimensions are ignored).
    patch : int
        Patch side.

    Returns
    -------
    py, px : int
        Number of patches along y and x.
    starts : ndarray of int64, shape (py * px, 2)
        (y0, x0) of each patch, row-major (index ``iy * px + ix``).
    """
    if len(shape) < 2:
        raise OptionError(f"a slice shape needs two dimensions, got {tuple(shape)}")
    h, w = int(shape[-2]), int(shape[-1])
    if h < 1 or w < 1:
        raise OptionError(f"empty slice shape {tuple(shape)}")
    ys = _axis_starts(h, patch)
    xs = _axis_starts(w, patch)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    starts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    return len(ys), len(xs), starts


def _pad_to(img: np.ndarray, patch: int) -> tuple[np.ndarray, bool]:
    h, w = img.shape
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph == 0 and pw == 0:
        return img, False
    return np.pad(img, ((0, ph), (0, pw)), mode="symmetric"), True


def extract_patches(img: np.ndarray, starts: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Cut the patches at ``starts`` (from :func:`patch_grid`) out of a 2-D slice."""
    out = np.empty((len(starts), patch, patch), dtype=np.float32)
    for i, (y, x) in enumerate(starts):
        out[i] = img[y : y + patch, x : x + patch]
    return out


def resize_crop(img: np.ndarray, *, short_side: int = RESIZE_SHORT_SIDE, patch: int = PATCH) -> np.ndarray:
    """The TIQA report's test-time sampling (IV.1): resize so that the short side is
    ``short_side`` pixels, then take the central ``patch`` x ``patch`` crop.
    """
    from skimage.transform import resize

    h, w = img.shape
    scale = short_side / min(h, w)
    nh, nw = max(patch, int(round(h * scale))), max(patch, int(round(w * scale)))
    r = resize(img, (nh, nw), order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    y0, x0 = (nh - patch) // 2, (nw - patch) // 2
    return np.ascontiguousarray(r[y0 : y0 + patch, x0 : x0 + patch])


def random_crops(img: np.ndarray, n: int, rng: np.random.Generator, patch: int = PATCH) -> np.ndarray:
    """``n`` random ``patch`` x ``patch`` crops of a 2-D slice (RankIQA's test-time sampling)."""
    h, w = img.shape
    ys = rng.integers(0, h - patch + 1, size=n)
    xs = rng.integers(0, w - patch + 1, size=n)
    return extract_patches(img, np.stack([ys, xs], axis=1), patch)


# --------------------------------------------------------------------------- wrapper


def _baseline_from_card(card: dict) -> np.ndarray:
    """``severity_baseline`` of a model card as an array in DISTORTIONS order (zeros if absent)."""
    b = card.get("severity_baseline") if isinstance(card, dict) else None
    out = np.zeros(len(DISTORTIONS), np.float32)
    if isinstance(b, dict):
        for i, d in enumerate(DISTORTIONS):
            v = b.get(d)
            if isinstance(v, (int, float)) and 0.0 <= float(v) < 1.0:
                out[i] = float(v)
    return out


def _raw_outputs(model, images, *, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Raw slice scores (n,) and severities (n, 3) of ``images``, stacked ``batch`` at a
    time where their shapes agree."""
    scores, sev = [], []
    imgs = list(images)
    for i in range(0, len(imgs), batch):
        group = imgs[i : i + batch]
        stacks = [np.stack(group)] if len({a.shape for a in group}) == 1 else [a[None] for a in group]
        for x in stacks:
            res = model.score_slices(x, raw=True)
            scores.append(res["score"])
            sev.append(res["severity"])
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0, len(DISTORTIONS)), np.float32)
    return np.concatenate(scores), np.concatenate(sev)


def from_baseline(severity, baseline) -> np.ndarray:
    """Severities measured from a clean baseline: ``clip((s - b) / (1 - b), 0, 1)``."""
    s = np.asarray(severity)
    b = np.asarray(baseline, dtype=s.dtype if s.dtype.kind == "f" else np.float64)
    return np.clip((s - b) / (1.0 - b), 0.0, 1.0)


def severity_baseline(model, images, *, batch: int = 32) -> dict:
    """Median raw severity per distortion that ``model`` gives clean ``images``.

    Parameters
    ----------
    model : TiqaModel
    images : sequence of 2-D arrays
        Clean references (e.g. the training set's), any size, raw intensities.

    Returns
    -------
    dict
        ``{"noise": b, "blur": b, "ring": b, "n": count}`` for the model card's
        ``severity_baseline``.
    """
    _, sev = _raw_outputs(model, images, batch=batch)
    sev = sev[np.isfinite(sev).all(axis=1)]
    if not len(sev):
        raise InputError(None, "no clean image could be scored for the severity baseline")
    med = np.median(sev, axis=0)
    return {**{d: round(float(v), 6) for d, v in zip(DISTORTIONS, med)}, "n": int(len(sev))}


def _calibration_from_card(card: dict):
    """The monotone score map of a model card's ``score_calibration``, or None."""
    c = card.get("score_calibration") if isinstance(card, dict) else None
    if not isinstance(c, dict):
        return None
    from tomoqc.metrics.stats import logistic4, logistic5

    kind, params = c.get("kind"), c.get("params")
    if kind not in (4, 5) or not isinstance(params, list) or len(params) != kind:
        return None
    f = logistic5 if kind == 5 else logistic4
    p = [float(v) for v in params]
    return lambda x: f(x, *p)


class RingTerm:
    """The ring term of a slice score: what the measured ring index says the score can be at most.

    The network judges 224 px patches; a ring artifact is a property of the whole slice
    (circles about the rotation axis), and its faintest levels are the ones a patch
    network tells worst from a clean slice. :func:`tomoqc.metrics.rings.ring_index`
    measures the coherent concentric structure directly. The ring term maps it to a
    *ring-limited score* on the label scale,

        g = a + b * ln(max(index, floor))        (b < 0: more rings, lower score)

    fitted on the labels of the training images that hold rings alone
    (:func:`fit_ring_term`), and the slice score becomes the soft minimum of the network's
    (calibrated) slice score ``s`` and ``g``:

        -ln(exp(-k s) + exp(-k g)) / k           (k = ``softness``)

    so that a slice is scored by the worse of "what the network sees" and "what its rings
    allow". Without rings ``g`` is far above 5 and the score is the network's (lowered by
    at most ``ln(2) / k`` where the two meet); with strong rings the ring-limited score
    rules. Stored in the model card as ``ring_term``.

    With a ``severity`` map ``(c0, c1)`` the reported ring severity is measured the same
    way, ``clip(c0 + c1 ln(max(index, floor)), 0, 1)`` (fitted to level / 5 on the same
    images and the clean references), in place of the severity head's ring output: the
    head tells noise from faint rings badly, the ring index does not.
    """

    def __init__(self, a: float, b: float, *, floor: float = 1e-3, softness: float = 10.0, sectors: int = 32,
                 window: float = 4.5, min_radius: float = 12.0, severity=None):
        if not b < 0:
            raise OptionError(f"ring term slope must be negative (more rings, lower score), got {b}")
        if not floor > 0 or not softness > 0:
            raise OptionError(f"ring term floor and softness must be > 0, got {floor} and {softness}")
        self.a, self.b, self.floor, self.softness = float(a), float(b), float(floor), float(softness)
        self.sectors, self.window, self.min_radius = int(sectors), float(window), float(min_radius)
        self.severity_map = None
        if severity is not None:
            c0, c1 = (float(v) for v in severity)
            if not c1 > 0:
                raise OptionError(f"ring severity slope must be positive (more rings, more severe), got {c1}")
            self.severity_map = (c0, c1)

    @property
    def settings(self) -> dict:
        """The :func:`tomoqc.metrics.rings.ring_index` settings the term was fitted with."""
        return {"sectors": self.sectors, "window": self.window, "min_radius": self.min_radius}

    def _log_index(self, index):
        """``(ln(max(index, floor)), finite)`` of ring indices (non-finite ones as the floor)."""
        x = np.asarray(index, np.float64)
        finite = np.isfinite(x)
        return np.log(np.maximum(np.where(finite, x, self.floor), self.floor)), finite

    def severity(self, index) -> np.ndarray:
        """Ring severity (0-1) of ring indices; NaN where the index is NaN or there is no map."""
        lx, finite = self._log_index(index)
        if self.severity_map is None:
            return np.full(lx.shape, np.nan)
        c0, c1 = self.severity_map
        return np.where(finite, np.clip(c0 + c1 * lx, 0.0, 1.0), np.nan)

    def limit(self, index) -> np.ndarray:
        """Ring-limited score ``g`` of ring indices (NaN index: +inf, no limit)."""
        lx, finite = self._log_index(index)
        return np.where(finite, self.a + self.b * lx, np.inf)

    def combine(self, score, index) -> np.ndarray:
        """Soft minimum of slice scores and the ring-limited scores of their ring indices."""
        s = np.asarray(score, np.float64)
        g = self.limit(index)
        k = self.softness
        m = np.minimum(s, g)
        # -ln(e^{-ks} + e^{-kg}) / k, written stably around the smaller of the two
        out = m - np.log1p(np.exp(-k * np.abs(np.where(np.isfinite(g), s - g, np.inf)))) / k
        return np.where(np.isfinite(s), out, np.nan)

    def to_card(self) -> dict:
        return {"a": self.a, "b": self.b, "floor": self.floor, "softness": self.softness, **self.settings,
                "severity": None if self.severity_map is None else list(self.severity_map)}


def _ring_term_from_card(card: dict):
    """The :class:`RingTerm` of a model card's ``ring_term``, or None."""
    c = card.get("ring_term") if isinstance(card, dict) else None
    if not isinstance(c, dict) or "a" not in c or "b" not in c:
        return None
    keys = ("floor", "softness", "sectors", "window", "min_radius", "severity")
    return RingTerm(c["a"], c["b"], **{k: c[k] for k in keys if k in c})


def fit_ring_term(indices, labels, levels=None, *, clean_indices=(), floor: float = 1e-3, softness: float = 10.0,
                  sectors: int = 32, window: float = 4.5, min_radius: float = 12.0) -> dict:
    """Fit a :class:`RingTerm` on images that hold rings alone (for a model card).

    The ring-limited score is the least-squares fit ``label = a + b ln(max(index, floor))``.
    With ``levels`` (each image's ring level, 1-5) the severity map is the least-squares
    fit of ``level / 5`` on ``ln(max(index, floor))`` over those images and the clean
    references ``clean_indices`` (level 0).

    Returns the card entry (``a``, ``b``, ``severity``, the index settings, ``n``, the SROCC
    and PLCC of ``g`` against the labels, the SROCC of the ring severity against the
    level). Raises :class:`OptionError` when fewer than 10 finite pairs are given or a
    fitted slope has the wrong sign (the labels do not fall, or the levels do not rise,
    as the ring index grows: no ring term can be made from them).
    """
    from tomoqc.metrics import stats

    x = np.asarray(indices, np.float64)
    y = np.asarray(labels, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise OptionError("indices and labels must be 1-D arrays of one length")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 10:
        raise OptionError(f"a ring term needs at least 10 images with rings, got {int(ok.sum())}")

    def line(u, v):
        lu = np.log(np.maximum(u, floor))
        (c0, c1), *_ = np.linalg.lstsq(np.stack([np.ones_like(lu), lu], axis=1), v, rcond=None)
        return float(c0), float(c1)

    a, b = line(x[ok], y[ok])
    severity = None
    if levels is not None:
        lv = np.asarray(levels, np.float64)
        if lv.shape != x.shape:
            raise OptionError("levels must have one value per index")
        c = np.asarray(clean_indices, np.float64)
        c = c[np.isfinite(c)]
        sx = np.concatenate([x[ok], c])
        sy = np.concatenate([lv[ok] / 5.0, np.zeros(c.size)])
        severity = line(sx, sy)
    term = RingTerm(a, b, floor=floor, softness=softness, sectors=sectors, window=window, min_radius=min_radius,
                    severity=severity)
    g = term.limit(x[ok])
    out = {**term.to_card(), "n": int(ok.sum()), "srocc": float(stats.srocc(g, y[ok])),
           "plcc": float(stats.plcc(g, y[ok]))}
    if severity is not None:
        out["n_clean"] = int(c.size)
        out["severity_level_srocc"] = float(stats.srocc(term.severity(sx), sy))
    return out


def calibration_from_scores(raw, labels, *, grid: int = 2001) -> dict:
    """Fit a strictly increasing map from raw network scores to labels (for a model card).

    The five-parameter logistic of Sheikh et al. (2006) (:func:`tomoqc.metrics.stats.logistic_fit`)
    is fitted by least squares and kept if it increases everywhere (``b1 b2 > 0``,
    ``b4 >= 0``) and strictly over the range of ``raw`` widened by half its span on each
    side (checked on ``grid`` points); else the four-parameter VQEG logistic if it rises;
    else no map (``kind`` None). The map never falls, and rises strictly over the checked
    range, so rankings there (SROCC, the ordering of levels) are unchanged; far outside it a
    logistic saturates (scores are clipped to 1-5 there anyway). It makes the score follow
    the label scale linearly.

    Returns
    -------
    dict
        ``kind`` (5, 4 or None), ``params``, ``n``, ``plcc_before``, ``plcc_after``,
        ``range`` (min, max of ``raw``).
    """
    from tomoqc.metrics.stats import logistic_fit, plcc

    x = np.asarray(raw, np.float64)
    y = np.asarray(labels, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 10 or np.ptp(x) <= 0:
        raise InputError(None, f"need at least 10 scored, labelled images with distinct scores, got {x.size}")
    lo, hi = float(x.min()), float(x.max())
    pad = 0.5 * (hi - lo)
    t = np.linspace(lo - pad, hi + pad, grid)
    before = float(plcc(x, y))
    out = {"kind": None, "params": None, "n": int(x.size), "plcc_before": before, "plcc_after": before,
           "range": [lo, hi]}
    for kind in (5, 4):
        fit = logistic_fit(x, y, kind=kind)
        b = fit.params
        # increasing everywhere: logistic part rising and linear term not falling (5), or rising (4)
        rising = (b[0] * b[1] > 0 and b[3] >= 0) if kind == 5 else (b[0] > b[1])
        if fit.converged and fit.kind == kind and rising and np.all(np.diff(fit(t)) > 0):
            out.update(kind=kind, params=[float(v) for v in fit.params], plcc_after=float(fit.plcc))
            break
    return out


def score_calibration(model, images, labels, *, batch: int = 32) -> dict:
    """Score ``images`` (raw) with ``model`` and fit :func:`calibration_from_scores` to ``labels``."""
    raw, _ = _raw_outputs(model, images, batch=batch)
    return calibration_from_scores(raw, labels)


class TiqaModel:
    """A loaded TIQA network with batched inference and slice scoring.

    Parameters
    ----------
    keras_model : keras.Model
        A model built by :func:`build_tiqa` (or loaded from a ``.keras`` file).
    path : path or None
        File the model came from.
    model_id : str or None
        Name recorded in outputs; defaults to the file stem and the first 12 hex digits
        of its SHA-256.
    batch_size : int
        Patches per network call. Batches are padded to this size so that the compiled
        inference function is traced once.
    card : dict or None
        The model card (JSON next to the weights), if any.

    Attributes
    ----------
    model_id, sha256, path, card, sampling
        ``sampling`` is the default test-time patch sampling (``"grid"`` unless the model
        card says otherwise).
    severity_baseline : ndarray (3,)
        The severities the network gives clean images, from the model card's
        ``severity_baseline`` (zeros when absent). Reported severities are measured from
        it: ``clip((s - b) / (1 - b), 0, 1)``, so that a clean slice reads about 0 for every
        distortion and the dominant distortion is the one furthest above its clean level.
    calibration : callable or None
        The strictly increasing map from the network's raw score to the label scale, from
        the model card's ``score_calibration`` (:func:`calibration_from_scores`); applied to
        every patch score before clipping to 1-5, unless ``raw``.
    """

    def __init__(self, keras_model, *, path=None, model_id=None, batch_size: int = 16, card=None):
        if int(batch_size) < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size}")
        self.model = keras_model
        self.path = None if path is None else Path(path)
        self.sha256 = file_sha256(self.path) if self.path is not None and self.path.is_file() else None
        self.card = dict(card or {})
        if model_id is None:
            model_id = self.card.get("model_id")
        if model_id is None:
            stem = self.path.stem if self.path is not None else "tiqa"
            model_id = f"{stem}-{self.sha256[:12]}" if self.sha256 else stem
        self.model_id = str(model_id)
        self.batch_size = int(batch_size)
        self.sampling = self.card.get("test_time_sampling", {}).get("mode", "grid") if isinstance(
            self.card.get("test_time_sampling"), dict
        ) else "grid"
        self.severity_baseline = _baseline_from_card(self.card)
        self.calibration = _calibration_from_card(self.card)
        self.ring_term = _ring_term_from_card(self.card)
        self._fn = None

    def __repr__(self) -> str:
        return f"TiqaModel(model_id={self.model_id!r}, path={str(self.path) if self.path else None!r})"

    # -- raw inference -------------------------------------------------------
    def _predict_fn(self):
        if self._fn is None:
            import tensorflow as tf

            model = self.model

            @tf.function(reduce_retracing=True)
            def fn(x):
                out = model(x, training=False)
                return out["score"], out["severity"]

            self._fn = fn
        return self._fn

    def predict_patches(self, patches, *, raw: bool = False, batch_size: int | None = None):
        """Score normalised patches.

        Parameters
        ----------
        patches : array_like, shape (n, s, s) or (n, s, s, 1)
            Patches normalised to [0, 1] (``s`` is usually 224).
        raw : bool
            Return the network's raw outputs: the score not calibrated (``calibration``) and
            not clipped to [1, 5] (useful for a
            model trained only to rank, whose scale is arbitrary) and the severities not
            measured from the clean baseline (``severity_baseline``).
        batch_size : int, optional
            Overrides the model's batch size.

        Returns
        -------
        score : ndarray of float32, shape (n,)
        severity : ndarray of float32, shape (n, 3)
            For noise, blur and ring, in [0, 1].
        """
        x = np.asarray(patches, dtype=np.float32)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3:
            raise InputError(None, f"patches must have shape (n, h, w), got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return np.zeros(0, np.float32), np.zeros((0, len(DISTORTIONS)), np.float32)
        if not np.isfinite(x).all():
            raise InputError(None, "patches contain NaN or infinite values")
        bs = self.batch_size if batch_size is None else int(batch_size)
        fn = self._predict_fn()
        scores = np.empty(n, np.float32)
        sev = np.empty((n, len(DISTORTIONS)), np.float32)
        for i in range(0, n, bs):
            chunk = x[i : i + bs]
            m = len(chunk)
            if m < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], np.float32)])
            s, v = fn(chunk[..., None])
            scores[i : i + m] = np.asarray(s)[:m, 0]
            sev[i : i + m] = np.asarray(v)[:m]
        if not raw:
            if self.calibration is not None:
                scores = np.asarray(self.calibration(scores), np.float32)
            np.clip(scores, *SCORE_RANGE, out=scores)
            b = self.severity_baseline
            if b.any():
                sev = from_baseline(sev, b).astype(np.float32)
        return scores, sev

    # -- slices --------------------------------------------------------------
    def score_slices(
        self,
        slices,
        *,
        mode: str | None = None,
        quantile: float | None = None,
        n_crops: int = 30,
        seed: int = 0,
        raw: bool = False,
        normalize: bool = True,
        ring_term: bool = True,
        ring_center=None,
    ) -> dict:
        """Score whole slices of any size.

        Parameters
        ----------
        slices : array_like, shape (n, H, W) or (H, W)
            Raw slices (any dtype and scale); each is normalised with
            :func:`tomoqc.preprocess.normalize_slice` unless ``normalize`` is False.
        mode : {"grid", "resize_crop", "random"}, optional
            ``"grid"``: every patch of :func:`patch_grid`; patches outside the field of view
            or holding only air (:func:`tomoqc.preprocess.patch_validity`) are left out and
            NaN in the patch map. ``"resize_crop"``: the TIQA report's single central crop
            after resizing the short side to 255. ``"random"``: RankIQA's mean over
            ``n_crops`` random crops (seeded; crops without sample are skipped).
            Defaults to the model card's choice, else ``"grid"``.
        quantile : float in [0, 1], optional
            Aggregate patch scores by this quantile instead of the mean (e.g. 0.1 makes the
            slice score follow its worst regions).
        n_crops, seed : int
            For ``mode="random"``.
        raw : bool
            Aggregate raw network scores instead of scores clipped to [1, 5], without the
            calibration and without the ring term.
        normalize : bool
            Set False when slices are already normalised to [0, 1].

        ring_term : bool
            Apply the model card's ring term (below); False scores with the network alone
            (the ring index is still measured). Turn it off for samples with thin
            concentric structure of their own centred on the axis, such as a holder's wall.
        ring_center : (float, float), optional
            ``(row, col)`` of the rotation axis in the slice, for the ring index; default
            the slice centre (a reconstruction cropped off-axis needs it).

        When the model card has a ``ring_term`` (:class:`RingTerm`), the slice score is the
        soft minimum of the aggregated patch scores and the ring-limited score of the
        slice's ring index (the rotation axis taken at the slice centre), and the ring
        severity is the one the index measures when the term has a severity map; the
        patch map stays the network's.

        Returns
        -------
        dict
            ``score`` (n,) float32, NaN for a slice without a valid patch;
            ``patch_score`` (n, py, px) float32, NaN where a patch is excluded (grid mode;
            other modes give (n, 1, 1) holding the slice score);
            ``severity`` (n, 3) float32, mean over valid patches;
            ``flags`` (n,) int32 bit mask (``FLAG_*`` constants, see ``FLAG_NAMES``);
            ``valid_fraction`` (n,) float32, share of patches scored;
            ``ring_index`` (n,) float32, :func:`tomoqc.metrics.rings.ring_index` of the
            normalised slice about its centre (NaN for a constant or too small slice).
        """
        mode = self.sampling if mode is None else mode
        if mode not in SAMPLING_MODES:
            raise OptionError(f"mode must be one of {', '.join(SAMPLING_MODES)}, got {mode!r}")
        if quantile is not None and not 0.0 <= float(quantile) <= 1.0:
            raise OptionError(f"quantile must be in [0, 1], got {quantile}")
        if int(n_crops) < 1:
            raise OptionError(f"n_crops must be >= 1, got {n_crops}")
        from tomoqc.metrics.rings import check_center, ring_index

        ring_center = check_center(ring_center, "ring_center")
        arr = np.asarray(slices)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(None, f"slices must have shape (n, H, W), got {arr.shape}")
        n = arr.shape[0]
        flags = np.zeros(n, np.int32)

        prepared = []
        whole = []  # normalised slices before padding, for the ring index
        for i in range(n):
            sl = arr[i]
            if normalize:
                if not np.isfinite(sl).all() if np.issubdtype(sl.dtype, np.floating) else False:
                    flags[i] |= FLAG_NONFINITE
                img, constant = normalize_slice_flagged(sl)
                if constant:
                    flags[i] |= FLAG_CONSTANT
            else:
                img = np.asarray(sl, dtype=np.float32)
                if not np.isfinite(img).all():
                    flags[i] |= FLAG_NONFINITE
                    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
            whole.append(img)
            if mode != "resize_crop":
                img, padded = _pad_to(img, PATCH)
                if padded:
                    flags[i] |= FLAG_PADDED
            prepared.append(img)

        rng = np.random.default_rng(seed)
        owners: list[int] = []
        cells: list[int] = []
        batches: list[np.ndarray] = []
        if mode == "grid":
            py, px, starts = patch_grid(prepared[0].shape if n else (PATCH, PATCH))
            shape0 = prepared[0].shape if n else None
            for i, img in enumerate(prepared):
                if img.shape != shape0:
                    raise InputError(None, "all slices in one call must have the same shape")
                if flags[i] & FLAG_CONSTANT:
                    continue
                pats = extract_patches(img, starts)
                for k in range(len(pats)):
                    if patch_validity(pats[k]):
                        owners.append(i)
                        cells.append(k)
                        batches.append(pats[k])
            n_cells = py * px
        elif mode == "resize_crop":
            py = px = 1
            n_cells = 1
            for i, img in enumerate(prepared):
                if flags[i] & FLAG_CONSTANT:
                    continue
                owners.append(i)
                cells.append(0)
                batches.append(resize_crop(img))
        else:  # random
            py = px = 1
            n_cells = int(n_crops)
            for i, img in enumerate(prepared):
                if flags[i] & FLAG_CONSTANT:
                    continue
                pats = random_crops(img, int(n_crops), rng)
                for k in range(len(pats)):
                    if patch_validity(pats[k]):
                        owners.append(i)
                        cells.append(k)
                        batches.append(pats[k])

        if batches:
            s, v = self.predict_patches(np.stack(batches), raw=raw)
        else:
            s = np.zeros(0, np.float32)
            v = np.zeros((0, len(DISTORTIONS)), np.float32)
        owners_a = np.asarray(owners, dtype=np.int64)
        cells_a = np.asarray(cells, dtype=np.int64)

        per_cell = np.full((n, n_cells), np.nan, np.float32)
        if len(owners_a):
            per_cell[owners_a, cells_a] = s
        score = np.full(n, np.nan, np.float32)
        severity = np.full((n, len(DISTORTIONS)), np.nan, np.float32)
        valid_fraction = np.zeros(n, np.float32)
        for i in range(n):
            sel = owners_a == i
            if not sel.any():
                flags[i] |= FLAG_NO_VALID_PATCH
                continue
            vals = s[sel]
            score[i] = np.quantile(vals, float(quantile)) if quantile is not None else vals.mean()
            severity[i] = v[sel].mean(axis=0)
            valid_fraction[i] = sel.sum() / n_cells
        # the ring index of each whole slice (tomoqc.metrics.rings), and the ring term on the slice score
        term = self.ring_term
        settings = term.settings if term is not None else {}
        ring_idx = np.full(n, np.nan, np.float32)
        for i in range(n):
            if not flags[i] & FLAG_CONSTANT:
                ring_idx[i] = ring_index(whole[i], center=ring_center, normalize=False, **settings)
        if term is not None and ring_term and not raw:
            score = np.clip(term.combine(score, ring_idx), *SCORE_RANGE).astype(np.float32)
            if term.severity_map is not None:
                measured = term.severity(ring_idx)
                ok = np.isfinite(measured) & np.isfinite(severity[:, DISTORTIONS.index("ring")])
                severity[ok, DISTORTIONS.index("ring")] = measured[ok]
        if mode == "grid":
            patch_score = per_cell.reshape(n, py, px)
        else:
            patch_score = score.reshape(n, 1, 1).copy()
        return {
            "score": score,
            "ring_index": ring_idx,
            "patch_score": patch_score,
            "severity": severity,
            "flags": flags,
            "valid_fraction": valid_fraction,
            "mode": mode,
        }


# --------------------------------------------------------------------------- loading


def _read_card(path: Path) -> dict:
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        return {}
    try:
        with open(card_path) as fh:
            card = json.load(fh)
        return card if isinstance(card, dict) else {}
    except (OSError, ValueError):
        return {}


def load_model(path=None, *, batch_size: int = 16) -> TiqaModel:
    """Load a TIQA model from a ``.keras`` file.

    Parameters
    ----------
    path : path or None
        The weights file; None loads the bundled default
        (``tomoqc/models/weights/tiqa_default.keras``).
    batch_size : int
        Patches per network call.

    Returns
    -------
    TiqaModel

    Raises
    ------
    InputError
        The file is missing, is not a Keras model archive, or is not a TIQA network.
    """
    p = default_weights_path() if path is None else Path(path)
    if not p.exists():
        hint = " (the bundled default model is not installed)" if path is None else ""
        raise InputError(p, f"model weights file not found{hint}")
    if p.is_dir():
        raise InputError(p, "expected a .keras model file, got a folder")
    if not zipfile.is_zipfile(p):
        raise InputError(p, "not a Keras model file (.keras archive); the file is corrupt or of another type")
    import keras

    try:
        km = keras.saving.load_model(os.fspath(p), compile=False)
    except Exception as err:  # a broken archive raises many different types
        raise InputError(p, f"cannot load the model: {type(err).__name__}: {err}".splitlines()[0][:300]) from None
    outs = km.output if isinstance(km.output, dict) else None
    if outs is None or "score" not in outs or "severity" not in outs:
        raise InputError(p, "not a TIQA model: expected outputs 'score' and 'severity'")
    return TiqaModel(km, path=p, batch_size=batch_size, card=_read_card(p))
