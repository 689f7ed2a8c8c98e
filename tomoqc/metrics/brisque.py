"""BRISQUE: natural-scene statistics of a slice, and a support-vector regressor on them.

BRISQUE (Mittal, Moorthy and Bovik [1]_) describes an image by how far the statistics of its
*mean-subtracted contrast-normalised* (MSCN) coefficients stray from those of pristine
natural images, and learns quality from that description with an RBF support-vector
regressor. It is the classic no-reference baseline that learnt scores are compared with.

**Features** (:func:`brisque_features`, 36 numbers, 18 at each of two scales):

* MSCN coefficients ``(I - mu) / (sigma + C)``, where ``mu`` and ``sigma`` are the local mean
  and standard deviation under a 7 x 7 Gaussian window of standard deviation 7/6 px
  (normalised to unit sum, borders replicated), and ``C = 1`` on the paper's 0-255 grey
  scale. (``sigma`` is ``sqrt(|E_w[I^2] - mu^2|)``, the absolute value guarding against
  rounding.)
* A zero-mean generalised Gaussian (GGD) fitted to the MSCN coefficients: shape and variance
  (2 features).
* An asymmetric generalised Gaussian (AGGD) fitted to each of the four products of
  neighbouring MSCN coefficients: horizontal ``(i, j)(i, j+1)``, vertical ``(i, j)(i+1, j)``,
  main diagonal ``(i, j)(i+1, j+1)`` and anti-diagonal ``(i, j)(i+1, j-1)``: shape, mean,
  left variance, right variance (4 x 4 = 16 features).
* The same 18 on the image downsampled by 2 (see *Conventions*).

Both fits are the moment-matching estimators the paper uses: the GGD shape ``a`` solves
``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) = E[|x|]^2 / E[x^2]`` (Sharifi and Leon-Garcia [2]_)
and the AGGD shape solves the same equation for the ratio corrected for asymmetry,
``r * (g^3 + 1)(g + 1) / (g^2 + 1)^2`` with ``g = sigma_l / sigma_r`` (Lasmar, Stitou and
Berthoumieu [3]_), where ``sigma_l^2`` and ``sigma_r^2`` are the mean squares of the negative
and positive values. The equation is solved exactly (monotone table, then Newton steps)
rather than on the 0.001-step grid of the authors' code; shapes are kept to [0.05, 20].
The AGGD mean is ``(sigma_r - sigma_l) Gamma(2/a) / sqrt(Gamma(1/a) Gamma(3/a))``.

**Intensity scale.** BRISQUE is defined on 0-255 grey levels (the constant ``C = 1`` sets how
much a flat region's noise is amplified, so the features are *not* gain invariant).
``uint8`` images are taken as they are. Every other dtype (float reconstructions, 16-bit
stacks, bool) is mapped robustly to 0-255 as ``255 * tomoqc.preprocess.normalize_slice(img)``
(the 0.5th and 99.5th percentiles go to 0 and 255, values beyond are clipped, NaN become 0),
so that its features depend neither on gain nor on offset. The features of an 8-bit image
do not change when a constant is added to it (as long as nothing saturates).

**Conventions.** ``convention="paper"`` (the default) follows the paper's definition; where
the paper leaves a detail open it takes the cleanest reading:

* second scale: low-pass filtering and decimation by 2 as the authors' MATLAB release does
  with ``imresize(I, 0.5)``: the bicubic kernel (``a = -0.5``) stretched by 2 to 8 taps,
  output pixel ``j`` centred on input position ``2j + 0.5``, borders mirrored, ``ceil(n/2)``
  pixels per axis;
* neighbour products only over pairs of pixels that are both inside the image (no
  wrap-around and no zero padding at the border).

``convention="opencv"`` reproduces the C++ release of the authors as ported to OpenCV
contrib (``cv2.quality.QualityBRISQUE_computeFeatures``), which differs in four ways:
the second scale is ``cv2.resize(..., INTER_CUBIC)`` to ``floor(n/2)`` pixels (4-tap cubic,
``a = -0.75``, no low-pass, borders replicated); the MSCN coefficients are fitted with the
AGGD (shape from the asymmetry-corrected ratio, variance ``(sigma_l^2 + sigma_r^2) / 2``);
the neighbour products are zero-padded to the image size at the far border (the zeros count
in ``E[|x|]`` and ``E[x^2]`` but on neither side); and shapes are kept to [0.2, 9.999], the
range of its search grid. It exists so that this implementation can be checked against an
independent one; use the default for new work. (OpenCV also computes in float32 and
searches shapes on a 0.001 grid; here everything is float64 and solved exactly, which leaves
differences below 1e-3 on natural images. Windows of exactly equal grey levels give MSCN
coefficients of exactly 0 here, counted on neither side of the AGGD fits; float32 leaves
residues of random sign there, so on binary or saturated images the two differ more.)

**Regression** (:class:`BrisqueSVR`): features scaled to [-1, 1] per feature (the libsvm
``svm-scale`` step of the release), labels standardised, epsilon-SVR with an RBF kernel
(scikit-learn), optionally with its ``C`` and ``gamma`` chosen by grouped cross-validation.
Models are saved as JSON (see :meth:`BrisqueSVR.save`).

References
----------
.. [1] A. Mittal, A. K. Moorthy and A. C. Bovik, "No-reference image quality assessment in
   the spatial domain", IEEE Trans. Image Process. 21(12), 4695-4708, 2012,
   doi:10.1109/TIP.2012.2214050.
.. [2] K. Sharifi and A. Leon-Garcia, "Estimation of shape parameter for generalized
   Gaussian distributions in subband decompositions of video", IEEE Trans. Circuits Syst.
   Video Technol. 5(1), 52-56, 1995, doi:10.1109/76.350779.
.. [3] N.-E. Lasmar, Y. Stitou and Y. Berthoumieu, "Multiscale skewed heavy tailed model for
   texture analysis", Proc. IEEE ICIP 2009, 2281-2284, doi:10.1109/ICIP.2009.5414404.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, special

from tomoqc.errors import InputError, OptionError
from tomoqc.preprocess import normalize_slice

__all__ = [
    "CONVENTIONS",
    "FEATURE_NAMES",
    "MIN_SIZE",
    "BrisqueSVR",
    "brisque_feature_matrix",
    "brisque_features",
    "mscn_coefficients",
]

CONVENTIONS = ("paper", "opencv")
"""The accepted values of ``convention`` (see the module docstring)."""

MIN_SIZE = 8
"""Smallest image side accepted: the second scale still has 4 x 4 pixels."""

_ORIENTATIONS = ("h", "v", "d1", "d2")
FEATURE_NAMES = tuple(
    f"s{scale}_{name}"
    for scale in (1, 2)
    for name in (
        "mscn_shape",
        "mscn_var",
        *(f"{o}_{p}" for o in _ORIENTATIONS for p in ("shape", "mean", "left_var", "right_var")),
    )
)
"""Names of the 36 features, in the order :func:`brisque_features` returns them."""

# 7-tap Gaussian, sigma 7/6, unit sum: the 7 x 7 window is its outer product with itself
_WINDOW_SIGMA = 7.0 / 6.0
_WINDOW = np.exp(-(np.arange(-3, 4, dtype=np.float64) ** 2) / (2.0 * _WINDOW_SIGMA**2))
_WINDOW /= _WINDOW.sum()


def _keys_cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` at distances ``t``."""
    t = np.abs(np.asarray(t, dtype=np.float64))
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


