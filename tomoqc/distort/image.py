"""Image-domain distortions: the TIQA report's recipes (Table S1).

Three impairments are applied directly to a reconstructed slice scaled to ``[0, 1]``,
each at five levels (1 = mildest, 5 = strongest; level 0 is the identity):

* **noise** - additive zero-mean Gaussian noise of variance
  :data:`NOISE_VARIANCE` ``= (0.001, 0.006, 0.022, 0.088, 1.00)``, then clipping to
  ``[0, 1]``. This is what ``skimage.util.random_noise(img, mode="gaussian", var=v)``
  does (it clips by default), the tool the report used; with clipping the measured
  variance of the strongest levels is lower than the nominal one. Pass
  ``clip=False`` to :func:`gaussian_noise` for the unclipped model.
* **blur** - isotropic Gaussian filter of standard deviation :data:`BLUR_SIGMA`
  ``= (1.2, 2.5, 6.5, 15.2, 33.2)`` pixels (the report's "variance" column is the
  filter's sigma in its code), boundary mode ``"nearest"`` as in
  ``skimage.filters.gaussian``, truncated at 4 sigma.
* **ring** - concentric rings about the rotation axis (the image centre unless
  ``center`` is given), about 2 px wide, at random radius steps; inside ring ``k`` the
  image is multiplied by ``1 + (-1)^k c`` so the offset is proportional to the local
  pixel value, with coefficient ``c`` from :data:`RING_COEFF`
  ``= (0.05, 0.1, 0.2, 0.4, 0.8)``; the result is clipped to ``[0, 1]``.

Ring levels depart from the report's Table S1 (``c = 0.1, 0.13, 0.15, 0.18, 0.2``, kept as
:data:`REPORT_RING_COEFF`). The report chose its parameters so that the levels run from
"excellent" to "terrible", but its ring coefficients span less than a factor of two. On
fresh phantoms, the full-reference labels of those five levels move only from 4.33 to
4.06, while the spread across references at one level is 0.13-0.19. A predictor that
orders the levels perfectly then correlates with the ring labels at SROCC 0.72 at best.
Doubling ``c`` from level to level, the way the noise and blur tables grow geometrically,
spreads the labels over 4.5-3.3 and raises that ceiling to 0.96
(``benchmarks/label_structure.py`` measures it). The report's two values 0.1 and 0.2 are
levels 2 and 3 here.

References
----------
Liu, X., van de Weijer, J., Bagdanov, A. D. (2017). RankIQA: Learning from rankings for
no-reference image quality assessment. *ICCV*, 1040-1049. doi:10.1109/ICCV.2017.118
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from tomoqc.errors import InputError, OptionError

__all__ = [
    "NOISE_VARIANCE",
    "BLUR_SIGMA",
    "RING_COEFF",
    "REPORT_RING_COEFF",
    "RING_WIDTH",
    "RING_STEP",
    "apply",
    "gaussian_noise",
    "gaussian_blur",
    "ring_artifact",
    "ring_radii",
    "level_params",
]

#: Gaussian noise variance per level 1..5 (on [0, 1] images).
NOISE_VARIANCE = (0.001, 0.006, 0.022, 0.088, 1.00)
#: Gaussian blur standard deviation (px) per level 1..5.
BLUR_SIGMA = (1.2, 2.5, 6.5, 15.2, 33.2)
#: Relative ring amplitude per level 1..5 (alternating sign from ring to ring); doubles
#: from level to level (see the module doc).
RING_COEFF = (0.05, 0.1, 0.2, 0.4, 0.8)
#: The report's ring coefficients (Table S1), for comparison.
REPORT_RING_COEFF = (0.1, 0.13, 0.15, 0.18, 0.2)
#: Ring width (px).
RING_WIDTH = 2.0
#: Range of the random radial step between consecutive rings (px).
RING_STEP = (4.0, 14.0)

_TABLE = {"noise": NOISE_VARIANCE, "blur": BLUR_SIGMA, "ring": RING_COEFF}


def _as_image(img) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D image, got shape {a.shape}")
    if a.size == 0:
        raise InputError(None, "empty image")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(None, f"expected a numeric image, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InputError(None, "image contains NaN or Inf")
    return a


def check_level(level) -> int:
    """``level`` as an int in 0..5, or an OptionError (shared by both distortion domains)."""
    try:
        lv = int(level)
    except (TypeError, ValueError) as err:
        raise OptionError(f"level must be an integer 0..5, got {level!r}") from err
    if lv != level or not 0 <= lv <= 5:
        raise OptionError(f"level must be an integer 0..5, got {level!r}")
    return lv


def level_params(distortion: str, level: int) -> dict:
    """The parameter of ``distortion`` at ``level`` (1..5), as a dict for manifests."""
    if distortion not in _TABLE:
        raise OptionError(f"unknown distortion {distortion!r}; choose from noise, blur, ring")
    lv = check_level(level)
    if lv == 0:
        return {}
    key = {"noise": "variance", "blur": "sigma", "ring": "coeff"}[distortion]
    return {key: _TABLE[distortion][lv - 1]}


def gaussian_noise(img, variance: float, *, rng=None, clip: bool = True) -> np.ndarray:
    """Add zero-mean Gaussian noise of the given variance.

    Parameters
    ----------
    img : array_like, 2-D
        Image scaled to ``[0, 1]``.
    variance : float
        Noise variance (not standard deviation).
    rng : int or numpy.random.Generator, optional
    clip : bool
        Clip the result to ``[0, 1]`` (default, as ``skimage.util.random_noise``).
    """
    a = _as_image(img)
    if variance < 0:
        raise OptionError(f"variance must be >= 0, got {variance}")
    rng = np.random.default_rng(rng)
    out = a + np.float32(np.sqrt(variance)) * rng.standard_normal(a.shape, dtype=np.float32)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def gaussian_blur(img, sigma: float, *, mode: str = "nearest", truncate: float = 4.0):
    """Isotropic Gaussian blur of standard deviation ``sigma`` pixels.

    Its transfer function is ``exp(-2 pi^2 sigma^2 f^2)`` for spatial frequency ``f`` in
    cycles per pixel (``mode="wrap"`` makes that exact for periodic images).
    """
    a = _as_image(img)
    if sigma < 0:
        raise OptionError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return a.copy()
    return ndi.gaussian_filter(a, float(sigma), mode=mode, truncate=truncate).astype(
        np.float32, copy=False
    )


def ring_radii(max_radius: float, *, rng=None, step=RING_STEP) -> np.ndarray:
    """Random ring radii from the centre out: cumulative uniform steps in ``step``."""
    rng = np.random.default_rng(rng)
    lo, hi = float(step[0]), float(step[1])
    n = int(max_radius / lo) + 2
    r = np.cumsum(rng.uniform(lo, hi, n)) + rng.uniform(0, lo)
    return r[r < max_radius + RING_WIDTH]


def ring_artifact(
    img,
    coeff: float,
    *,
    rng=None,
    center=None,
    width: float = RING_WIDTH,
    step=RING_STEP,
    clip: bool = True,
) -> np.ndarray:
    """Concentric rings whose offset is proportional to the local pixel value.

    Parameters
    ----------
    img : array_like, 2-D
        Image scaled to ``[0, 1]``.
    coeff : float
        Relative amplitude ``c``: inside ring ``k`` the image becomes
        ``img * (1 + (-1)**k * c)``.
    rng : int or numpy.random.Generator, optional
        Draws the ring radii.
    center : (float, float), optional
        ``(row, col)`` of the rotation axis; default the image centre
        ``((H - 1) / 2, (W - 1) / 2)``.
    width : float
        Ring width in pixels (a pixel belongs to a ring when its distance to the centre
        is within ``width / 2`` of the ring radius).
    step : (float, float)
        Range of the random radius step between consecutive rings.
    clip : bool
        Clip to ``[0, 1]``.
    """
    a = _as_image(img)
    h, w = a.shape
    cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if center is None else map(float, center)
    yy, xx = np.ogrid[:h, :w]
    rad = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    rmax = float(rad.max())
    radii = ring_radii(rmax, rng=rng, step=step)
    gain = np.ones(a.shape, np.float32)
    half = width / 2.0
    # assign each pixel to its nearest ring, then test the distance to it
    if radii.size:
        idx = np.clip(np.searchsorted(radii, rad), 1, max(radii.size - 1, 1))
        idx0 = idx - 1
        if radii.size > 1:
            near = np.where(np.abs(rad - radii[idx0]) <= np.abs(rad - radii[idx]), idx0, idx)
        else:
            near = np.zeros(rad.shape, int)
        inside = np.abs(rad - radii[near]) < half
        sign = np.where(near % 2 == 0, 1.0, -1.0).astype(np.float32)
        gain[inside] += np.float32(coeff) * sign[inside]
    out = a * gain
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def apply(img, distortion: str, level: int, *, rng=None, center=None) -> np.ndarray:
    """Apply one of the report's distortions at ``level`` (0 = identity, 1..5).

    Parameters
    ----------
    img : array_like, 2-D
        Image scaled to ``[0, 1]``.
    distortion : {"noise", "blur", "ring"}
    level : int
        0 returns a float32 copy; 1 is the mildest, 5 the strongest.
    rng : int or numpy.random.Generator, optional
        Randomness for noise and ring radii.
    center : (float, float), optional
        Rotation axis ``(row, col)`` for rings; default the image centre.

    Returns
    -------
    ndarray of float32
    """
    if distortion not in _TABLE:
        raise OptionError(f"unknown distortion {distortion!r}; choose from noise, blur, ring")
    lv = check_level(level)
    a = _as_image(img)
    if lv == 0:
        return a.copy()
    value = _TABLE[distortion][lv - 1]
    if distortion == "noise":
        return gaussian_noise(a, value, rng=rng)
    if distortion == "blur":
        return gaussian_blur(a, value)
    return ring_artifact(a, value, rng=rng, center=center)
