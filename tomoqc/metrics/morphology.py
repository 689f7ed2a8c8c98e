"""Morphological descriptors of a segmented phase: the two-point correlation function.

The two-point correlation ``S2(r)`` of a phase is the probability that two points a
distance ``r`` apart both lie in that phase [1]_. At ``r = 0`` it is the phase's volume
fraction ``phi``; for a statistically homogeneous structure without long-range order it
falls to ``phi**2`` once ``r`` exceeds the correlation length; its initial slope is
proportional to the specific surface area. Comparing ``S2`` of a predicted segmentation
with that of the true phase map (the TIQA report's Figure 7) shows how an impairment
changes the microstructure a segmentation reports, not only how many pixels it gets
wrong.

References
----------
.. [1] S. Torquato, *Random Heterogeneous Materials: Microstructure and Macroscopic
   Properties*, Springer 2002, ch. 2, doi:10.1007/978-1-4757-6355-3.
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = ["two_point_correlation"]


def _check_mask(mask) -> np.ndarray:
    a = np.asarray(mask)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D phase mask, got an array of shape {a.shape}")
    if a.size == 0:
        raise InputError(None, "the phase mask is empty")
    if a.dtype == bool:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(None, f"expected a boolean phase mask, got dtype {a.dtype}")
    if not np.isin(a, (0, 1)).all():
        raise InputError(None, "a phase mask holds only 0 and 1 (or booleans); compare a label map with the "
                         "phase first, e.g. labels == 2")
    return a.astype(np.float64)


def two_point_correlation(mask, *, axis: int, max_r: int | None = None, periodic: bool = False,
                          within=None) -> np.ndarray:
    """Two-point correlation ``S2(r)`` of a phase along one image axis.

    Parameters
    ----------
    mask : (H, W) array of bool (or of 0 and 1)
        Where the phase is.
    axis : {0, 1}
        Direction of the separation: 0 along y (rows), 1 along x (columns).
    max_r : int, optional
        Largest separation, in pixels. Default: half the length along ``axis``
        (``n // 2``). Without ``periodic`` it must be below that length ``n``; with it,
        at most ``n - 1``.
    periodic : bool
        Treat the image as one period of a periodic structure (the pixel after the last
        is the first).
    within : (H, W) array of bool, optional
        The region where the structure is known (a reconstruction's field of view): only
        pairs whose two points both lie in it count, in the numerator and in the number of
        pairs. Pixels outside it do not matter. Default: the whole image.

    Returns
    -------
    ndarray of float64, shape (max_r + 1,)
        ``S2(r)`` for ``r = 0, 1, ..., max_r``; ``S2(0)`` is the phase's area fraction
        (within the region). NaN at separations no pair of the region spans.

    Notes
    -----
    Boundary rule: with ``periodic=False`` only pairs with both points inside the image
    count, so ``S2(r)`` is the number of pairs ``(i, i + r)`` along ``axis`` that both lie
    in the phase divided by the ``(n - r) * m`` pairs there are (``m`` lines). This is the
    unbiased estimate for a homogeneous structure; its variance grows as ``r`` approaches
    ``n``. With ``periodic=True`` all ``n * m`` pairs count, the second index taken
    modulo ``n``.

    Both are computed as autocorrelations by FFT along ``axis`` (the non-periodic one
    after zero padding to ``2 n``, which leaves no wrap-around), in ``O(m n log n)``.

    Examples
    --------
    >>> import numpy as np
    >>> board = (np.add.outer(np.arange(4), np.arange(4)) % 2).astype(bool)
    >>> two_point_correlation(board, axis=1, periodic=True)
    array([0.5, 0. , 0.5])
    """
    a = _check_mask(mask)
    if isinstance(axis, bool) or axis not in (0, 1):
        raise OptionError(f"axis must be 0 (y) or 1 (x), got {axis!r}")
    w = None
    if within is not None:
        w = _check_mask(within)
        if w.shape != a.shape:
            raise InputError(None, f"the region has shape {w.shape}, the phase mask {a.shape}")
        a = a * w
    if axis == 0:
        a = a.T  # separations along the last axis from here on
        w = None if w is None else w.T
    m, n = a.shape
    if max_r is None:
        max_r = n // 2
    if isinstance(max_r, bool) or not isinstance(max_r, (int, np.integer)):
        raise OptionError(f"max_r must be an integer, got {max_r!r}")
    max_r = int(max_r)
    if max_r < 0:
        raise OptionError(f"max_r must be >= 0, got {max_r}")
    if max_r > n - 1:
        raise OptionError(f"max_r must be below the image's length along axis {axis} ({n}), got {max_r}")
    size = n if periodic else 2 * n  # zero padding to 2 n leaves no wrap-around

    def autocorr(x):
        f = np.fft.rfft(x, n=size, axis=1)
        return np.fft.irfft(f * np.conj(f), n=size, axis=1).sum(axis=0)[: max_r + 1]

    if w is not None:
        pairs = np.rint(autocorr(w))  # pairs with both points in the region
        s2 = np.clip(autocorr(a) / np.maximum(pairs, 1.0), 0.0, 1.0)
        return np.where(pairs > 0, s2, np.nan)
    if periodic:
        s2 = autocorr(a) / (m * n)
    else:
        pairs = (n - np.arange(max_r + 1)) * m
        s2 = autocorr(a) / pairs
    # FFT round-off: counts are whole numbers of pairs
    return np.clip(s2, 0.0, 1.0)
