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

Each slice score comes with ``score_uncertainty``, in units of the 1-5 score and roughly
one standard deviation: the spread of the slice score over test-time views of its patches
(identity and transpose by default, up to the 8 flips and rotations of the square), and
the standard error of the mean over its patches, added in quadrature. A slice unlike the
model's training data (:mod:`tomoqc.models.trust`: raw score outside the range seen in
training, or pooled features far from the training features; or, with measured terms, a
missing wedge or a view spacing wider than its term was fitted on, :data:`ONSET_MARGIN`; or a
slice so much smaller than a patch that its padding fills more than :data:`PADDED_OOD_SHARE`
of it; or one whose brightest pixels, a dense minority, set its intensity range,
:data:`TAIL_STRETCH_LIMIT`) is flagged
``FLAG_OOD`` and its uncertainty is inflated by :data:`OOD_UNCERTAINTY`.

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
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.models.batching import pad_batch
from tomoqc.preprocess import normalize_slice_flagged, patch_validity, tail_stretch

__all__ = [
    "severity_baseline",
    "score_calibration",
    "calibration_from_scores",
    "from_baseline",
    "RingTerm",
    "fit_ring_term",
    "DISTORTIONS",
    "HEAD_DISTORTIONS",
    "TTA_PATCHES",
    "PATCH",
    "BACKBONES",
    "patch_from_card",
    "RESIZE_SHORT_SIDE",
    "FLAG_CONSTANT",
    "FLAG_NO_VALID_PATCH",
    "FLAG_PADDED",
    "FLAG_NONFINITE",
    "FLAG_RELAXED",
    "FLAG_OOD",
    "PADDED_OOD_SHARE",
    "TAIL_STRETCH_LIMIT",
    "padded_share",
    "FLAG_NOISE_CONFOUNDED",
    "NOISE_CONFOUND_GAP",
    "FLAG_NAMES",
    "TTA_VIEWS",
    "DEFAULT_TTA_VIEWS",
    "OOD_UNCERTAINTY",
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

#: Impairments a score reports a severity for. The network's severity head has outputs for the
#: first three; ``streak`` (and, with measured terms, all four) is measured.
DISTORTIONS = ("noise", "blur", "ring", "streak")
#: Outputs of the network's severity head.
HEAD_DISTORTIONS = ("noise", "blur", "ring")
PATCH = 224
RESIZE_SHORT_SIDE = 255
SCORE_RANGE = (1.0, 5.0)
SAMPLING_MODES = ("grid", "resize_crop", "random")

# Per-slice flags, a bit mask.
FLAG_CONSTANT = 1  #: the slice has no contrast (constant or no finite value)
FLAG_NO_VALID_PATCH = 2  #: no patch holds sample; the score is NaN
FLAG_PADDED = 4  #: the slice is smaller than a patch and was padded by reflection
FLAG_NONFINITE = 8  #: the slice held NaN or infinite values (set to 0 before scoring)
#: no patch passed :func:`tomoqc.preprocess.patch_validity`; scored from the patches with
#: any structure (:func:`tomoqc.preprocess.patch_has_structure`): saturated, binary, mostly dark
FLAG_RELAXED = 16
#: out of distribution (:mod:`tomoqc.models.trust`): the score is not to be trusted
FLAG_OOD = 32
#: Degrees of an onset indicator (missing wedge, view spacing) beyond the widest its term was
#: fitted on (``measured_terms.<name>_fit.max_reading``) after which a slice is flagged ``FLAG_OOD``.
ONSET_MARGIN = 5.0
#: Share of a patch that reflection padding may fill before the slice is flagged ``FLAG_OOD``
#: (``benchmarks/small_slices.py``: central crops of nine real slices, padded to the patch, move
#: their score from the whole patch's by 0.09-0.12 on average at shares up to 0.20, where at most
#: one of the nine moves by more than twice its stated uncertainty, and by 0.17-0.47 at shares
#: from 0.27 on, where two to four of them do).
PADDED_OOD_SHARE = 0.25
#: :func:`tomoqc.preprocess.tail_stretch` above which a slice is flagged ``FLAG_OOD``: its
#: brightest 1.5 % of pixels stretch the intensity range five times further than its whole bulk
#: spans. Every phantom and HTC2022 image of the study reads at most 0.78, a sparse sample in air
#: (the qim3d fly) up to 2.8, and the widest inputs any training stage saw, the Savu rows 80 and
#: 96 of the series refine and the measured terms' fit, which hold a small dense particle, 4.2-4.3
#: (``benchmarks/bright_inclusions.py``).
TAIL_STRETCH_LIMIT = 5.0
#: the measured noise term may read structure as noise: the score would be at least
#: :data:`NOISE_CONFOUND_GAP` higher with the noise read from the flattest wavelet
#: coefficients (``noise_confound_gap``; :func:`tomoqc.metrics.nr.noise_index`, ``"low_quantiles"``)
FLAG_NOISE_CONFOUNDED = 64
#: Score units by which the low-quantile noise reading must lift a slice's score for
#: :data:`FLAG_NOISE_CONFOUNDED` (``benchmarks/noise_confound.py``): none of the study's 215 real
#: images reaches it (largest 0.17), nor any noise-impaired phantom (0.49); 3 of 52 slices of the
#: folder's other real reconstructions do (a Li-ion cell 0.78, two trabecular bone slices), and
#: clean phantoms of fine sharp particles read up to 1.6.
NOISE_CONFOUND_GAP = 0.5
FLAG_NAMES = {
    FLAG_CONSTANT: "constant",
    FLAG_NO_VALID_PATCH: "no_valid_patch",
    FLAG_PADDED: "padded",
    FLAG_NONFINITE: "nonfinite",
    FLAG_RELAXED: "relaxed",
    FLAG_OOD: "out_of_distribution",
    FLAG_NOISE_CONFOUNDED: "noise_confounded",
}

#: Test-time views of a square patch, in the order they are used: ``tta=2`` takes the
#: first two, ``tta=8`` all eight symmetries of the square.
TTA_VIEWS = ("identity", "transpose", "flip_x", "flip_y", "rot90", "rot180", "rot270", "antitranspose")
#: Views per patch by default: twice the inference of one view (measured: see the card
#: or docs); the spread over views is part of ``score_uncertainty``.
DEFAULT_TTA_VIEWS = 2
#: Added in quadrature to the score uncertainty of an out-of-distribution slice (score units).
OOD_UNCERTAINTY = 1.0
#: Patches of a slice that get the further test-time views.
TTA_PATCHES = 2
#: Share of the gap between the network's score and the score with the measured terms that
#: counts as uncertainty (added in quadrature).
DISAGREEMENT_SHARE = 0.25


def _view(x: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` of :data:`TTA_VIEWS` of a batch of square patches (b, s, s)."""
    if k == 0:
        return x
    if k == 1:
        return x.transpose(0, 2, 1)
    if k == 2:
        return x[:, :, ::-1]
    if k == 3:
        return x[:, ::-1, :]
    if k == 4:
        return np.rot90(x, 1, axes=(1, 2))
    if k == 5:
        return x[:, ::-1, ::-1]
    if k == 6:
        return np.rot90(x, 3, axes=(1, 2))
    return x[:, ::-1, ::-1].transpose(0, 2, 1)

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


def card_sha256(path) -> str:
    """Hex SHA-256 of the model card beside weights file ``path`` (``<stem>.json``; "" when none).

    The card holds the score calibration and the measured terms, so a model is its weights
    *and* its card: outputs are reused only when both are unchanged.
    """
    card = Path(path).with_suffix(".json")
    return file_sha256(card) if card.is_file() else ""


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


#: Backbones :func:`build_tiqa` can build.
BACKBONES = ("efficientnet-b0", "small-cnn")


def _small_cnn(side, seed):
    """The ``small-cnn`` backbone: 8-bit-range RGB in, four stride-2 stages of a 3x3
    convolution, batch normalisation and swish (16, 32, 64, 128 channels) out."""
    import keras
    from keras import layers

    net = keras.Sequential(name="small_cnn")
    net.add(keras.Input(shape=(side, side, 3)))
    net.add(layers.Rescaling(1.0 / 255.0, name="unit_range"))
    for i, ch in enumerate((16, 32, 64, 128)):
        init = keras.initializers.HeNormal(seed=None if seed is None else seed + 100 + i)
        net.add(layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init,
                              name=f"stage{i + 1}_conv"))
        net.add(layers.BatchNormalization(name=f"stage{i + 1}_bn"))
        net.add(layers.Activation("swish", name=f"stage{i + 1}_swish"))
    return net


def build_tiqa(
    *,
    backbone_weights: str | os.PathLike | None = None,
    input_size: int | None = PATCH,
    dense_units: int = 256,
    dropout: float = 0.5,
    bn_momentum: float | None = None,
    seed: int | None = None,
    backbone: str = "efficientnet-b0",
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
    backbone : str
        ``"efficientnet-b0"`` (the TIQA network, the default) or ``"small-cnn"``: four
        stride-2 convolution stages (16-128 channels, about 0.1 M parameters) with the same
        input, heads and layer names, for tests and quick CPU experiments of the training
        and scoring machinery. It is not a quality model of its own.

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
    if backbone not in BACKBONES:
        raise OptionError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if backbone_weights is not None and backbone != "efficientnet-b0":
        raise OptionError("backbone weights are EfficientNet-B0 weights; they need backbone='efficientnet-b0'")

    side = None if input_size is None else int(input_size)
    inp = keras.Input(shape=(side, side, 1), name="patch")
    x = layers.Rescaling(255.0, name="to_8bit_range")(inp)
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    if backbone == "efficientnet-b0":
        net = keras.applications.EfficientNetB0(
            include_top=False,
            weights=backbone_weights,
            input_shape=(side, side, 3),
            pooling=None,
        )
    else:
        net = _small_cnn(side, seed)
    if bn_momentum is not None:
        set_batchnorm_momentum(net, bn_momentum)
    feat = net(x)
    feat = layers.GlobalAveragePooling2D(name="pool")(feat)

    def init(k):
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + k)

    h = layers.Dense(dense_units, activation="relu", kernel_initializer=init(1), name="score_dense")(feat)
    h = layers.Dropout(dropout, seed=seed, name="score_dropout")(h)
    score = layers.Dense(1, kernel_initializer=init(2), name="score")(h)

    s = layers.Dense(dense_units // 2, activation="relu", kernel_initializer=init(3), name="severity_dense")(feat)
    s = layers.Dropout(dropout, seed=None if seed is None else seed + 7, name="severity_dropout")(s)
    severity = layers.Dense(len(HEAD_DISTORTIONS), activation="sigmoid", kernel_initializer=init(4), name="severity")(s)

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


def padded_share(shape, patch: int = PATCH) -> float:
    """The share of a ``patch`` x ``patch`` patch that reflection padding fills for a slice of
    ``shape`` (0 when the slice is at least a patch in both directions)."""
    h, w = (int(v) for v in shape[-2:])
    return 1.0 - min(h, patch) * min(w, patch) / float(patch * patch)


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
    """``severity_baseline`` of a model card as an array in HEAD_DISTORTIONS order (zeros if absent)."""
    b = card.get("severity_baseline") if isinstance(card, dict) else None
    out = np.zeros(len(HEAD_DISTORTIONS), np.float32)
    if isinstance(b, dict):
        for i, d in enumerate(HEAD_DISTORTIONS):
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
            res = model.score_slices(x, raw=True, tta=1, ood=False, measure=False)
            scores.append(res["score"])
            sev.append(res["severity"])
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0, len(HEAD_DISTORTIONS)), np.float32)
    return np.concatenate(scores), np.concatenate(sev)[:, : len(HEAD_DISTORTIONS)]


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
    return {**{d: round(float(v), 6) for d, v in zip(HEAD_DISTORTIONS, med)}, "n": int(len(sev))}


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


def _check_views(views) -> int:
    v = int(views)
    if v not in (1, 2, 4, 8):
        raise OptionError(f"test-time views must be 1, 2, 4 or 8, got {views}")
    return v


def _head_width(model) -> int:
    """Outputs of the network's severity head (3 for noise, blur, ring)."""
    try:
        out = model.output["severity"]
        return int(out.shape[-1])
    except (AttributeError, KeyError, TypeError, IndexError):
        return len(HEAD_DISTORTIONS)


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
    tta_views : int
        Test-time views per patch (:data:`TTA_VIEWS`) when ``score_slices`` is not told.
    raw_range : (float, float) or None
        Test (a) of :mod:`tomoqc.models.trust`: the raw slice scores seen in training.
    trust : tomoqc.models.trust.FeatureDistance or None
        Test (b): the in-distribution statistics of the pooled features, from the card's
        ``trust.features``.
    """

    def __init__(self, keras_model, *, path=None, model_id=None, batch_size: int = 16, card=None,
                 tta_views: int = DEFAULT_TTA_VIEWS):
        from tomoqc.models.trust import CARD_KEY, FeatureDistance, raw_range_from_card

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
        self.patch = patch_from_card(self.card)
        self.severity_baseline = _baseline_from_card(self.card)
        self.calibration = _calibration_from_card(self.card)
        self.ring_term = _ring_term_from_card(self.card)
        from tomoqc.models.measured import MeasuredTerms

        self.measured_terms = MeasuredTerms.from_card(self.card)
        self.tta_views = _check_views(tta_views)
        self.raw_range = raw_range_from_card(self.card)
        entry = self.card.get(CARD_KEY)
        self.trust = FeatureDistance.from_card(entry.get("features")) if isinstance(entry, dict) else None
        self._fn = None
        self._has_features = None

    def __repr__(self) -> str:
        return f"TiqaModel(model_id={self.model_id!r}, path={str(self.path) if self.path else None!r})"

    # -- raw inference -------------------------------------------------------
    def _predict_fn(self):
        """The compiled network call: raw score, raw severity and (when the network has a
        ``pool`` layer) the pooled backbone features, from one forward pass."""
        if self._fn is None:
            import keras
            import tensorflow as tf

            model = self.model
            try:
                pooled = model.get_layer("pool").output
                outs = model.output
                net = keras.Model(model.inputs, [outs["score"], outs["severity"], pooled], name="tiqa_features")
                self._has_features = True
            except (ValueError, KeyError, AttributeError, TypeError):
                net = None
                self._has_features = False

            # no Python control flow inside: autograph off (its source lookup confuses two
            # closures of one name and warns)
            if net is not None:
                @tf.function(reduce_retracing=True, autograph=False)
                def with_features(x):
                    s, v, f = net(x, training=False)
                    return s, v, f

                self._fn = with_features
            else:
                @tf.function(reduce_retracing=True, autograph=False)
                def without_features(x):
                    out = model(x, training=False)
                    return out["score"], out["severity"], tf.zeros((tf.shape(x)[0], 0), tf.float32)

                self._fn = without_features
        return self._fn

    def _infer(self, x: np.ndarray, *, views: int = 1, batch_size: int | None = None, features: bool = False):
        """Raw outputs of patches ``x`` (n, s, s) under ``views`` test-time views.

        Returns raw scores (V, n), raw severities (V, n, k) and, with ``features``, the
        pooled features (V, n, D) (D = 0 for a network without a ``pool`` layer). Views are
        made batch by batch, so memory grows with the batch, not with ``views``.
        """
        n = x.shape[0]
        bs = self.batch_size if batch_size is None else int(batch_size)
        fn = self._predict_fn()
        scores = sev = feats = None
        for v in range(views):
            for i in range(0, n, bs):
                chunk = _view(x[i : i + bs], v)
                m = len(chunk)
                s, sv, f = fn(pad_batch(chunk, bs)[..., None])
                sv = np.asarray(sv)
                if scores is None:
                    scores = np.empty((views, n), np.float32)
                    sev = np.empty((views, n, sv.shape[1]), np.float32)
                    if features:
                        feats = np.empty((views, n, int(f.shape[1])), np.float32)
                scores[v, i : i + m] = np.asarray(s)[:m, 0]
                sev[v, i : i + m] = sv[:m]
                if features:
                    feats[v, i : i + m] = np.asarray(f)[:m]
        return scores, sev, feats

    def _finish(self, scores: np.ndarray, sev: np.ndarray):
        """Calibrate and clip raw scores and measure severities from the clean baseline."""
        if self.calibration is not None:
            scores = np.asarray(self.calibration(scores), np.float32)
        scores = np.clip(scores, *SCORE_RANGE).astype(np.float32)
        b = self.severity_baseline[: sev.shape[-1]]
        if b.any():
            sev = from_baseline(sev, b).astype(np.float32)
        return scores, sev

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
        severity : ndarray of float32, shape (n, k)
            The network's severity outputs (noise, blur and ring: k = 3), in [0, 1].
        """
        x = np.asarray(patches, dtype=np.float32)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3:
            raise InputError(None, f"patches must have shape (n, h, w), got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return np.zeros(0, np.float32), np.zeros((0, _head_width(self.model)), np.float32)
        if not np.isfinite(x).all():
            raise InputError(None, "patches contain NaN or infinite values")
        s, v, _ = self._infer(x, views=1, batch_size=batch_size)
        scores, sev = s[0], v[0]
        if not raw:
            scores, sev = self._finish(scores, sev)
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
        measured_terms: bool = True,
        ring_center=None,
        axis_error: float | None = None,
        relative_terms: bool = False,
        tta: int | None = None,
        ood: bool = True,
        features: bool = False,
        measure: bool = True,
        fill_inclusions: bool = True,
    ) -> dict:
        """Score whole slices of any size.

        Parameters
        ----------
        slices : array_like, shape (n, H, W) or (H, W)
            Raw slices (any dtype and scale); each is normalised with
            :func:`tomoqc.preprocess.normalize_slice` unless ``normalize`` is False.
        mode : {"grid", "resize_crop", "random"}, optional
            ``"grid"``: every patch of :func:`patch_grid`; patches outside the field of view
            or holding only air (:func:`tomoqc.preprocess.patch_validity`, with the slice's
            :func:`tomoqc.preprocess.outside_values`) are left out and NaN in the patch map.
            When no patch of a slice passes but some show structure
            (:func:`tomoqc.preprocess.patch_has_structure`), those are scored and the slice
            is flagged ``FLAG_RELAXED``. ``"resize_crop"``: the TIQA report's single central
            crop after resizing the short side to 255. ``"random"``: RankIQA's mean over
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

        measured_terms : bool
            Apply the model card's measured terms (below); False scores with the network
            alone (the indicators are still measured). Turn it off for samples with thin
            concentric structure of their own centred on the axis, such as a holder's wall.
        ring_center : None, "auto" or (float, float)
            ``(row, col)`` of the rotation axis in the slices, for the ring index; by default
            (None or ``"auto"``) it is found once for all the slices of the call
            (:func:`tomoqc.metrics.rings.resolve_ring_center`: the slice centre unless
            concentric structure about another axis is clearly stronger).
        axis_error : float, optional
            The volume's rotation-axis error in pixels (:func:`tomoqc.metrics.axis.axis_error`),
            when measured once for the whole volume (as :func:`tomoqc.score` does). None:
            measured here, as the median over up to three of the call's slices
            (:func:`tomoqc.metrics.axis.volume_axis_error`), and only with
            ``relative_terms`` when the card's measured terms weigh it.
        relative_terms : bool
            Also apply the card's *relative* measured terms (the rotation-axis error): terms
            that order reconstructions of one scan but must not lower the absolute score of
            a sample (:class:`tomoqc.models.measured.MeasuredTerms`). :func:`tomoqc.compare`
            turns them on; the absolute score leaves them out.
        tta : int, optional
            Test-time views (1, 2, 4 or 8 of :data:`TTA_VIEWS`; default the model's
            ``tta_views``) of up to :data:`TTA_PATCHES` patches of each slice, for the
            spread part of ``score_uncertainty``. Patch scores are the identity view's, so
            scores do not depend on ``tta``.
        ood : bool
            Run the out-of-distribution tests: a slice so much smaller than a patch that
            reflection padding fills more than :data:`PADDED_OOD_SHARE` of it
            (:func:`padded_share`), or whose :func:`tomoqc.preprocess.tail_stretch` exceeds
            :data:`TAIL_STRETCH_LIMIT`, is always out of distribution; the tests of
            :mod:`tomoqc.models.trust` run when the model card holds their statistics.
        features : bool
            Also return the pooled features of the scored patches (to fit the tests).
        measure : bool
            Measure the indicators (False: NaN indicators and no measured terms; for fits
            of the network's own outputs).
        fill_inclusions : bool
            With ``normalize``: fill each slice's dense inclusions (small regions far denser
            than the sample: metal particles, current-collector fragments;
            :mod:`tomoqc.inclusions`) with their surroundings' texture before it is
            normalised, scored and measured, so that they do not move the score; the share
            they covered is returned as ``inclusion_fraction``. False scores the slice as it
            is.

        When the model card has ``measured_terms``
        (:class:`tomoqc.models.measured.MeasuredTerms`), the slice score combines the
        aggregated patch scores with the slice's measured noise, blur, ring and streak
        indicators, every one of which can only lower it, and the severities are the
        measured ones; the patch map stays the network's. (A card of an earlier version
        with a ``ring_term``, :class:`RingTerm`, gets that term instead.)

        Returns
        -------
        dict
            ``score`` (n,) float32, NaN for a slice without a valid patch;
            ``score_uncertainty`` (n,) float32, in units of the score, roughly one standard
            deviation: the standard deviation of the slice score over the test-time views,
            the standard error of the mean over the slice's patches and
            :data:`DISAGREEMENT_SHARE` of the gap between the network's score and the
            score with the measured terms, added in quadrature, plus
            :data:`OOD_UNCERTAINTY` in quadrature for an out-of-distribution slice and
            ``noise_confound_gap`` in quadrature for one flagged ``noise_confounded`` (NaN
            where the score is);
            ``raw_score`` (n,) float32, the mean raw network output (before calibration);
            ``ood_distance`` (n,) float32, the slice's feature distance in units of the
            card's threshold (> 1: out of distribution; NaN without statistics);
            ``patch_score`` (n, py, px) float32, NaN where a patch is excluded (grid mode;
            other modes give (n, 1, 1) holding the slice score);
            ``severity`` (n, len(DISTORTIONS)) float32, mean over valid patches (columns
            the network has no output for are NaN);
            ``flags`` (n,) int32 bit mask (``FLAG_*`` constants, see ``FLAG_NAMES``);
            ``valid_fraction`` (n,) float32, share of patches scored;
            ``ring_index`` (n,) float32, :func:`tomoqc.metrics.rings.ring_index` of the
            normalised slice about ``ring_center`` (NaN for a constant or too small slice);
            ``indicators``: dict of (n,) float32 arrays for noise, blur, ring and streak
            (:func:`tomoqc.models.measured.measure_indicators`); ``network_score`` (n,)
            float32, the score before the measured terms; ``noise_confound_gap`` (n,)
            float32, how much higher the score would be with the noise read from the
            flattest wavelet coefficients (:meth:`~tomoqc.models.measured.MeasuredTerms.noise_confound_gap`;
            NaN without a noise term); ``ring_center`` and
            ``ring_center_source`` (``"given"``, ``"found"`` or ``"slice centre"``);
            ``views`` (int); ``inclusion_fraction`` (n,) float32, the share of each slice's
            pixels filled as dense inclusions (0 without ``fill_inclusions`` or
            ``normalize``); with ``features``, ``features``: a list of (m_i, D) arrays.
        """
        from tomoqc.inclusions import remove_dense_inclusions
        from tomoqc.preprocess import outside_values, patch_has_structure

        mode = self.sampling if mode is None else mode
        if mode not in SAMPLING_MODES:
            raise OptionError(f"mode must be one of {', '.join(SAMPLING_MODES)}, got {mode!r}")
        if quantile is not None and not 0.0 <= float(quantile) <= 1.0:
            raise OptionError(f"quantile must be in [0, 1], got {quantile}")
        if int(n_crops) < 1:
            raise OptionError(f"n_crops must be >= 1, got {n_crops}")
        views = self.tta_views if tta is None else _check_views(tta)
        from tomoqc.metrics.rings import check_center

        ring_center = check_center(ring_center, "ring_center")
        arr = np.asarray(slices)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(None, f"slices must have shape (n, H, W), got {arr.shape}")
        n = arr.shape[0]
        flags = np.zeros(n, np.int32)

        prepared = []
        inclusion_share = np.zeros(n, np.float32)
        # the axis the inclusions keep clear of: the given one, else the slice centre
        inclusion_axis = ring_center if isinstance(ring_center, tuple) else None
        stretch = np.full(n, np.nan)  # tail_stretch of each slice, for the out-of-distribution test
        whole = []  # normalised slices before padding
        measured_on = []  # the slices as given, for the measured indicators (which normalise without clipping)
        for i in range(n):
            sl = arr[i]
            if normalize and fill_inclusions:
                sl, inclusion_share[i] = remove_dense_inclusions(sl, center=inclusion_axis)
            if ood:
                stretch[i] = tail_stretch(sl)
            if normalize:
                if not np.isfinite(sl).all() if np.issubdtype(sl.dtype, np.floating) else False:
                    flags[i] |= FLAG_NONFINITE
                img, constant = normalize_slice_flagged(sl)
                if constant:
                    flags[i] |= FLAG_CONSTANT
                measured_on.append(sl)
            else:
                img = np.asarray(sl, dtype=np.float32)
                if not np.isfinite(img).all():
                    flags[i] |= FLAG_NONFINITE
                    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
            if not normalize:
                measured_on.append(img)
            whole.append(img)
            if mode != "resize_crop":
                img, padded = _pad_to(img, self.patch)
                if padded:
                    flags[i] |= FLAG_PADDED
            prepared.append(img)

        def pick(i, pats, outside):
            """Indices of the patches of slice ``i`` to score; the relaxed test when none passes."""
            keep = [k for k in range(len(pats)) if patch_validity(pats[k], outside=outside)]
            if not keep:
                keep = [k for k in range(len(pats)) if patch_has_structure(pats[k])]
                if keep:
                    flags[i] |= FLAG_RELAXED
            return keep

        rng = np.random.default_rng(seed)
        owners: list[int] = []
        cells: list[int] = []
        batches: list[np.ndarray] = []
        if mode == "grid":
            py, px, starts = patch_grid(prepared[0].shape if n else (self.patch, self.patch), self.patch)
            shape0 = prepared[0].shape if n else None
            for i, img in enumerate(prepared):
                if img.shape != shape0:
                    raise InputError(None, "all slices in one call must have the same shape")
                if flags[i] & FLAG_CONSTANT:
                    continue
                pats = extract_patches(img, starts, self.patch)
                for k in pick(i, pats, outside_values(whole[i])):
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
                pats = random_crops(img, int(n_crops), rng, self.patch)
                for k in pick(i, pats, outside_values(whole[i])):
                    owners.append(i)
                    cells.append(k)
                    batches.append(pats[k])

        want_feats = features or (ood and self.trust is not None)
        owners_a = np.asarray(owners, dtype=np.int64)
        cells_a = np.asarray(cells, dtype=np.int64)
        # the identity view of every patch scores; further views of a few patches per slice
        # measure how much the score moves under flips and turns (the spread part of the
        # uncertainty) at a cost that does not grow with the slice
        tta_sel = np.zeros(len(owners_a), bool)
        if views > 1:
            for i in np.unique(owners_a):
                idx = np.flatnonzero(owners_a == i)
                pick_idx = idx[np.linspace(0, len(idx) - 1, min(len(idx), TTA_PATCHES)).round().astype(int)]
                tta_sel[pick_idx] = True
        tta_spread = {}
        if batches:
            stack = np.stack(batches)
            rs, rv, feats = self._infer(stack, views=1, features=want_feats)
            s_one, v_one = (rs, rv) if raw else self._finish(rs, rv)
            s, v, raw_patch = s_one[0], v_one[0], rs[0]
            if views > 1 and tta_sel.any():
                rs_t, rv_t, _ = self._infer(stack[tta_sel], views=views)
                s_t = rs_t if raw else self._finish(rs_t, rv_t)[0]
                own_t = owners_a[tta_sel]
                for i in np.unique(own_t):
                    tta_spread[int(i)] = s_t[:, own_t == i]  # (V, m_i)
        else:
            k_out = _head_width(self.model)
            s = np.zeros(0, np.float32)
            v = np.zeros((0, k_out), np.float32)
            raw_patch = np.zeros(0, np.float32)
            feats = None

        per_cell = np.full((n, n_cells), np.nan, np.float32)
        if len(owners_a):
            per_cell[owners_a, cells_a] = s
        nd = len(DISTORTIONS)
        k_net = min(v.shape[1], nd)
        score = np.full(n, np.nan, np.float32)
        severity = np.full((n, nd), np.nan, np.float32)
        valid_fraction = np.zeros(n, np.float32)
        uncertainty = np.full(n, np.nan, np.float32)
        raw_score = np.full(n, np.nan, np.float32)
        ood_distance = np.full(n, np.nan, np.float32)
        patch_feats = [] if features else None

        def agg(vals):
            return np.quantile(vals, float(quantile), axis=-1) if quantile is not None else vals.mean(axis=-1)

        for i in range(n):
            sel = owners_a == i
            if features:
                patch_feats.append(feats[:, sel].reshape(-1, feats.shape[-1]) if sel.any() else
                                   np.zeros((0, 0 if feats is None else feats.shape[-1]), np.float32))
            if not sel.any():
                flags[i] |= FLAG_NO_VALID_PATCH
                continue
            vals = s[sel]
            score[i] = agg(vals)
            severity[i, :k_net] = v[sel].mean(axis=0)[:k_net]
            valid_fraction[i] = sel.sum() / n_cells
            raw_score[i] = raw_patch[sel].mean()
            # the slice score's spread over the views, and the standard error over its patches
            tta_sd = 0.0
            if i in tta_spread and tta_spread[i].shape[0] > 1:
                tta_sd = float(np.std(agg(tta_spread[i]), ddof=1))
            m = int(sel.sum())
            se = float(np.std(vals, ddof=1) / np.sqrt(m)) if m > 1 else 0.0
            u2 = tta_sd**2 + se**2
            if ood:
                # a slice much smaller than a patch is scored mostly on a reflection the
                # network never saw
                out = bool(flags[i] & FLAG_PADDED) and padded_share(whole[i].shape, self.patch) > PADDED_OOD_SHARE
                # a dense minority sets the intensity range: the rest of the slice is compressed
                out = out or bool(stretch[i] > TAIL_STRETCH_LIMIT)
                if self.raw_range is not None and not raw:
                    lo, hi = self.raw_range
                    out = out or not lo <= raw_score[i] <= hi
                if self.trust is not None and feats is not None and feats.shape[-1] == self.trust.dim:
                    d = self.trust.slice_distance(feats[:, sel].reshape(-1, feats.shape[-1]))
                    ood_distance[i] = d / self.trust.threshold
                    out = out or bool(ood_distance[i] > 1.0)
                if out:
                    flags[i] |= FLAG_OOD
                    u2 += OOD_UNCERTAINTY**2
            uncertainty[i] = np.sqrt(u2)
        # measured indicators of each whole slice (tomoqc.models.measured), and the terms
        from tomoqc.metrics.rings import resolve_ring_center
        from tomoqc.models.measured import INDICATORS, measure_indicators

        terms = self.measured_terms
        legacy = self.ring_term if terms is None else None
        settings = terms.ring_settings if terms is not None else (legacy.settings if legacy is not None else {})
        live = [i for i in range(n) if not flags[i] & FLAG_CONSTANT] if measure else []
        if live:
            centre, centre_source = resolve_ring_center(np.stack([whole[i] for i in live]), ring_center, **settings)
        else:
            centre, centre_source = None, "slice centre"
        indicators = {k: np.full(n, np.nan, np.float32) for k in INDICATORS}
        axis_val = math.nan
        if live and terms is not None and relative_terms and terms.weighs("axis", relative=True):
            if axis_error is None:
                from tomoqc.metrics.axis import volume_axis_error

                axis_val = volume_axis_error([measured_on[i] for i in live])
            else:
                axis_val = float(axis_error)
        check_noise = terms is not None and measured_terms and not raw and terms.weighs("noise")
        noise_low = np.full(n, np.nan, np.float64)  # the low-quantile noise reading, for the confound check
        for i in live:
            got = measure_indicators(measured_on[i], ring_center=centre, ring_settings=settings, axis=axis_val,
                                     low_quantile_noise=check_noise)
            noise_low[i] = got.pop("noise_low_quantiles", np.nan)
            for k, val in got.items():
                indicators[k][i] = val
        # a wedge, or a view spacing, wider than its term was fitted on is outside the model's experience
        for k in terms.onset if terms is not None and ood and measured_terms and measure and not raw else ():
            top = (terms.info.get(f"{k}_fit") or {}).get("max_reading")
            if top is None or not terms.weighs(k):
                continue
            beyond = np.isfinite(indicators[k]) & (indicators[k] > float(top) + ONSET_MARGIN)
            for i in np.flatnonzero(beyond):
                if not flags[i] & FLAG_OOD:
                    flags[i] |= FLAG_OOD
                    uncertainty[i] = np.sqrt(uncertainty[i] ** 2 + OOD_UNCERTAINTY**2)
        ring_idx = indicators["ring"]
        network_score = score.copy()
        noise_gap = np.full(n, np.nan, np.float32)
        if terms is not None and measured_terms and measure and not raw:
            score = terms.combine(score, indicators, relative=relative_terms).astype(np.float32)
            # where the measured indicators overrule the network, the two disagree: part of
            # that disagreement joins the uncertainty
            gap = np.nan_to_num(np.abs(score - network_score))
            uncertainty = np.sqrt(uncertainty**2 + (DISAGREEMENT_SHARE * gap) ** 2).astype(np.float32)
            if check_noise:
                noise_gap = terms.noise_confound_gap(network_score, indicators, noise_low,
                                                     relative=relative_terms).astype(np.float32)
                confounded = np.isfinite(noise_gap) & (noise_gap >= NOISE_CONFOUND_GAP)
                flags[confounded] |= FLAG_NOISE_CONFOUNDED
                # the score may be too low by the whole gap: it joins the uncertainty in full
                uncertainty = np.where(confounded, np.sqrt(uncertainty**2 + np.nan_to_num(noise_gap) ** 2),
                                       uncertainty).astype(np.float32)
            counted = terms.held(indicators)  # a confounded reading gives no severity either
            for k in INDICATORS:
                if k in terms.severity_lines and k in DISTORTIONS:
                    measured = terms.severity(k, counted[k])
                    col = DISTORTIONS.index(k)
                    ok = np.isfinite(measured) & np.isfinite(score)
                    severity[ok, col] = measured[ok]
        elif legacy is not None and measured_terms and measure and not raw:
            score = np.clip(legacy.combine(score, ring_idx), *SCORE_RANGE).astype(np.float32)
            if legacy.severity_map is not None:
                measured = legacy.severity(ring_idx)
                ok = np.isfinite(measured) & np.isfinite(severity[:, DISTORTIONS.index("ring")])
                severity[ok, DISTORTIONS.index("ring")] = measured[ok]
        if mode == "grid":
            patch_score = per_cell.reshape(n, py, px)
        else:
            patch_score = score.reshape(n, 1, 1).copy()
        out = {
            "score": score,
            "score_uncertainty": uncertainty,
            "raw_score": raw_score,
            "ood_distance": ood_distance,
            "ring_index": ring_idx,
            "indicators": indicators,
            "network_score": network_score,
            "noise_confound_gap": noise_gap,
            "ring_center": centre,
            "ring_center_source": centre_source,
            "patch_score": patch_score,
            "severity": severity,
            "flags": flags,
            "valid_fraction": valid_fraction,
            "mode": mode,
            "views": views,
            "inclusion_fraction": inclusion_share,
        }
        if features:
            out["features"] = patch_feats
        return out


# --------------------------------------------------------------------------- loading


def patch_from_card(card: dict | None) -> int:
    """Side of the patches a model scores (``test_time_sampling.patch`` of its card, else
    :data:`PATCH`).

    A model's calibration, measured terms and out-of-distribution statistics are fitted
    on patches of this side, so it belongs to the model, not to the call."""
    tts = card.get("test_time_sampling") if isinstance(card, dict) else None
    value = tts.get("patch", PATCH) if isinstance(tts, dict) else PATCH
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 32 <= int(value) <= 1024:
        raise InputError(None, f"model card: test_time_sampling.patch must be an integer in 32..1024, got {value!r}")
    return int(value)


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


def load_model(path=None, *, batch_size: int = 16, tta_views: int = DEFAULT_TTA_VIEWS) -> TiqaModel:
    """Load a TIQA model from a ``.keras`` file.

    Parameters
    ----------
    path : path or None
        The weights file; None loads the bundled default
        (``tomoqc/models/weights/tiqa_default.keras``).
    batch_size : int
        Patches per network call.
    tta_views : int
        Test-time views per patch (1, 2, 4 or 8; :data:`TTA_VIEWS`).

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
    return TiqaModel(km, path=p, batch_size=batch_size, card=_read_card(p), tta_views=tta_views)