# imresize(I, 0.5): the a = -0.5 cubic stretched by 2, taps at input offsets -3.5 .. +3.5
# from the output centre 2j + 0.5, normalised to unit sum
_HALVE_ANTIALIAS = _keys_cubic(np.arange(-3.5, 4.0, 1.0) / 2.0, -0.5)
_HALVE_ANTIALIAS /= _HALVE_ANTIALIAS.sum()

# the moment ratio E|x|^2 / E[x^2] of a GGD as a function of its shape, tabulated for inversion
_SHAPE_MIN, _SHAPE_MAX = 0.05, 20.0
_OPENCV_SHAPE_RANGE = (0.2, 9.999)
# |I - mu| below this (grey levels) is rounding, not signal: 8-bit steps are 1, float32 inputs
# mapped to 0-255 resolve ~1e-5
_FLAT_DEVIATION = 1e-9


def _log_moment_ratio(shape):
    """``log(Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)))``: increasing in ``a`` from -inf to log(3/4)."""
    inv = 1.0 / np.asarray(shape, dtype=np.float64)
    return 2.0 * special.gammaln(2.0 * inv) - special.gammaln(inv) - special.gammaln(3.0 * inv)


_SHAPE_TABLE = np.geomspace(_SHAPE_MIN, _SHAPE_MAX, 4001)
_LOG_RATIO_TABLE = _log_moment_ratio(_SHAPE_TABLE)


