"""Robust intensity normalisation of slices and detection of patches without sample.

Scores must not depend on the storage dtype or the intensity scale of a volume, so every
slice is mapped to [0, 1] by clipping at robust percentiles before it reaches a network.
Patches that lie mostly outside the reconstructed field of view (the constant corners of a
reconstruction) or that hold only air carry no information about the quality of the
sample and are left out of slice scores.

Images arrive in many forms: float reconstructions with any offset, 16-bit stacks, 8-bit
PNG/JPEG exports whose display window clipped part of the sample to black or white, and
binary or segmented slices. :func:`outside_values` decides, per slice, which exact value
stands for "outside the field of view" (the slice's minimum, and its maximum only when the
maximum forms the slice's outer region), so that a sample saturated to white is not taken
for the outside; :func:`patch_has_structure` is the relaxed test used when no patch of a
slice passes :func:`patch_validity`.
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import InputError

__all__ = [
    "check_slice",
    "normalize_slice",
    "normalize_slice_flagged",
    "tail_stretch",
    "patch_validity",
    "patch_has_structure",
    "outside_values",
    "fov_fraction",
]


def check_slice(img) -> np.ndarray:
    """``img`` as an array, or :class:`InputError` when it is not a 2-D slice of real values
    (numbers or bools, not complex)."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InputError(None, f"expected a 2-D slice, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise InputError(None, f"expected a real-valued slice, got dtype {arr.dtype}")
    return arr


