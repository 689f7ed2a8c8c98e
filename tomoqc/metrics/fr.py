"""Full-reference image-quality metrics ("observers").

Every metric is called as ``f(reference, distorted, *, data_range=None)`` on two 2-D
images and returns a Python float. Beside each there is a batched form, ``f_batch``,
that takes stacks shaped ``(..., H, W)`` (a 2-D reference is broadcast against a stack
of distorted images) and returns one value per image as a NumPy array; a stack is
filtered in one call over its last two axes, so scoring many slices costs one pass.

=========  ======================  ===========  =============================
name       paper                   best value   direction
=========  ======================  ===========  =============================
mse        (definition)            0            lower is better
psnr       (definition)            +inf         higher is better
ssim       Wang et al. 2004        1            higher is better
ms_ssim    Wang et al. 2003        1            higher is better
gmsd       Xue et al. 2014         0            lower is better
mdsi       Nafchi et al. 2016      0            lower is better
=========  ======================  ===========  =============================

Data range
----------
``data_range`` is the distance between the smallest and largest value the images can
take (255 for 8-bit images, 1 for images scaled to [0, 1]). It is required for
floating-point images; for integer images it defaults to the width of the dtype's range
(255 for ``uint8``, 65535 for ``uint16`` and ``int16``), as in scikit-image.

The conventions that decide the digits (window, constants, downsampling, padding and
pooling) are stated in each function's Notes; with them the values agree with the
published reference implementations to better than 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from tomoqc.errors import InputError

__all__ = [
    "MetricInputError",
    "OBSERVERS",
    "Observer",
    "mse",
    "psnr",
    "ssim",
    "ms_ssim",
    "gmsd",
    "mdsi",
    "mse_batch",
    "psnr_batch",
    "ssim_batch",
    "ms_ssim_batch",
    "gmsd_batch",
    "mdsi_batch",
    "matlab_round",
    "MS_SSIM_WEIGHTS",
    "MS_SSIM_MIN_SIDE",
]


class MetricInputError(InputError, ValueError):
    """Arrays given to a metric that it cannot compare (shape, dtype, NaN/Inf, range)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