def _shape_from_ratio(ratio) -> np.ndarray:
    """Invert the GGD moment ratio: the shape ``a`` with ``Gamma(2/a)^2 / (Gamma(1/a)Gamma(3/a)) = ratio``.

    Ratios outside what shapes in [0.05, 20] give are clipped to those ends. Accurate to
    about 1e-12 relative inside the range (a table lookup refined by Newton steps on
    ``log ratio`` as a function of ``log a``).
    """
    target = np.log(np.clip(np.asarray(ratio, dtype=np.float64), 1e-300, None))
    target = np.clip(target, _LOG_RATIO_TABLE[0], _LOG_RATIO_TABLE[-1])
    log_shape = np.interp(target, _LOG_RATIO_TABLE, np.log(_SHAPE_TABLE))
    for _ in range(3):
        a = np.exp(log_shape)
        inv = 1.0 / a
        # d/d(log a) of log ratio = -(1/a) * (4 psi(2/a) - psi(1/a) - 3 psi(3/a))
        slope = -inv * (4.0 * special.digamma(2.0 * inv) - special.digamma(inv) - 3.0 * special.digamma(3.0 * inv))
        log_shape = log_shape - (_log_moment_ratio(a) - target) / slope
        log_shape = np.clip(log_shape, math.log(_SHAPE_MIN), math.log(_SHAPE_MAX))
    return np.exp(log_shape)


def _ggd_fit(values: np.ndarray) -> tuple[float, float]:
    """Moment-matching fit of a zero-mean generalised Gaussian: ``(shape, variance)``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    mean_sq = float(np.square(x).sum()) / x.size
    mean_abs = float(np.abs(x).sum()) / x.size
    if not mean_sq > 0.0:
        raise InputError(None, "the image is flat: its MSCN coefficients are all zero, BRISQUE is undefined")
    return float(_shape_from_ratio(mean_abs * mean_abs / mean_sq)), mean_sq


def _aggd_sides(x: np.ndarray, n_total: int, what: str) -> tuple[float, float, float]:
    """``(sigma_l, sigma_r, ratio)`` of an AGGD fit: side RMS values and the corrected moment ratio.

    ``n_total`` >= ``x.size`` counts extra zeros (the zero padding of the OpenCV convention):
    they enter ``E|x|`` and ``E[x^2]`` but neither side.
    """
    sq = x * x
    neg = x < 0
    n_left = int(np.count_nonzero(neg))
    n_right = int(np.count_nonzero(x > 0))
    if n_left == 0 or n_right == 0:
        side = "negative" if n_left == 0 else "positive"
        raise InputError(
            None, f"the image is too flat or too small for BRISQUE: its {what} have no {side} values"
        )
    sum_sq = float(sq.sum())
    left_sq = float(sq.sum(where=neg))
    right_sq = sum_sq - left_sq
    sigma_l = math.sqrt(left_sq / n_left)
    sigma_r = math.sqrt(right_sq / n_right)
    g = sigma_l / sigma_r
    mean_abs = float(np.abs(x).sum()) / n_total
    ratio = mean_abs * mean_abs / (sum_sq / n_total)
    ratio *= (g**3 + 1.0) * (g + 1.0) / (g * g + 1.0) ** 2
    return sigma_l, sigma_r, ratio


def _aggd_fit(values: np.ndarray, n_total: int | None = None, what: str = "values",
              shape_range: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian.

    Returns
    -------
    shape, mean, left_var, right_var : float
        ``left_var`` and ``right_var`` are ``sigma_l^2`` and ``sigma_r^2``, the mean squares of
        the negative and positive values; ``mean`` is the distribution's mean for that shape.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    sigma_l, sigma_r, ratio = _aggd_sides(x, x.size if n_total is None else n_total, what)
    shape = float(_shape_from_ratio(ratio))
    if shape_range is not None:
        shape = min(max(shape, shape_range[0]), shape_range[1])
    inv = 1.0 / shape
    mean = (sigma_r - sigma_l) * math.exp(
        special.gammaln(2.0 * inv) - 0.5 * (special.gammaln(inv) + special.gammaln(3.0 * inv))
    )
    return shape, mean, sigma_l * sigma_l, sigma_r * sigma_r


def _local_blur(x: np.ndarray) -> np.ndarray:
    """The 7 x 7 Gaussian window (sigma 7/6) applied with replicated borders."""
    return ndimage.correlate1d(
        ndimage.correlate1d(x, _WINDOW, axis=0, mode="nearest"), _WINDOW, axis=1, mode="nearest"
    )


def mscn_coefficients(grey: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + c)`` of a 0-255 image.

    Parameters
    ----------
    grey : ndarray, 2-D, float
        Grey levels on the 0-255 scale.
    c : float
        The stabilising constant (1 on the 0-255 scale, as in the paper).
    """
    mu = _local_blur(grey)
    sigma = np.sqrt(np.abs(_local_blur(grey * grey) - mu * mu))
    deviation = grey - mu
    # a window of equal grey levels has mu equal to them up to rounding (~1e-13 here); its
    # coefficient is exactly 0, which the AGGD fits count on neither side, not a residue of
    # random sign
    deviation[np.abs(deviation) < _FLAT_DEVIATION] = 0.0
    return deviation / (sigma + c)