def normalize_slice_flagged(
    img, *, low: float = 0.5, high: float = 99.5, clip: bool = True
) -> tuple[np.ndarray, bool]:
    """Normalise a slice to [0, 1] and say whether it held any contrast.

    Parameters
    ----------
    img : array_like, 2-D
        A slice of any real dtype. NaN and infinite values are allowed; they are ignored
        when the percentiles are computed and set to 0 in the output.
    low, high : float
        Percentiles (0-100) mapped to 0 and 1; values outside are clipped.
    clip : bool
        False keeps values outside [0, 1] (the same affine map, unclipped; non-finite
        pixels become NaN): what measurements of noise need, since clipping the tails of a
        noisy slice hides part of its noise.

    Returns
    -------
    out : ndarray of float32, same shape
        The normalised slice, in [0, 1] (with ``clip``).
    constant : bool
        True when the slice has no finite values or all of them are equal (a constant
        slice; when only the two percentiles coincide, the full range is used instead). Its output is then all zeros, a defined value, and the caller decides what
        a score of such a slice means.
    """
    arr = check_slice(img)
    if not 0.0 <= low < high <= 100.0:
        raise InputError(None, f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    x = arr.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    if not finite.any():
        return np.zeros(arr.shape, np.float32), True
    # float64 and wide integers keep their precision until the offset is removed: a
    # float64 slice of values 1e8 + detail would lose the detail if cast to float32 first
    wide = arr.dtype.itemsize > 4 or (np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize > 2)
    work = arr.astype(np.float64, copy=False) if wide else x
    vals = work if all_finite else work[finite]
    lo, hi = np.percentile(vals, [low, high])
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        # the percentiles coincide, yet the slice may hold a few other values (an object
        # smaller than the clipped tails, or a binary slice dominated by one value): use
        # the full range rather than calling such a slice constant
        lo, hi = float(np.min(vals)), float(np.max(vals))
        if not hi > lo:
            return np.zeros(arr.shape, np.float32), True
    if wide:
        out = ((work - lo) * (1.0 / (hi - lo))).astype(np.float32)
    else:
        out = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    if not all_finite:
        out[~finite] = 0.0 if clip else np.nan
    return out.astype(np.float32, copy=False), False


def tail_stretch(img, *, low: float = 0.5, mid: float = 98.0, high: float = 99.5) -> float:
    """How far the brightest ``100 - mid`` % of a slice's finite pixels stretch its robust range.

    ``(p_high - p_mid) / (p_mid - p_low)`` of the finite values: about 0.05-0.3 for a
    reconstruction whose brightest pixels belong to its main phases (every phantom of the
    study and every HTC2022 disc stays below 0.8), 1-3 for a sparse sample in much air, and
    more where a dense minority (a metal particle, a current collector's fragment, a few hot
    pixels) holds the top percent and so sets the upper end of :func:`normalize_slice`'s
    range (Savu rows with a small dense particle 4-11). NaN for a slice with no finite values
    or no spread below ``p_mid``. Invariant to gain and offset.
    """
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D slice, got an array of shape {a.shape}")
    if not 0.0 <= low < mid < high <= 100.0:
        raise InputError(None, f"percentiles must satisfy 0 <= low < mid < high <= 100, got {low}, {mid}, {high}")
    x = a.astype(np.float64, copy=False)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    lo, md, hi = (float(v) for v in np.percentile(x, [low, mid, high]))
    if not md > lo:
        return float("nan")
    return (hi - md) / (md - lo)


def normalize_slice(img, *, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map a slice robustly to [0, 1] (percentile clip), whatever its dtype and scale.

    ``(img - p_low) / (p_high - p_low)`` clipped to [0, 1], where ``p_low`` and ``p_high``
    are the ``low`` and ``high`` percentiles of the finite values. NaN and infinite pixels
    are ignored for the percentiles and become 0. A constant (or empty) slice gives all
    zeros; use :func:`normalize_slice_flagged` to be told about it.

    Parameters
    ----------
    img : array_like, 2-D
        The slice.
    low, high : float
        Percentiles mapped to 0 and 1 (defaults 0.5 and 99.5).

    Returns
    -------
    ndarray of float32
        The normalised slice.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.linspace(0, 1000, 10001).reshape(1, -1)
    >>> out = normalize_slice(a)
    >>> float(out.min()), float(out.max())
    (0.0, 1.0)
    """
    return normalize_slice_flagged(img, low=low, high=high)[0]


def _dominant_value_fraction(patch: np.ndarray, values=None) -> float:
    """Fraction of pixels equal to one value that may stand for "outside the field of view".

    ``values`` None: the patch's minimum or maximum, whichever is more frequent (regions
    outside the field of view of a reconstruction are stored as one constant, which after
    normalisation is clipped to exactly 0 or 1; counting the pixels at the extremes finds
    them without a full histogram). Otherwise the largest fraction of pixels equal to one of
    ``values`` (see :func:`outside_values`).
    """
    n = patch.size
    if values is None:
        values = (patch.min(), patch.max())
    return max((np.count_nonzero(patch == v) for v in values), default=0) / n


def outside_values(img, *, border: int = 2, min_border_fraction: float = 0.5) -> tuple[float, ...]:
    """The exact values of a normalised slice that mean "outside the field of view".

    The slice's minimum (0 after :func:`normalize_slice`) always may: the constant outside
    a reconstructed disc, padding, or air clipped by the display window. The maximum (1)
    only when it forms the slice's outer region, i.e. when at least ``min_border_fraction``
    of the pixels in the outer ``border`` rows and columns hold it (an inverted export with
    a white outside). A sample saturated to white inside the slice (an 8-bit export whose
    window clipped, a binary or segmented slice) is therefore not taken for the outside.

    Parameters
    ----------
    img : array_like, 2-D
        A slice normalised to [0, 1].

    Returns
    -------
    tuple of float
        ``(0.0,)`` or ``(0.0, 1.0)``; pass it as ``outside`` to :func:`patch_validity`.
    """
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D slice, got an array of shape {a.shape}")
    b = max(1, int(border))
    if min(a.shape) <= 2 * b:
        ring = a.ravel()
    else:
        ring = np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[b:-b, :b].ravel(), a[b:-b, -b:].ravel()])
    lo, hi = 0.0, 1.0
    if ring.size and np.count_nonzero(ring == hi) >= min_border_fraction * ring.size:
        return (lo, hi)
    return (lo,)


def patch_validity(
    patch,
    *,
    max_constant_fraction: float = 0.5,
    min_std: float = 0.01,
    air_mean: float = 0.12,
    air_std: float = 0.06,
    outside=None,
) -> bool:
    """Whether a normalised patch shows enough sample to be scored.

    A patch is left out when

    - more than ``max_constant_fraction`` of its pixels hold one exact value that stands
      for the outside of the field of view (``outside``; by default either extreme of the
      patch: the constant region outside the reconstructed disc, or padding),
    - it is nearly flat (standard deviation below ``min_std``), or
    - it holds only air: dark (mean below ``air_mean``) and without structure
      (standard deviation below ``air_std``).

    Parameters
    ----------
    patch : array_like, 2-D
        A patch of a slice normalised by :func:`normalize_slice` (values in [0, 1]).
    max_constant_fraction, min_std, air_mean, air_std : float
        Thresholds, in the units of the normalised slice.
    outside : sequence of float, optional
        The values that mean "outside the field of view" in this patch's slice, from
        :func:`outside_values`. None: the patch's own minimum and maximum (a saturated or
        binary patch then counts as outside; slice scoring passes the slice's values).

    Returns
    -------
    bool
        True when the patch should be scored.
    """
    p = np.asarray(patch, dtype=np.float32)
    if p.size == 0 or not np.isfinite(p).all():
        return False
    if _dominant_value_fraction(p, outside) > max_constant_fraction:
        return False
    std = float(p.std())
    if std < min_std:
        return False
    if float(p.mean()) < air_mean and std < air_std:
        return False
    return True


def patch_has_structure(patch, *, max_constant_fraction: float = 0.9, min_std: float = 0.01) -> bool:
    """The relaxed test for slices none of whose patches passes :func:`patch_validity`.

    True when the patch is finite, at most ``max_constant_fraction`` of it holds one of its
    extreme values, and its standard deviation reaches ``min_std``: some structure, even if
    the patch is mostly saturated, binary or dark. A slice scored from such patches is
    flagged (``FLAG_RELAXED`` of :mod:`tomoqc.models.tiqa`).
    """
    p = np.asarray(patch, dtype=np.float32)
    if p.size == 0 or not np.isfinite(p).all():
        return False
    if _dominant_value_fraction(p) > max_constant_fraction:
        return False
    return float(p.std()) >= min_std


def fov_fraction(patch) -> float:
    """Fraction of a normalised patch that is not one constant extreme value.

    A quick measure of how much of a patch lies inside the reconstructed field of view.
    """
    p = np.asarray(patch, dtype=np.float32)
    if p.size == 0:
        return 0.0
    return 1.0 - _dominant_value_fraction(p)
