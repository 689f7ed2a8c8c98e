"""Robust intensity normalisation of slices and detection of patches without sample.

Scores must not depend on the storage dtype or the intensity scale of a volume, so every
slice is mapped to [0, 1] by clipping at robust percentiles before it reaches a network.
Patches that lie mostly outside the reconstructed field of view (the constant corners of a
reconstruction) or that hold only air carry no information about the quality of the
sample and are left out of slice scores.
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import InputError

__all__ = [
    "normalize_slice",
    "normalize_slice_flagged",
    "patch_validity",
    "fov_fraction",
]


def normalize_slice_flagged(
    img, *, low: float = 0.5, high: float = 99.5
) -> tuple[np.ndarray, bool]:
    """Normalise a slice to [0, 1] and say whether it held any contrast.

    Parameters
    ----------
    img : array_like, 2-D
        A slice of any real dtype. NaN and infinite values are allowed; they are ignored
        when the percentiles are computed and set to 0 in the output.
    low, high : float
        Percentiles (0-100) mapped to 0 and 1; values outside are clipped.

    Returns
    -------
    out : ndarray of float32, same shape
        The normalised slice, in [0, 1].
    constant : bool
        True when the slice has no finite values or the two percentiles coincide (a constant
        slice). Its output is then all zeros, a defined value, and the caller decides what
        a score of such a slice means.
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InputError(None, f"expected a 2-D slice, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise InputError(None, f"expected a real-valued slice, got dtype {arr.dtype}")
    if not 0.0 <= low < high <= 100.0:
        raise InputError(None, f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    x = arr.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    if all_finite:
        values = x
    else:
        values = x[finite]
    if values.size == 0:
        return np.zeros(arr.shape, np.float32), True
    lo, hi = np.percentile(values, [low, high])
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        return np.zeros(arr.shape, np.float32), True
    out = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if not all_finite:
        out[~finite] = 0.0
    return out.astype(np.float32, copy=False), False


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


def _dominant_value_fraction(patch: np.ndarray) -> float:
    """Fraction of pixels equal to the patch's minimum or maximum, whichever is larger.

    Regions outside the field of view of a reconstruction are stored as one constant,
    which after normalisation is clipped to exactly 0 (or 1). Counting the pixels at the
    extremes finds them without a full histogram.
    """
    lo = patch.min()
    hi = patch.max()
    n = patch.size
    return max(np.count_nonzero(patch == lo), np.count_nonzero(patch == hi)) / n


def patch_validity(
    patch,
    *,
    max_constant_fraction: float = 0.5,
    min_std: float = 0.01,
    air_mean: float = 0.12,
    air_std: float = 0.06,
) -> bool:
    """Whether a normalised patch shows enough sample to be scored.

    A patch is left out when

    - more than ``max_constant_fraction`` of its pixels hold one exact value at the
      patch's extreme (the constant region outside the reconstructed disc, or padding),
    - it is nearly flat (standard deviation below ``min_std``), or
    - it holds only air: dark (mean below ``air_mean``) and without structure
      (standard deviation below ``air_std``).

    Parameters
    ----------
    patch : array_like, 2-D
        A patch of a slice normalised by :func:`normalize_slice` (values in [0, 1]).
    max_constant_fraction, min_std, air_mean, air_std : float
        Thresholds, in the units of the normalised slice.

    Returns
    -------
    bool
        True when the patch should be scored.
    """
    p = np.asarray(patch, dtype=np.float32)
    if p.size == 0 or not np.isfinite(p).all():
        return False
    if _dominant_value_fraction(p) > max_constant_fraction:
        return False
    std = float(p.std())
    if std < min_std:
        return False
    if float(p.mean()) < air_mean and std < air_std:
        return False
    return True


def fov_fraction(patch) -> float:
    """Fraction of a normalised patch that is not one constant extreme value.

    A quick measure of how much of a patch lies inside the reconstructed field of view.
    """
    p = np.asarray(patch, dtype=np.float32)
    if p.size == 0:
        return 0.0
    return 1.0 - _dominant_value_fraction(p)