@functools.lru_cache(maxsize=64)
def _halving_taps(n: int, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, each (m, taps), that downsample a length-``n`` axis by 2.

    ``"paper"``: ``m = ceil(n/2)``, output ``j`` centred on input ``2j + 0.5``, the 8-tap
    stretched ``a = -0.5`` cubic, indices beyond the ends mirrored (edge pixel repeated).
    ``"opencv"``: ``m = floor(n/2)``, output ``j`` at input ``(j + 0.5) n / m - 0.5`` (the exact
    ratio of the sizes, which is not 2 for odd ``n``), the 4-tap ``a = -0.75`` cubic,
    indices clamped to the ends.
    """
    if convention == "paper":
        m = (n + 1) // 2
        idx = 2 * np.arange(m)[:, None] + np.arange(-3, 5)[None, :]
        weights = np.broadcast_to(_HALVE_ANTIALIAS, idx.shape).copy()
        idx = np.mod(idx, 2 * n)
        idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
    else:
        m = n // 2
        pos = (np.arange(m) + 0.5) * (n / m) - 0.5
        base = np.floor(pos)
        offsets = np.arange(-1, 3)
        idx = np.clip(base[:, None].astype(np.int64) + offsets[None, :], 0, n - 1)
        weights = _keys_cubic((pos - base)[:, None] - offsets[None, :], -0.75)
    return idx, weights


def _halve(grey: np.ndarray, convention: str) -> np.ndarray:
    """Downsample an image by 2 along both axes (separable; see :func:`_halving_taps`).

    A weighted sum of gathered rows, then of gathered columns: no matrix product, which
    would hand a small job to a multi-threaded BLAS.
    """
    idx, w = _halving_taps(grey.shape[0], convention)
    rows = w[:, 0, None] * grey[idx[:, 0], :]
    for k in range(1, idx.shape[1]):
        rows += w[:, k, None] * grey[idx[:, k], :]
    idx, w = _halving_taps(grey.shape[1], convention)
    out = w[None, :, 0] * rows[:, idx[:, 0]]
    for k in range(1, idx.shape[1]):
        out += w[None, :, k] * rows[:, idx[:, k]]
    return out


def _neighbour_products(m: np.ndarray) -> tuple[np.ndarray, ...]:
    """Products of MSCN neighbours inside the image: H, V, D1 (main diagonal), D2 (anti-diagonal)."""
    return (
        m[:, :-1] * m[:, 1:],
        m[:-1, :] * m[1:, :],
        m[:-1, :-1] * m[1:, 1:],
        m[1:, :-1] * m[:-1, 1:],
    )


def _scale_features(grey: np.ndarray, convention: str) -> list[float]:
    """The 18 features of one scale."""
    m = mscn_coefficients(grey)
    out: list[float] = []
    if convention == "paper":
        out.extend(_ggd_fit(m))
        shape_range = None
        n_total = None
    else:
        shape_range = _OPENCV_SHAPE_RANGE
        n_total = m.size
        shape, _mean, left_var, right_var = _aggd_fit(m, what="MSCN coefficients", shape_range=shape_range)
        out.extend((shape, 0.5 * (left_var + right_var)))
    for name, product in zip(("horizontal", "vertical", "diagonal", "anti-diagonal"), _neighbour_products(m)):
        out.extend(_aggd_fit(product, n_total, f"{name} neighbour products", shape_range))
    return out


def _grey_levels(img) -> np.ndarray:
    """The image as float64 grey levels on the 0-255 scale (the rule in the module docstring)."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InputError(None, f"BRISQUE needs a 2-D image, got an array of shape {arr.shape}")
    if min(arr.shape) < MIN_SIZE:
        raise InputError(
            None,
            f"BRISQUE needs an image of at least {MIN_SIZE} x {MIN_SIZE} pixels, "
            f"got {arr.shape[0]} x {arr.shape[1]}",
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    return normalize_slice(arr).astype(np.float64) * 255.0


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise OptionError(f"unknown BRISQUE convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


def brisque_features(img, *, convention: str = "paper") -> np.ndarray:
    """The 36 BRISQUE features of a 2-D image.

    Parameters
    ----------
    img : array_like, 2-D
        Any real dtype; ``uint8`` is used as 0-255 grey levels, anything else is mapped to
        0-255 by ``255 * normalize_slice(img)`` (module docstring). At least 8 x 8 pixels.
    convention : {"paper", "opencv"}
        ``"paper"``: the published definition (default). ``"opencv"``: the conventions of
        OpenCV contrib's ``QualityBRISQUE`` (second-scale resampling, MSCN fit, border
        padding), for comparison with it.

    Returns
    -------
    ndarray of float64, shape (36,)
        Per scale (full, then half resolution): MSCN GGD shape and variance, then for the
        horizontal, vertical, diagonal and anti-diagonal neighbour products the AGGD shape,
        mean, left variance and right variance. Names in :data:`FEATURE_NAMES`.

    Raises
    ------
    InputError
        Not 2-D, smaller than 8 x 8, not real-valued, or so flat that a fit is undefined
        (a constant image has all-zero MSCN coefficients).
    OptionError
        Unknown ``convention``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    >>> brisque_features(img).shape
    (36,)
    """
    convention = _check_convention(convention)
    grey = _grey_levels(img)
    feats = _scale_features(grey, convention)
    feats += _scale_features(_halve(grey, convention), convention)
    return np.asarray(feats, dtype=np.float64)


def _image_list(images, what: str) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise OptionError(f"{what} takes a sequence of 2-D images, got one 2-D array; wrap it in a list")
    if isinstance(images, (str, bytes)) or not isinstance(images, (Sequence, np.ndarray)):
        try:
            images = list(images)
        except TypeError:
            raise OptionError(f"{what} takes a sequence of 2-D images, got {type(images).__name__}") from None
    if len(images) == 0:
        raise OptionError(f"{what} got no images")
    return images


def brisque_feature_matrix(images, *, convention: str = "paper") -> np.ndarray:
    """BRISQUE features of many images, one row each.

    Parameters
    ----------
    images : sequence of 2-D arrays, or a 3-D array (a stack along its first axis)
    convention : {"paper", "opencv"}

    Returns
    -------
    ndarray of float64, shape (n_images, 36)

    Raises
    ------
    InputError
        An image cannot be described (the message names its index).
    OptionError
        No images, or a single 2-D array instead of a sequence.
    """
    convention = _check_convention(convention)
    images = _image_list(images, "brisque_feature_matrix")
    out = np.empty((len(images), len(FEATURE_NAMES)), dtype=np.float64)
    for i, img in enumerate(images):
        try:
            out[i] = brisque_features(img, convention=convention)
        except InputError as err:
            raise InputError(None, f"image {i} of {len(images)}: {err.problem}") from None
    return out


_MODEL_FORMAT = "tomoqc-brisque-svr"
_MODEL_VERSION = 1
_DEFAULT_C_GRID = (1.0, 10.0, 100.0)
_DEFAULT_GAMMA_FACTORS = (1.0 / 3.0, 1.0, 3.0)


class BrisqueSVR:
    """RBF support-vector regression from BRISQUE features to quality labels.

    Features are mapped to [-1, 1] per feature (min-max over the training set, as libsvm's
    ``svm-scale`` in the BRISQUE release) and labels are standardised to zero mean and unit
    variance, so ``C`` and ``epsilon`` are in units of the labels' standard deviation and
    the defaults suit any label scale (MOS 1-5, DMOS 0-100, a noise level...).

    Parameters
    ----------
    C : float
        Penalty of the epsilon-SVR (on standardised labels).
    gamma : float or "scale"
        RBF width, ``exp(-gamma * |x - x'|^2)`` on the scaled features; ``"scale"`` is
        ``1 / (n_features * variance of the scaled training features)`` (scikit-learn's rule).
    epsilon : float
        Half-width of the insensitive tube, in standard deviations of the labels.
    search : bool
        Choose ``C`` and ``gamma`` by grouped k-fold cross-validation (mean squared error)
        over ``param_grid`` before the final fit on all the data.
    param_grid : dict, optional
        ``{"C": [...], "gamma": [...], "epsilon": [...]}``, any subset; absent keys use the
        values above. Default: ``C`` in (1, 10, 100) and ``gamma`` in (1/3, 1, 3) times the
        ``"scale"`` value.
    n_splits : int
        Folds of the search (at most the number of groups).
    convention : {"paper", "opencv"}
        Passed to :func:`brisque_features` by :meth:`fit` and :meth:`predict`.
    seed : int
        Seeds the shuffling of groups into folds (the SVR itself is deterministic).

    Attributes
    ----------
    params_ : dict
        ``C``, ``gamma`` (a number), ``epsilon`` of the fitted model.
    cv_results_ : list of dict
        With ``search``: each candidate's parameters and mean/std of the fold MSE (in units
        of the label variance).
    cv_folds_ : list of (ndarray, ndarray)
        With ``search``: the training and held-out indices of each fold; no group is on both
        sides of one.
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted scikit-learn scaler and SVR (after :meth:`fit`, not after :meth:`load`).

    Examples
    --------
    >>> model = BrisqueSVR(seed=0).fit(train_images, train_labels, groups=reference_ids)  # doctest: +SKIP
    >>> scores = model.predict(test_images)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        C: float = 10.0,
        gamma: float | str = "scale",
        epsilon: float = 0.1,
        search: bool = False,
        param_grid: dict | None = None,
        n_splits: int = 5,
        convention: str = "paper",
        seed: int = 0,
    ):
        self.C = C
        self.gamma = gamma
        self.epsilon = epsilon
        self.search = search
        self.param_grid = param_grid
        self.n_splits = n_splits
        self.convention = _check_convention(convention)
        self.seed = seed
        _check_hyper(C, gamma, epsilon)
        if param_grid is not None:
            unknown = set(param_grid) - {"C", "gamma", "epsilon"}
            if unknown:
                raise OptionError(f"param_grid keys must be C, gamma, epsilon; got {', '.join(sorted(unknown))}")
            for key, values in param_grid.items():
                if isinstance(values, (str, bytes)) or len(values) == 0:
                    raise OptionError(f"param_grid[{key!r}] must be a non-empty list of values")
                for v in values:
                    _check_hyper(**{"C": C, "gamma": gamma, "epsilon": epsilon, key: v})
        if not (isinstance(n_splits, int) and n_splits >= 2):
            raise OptionError(f"n_splits must be an integer >= 2, got {n_splits!r}")
        self._fitted: dict | None = None

    # ---- training -----------------------------------------------------------------------
    def fit(self, images, labels, groups=None) -> "BrisqueSVR":
        """Fit on images and their quality labels.

        Parameters
        ----------
        images : sequence of 2-D arrays (any dtype), or a 3-D stack
        labels : array_like of float, one per image
        groups : array_like, optional
            The reference (pristine source) of each image; the search's folds keep each
            reference's images together. Without it every image is its own group.

        Returns
        -------
        self
        """
        return self.fit_features(brisque_feature_matrix(images, convention=self.convention), labels, groups)

    def fit_features(self, X, y, groups=None) -> "BrisqueSVR":
        """Fit on precomputed features (rows of :func:`brisque_features`) and labels.

        ``groups`` as in :meth:`fit`.
        """
        X = _check_features(X)
        y = np.asarray(y, dtype=np.float64).ravel() if _is_numeric(y) else None
        if y is None or y.shape[0] != X.shape[0]:
            raise OptionError(f"labels must be {X.shape[0]} numbers, one per image")
        if not np.isfinite(y).all():
            raise OptionError("labels must be finite numbers")
        if X.shape[0] < 2 or not np.ptp(y) > 0:
            raise OptionError("fitting needs at least two images with different labels")
        y_mean, y_scale = float(y.mean()), float(y.std())
        z = (y - y_mean) / y_scale

        self.cv_results_ = []
        self.cv_folds_ = []
        best = {"C": self.C, "gamma": self.gamma, "epsilon": self.epsilon}
        if self.search:
            best = self._search(X, z, groups)
        gamma = _resolve_gamma(best["gamma"], X)
        pipe = _make_pipeline(best["C"], gamma, best["epsilon"])
        pipe.fit(X, z)
        self.pipeline_ = pipe
        scaler, svr = pipe.named_steps["scale"], pipe.named_steps["svr"]
        self.params_ = {"C": float(best["C"]), "gamma": float(gamma), "epsilon": float(best["epsilon"])}
        self._fitted = {
            "feature_scale": np.asarray(scaler.scale_, dtype=np.float64),
            "feature_offset": np.asarray(scaler.min_, dtype=np.float64),
            "support_vectors": np.asarray(svr.support_vectors_, dtype=np.float64),
            "dual_coef": np.asarray(svr.dual_coef_, dtype=np.float64).ravel(),
            "intercept": float(np.asarray(svr.intercept_).ravel()[0]),
            "label_mean": y_mean,
            "label_scale": y_scale,
        }
        return self

    def _search(self, X: np.ndarray, z: np.ndarray, groups) -> dict:
        """Grouped k-fold search of the grid; fills ``cv_folds_`` and ``cv_results_``, returns the best."""
        from sklearn.model_selection import GroupKFold

        groups = np.arange(X.shape[0]) if groups is None else np.asarray(groups)
        if groups.shape != (X.shape[0],):
            raise OptionError(f"groups must hold one value per image ({X.shape[0]}), got shape {groups.shape}")
        n_splits = min(self.n_splits, np.unique(groups).size)
        if n_splits < 2:
            raise OptionError("the cross-validated search needs images from at least two groups")
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
        self.cv_folds_ = list(splitter.split(X, z, groups))
        grid = dict(self.param_grid or {})
        grid.setdefault("C", list(_DEFAULT_C_GRID))
        grid.setdefault("gamma", [f * _scale_gamma(X) for f in _DEFAULT_GAMMA_FACTORS])
        grid.setdefault("epsilon", [self.epsilon])
        best, best_err = None, math.inf
        for c, g, e in itertools.product(grid["C"], grid["gamma"], grid["epsilon"]):
            errs = []
            for train, test in self.cv_folds_:
                pipe = _make_pipeline(c, _resolve_gamma(g, X[train]), e)
                pipe.fit(X[train], z[train])
                errs.append(float(np.mean((pipe.predict(X[test]) - z[test]) ** 2)))
            row = {"C": c, "gamma": g, "epsilon": e, "mse": float(np.mean(errs)), "mse_std": float(np.std(errs))}
            self.cv_results_.append(row)
            if row["mse"] < best_err:
                best, best_err = {"C": c, "gamma": g, "epsilon": e}, row["mse"]
        return best

    # ---- prediction ---------------------------------------------------------------------
    def predict(self, images) -> np.ndarray:
        """Predicted labels of images (sequence of 2-D arrays, or a 3-D stack)."""
        self._require_fitted()
        return self.predict_features(brisque_feature_matrix(images, convention=self.convention))

    def predict_features(self, X) -> np.ndarray:
        """Predicted labels from precomputed features, shape (n, 36) -> (n,).

        Evaluated here from the stored support vectors,
        ``sum_i alpha_i exp(-gamma |x - s_i|^2) + b`` on the scaled features, then mapped back
        to the label scale, so that a model read by :meth:`load` predicts exactly what the
        fitted one did.
        """
        f = self._require_fitted()
        X = _check_features(X)
        xs = X * f["feature_scale"] + f["feature_offset"]
        sv = f["support_vectors"]
        sv_sq = np.einsum("ij,ij->i", sv, sv)
        out = np.empty(xs.shape[0], dtype=np.float64)
        gamma = self.params_["gamma"]
        for start in range(0, xs.shape[0], 1024):
            block = xs[start : start + 1024]
            d2 = np.einsum("ij,ij->i", block, block)[:, None] + sv_sq[None, :] - 2.0 * block @ sv.T
            np.maximum(d2, 0.0, out=d2)
            out[start : start + block.shape[0]] = np.exp(-gamma * d2) @ f["dual_coef"] + f["intercept"]
        return out * f["label_scale"] + f["label_mean"]

    # ---- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model as JSON.

        JSON rather than a pickle of the scikit-learn objects: loading it runs no code (a
        pickle from an untrusted file can), it does not depend on the scikit-learn version
        that wrote it, and it can be read by eye. Floats are written with ``repr`` and so
        read back bit for bit. The file is written under a temporary name and renamed, so a
        failed save leaves no half-written model.
        """
        f = self._require_fitted()
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise InputError(path, "its folder does not exist")
        doc = {
            "format": _MODEL_FORMAT,
            "version": _MODEL_VERSION,
            "convention": self.convention,
            "feature_names": list(FEATURE_NAMES),
            "params": self.params_,
            "feature_scale": f["feature_scale"].tolist(),
            "feature_offset": f["feature_offset"].tolist(),
            "label_mean": f["label_mean"],
            "label_scale": f["label_scale"],
            "intercept": f["intercept"],
            "dual_coef": f["dual_coef"].tolist(),
            "support_vectors": f["support_vectors"].tolist(),
        }
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, path)
        except OSError as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise InputError(path, f"cannot write the model: {err.strerror or err}") from None

    @classmethod
    def load(cls, path) -> "BrisqueSVR":
        """Read a model written by :meth:`save`.

        Raises
        ------
        InputError
            Missing file, not JSON, or not a BRISQUE SVR model of a known version.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(path, f"not a BRISQUE SVR model (unreadable JSON: {err})".replace("\n", " ")) from None
        if not isinstance(doc, dict) or doc.get("format") != _MODEL_FORMAT:
            raise InputError(path, f"not a BRISQUE SVR model (no \"format\": \"{_MODEL_FORMAT}\" entry)")
        if doc.get("version") != _MODEL_VERSION:
            raise InputError(
                path, f"BRISQUE SVR model version {doc.get('version')!r} is not supported (expected {_MODEL_VERSION})"
            )
        try:
            params = doc["params"]
            model = cls(C=float(params["C"]), gamma=float(params["gamma"]), epsilon=float(params["epsilon"]),
                        convention=doc["convention"])
            n_feat = len(FEATURE_NAMES)
            fitted = {
                "feature_scale": np.asarray(doc["feature_scale"], dtype=np.float64).reshape(n_feat),
                "feature_offset": np.asarray(doc["feature_offset"], dtype=np.float64).reshape(n_feat),
                "support_vectors": np.asarray(doc["support_vectors"], dtype=np.float64).reshape(-1, n_feat),
                "dual_coef": np.asarray(doc["dual_coef"], dtype=np.float64).ravel(),
                "intercept": float(doc["intercept"]),
                "label_mean": float(doc["label_mean"]),
                "label_scale": float(doc["label_scale"]),
            }
        except (KeyError, TypeError, ValueError, OptionError) as err:
            problem = f"damaged BRISQUE SVR model ({type(err).__name__}: {err})".replace("\n", " ")
            raise InputError(path, problem) from None
        if fitted["dual_coef"].size != fitted["support_vectors"].shape[0]:
            raise InputError(path, "damaged BRISQUE SVR model (as many dual coefficients as support vectors expected)")
        model.params_ = {k: float(params[k]) for k in ("C", "gamma", "epsilon")}
        model.cv_results_, model.cv_folds_ = [], []
        model._fitted = fitted
        return model

    def _require_fitted(self) -> dict:
        if self._fitted is None:
            raise OptionError("this BrisqueSVR is not fitted: call fit() or BrisqueSVR.load() first")
        return self._fitted


def _is_numeric(y) -> bool:
    try:
        np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_hyper(C, gamma, epsilon) -> None:
    if not (_is_real(C) and math.isfinite(C) and C > 0):
        raise OptionError(f"C must be a positive number, got {C!r}")
    if not (gamma == "scale" or (_is_real(gamma) and math.isfinite(gamma) and gamma > 0)):
        raise OptionError(f"gamma must be a positive number or 'scale', got {gamma!r}")
    if not (_is_real(epsilon) and math.isfinite(epsilon) and epsilon >= 0):
        raise OptionError(f"epsilon must be a number >= 0, got {epsilon!r}")


def _check_features(X) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptionError("features must be a numeric array of shape (n_images, 36)") from None
    if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES) or X.shape[0] == 0:
        raise OptionError(f"features must have shape (n_images, {len(FEATURE_NAMES)}), got {X.shape}")
    if not np.isfinite(X).all():
        raise OptionError("features hold NaN or infinite values")
    return X


def _scaled_to_unit_range(X: np.ndarray) -> np.ndarray:
    lo, hi = X.min(axis=0), X.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return 2.0 * (X - lo) / span - 1.0


def _scale_gamma(X: np.ndarray) -> float:
    """scikit-learn's ``gamma="scale"`` on the [-1, 1]-scaled features."""
    var = float(_scaled_to_unit_range(X).var())
    return 1.0 / (X.shape[1] * var) if var > 0 else 1.0


def _resolve_gamma(gamma, X: np.ndarray) -> float:
    return _scale_gamma(X) if gamma == "scale" else float(gamma)


def _make_pipeline(C: float, gamma: float, epsilon: float):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import SVR

    return Pipeline(
        [
            ("scale", MinMaxScaler(feature_range=(-1.0, 1.0))),
            ("svr", SVR(kernel="rbf", C=float(C), gamma=float(gamma), epsilon=float(epsilon))),
        ]
    )