#: Weights of the five scales of MS-SSIM (Wang, Simoncelli and Bovik 2003, section 3.1).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Smallest image side MS-SSIM accepts: an 11-pixel window must fit the fifth scale.
MS_SSIM_MIN_SIDE = (11 - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161


def matlab_round(x: float) -> int:
    """Round half away from zero for non-negative ``x``, as MATLAB's ``round`` does.

    Python's :func:`round` rounds half to even (``round(2.5) == 2``), which gives other
    downsampling factors than the reference MATLAB code for sides such as 640 or 1152.
    """
    return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------

def _resolve_range(dtypes, data_range) -> float:
    if data_range is None:
        kinds = {np.dtype(d).kind for d in dtypes}
        if kinds <= {"u", "i"}:
            widths = [np.iinfo(d).max - np.iinfo(d).min for d in dtypes]
            return float(max(widths))
        raise MetricInputError(
            "images are floating point, so data_range must be given "
            "(e.g. data_range=1.0 for images in [0, 1], 255.0 for 8-bit values)"
        )
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise MetricInputError(f"data_range must be a positive number, got {data_range!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise MetricInputError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _as_float(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "uif":
        raise MetricInputError(f"{what} must be a real-valued numeric image, got dtype {arr.dtype}")
    # float32 stays float32 (no copy): SSIM works in it, the others convert to float64
    out = arr if arr.dtype == np.float32 else arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(out).all():
        raise MetricInputError(f"{what} contains NaN or Inf values")
    return out


def _prepare(reference, distorted, data_range, *, batch: bool):
    ref_in = np.asarray(reference)
    dist_in = np.asarray(distorted)
    if batch:
        if ref_in.ndim < 2 or dist_in.ndim < 2:
            raise MetricInputError(
                f"expected stacks of 2-D images shaped (..., H, W), got shapes "
                f"{ref_in.shape} and {dist_in.shape}"
            )
        if ref_in.shape[-2:] != dist_in.shape[-2:]:
            raise MetricInputError(
                f"reference and distorted images differ in shape: {ref_in.shape} vs {dist_in.shape}"
            )
        try:
            shape = np.broadcast_shapes(ref_in.shape, dist_in.shape)
        except ValueError:
            raise MetricInputError(
                f"reference stack {ref_in.shape} cannot be paired with distorted stack {dist_in.shape}"
            ) from None
    else:
        if ref_in.ndim != 2 or dist_in.ndim != 2:
            raise MetricInputError(
                f"expected two 2-D images, got shapes {ref_in.shape} and {dist_in.shape} "
                "(use the *_batch form for stacks)"
            )
        if ref_in.shape != dist_in.shape:
            raise MetricInputError(
                f"reference and distorted images differ in shape: {ref_in.shape} vs {dist_in.shape}"
            )
        shape = ref_in.shape
    if min(shape[-2:]) < 1 or 0 in shape:
        raise MetricInputError(f"images are empty (shape {shape})")
    dr = _resolve_range((ref_in.dtype, dist_in.dtype), data_range)
    ref = _as_float(ref_in, "reference")
    dist = _as_float(dist_in, "distorted")
    return ref, dist, dr, shape


def _check_min_side(shape, side: int, name: str):
    if min(shape[-2:]) < side:
        raise MetricInputError(
            f"{name} needs images at least {side}x{side} pixels, got {shape[-2]}x{shape[-1]}"
        )


# ---------------------------------------------------------------------------------------
# filtering helpers (all act on the last two axes, so stacks are one call)
# ---------------------------------------------------------------------------------------

def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - r
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


_GAUSS_SIGMA = 1.5
_GAUSS_RADIUS = 5
# scipy's radius is int(truncate * sigma + 0.5): 3.5 * 1.5 + 0.5 = 5.75 -> 5, an 11-tap window
_GAUSS_TRUNCATE = 3.5
_GAUSS = _gaussian_kernel(2 * _GAUSS_RADIUS + 1, _GAUSS_SIGMA)


def _gauss_valid_inplace(a: np.ndarray, *, inplace: bool = True) -> np.ndarray:
    """11x11 Gaussian (sigma 1.5, unit sum) of a 2-D array; returns the valid region.

    The separable filter runs on the image (scipy's C code) and the 5-pixel border where
    the window would leave the image is cut off, so the boundary mode never enters the
    result. The second pass runs only on the rows that are kept. With ``inplace`` the
    array is overwritten (and a view of it returned).
    """
    r = _GAUSS_RADIUS
    tmp = ndimage.correlate1d(a, _GAUSS, axis=0, mode="reflect", output=a if inplace else None)
    rows = tmp[r : a.shape[0] - r]
    ndimage.correlate1d(rows, _GAUSS, axis=1, mode="reflect", output=rows)
    return rows[:, r : a.shape[1] - r]


_LOW_PRECISION = {np.dtype(t) for t in (np.float16, np.float32, np.uint8, np.int8, np.uint16, np.int16)}


def _work_dtype(*arrays) -> type:
    """float32 when every input is float32 or narrower (as scikit-image does), else float64."""
    if all(np.asarray(a).dtype in _LOW_PRECISION for a in arrays):
        return np.float32
    return np.float64


def _block_mean(x: np.ndarray, f: int, pad_mode: str) -> np.ndarray:
    """MATLAB ``filter(ones(f)/f^2, 'same')`` followed by ``x(1:f:end, 1:f:end)``.

    MATLAB centres an f-wide box at offset ``(f-1)//2`` before and ``f//2`` after a pixel;
    sampling every f-th output from the first is then a mean over blocks of the image padded
    by ``(f-1)//2`` before and ``f//2`` after (with zeros for ``conv2``/``imfilter`` default,
    mirrored for ``'symmetric'``).
    """
    if f <= 1:
        return x
    lo, hi = (f - 1) // 2, f // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(lo, hi), (lo, hi)]
    p = np.pad(x, pad, mode=pad_mode)
    h, w = p.shape[-2] // f * f, p.shape[-1] // f * f
    p = p[..., :h, :w]
    p = p.reshape(p.shape[:-2] + (h // f, f, w // f, f))
    return p.mean(axis=(-3, -1))


_PREWITT_DIFF = np.array([1.0, 0.0, -1.0])
_PREWITT_AVG = np.array([1.0, 1.0, 1.0]) / 3.0


def _prewitt(x: np.ndarray):
    """Prewitt gradients (kernels divided by 3) with zero padding, as MATLAB's conv2 'same'.

    The sign convention does not matter: only magnitudes are used.
    """
    gx = ndimage.correlate1d(x, _PREWITT_DIFF, axis=-1, mode="constant", cval=0.0)
    ndimage.correlate1d(gx, _PREWITT_AVG, axis=-2, mode="constant", cval=0.0, output=gx)
    gy = ndimage.correlate1d(x, _PREWITT_DIFF, axis=-2, mode="constant", cval=0.0)
    ndimage.correlate1d(gy, _PREWITT_AVG, axis=-1, mode="constant", cval=0.0, output=gy)
    return gx, gy


def _magnitude(gx, gy):
    return np.sqrt(gx * gx + gy * gy)


def _prewitt_magnitude(x: np.ndarray) -> np.ndarray:
    """Gradient magnitude with Prewitt kernels divided by 3 and zero padding (conv2 'same')."""
    return _magnitude(*_prewitt(x))


def _per_image(impl, ref, dist, shape, *args) -> np.ndarray:
    """Apply a 2-D metric to each image of a stack (one at a time stays in cache)."""
    lead = shape[:-2]
    rs = np.broadcast_to(ref, shape).reshape((-1,) + shape[-2:])
    ds = np.broadcast_to(dist, shape).reshape((-1,) + shape[-2:])
    out = np.array([impl(r, d, *args) for r, d in zip(rs, ds)], dtype=np.float64)
    return out.reshape(lead)


# ---------------------------------------------------------------------------------------
# MSE / PSNR
# ---------------------------------------------------------------------------------------

def _mse(ref, dist):
    d = np.subtract(ref, dist, dtype=np.float64)
    return np.mean(d * d, axis=(-2, -1))


def _psnr(ref, dist, dr):
    m = _mse(ref, dist)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(dr * dr / m)


def mse(reference, distorted, *, data_range=None) -> float:
    """Mean squared error in the images' own units, ``mean((reference - distorted)**2)``.

    ``data_range`` does not enter the value, so it may be omitted even for floating-point
    images; it is accepted (and checked when given) so that every observer has the same
    signature. Identical images give 0.
    """
    ref, dist, _, _ = _prepare(reference, distorted, data_range if data_range is not None else 1.0, batch=False)
    return float(_mse(ref, dist))


def mse_batch(reference, distorted, *, data_range=None) -> np.ndarray:
    """Batched :func:`mse` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, _, shape = _prepare(reference, distorted, data_range if data_range is not None else 1.0, batch=True)
    return _per_image(_mse, ref, dist, shape)


def psnr(reference, distorted, *, data_range=None) -> float:
    """Peak signal-to-noise ratio, ``10 log10(data_range**2 / MSE)`` in dB.

    Identical images give ``inf``.
    """
    ref, dist, dr, _ = _prepare(reference, distorted, data_range, batch=False)
    return float(_psnr(ref, dist, dr))


def psnr_batch(reference, distorted, *, data_range=None) -> np.ndarray:
    """Batched :func:`psnr` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=True)
    return _per_image(_psnr, ref, dist, shape, dr)


# ---------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# ---------------------------------------------------------------------------------------

K1, K2 = 0.01, 0.03


def _moments(img: np.ndarray, center: float, dr: float, wd) -> tuple:
    """Local mean and mean square (valid region) of ``(img - center) / dr``."""
    x = np.subtract(img, center, dtype=wd)
    x *= 1.0 / dr
    xx = x * x
    return x, _gauss_valid_inplace(x, inplace=False), _gauss_valid_inplace(xx)


def _ssim_cs_2d(rm, dm, cn: float):
    """Mean SSIM and mean contrast-structure term from the moments of two images."""
    x, mx, mxx = rm
    y, my, myy = dm
    mxy = _gauss_valid_inplace(x * y)
    c1, c2 = K1 * K1, K2 * K2  # data range 1 after scaling
    # cs = (2 cov + C2) / (var_x + var_y + C2), population (biased) local moments; the
    # moments are of centred values, which keeps float32 free of cancellation
    # written so that identical inputs give exactly 1 in any precision: var_x + var_y is
    # then computed as 2 cov
    vx = mxx - mx * mx  # new array: the reference's moments may be reused for a stack
    vy = myy
    vy -= my * my
    num = mxy
    num -= mx * my
    num *= 2.0
    num += c2
    vx += vy
    vx += c2
    cs = np.divide(num, vx, out=num)
    # luminance = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with the centre added back
    ux = mx + cn
    uy = my + cn
    lum = ux * uy
    lum *= 2.0
    lum += c1
    ux *= ux
    uy *= uy
    ux += uy
    ux += c1
    lum /= ux
    lum *= cs
    return float(np.mean(lum, dtype=np.float64)), float(np.mean(cs, dtype=np.float64))


def _ssim_cs(x, y, dr, wd=np.float64):
    """Mean SSIM and mean contrast-structure term over the valid region, per image.

    ``x`` (reference) and ``y`` are ``(..., H, W)`` and broadcast against each other. Images
    are processed one at a time (a stack filtered at once runs out of cache and is slower);
    a reference shared by a stack is filtered once.
    """
    shape = np.broadcast_shapes(x.shape, y.shape)
    lead = shape[:-2]
    n = int(np.prod(lead)) if lead else 1
    shared = x.ndim == 2 or int(np.prod(x.shape[:-2])) == 1
    if shared:
        xs = x.reshape((1,) + x.shape[-2:])
    else:
        xs = np.broadcast_to(x, shape).reshape((-1,) + shape[-2:])
    ys = np.broadcast_to(y, shape).reshape((-1,) + shape[-2:])
    ssim_out = np.empty(n)
    cs_out = np.empty(n)
    cache = None
    for i in range(n):
        xi = xs[0] if shared else xs[i]
        if cache is None or not shared:
            center = float(np.mean(xi))
            cache = (center, _moments(xi, center, dr, wd))
        center, rm = cache
        dm = _moments(ys[i], center, dr, wd)
        ssim_out[i], cs_out[i] = _ssim_cs_2d(rm, dm, center / dr)
    return ssim_out.reshape(lead), cs_out.reshape(lead)


def _ssim_impl(ref, dist, dr, shape, downsample, wd=np.float64):
    if downsample:
        f = max(1, matlab_round(min(shape[-2:]) / 256.0))
        if f > 1:
            ref = _block_mean(ref, f, "symmetric")
            dist = _block_mean(dist, f, "symmetric")
    _check_min_side(ref.shape, 11, "SSIM (11x11 window)")
    return _ssim_cs(ref, dist, dr, wd)[0]


def ssim(reference, distorted, *, data_range=None, downsample: bool = False) -> float:
    """Structural similarity index (SSIM) of Wang et al. (2004).

    Parameters
    ----------
    reference, distorted : array_like, 2-D
        Images of equal shape, integer or floating point.
    data_range : float, optional
        Value range of the images (required for floating-point images).
    downsample : bool, default False
        Apply the automatic downsampling of the authors' ``ssim.m``: a box filter of side
        ``f = max(1, round(min(H, W) / 256))`` (MATLAB rounding, half up) with symmetric
        padding, then every ``f``-th pixel.

    Returns
    -------
    float
        Mean SSIM over the valid region, 1 for identical images.

    Notes
    -----
    As in the paper: an 11x11 circular-symmetric Gaussian window with standard deviation
    1.5 (normalised to unit sum), ``C1 = (0.01 L)**2``, ``C2 = (0.03 L)**2`` with ``L`` the
    data range, population (biased) local variances, and the mean of the SSIM map over the
    pixels where the window lies wholly inside the image (5 pixels are dropped on each side).
    scikit-image gives the same value with
    ``structural_similarity(a, b, data_range=L, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``; its defaults (7x7 uniform window, sample covariance)
    are not the paper's. SSIM is symmetric in its arguments.

    Precision: like scikit-image, images whose dtype is float32 or narrower (including
    8- and 16-bit integers) are filtered in float32, others in float64. Local moments are
    taken of values centred on the reference's mean and divided by the data range, which
    keeps float32 free of cancellation: results differ from a float64 computation by
    about 1e-6.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE Trans. Image Process. 13(4), 600-612,
    2004. https://doi.org/10.1109/TIP.2003.819861
    """
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=False)
    return float(_ssim_impl(ref, dist, dr, shape, downsample, _work_dtype(reference, distorted)))


def ssim_batch(reference, distorted, *, data_range=None, downsample: bool = False) -> np.ndarray:
    """Batched :func:`ssim` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=True)
    return np.asarray(_ssim_impl(ref, dist, dr, shape, downsample, _work_dtype(reference, distorted)), dtype=np.float64)


def _halve_replicate(x):
    """Pad one replicated row and column at the top/left when a side is odd, then 2x2 mean."""
    x = np.asarray(x, dtype=np.float64)
    p = max(x.shape[-2] % 2, x.shape[-1] % 2)
    if p:
        pad = [(0, 0)] * (x.ndim - 2) + [(p, 0), (p, 0)]
        x = np.pad(x, pad, mode="edge")
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return x.reshape(x.shape[:-2] + (h // 2, 2, w // 2, 2)).mean(axis=(-3, -1))


def _ms_ssim_impl(ref, dist, dr, shape, wd=np.float64):
    _check_min_side(shape, MS_SSIM_MIN_SIDE, "MS-SSIM (5 scales, 11x11 window)")
    weights = np.asarray(MS_SSIM_WEIGHTS)
    values = []
    x, y = ref, dist
    for level in range(len(weights)):
        if level > 0:
            x = _halve_replicate(x)
            y = _halve_replicate(y)
        s, cs = _ssim_cs(x, y, dr, wd)
        values.append(s if level == len(weights) - 1 else cs)
    v = np.maximum(np.stack(values), 0.0)
    return np.prod(v ** weights.reshape((-1,) + (1,) * (v.ndim - 1)), axis=0)


def ms_ssim(reference, distorted, *, data_range=None) -> float:
    """Multi-scale structural similarity (MS-SSIM) of Wang, Simoncelli and Bovik (2003).

    Returns
    -------
    float
        1 for identical images, lower for worse.

    Raises
    ------
    MetricInputError
        When an image side is under 161 pixels: the fifth scale (1/16 of the size) must
        still hold the 11x11 window.

    Notes
    -----
    Five scales with the published exponents 0.0448, 0.2856, 0.3001, 0.2363, 0.1333. At
    each scale the SSIM components are computed as in :func:`ssim` (11x11 Gaussian window,
    sigma 1.5, K1 0.01, K2 0.03, valid region); the contrast-structure mean is kept for
    scales 1-4 and the full SSIM mean for scale 5; negative terms are clipped at zero before
    the weighted product. Between scales the image is halved by a 2x2 mean; when a side is
    odd one replicated row and column are first added at the top and left. This is the
    convention of ``piq.multi_scale_ssim``, which the test vectors follow.

    References
    ----------
    Z. Wang, E. P. Simoncelli and A. C. Bovik, "Multiscale structural similarity for image
    quality assessment", Proc. 37th Asilomar Conf. Signals, Systems and Computers, 2003,
    1398-1402. https://doi.org/10.1109/ACSSC.2003.1292216
    """
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=False)
    return float(_ms_ssim_impl(ref, dist, dr, shape, _work_dtype(reference, distorted)))


def ms_ssim_batch(reference, distorted, *, data_range=None) -> np.ndarray:
    """Batched :func:`ms_ssim` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=True)
    return np.asarray(_ms_ssim_impl(ref, dist, dr, shape, _work_dtype(reference, distorted)), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# GMSD
# ---------------------------------------------------------------------------------------

GMSD_T = 170.0


def _gmsd_impl(ref, dist, dr):
    ref = np.asarray(ref, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    scale = 255.0 / dr
    x = _block_mean(ref * scale, 2, "constant")
    y = _block_mean(dist * scale, 2, "constant")
    gx = _prewitt_magnitude(x)
    gy = _prewitt_magnitude(y)
    q = (2.0 * gx * gy + GMSD_T) / (gx * gx + gy * gy + GMSD_T)
    n = q.shape[-2] * q.shape[-1]
    if n < 2:
        raise MetricInputError("GMSD needs images of at least 2x4 pixels")
    return np.std(q, axis=(-2, -1), ddof=1)


def gmsd(reference, distorted, *, data_range=None) -> float:
    """Gradient magnitude similarity deviation (GMSD) of Xue, Zhang, Mou and Bovik (2014).

    Returns
    -------
    float
        0 for identical images, higher for worse (lower is better).

    Notes
    -----
    As the authors' ``GMSD.m``: the images are put on a 0-255 scale
    (``x * 255 / data_range``) whatever their range, so that ``T = 170`` has its published
    meaning; each image is filtered with a 2x2 average (``conv2(.., 'same')``, zero padded
    at the bottom/right) and every second pixel is kept from the first; gradient magnitudes
    come from Prewitt kernels divided by 3 with zero padding; the similarity map
    ``(2 m_r m_d + T) / (m_r^2 + m_d^2 + T)`` is pooled by its standard deviation with the
    ``N - 1`` normalisation of MATLAB's ``std2``. (The population standard deviation used
    by some ports differs by a factor ``sqrt(N/(N-1))``, under 1e-4 relative for images
    of 64x64 pixels or more.)

    References
    ----------
    W. Xue, L. Zhang, X. Mou and A. C. Bovik, "Gradient magnitude similarity deviation: a
    highly efficient perceptual image quality index", IEEE Trans. Image Process. 23(2),
    684-695, 2014. https://doi.org/10.1109/TIP.2013.2293423
    """
    ref, dist, dr, _ = _prepare(reference, distorted, data_range, batch=False)
    return float(_gmsd_impl(ref, dist, dr))


def gmsd_batch(reference, distorted, *, data_range=None) -> np.ndarray:
    """Batched :func:`gmsd` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=True)
    return _per_image(_gmsd_impl, ref, dist, shape, dr)


# ---------------------------------------------------------------------------------------
# MDSI
# ---------------------------------------------------------------------------------------

MDSI_C1, MDSI_C2, MDSI_C3 = 140.0, 55.0, 550.0
MDSI_ALPHA = 0.6
# Rows of the luminance / opponent-colour transform of MDSI.m applied to (R, G, B).
_LHM = np.array([[0.2989, 0.587, 0.114], [0.30, 0.04, -0.35], [0.34, -0.60, 0.17]])
# For a gray image replicated to three channels each channel is a multiple of the gray value.
_L_GAIN, _H_GAIN, _M_GAIN = _LHM.sum(axis=1)


def _sim(a, b, c):
    return (2.0 * a * b + c) / (a * a + b * b + c)


def _mdsi_impl(ref, dist, dr, shape):
    f = max(1, matlab_round(min(shape[-2:]) / 256.0))
    ref = np.asarray(ref, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    scale = 255.0 / dr
    r = _block_mean(ref * scale, f, "constant")
    d = _block_mean(dist * scale, f, "constant")
    if r.shape != d.shape:
        r, d = np.broadcast_arrays(r, d)
    l1, l2 = _L_GAIN * r, _L_GAIN * d
    rx, ry = _prewitt(l1)
    dx, dy = _prewitt(l2)
    g_r = _magnitude(rx, ry)
    g_d = _magnitude(dx, dy)
    # the gradient of the fused image (L1 + L2) / 2 is the mean of the two gradients (linear
    # filter, zero padding); equal to filtering the fused image up to rounding
    g_f = _magnitude(0.5 * (rx + dx), 0.5 * (ry + dy))
    gs = _sim(g_r, g_d, MDSI_C1) + _sim(g_d, g_f, MDSI_C2) - _sim(g_r, g_f, MDSI_C2)
    # chroma: H = h*r, M = m*r for replicated gray, so H1 H2 + M1 M2 = (h^2 + m^2) r d
    k = _H_GAIN**2 + _M_GAIN**2
    cs = (2.0 * k * r * d + MDSI_C3) / (k * (r * r + d * d) + MDSI_C3)
    gcs = MDSI_ALPHA * gs + (1.0 - MDSI_ALPHA) * cs
    gq = np.maximum(gcs, 0.0) ** 0.25
    dev = np.mean(np.abs(gq - gq.mean(axis=(-2, -1), keepdims=True)), axis=(-2, -1))
    return dev**0.25


def mdsi(reference, distorted, *, data_range=None) -> float:
    """Mean deviation similarity index (MDSI) of Nafchi, Shahkolaei, Hedjam and Cheriet (2016).

    Note the argument order: ``mdsi(reference, distorted)`` equals the authors'
    ``MDSI(RefImg, DistImg)``; ``piq.mdsi`` takes the distorted image first. MDSI is not
    symmetric in its arguments.

    Returns
    -------
    float
        0 for identical images, higher for worse (lower is better).

    Notes
    -----
    As the authors' ``MDSI.m`` with the default 'sum' combination, applied to the gray
    image replicated to three channels:

    * values put on a 0-255 scale (``x * 255 / data_range``);
    * downsampling by ``f = max(1, round(min(H, W) / 256))`` (MATLAB rounding, half up): an
      f x f mean filter, zero padded, then every f-th pixel;
    * luminance ``L = 0.2989 R + 0.587 G + 0.114 B`` and opponent channels
      ``H = 0.30 R + 0.04 G - 0.35 B``, ``M = 0.34 R - 0.60 G + 0.17 B``;
    * gradient similarity with the fused image ``F = (L_r + L_d) / 2`` (Prewitt / 3, zero
      padding): ``GS = GS(r, d) + GS(d, F) - GS(r, F)`` with C1 = 140, C2 = 55;
    * chromaticity similarity with C3 = 550. For a replicated gray image ``H = -0.01 g`` and
      ``M = -0.09 g``, so the chroma term is small but not exactly 1: it is kept, as the
      authors' code computes it on the replicated image;
    * ``GCS = 0.6 GS + 0.4 CS`` pooled by the mean absolute deviation of ``GCS**(1/4)``,
      raised to the power 1/4 (the published exponent; some ports use 1/2). Negative GCS
      values, only possible in degenerate cases, are clipped to zero before the root.

    References
    ----------
    H. Z. Nafchi, A. Shahkolaei, R. Hedjam and M. Cheriet, "Mean deviation similarity
    index: efficient and reliable full-reference image quality evaluator", IEEE Access 4,
    5579-5590, 2016. https://doi.org/10.1109/ACCESS.2016.2604042
    """
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=False)
    return float(_mdsi_impl(ref, dist, dr, shape))


def mdsi_batch(reference, distorted, *, data_range=None) -> np.ndarray:
    """Batched :func:`mdsi` over stacks shaped ``(..., H, W)``; returns shape ``(...)``."""
    ref, dist, dr, shape = _prepare(reference, distorted, data_range, batch=True)
    return _per_image(_mdsi_impl, ref, dist, shape, dr, shape)


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------

class Observer:
    """A full-reference metric with its direction and best value.

    Attributes
    ----------
    name : str
    func, batch : callable
        Single-pair and batched forms.
    higher_is_better : bool
    best : float
        The value of identical images.
    min_side : int
        The smallest image side the metric accepts.
    """

    def __init__(self, name, func, batch, higher_is_better, best, min_side=1):
        self.name = name
        self.func = func
        self.batch = batch
        self.higher_is_better = higher_is_better
        self.best = best
        self.min_side = min_side

    def __repr__(self):
        return f"Observer({self.name!r})"


OBSERVERS: dict[str, Observer] = {
    "mse": Observer("mse", mse, mse_batch, False, 0.0),
    "psnr": Observer("psnr", psnr, psnr_batch, True, math.inf),
    "ssim": Observer("ssim", ssim, ssim_batch, True, 1.0, 11),
    "ms_ssim": Observer("ms_ssim", ms_ssim, ms_ssim_batch, True, 1.0, MS_SSIM_MIN_SIDE),
    "gmsd": Observer("gmsd", gmsd, gmsd_batch, False, 0.0, 4),
    "mdsi": Observer("mdsi", mdsi, mdsi_batch, False, 0.0, 3),
}
