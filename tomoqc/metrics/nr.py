"""No-reference physical measures of a reconstructed slice: noise, blur, undersampling streaks,
limited-angle data and sparse views.

These are measured quantities, not learnt ones. The scoring model uses them beside its
network (:mod:`tomoqc.models.measured`) because they carry over from phantoms to real
scans where the network's learnt features do not, and because they move the right way by
construction: more noise, or sparser projections, always reads higher.

**Noise** (:func:`noise_sigma`, :func:`noise_index`). The standard deviation of white noise
is estimated from the finest diagonal Haar wavelet band, whose coefficients
``(x[2i,2j] - x[2i,2j+1] - x[2i+1,2j] + x[2i+1,2j+1]) / 2`` have the noise's standard deviation
and are almost free of smooth image content; the median absolute coefficient divided by
0.6745 is robust to the edges that leak into the band [1]_. Real reconstructions often hold
noise correlated over a few pixels (a grid finer than the detector, resampled or compressed
exports), which that band misses: the same estimate is repeated on 2 x 2 block means
(scaled so that white noise reads alike at both levels, :func:`noise_levels`) and the
noise sigma is the RMS of the two. (Coarser levels were tried: on sharp-edged textures
the 4 x 4 level reads more structure than noise, and the index stops rising with noise.) Only coefficients inside the sample are used (:func:`sample_mask`: the constant region outside a reconstruction's
field of view would read zero noise). :func:`noise_index` is that sigma in units of the
slice's *contrast*, the spread between the 1st and 99th percentiles of the slice after a
light Gaussian smoothing (sigma 1.5 px) inside the sample: a contrast-to-noise ratio turned
upside down, independent of gain and offset, and robust to noise itself (the smoothing
removes most of it before the percentiles are taken).

**Streaks** (:func:`streak_index`). Filtered back-projection from ``M`` projections puts
the slice's Fourier transform on ``M`` radial spokes (the Fourier slice theorem, [2]_); past
a radius of about ``M / pi`` cycles per image the spokes no longer touch and the power
spectrum is a fan of lines with dark gaps between them: that pattern *is* the streaks seen in
the image. The index is the angular contrast of the power spectrum in the upper half of the
frequency band: the spectrum is averaged over radius in narrow angular bins, divided by its
own broad angular trend (an anisotropic sample gives a smooth trend, not spokes), and the
index is the relative standard deviation of what is left, minus what the finite number of
Fourier samples per bin gives by itself (so that isotropic noise, blur and a fully sampled
scan read near 0). Limited-angle data (a missing wedge) is not what it measures.

**Missing wedge** (:func:`missing_wedge`). By the same theorem, views over an arc of ``A < 180``
degrees leave a wedge of ``180 - A`` degrees of directions empty, and since noise enters only
through the measured views, it is empty of noise too: many decades darker than any direction
of a complete scan, however anisotropic the sample. Each frequency ring's log power is taken
relative to its own median over directions (the spectrum's fall with frequency, and blur,
cancel), averaged in 1-degree bins, the narrow gaps between the spokes of a sparse scan are
closed, and the longest run of directions 1.5 decades below the strong ones, in excess of
the next longest, is the wedge in degrees: 0 for a complete scan, about ``180 - A`` (a few
degrees less) for a limited-angle one. Two tests keep a strongly anisotropic sample (whose
weak directions are also dark at low frequencies) from reading as a wedge: the run must be
dark at high frequencies too, where a measured scan's noise fills every direction it was
measured from, and it must have walls (the deficit changes by more than 1.5 decades across
each end within a few degrees; a sample's weak directions fade in over tens of degrees).

**Sparse views** (:func:`view_spacing`). The same spokes, read for their spacing rather than
their contrast: past a spacing of about 10 degrees the gaps between them are wider than the
streak index's angular trend, and that index falls as the views get fewer (HTC2022 discs: 1.88
from 45 directions, 1.07 from 6). Each frequency ring's log power relative to its median over
directions (as for the wedge) is averaged in bins about one Fourier sample wide, and the
Fourier series of that angular profile is read: ``k`` evenly spaced spokes make a comb of
period ``180 / k`` degrees, whose harmonics at ``k`` and ``2 k`` stand alone, far above the
rest; the smallest such ``k`` gives the spacing ``180 / k``, 0 where there is none. A sample's
own anisotropy gives a smooth profile (its harmonics fall off with order, each level with its
neighbours); the pixel grid's 4-fold symmetry, which a complete scan's interpolation imprints,
fades by the comb's third and fourth multiples.

**Blur** (:func:`blur_index`). The energy of the gradient of a slice smoothed by a Gaussian
of scale ``s``, read on the crest of a straight step edge blurred by a Gaussian of width
``b``, is proportional to ``1 / (s**2 + b**2)``; the ratio ``R`` of the energies at
``s1 = 2`` and ``s2 = 4`` px on the crest therefore gives the edge's width,
``b**2 = (s2**2 - R * s1**2) / (R - 1)``, whatever its contrast. The crest is found by
non-maximum suppression along the gradient (the Canny edge detector's thinning, [4]_), and
only the strongest crests count (the top 3 % of the slice's gradient energy at ``s2``),
and of those only the step-like ones: no blurred step edge gives a ratio above
``(s2 / s1)**2``, while structure finer than an edge does (the dense streaks of too few
projections, fine texture, noise); such crests are left out, since they would read as
sharpness. (An isolated thin line is not told apart: it reads about 1.2 px.)
The noise's share of each energy, ``sigma_n**2`` (the largest level of
:func:`noise_levels`) times the gradient energy the same filter gives unit white noise, is
taken off first. The index is that width in pixels: about 0.4 for a perfectly sharp
sampled step, ``b`` after a Gaussian blur of width ``b``. This is the scale-space edge-width
idea of [3]_ reduced to two scales. (An earlier index, ``1 / (R - 1)`` of energies averaged
over the whole slice, rose only 1.12 to 1.42 for a 1 px detector blur of real slices and
fell by a third at the sparsest angle level of the ``benchmarks/real_orderings.py``
series: it read streaks as sharpness.)

References
----------
.. [1] D. L. Donoho and I. M. Johnstone, "Ideal spatial adaptation by wavelet shrinkage",
   Biometrika 81(3), 425-455, 1994, doi:10.1093/biomet/81.3.425.
.. [3] T. Lindeberg, "Edge detection and ridge detection with automatic scale selection",
   Int. J. Comput. Vis. 30(2), 117-156, 1998, doi:10.1023/A:1008097225773.
.. [4] J. Canny, "A computational approach to edge detection", IEEE Trans. Pattern Anal.
   Mach. Intell. 8(6), 679-698, 1986, doi:10.1109/TPAMI.1986.4767851.
.. [2] A. C. Kak and M. Slaney, *Principles of Computerized Tomographic Imaging*, IEEE
   Press 1988 (SIAM 2001), ch. 3 and 5 (aliasing from too few views),
   doi:10.1137/1.9780898719277.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage, special

from tomoqc.errors import OptionError
from tomoqc.preprocess import check_slice

__all__ = ["MAX_SIDE", "sample_mask", "contrast", "noise_levels", "noise_sigma", "noise_index", "noise_indices",
           "NOISE_ESTIMATORS", "LOW_QUANTILES", "noise_estimator_score",
           "streak_index", "missing_wedge", "view_spacing", "blur_index", "MAD_TO_SIGMA"]

#: How far a comb's harmonic must stand above both its neighbours for :func:`view_spacing`.
ISOLATION = 2.0
#: Median absolute deviation of a standard normal variable.
MAD_TO_SIGMA = 0.6745
#: How a band's noise sigma is read from its coefficients: ``"median"`` (the median absolute
#: coefficient / 0.6745, the index the terms were fitted on) or ``"low_quantiles"`` (the mean of
#: the :data:`LOW_QUANTILES` of the absolute coefficients, each divided by the same quantile of
#: ``|Z|``): both read ``sigma`` for white noise, but where structure fills more than about half
#: of the band's coefficients (sharp texture a few pixels across, strong rings) the median
#: reads that structure and the low quantiles still read the flattest coefficients.
NOISE_ESTIMATORS = ("median", "low_quantiles")
#: Quantiles of the absolute band coefficients that ``"low_quantiles"`` averages.
LOW_QUANTILES = (0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40)
# the same quantiles of |Z|, Z standard normal: P(|Z| <= z) = erf(z / sqrt 2)
_HALF_NORMAL_LOW = np.sqrt(2.0) * special.erfinv(np.asarray(LOW_QUANTILES))


#: Side of the central square that :func:`noise_index` and :func:`blur_index` measure in larger
#: slices (noise and blur are properties of the whole scan; this bounds their cost).
MAX_SIDE = 1024


def _central(a: np.ndarray, side: int) -> np.ndarray:
    h, w = a.shape
    if h <= side and w <= side:
        return a
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return a[y0 : y0 + side, x0 : x0 + side]


def _check(img) -> np.ndarray:
    return check_slice(img).astype(np.float64, copy=False)


def sample_mask(img, *, size: int = 5) -> np.ndarray:
    """Pixels that belong to the sample: not inside a constant region and finite.

    A pixel is left out when every value in its ``size`` x ``size`` neighbourhood is the same
    (the constant fill outside a reconstruction's field of view, padding, a saturated or
    masked area) or when it is not finite.
    """
    a = _check(img)
    finite = np.isfinite(a)
    x = np.where(finite, a, 0.0)
    lo = ndimage.minimum_filter(x, size=size, mode="nearest")
    hi = ndimage.maximum_filter(x, size=size, mode="nearest")
    return finite & (hi > lo)


def contrast(img, *, mask=None, smooth: float = 1.5, low: float = 1.0, high: float = 99.0) -> float:
    """Robust contrast of a slice: ``p_high - p_low`` of the lightly smoothed sample.

    NaN when the sample is empty.
    """
    a = _check(img)
    m = sample_mask(a) if mask is None else np.asarray(mask, bool)
    if m.sum() < 16:
        return float("nan")
    x = np.where(np.isfinite(a), a, 0.0)
    s = ndimage.gaussian_filter(x, smooth, mode="nearest") if smooth > 0 else x
    lo, hi = np.percentile(s[m], [low, high])
    return float(hi - lo)


def _robust_sigma(coef: np.ndarray, estimator: str) -> float:
    """White-noise sigma of wavelet coefficients (:data:`NOISE_ESTIMATORS`)."""
    a = np.abs(coef)
    if estimator == "median":
        return float(np.median(a) / MAD_TO_SIGMA)
    return float(np.mean(np.quantile(a, LOW_QUANTILES) / _HALF_NORMAL_LOW))


def _haar_sigma(x: np.ndarray, m: np.ndarray, estimator: str = "median") -> tuple[float, np.ndarray, np.ndarray]:
    """Robust sigma of the finest diagonal Haar band inside ``m``, and the 2 x 2 block means."""
    h2, w2 = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x, m = x[:h2, :w2], m[:h2, :w2]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    inside = m[0::2, 0::2] & m[0::2, 1::2] & m[1::2, 0::2] & m[1::2, 1::2]
    sigma = _robust_sigma(hh[inside], estimator) if inside.sum() >= 16 else float("nan")
    return sigma, x.reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3)), inside


def noise_levels(img, *, mask=None, levels: int = 2, estimator: str = "median") -> np.ndarray:
    """White-noise-equivalent sigma at ``levels`` dyadic scales.

    Level ``j`` (0-based) is the diagonal Haar band of the slice averaged over
    ``2**j x 2**j`` blocks, times ``2**j``, so that white noise of standard deviation
    ``sigma`` reads ``sigma`` at every level, while noise correlated over a few pixels (a
    reconstruction on a grid finer than the detector, a resampled or compressed export)
    shows at the coarser levels where the finest band misses it. NaN for levels with
    fewer than 16 blocks inside the sample. ``estimator`` reads each band
    (:data:`NOISE_ESTIMATORS`).
    """
    _check_estimator(estimator)
    a = _check(img)
    m = sample_mask(a) if mask is None else np.asarray(mask, bool)
    x = np.where(np.isfinite(a), a, 0.0)
    out = np.full(int(levels), np.nan)
    for j in range(int(levels)):
        if min(x.shape) < 2:
            break
        sigma, x, m = _haar_sigma(x, m, estimator)
        out[j] = sigma * 2**j
    return out


def noise_sigma(img, *, mask=None, levels: int = 2, estimator: str = "median") -> float:
    """Standard deviation of the noise in a slice: the RMS of :func:`noise_levels`.

    For white noise this is ``median(|HH|) / 0.6745`` of the finest diagonal Haar band
    (Donoho and Johnstone); coarser levels add what correlated noise hides from it. Only
    2 x 2 blocks wholly inside the sample (:func:`sample_mask`) count. NaN when fewer than
    16 blocks qualify. In the slice's units.
    """
    lv = noise_levels(img, mask=mask, levels=levels, estimator=estimator)
    lv = lv[np.isfinite(lv)]
    return float(np.sqrt(np.mean(lv**2))) if lv.size else float("nan")


def noise_index(img, *, estimator: str = "median") -> float:
    """Noise in units of the slice's contrast: ``noise_sigma / contrast`` (no units).

    Invariant to gain and offset. 0 for a noise-free slice; about 0.01-0.02 for a good
    synchrotron slice, 0.1 and more where noise hides the phases. NaN for a slice without
    sample or without contrast. ``estimator`` reads the Haar bands (:data:`NOISE_ESTIMATORS`);
    the measured terms use the median.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = np.zeros((256, 256)); img[:, 128:] = 1.0
    >>> round(noise_index(img + rng.normal(0, 0.05, img.shape)), 2)
    0.05

    Slices larger than ``MAX_SIDE`` are measured on their central ``MAX_SIDE`` square.
    """
    return noise_indices(img, estimators=(estimator,))[estimator]


def noise_indices(img, *, estimators=NOISE_ESTIMATORS) -> dict:
    """:func:`noise_index` read by each of ``estimators`` at once (one sample mask, one
    contrast): ``{estimator: index}``."""
    for e in estimators:
        _check_estimator(e)
    a = _central(_check(img), MAX_SIDE)
    m = sample_mask(a)
    c = contrast(a, mask=m)
    if not (np.isfinite(c) and c > 0):
        return {e: float("nan") for e in estimators}
    return {e: noise_sigma(a, mask=m, estimator=e) / c for e in estimators}


def _check_estimator(estimator: str) -> None:
    if estimator not in NOISE_ESTIMATORS:
        raise OptionError(f"unknown noise estimator {estimator!r}; choose from {', '.join(NOISE_ESTIMATORS)}")


def noise_estimator_score(img) -> float:
    """The noise-estimator baseline quality score: minus the finest-band noise sigma.

    The slice is scaled so that its 0.5 and 99.5 percentiles are 0 and 1 (no clipping),
    and the score is ``-median(|HH|) / 0.6745`` of its finest diagonal Haar band over the
    whole slice (no sample mask, no coarser level): higher is better. It is the simplest
    no-reference measure a tomographer uses (more noise, worse slice), the baseline of
    ``benchmarks/real_orderings.py`` and of :mod:`tomoqc.study`. NaN for a slice smaller
    than 8 x 8 pixels.
    """
    a = _check(img)
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = (a - lo) / (hi - lo if hi > lo else 1.0)
    sigma, _, _ = _haar_sigma(a, np.ones(a.shape, bool))
    return -sigma


def _central_square(a: np.ndarray, size: int) -> np.ndarray:
    """The largest central square of even side up to ``size``, non-finite values set to 0 and
    its mean taken off (the spectral measures below window it and read its power)."""
    h, w = a.shape
    n = min(h, w, int(size))
    n -= n % 2
    y0, x0 = (h - n) // 2, (w - n) // 2
    x = a[y0 : y0 + n, x0 : x0 + n]
    x = np.where(np.isfinite(x), x, 0.0)
    return x - x.mean() if x.size else x


@functools.lru_cache(maxsize=16)
def _polar_bins(n: int, bins: int, r_lo: float, r_hi: float):
    """Angular bin (0..bins-1, over [0, pi)) of the FFT samples of an n x n image in the band."""
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    r = np.hypot(fy, fx)
    sel = (r >= r_lo) & (r < r_hi)
    theta = np.mod(np.arctan2(fy, fx), np.pi)
    b = np.minimum((theta / np.pi * bins).astype(np.intp), bins - 1)
    return sel, b[sel]


def streak_index(img, *, size: int = 512, bins: int | None = None, band=(0.25, 0.5), trend: float = 8.0) -> float:
    """Angular-undersampling streaks: how much the power spectrum breaks up into spokes.

    Parameters
    ----------
    img : array_like, 2-D
        A reconstructed slice (any units).
    size : int
        Side of the central square analysed (the largest square up to ``size`` that fits;
        a Hann window removes its edges).
    bins : int, optional
        Angular bins over ``[0, pi)``; default ``pi * band[1] * n`` for an ``n`` px square,
        the angular resolution of its Fourier grid at the band's outer radius (spokes
        closer than that are also close enough to leave no gap).
    band : (float, float)
        Radial frequency band, in cycles per pixel (0.5 is Nyquist).
    trend : float
        Width (bins, Gaussian sigma) of the smooth angular trend divided out.

    Returns
    -------
    float
        ``max(0, cv - cv_0)`` where ``cv`` is the relative standard deviation of the
        detrended angular power profile and ``cv_0`` the one expected from the number of
        Fourier samples per bin for a spectrum without spokes. NaN for a slice smaller than
        32 px or without contrast.
    """
    a = _check(img)
    if not 0.0 <= band[0] < band[1] <= 0.5:
        raise OptionError(f"band must satisfy 0 <= low < high <= 0.5, got {band}")
    x = _central_square(a, size)
    n = x.shape[0]
    if n < 32:
        return float("nan")
    bins = int(round(np.pi * band[1] * n)) if bins is None else int(bins)
    if bins < 16:
        raise OptionError(f"bins must be >= 16, got {bins}")
    if not np.any(x):
        return float("nan")
    win = np.hanning(n)
    p = np.abs(np.fft.fft2(x * np.outer(win, win))) ** 2
    sel, b = _polar_bins(n, int(bins), float(band[0]), float(band[1]))
    vals = p[sel]
    total = np.bincount(b, weights=vals, minlength=bins)
    count = np.bincount(b, minlength=bins).astype(np.float64)
    ok = count > 0
    prof = np.where(ok, total / np.maximum(count, 1), 0.0)
    # the smooth angular trend (anisotropy of the sample), circular over [0, pi)
    smooth = ndimage.gaussian_filter1d(prof, float(trend), mode="wrap")
    wsm = ndimage.gaussian_filter1d(ok.astype(np.float64), float(trend), mode="wrap")
    smooth = smooth / np.maximum(wsm, 1e-12)
    good = ok & (smooth > 0)
    if good.sum() < 16:
        return float("nan")
    rel = prof[good] / smooth[good]
    cv = float(np.std(rel))
    # an exponentially distributed power (a spectrum of independent samples, no spokes)
    # averaged over c samples has relative std 1 / sqrt(c); FFT samples are half
    # redundant (Hermitian symmetry puts two of them in every bin)
    cv0 = float(np.sqrt(np.mean(2.0 / count[good])))
    return max(0.0, cv - cv0)


@functools.lru_cache(maxsize=8)
def _ring_groups(n: int, bins: int, r_lo: float, r_hi: float):
    """The band's FFT samples of an n x n image (:func:`_polar_bins`) grouped by frequency ring
    (radius rounded to whole cycles per image): ``(sel, order, bins_sorted, bounds)``, where
    ``order`` sorts the selected samples by ring, ``bins_sorted`` is their angular bin in that
    order and ``bounds`` the ``(start, stop)`` of each ring in it."""
    sel, b = _polar_bins(n, bins, r_lo, r_hi)
    f = np.fft.fftfreq(n)
    ring = np.rint(np.hypot(*np.meshgrid(f, f, indexing="ij"))[sel] * n).astype(np.intp)
    order = np.argsort(ring, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(ring[order]) > 0])
    bounds = tuple(zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist()))
    b_sorted = b[order]
    for arr in (order, b_sorted):
        arr.setflags(write=False)
    return sel, order, b_sorted, bounds


def _ring_relative_profile(p: np.ndarray, n: int, bins: int, band, lowest: float, close: int,
                           level: float = 0.5):
    """Angular profile (``bins`` over ``[0, pi)``) of each frequency ring's log10 power relative to
    the ring's median over directions, in ``band`` (cycles per pixel), rings whose ``level``
    quantile over directions (the median by default) is below ``lowest`` (log10) left out, gaps
    narrower than ``close`` bins closed by a circular maximum filter. None when most rings are
    left out or a gap of empty bins is wider than ``close``."""
    sel, order, b_sorted, bounds = _ring_groups(n, bins, float(band[0]), float(band[1]))
    logp = np.log10(p[sel][order] + np.finfo(np.float64).tiny)
    rel = np.empty_like(logp)
    keep = np.empty(len(logp), bool)
    for s0, s1 in bounds:
        m = float(np.median(logp[s0:s1]))
        rel[s0:s1] = logp[s0:s1] - m
        keep[s0:s1] = (m if level == 0.5 else float(np.quantile(logp[s0:s1], level))) >= lowest
    if keep.sum() < 0.5 * len(keep):  # most of the band is below the floor: too little to read
        return None
    rel, bk = rel[keep], b_sorted[keep]
    count = np.bincount(bk, minlength=bins).astype(np.float64)
    # a small square's grid leaves some narrow bins without a sample: the closing fills them
    prof = np.where(count > 0, np.bincount(bk, weights=rel, minlength=bins) / np.maximum(count, 1), -np.inf)
    prof = ndimage.maximum_filter1d(prof, close, mode="wrap")
    return prof if np.all(np.isfinite(prof)) else None


def missing_wedge(img, *, size: int = 512, bins: int = 180, band=(0.02, 0.12), depth: float = 1.5,
                  high_band=(0.25, 0.45), high_depth: float = 0.5, close: int = 9, floor: float = 1e-8) -> float:
    """Limited-angle data: the angular extent (degrees) of directions missing from the spectrum.

    Parameters
    ----------
    img : array_like, 2-D
        A reconstructed slice (any units).
    size : int
        Side of the central square analysed (the largest square up to ``size`` that fits;
        a Hann window removes its edges).
    bins : int
        Angular bins over ``[0, pi)``.
    band : (float, float)
        Radial frequency band, in cycles per pixel.
    depth : float
        A direction is missing when its power in ``band`` lies this many decades below that of
        the directions at the profile's 80th percentile...
    high_band, high_depth :
        ...and, where the slice holds power above ``floor`` there, ``high_depth`` decades below
        in ``high_band``. At high frequencies a measured scan's noise fills every direction it
        was measured from, whatever the sample: a strongly anisotropic sample (its
        weak directions dark in ``band``) is told apart from a wedge of directions never
        measured (dark at every frequency). 0.5 decades also finds the wedge of an 8-bit
        export, whose rounding noise partly fills it.
    close : int
        Width (bins) of the angular maximum filter that closes gaps narrower than that (the
        dark gaps between the spokes of a sparse-angle scan, :func:`streak_index`); each gap
        that is left is widened back by ``close - 1`` bins.
    floor : float
        Frequency rings whose median power is below ``floor`` times the windowed slice's mean
        spectral power (its offset taken off) are left out: there a noise-free, strongly
        blurred slice holds only rounding and its blur kernel's anisotropy (float32 rounding
        reads about 1e-14; the noise of a measured scan 1e-6 or more). When that leaves out
        most of a band's rings, the band is not read.

    Returns
    -------
    float
        Degrees of the half turn (0 to 180) whose directions carry no power, in one wedge:
        about ``180 - arc`` for a filtered back-projection from an ``arc``-degree range of
        views (1-5 degrees less at 256 px, 1-2 at 512 px: the window and the Fourier grid
        blur the wedge's edges), 0 for a complete scan. Where several gaps are found (the spokes of very few
        views leave gaps wider than ``close``), the longest counts in excess of the next
        longest: regular gaps read 0. NaN for a slice smaller than 64 px or without contrast.

    Notes
    -----
    Every projection angle fills one line through the origin of the slice's Fourier
    transform (the Fourier slice theorem); a scan over ``arc < 180`` degrees leaves the wedge
    of the other directions empty, noise included, since the noise too only enters through
    the measured projections. Each frequency ring's log power is taken relative to its own
    median over directions (so that the spectrum's fall with frequency, and blur, cancel),
    averaged per angular bin, and the runs of bins far below the strong directions are
    found. A run counts only when it is also dark in ``high_band`` (where that holds power)
    and has walls: across each end, from ``(close + 1) // 2`` bins inside to as many outside,
    the deficit changes by more than ``depth``. A wedge's edge is a step in angle; the weak
    directions of an anisotropic sample fade in over tens of degrees and, at high
    frequencies, hold the noise (textures elongated 2-30 times with noise at 1/30-1/1000 of
    their contrast read 0; noise-free ones elongated 16 times and more still read a wedge,
    ``tests/test_missing_wedge.py``).
    """
    a = _check(img)
    for bd in (band, high_band):
        if not 0.0 < bd[0] < bd[1] <= 0.5:
            raise OptionError(f"a band must satisfy 0 < low < high <= 0.5, got {bd}")
    if int(bins) < 36 or int(close) < 1 or int(close) % 2 == 0 or not depth > 0 or not high_depth > 0 \
            or not 0 < floor < 1:
        raise OptionError("need bins >= 36, an odd close >= 1, depths > 0 and 0 < floor < 1")
    x = _central_square(a, size)  # its offset taken off: an offset must not raise the floor below
    n = x.shape[0]
    if n < 64:
        return float("nan")
    # high-pass first: the window's leakage of the strong low frequencies is anisotropic (a
    # cross along the axes) and would read as missing diagonals where a noise-free slice is
    # strongly blurred
    win = np.outer(np.hanning(n), np.hanning(n))
    mean_power = float(np.sum((x * win) ** 2))  # the mean of |FFT|^2 over all frequencies (Parseval)
    x = x - ndimage.gaussian_filter(x, 4.0, mode="reflect")
    if not np.any(x) or not mean_power > 0:
        return float("nan")
    p = np.abs(np.fft.fft2(x * win)) ** 2
    lowest = math.log10(float(floor) * mean_power)
    prof = _ring_relative_profile(p, n, int(bins), band, lowest, int(close))
    if prof is None:
        return float("nan")
    deficit = np.quantile(prof, 0.8) - prof  # decades below the strong directions
    dark = deficit > float(depth)
    high = _ring_relative_profile(p, n, int(bins), high_band, lowest, int(close))
    if high is not None:
        dark &= (np.quantile(high, 0.8) - high) > float(high_depth)
    if not dark.any():
        return 0.0
    if dark.all():
        return 180.0
    # runs of dark bins around the circle (start, length); a wedge has walls: across each
    # end the deficit changes by more than ``depth`` within half the closing width, where the
    # weak directions of an anisotropic sample fade in over tens of degrees
    nb, k = int(bins), (int(close) + 1) // 2
    k0 = int(np.flatnonzero(~dark)[0])
    rolled = np.roll(dark, -k0)
    runs, i = [], 0
    while i < nb:
        if rolled[i]:
            j = i
            while j < nb and rolled[j]:
                j += 1
            runs.append(((i + k0) % nb, j - i))
            i = j
        else:
            i += 1
    widths = [0]
    for start, length in runs:
        end = start + length - 1
        inner = min(k, (length - 1) // 2)
        walls = (deficit[(start + inner) % nb] - deficit[(start - k) % nb],
                 deficit[(end - inner) % nb] - deficit[(end + k) % nb])
        if min(walls) > float(depth):
            widths.append(length + int(close) - 1)  # widened back by what the closing took
    # the wedge is the longest in excess of the next longest: the regular gaps between the
    # views of a sparse scan are alike (the streak index weighs them)
    widths.sort(reverse=True)
    widths.append(0)
    return float(min(180.0, (widths[0] - widths[1]) * 180.0 / nb))


def view_spacing(img, *, size: int = 512, band=(0.25, 0.45), strength: float = 20.0, fewest: int = 3,
                 floor: float = 1e-8) -> float:
    """Sparse views: the angle (degrees) between the directions a sparse scan measured.

    Parameters
    ----------
    img : array_like, 2-D
        A reconstructed slice (any units).
    size : int
        Side of the central square analysed (the largest square up to ``size`` that fits;
        a Hann window removes its edges).
    band : (float, float)
        Radial frequency band, in cycles per pixel, where the spokes of a sparse scan are
        apart (0.5 is Nyquist).
    strength : float
        A periodicity counts when the angular profile's harmonic at the spoke count stands
        this many times above the profile's median harmonic, and the one at twice it (where
        resolved) half as many (complete scans of real and simulated samples reach 3-10 away
        from the pixel grid's 4-fold symmetry; scans of 4-90 directions 17-390).
    fewest : int
        The fewest directions read (2 would be any sample with a square grid's symmetry).
    floor : float
        Frequency rings whose 90th percentile of power over directions (the spokes) is below
        ``floor`` times the windowed slice's mean spectral power are left out; when that
        leaves out most of the band, the slice is not read (a noise-free, strongly blurred
        slice holds only rounding there).

    Returns
    -------
    float
        ``180 / k`` for a scan that measured ``k`` evenly spaced directions of the half turn
        (``k`` views over the half turn; views over the full turn count once per direction),
        0 when the spectrum shows no such fan of spokes (a complete scan, or spokes too dense
        for the analysed square to separate: more than about ``0.35 n`` directions for an
        ``n`` px square). NaN for a slice smaller than 64 px, without contrast, or without
        power in the band.

    Notes
    -----
    Filtered back-projection from ``k`` directions puts the slice's Fourier transform on
    ``k`` lines through the origin (the Fourier slice theorem); where the lines are apart,
    each frequency ring's power over direction is a comb of period ``180 / k`` degrees. Each
    ring's log power is taken relative to its median over directions (as in
    :func:`missing_wedge`), averaged in angular bins about one Fourier sample wide at the
    band's inner radius, and the Fourier series of that profile over the half turn is read:
    a comb of ``k`` teeth has strong harmonics at ``k``, ``2 k``, ... and the smallest
    ``k >= fewest`` whose harmonics at ``k`` and ``2 k`` (where resolved) both stand out is the
    count (the second more leniently: a full-turn fan-beam scan of an odd number of views,
    rebinned, interleaves two half-turn sets of unequal strength), provided the harmonic at
    ``k`` also stands :data:`ISOLATION` times above both its neighbours (a strongly elongated
    sample puts its power in a narrow bump of directions, whose first harmonics are far above
    the median but level with each other) and, for 4 and 8 directions (the pixel grid's own
    symmetry), the comb goes on at its third and fourth multiples. This reads where
    :func:`streak_index` stops rising:
    past a spacing of about 10 degrees the gaps between spokes are wider than that index's
    angular trend, and the index falls as the views get fewer.
    """
    a = _check(img)
    if not 0.0 < band[0] < band[1] <= 0.5:
        raise OptionError(f"band must satisfy 0 < low < high <= 0.5, got {band}")
    if not strength > 1 or int(fewest) < 2 or not 0 < floor < 1:
        raise OptionError("need strength > 1, fewest >= 2 and 0 < floor < 1")
    x = _central_square(a, size)
    n = x.shape[0]
    if n < 64:
        return float("nan")
    win = np.outer(np.hanning(n), np.hanning(n))
    mean_power = float(np.sum((x * win) ** 2))
    if not mean_power > 0:
        return float("nan")
    p = np.abs(np.fft.fft2(x * win)) ** 2
    # bins no narrower than the Fourier grid at the inner radius (every bin holds samples of
    # every ring), a multiple of 36 so that the harmonics of 1-degree spacings fall on bins
    bins = max(36, 36 * int(math.pi * band[0] * n * 0.9 // 36))
    # a ring counts by its strong directions (the spokes): between the spokes of very few
    # views most directions hold almost nothing, and the ring's median with them
    prof = _ring_relative_profile(p, n, bins, band, math.log10(float(floor) * mean_power), 1, level=0.9)
    if prof is None:
        return float("nan")
    h = np.abs(np.fft.rfft(prof - prof.mean()))
    top = len(h) - 1  # harmonics 1..bins/2
    for k in range(int(fewest), top + 1):
        others = np.ones(top + 1, bool)
        others[0] = False
        others[k::k] = False
        base = float(np.median(h[others])) if others.any() else 0.0
        if not base > 0:
            continue
        # the second harmonic is asked for only where the bins resolve it well (the bins'
        # width and the Fourier grid damp the harmonics near the profile's Nyquist)
        if not (h[k] > strength * base and (2 * k > 0.75 * top or h[2 * k] > 0.5 * strength * base)):
            continue
        # a comb's harmonic stands alone; a narrow bump of power (a strongly elongated sample
        # puts its power in a few degrees) has a smooth series of harmonics, its first ones
        # far above the median but level with their neighbours
        if h[k] < ISOLATION * max(h[k - 1] if k > 1 else 0.0, h[k + 1] if k < top else 0.0):
            continue
        # 4 and 8 directions are also the symmetry of the square pixel grid, which a complete
        # scan's interpolation imprints (harmonics 4 and 8 up to 27 and 16 times the median,
        # fading by the 3rd and 4th multiple): the spokes of so few views are sharp, and
        # their comb goes on at the same depth
        if k in (4, 8) and not all(h[m * k] > 0.5 * strength * base for m in (3, 4) if m * k <= top):
            continue
        return 180.0 / k
    return 0.0


@functools.lru_cache(maxsize=8)
def _white_gradient_energy(scale: float) -> float:
    """Mean squared gradient of unit white noise smoothed by a Gaussian of ``scale`` (px)."""
    w = np.random.default_rng(12345).normal(size=(384, 384))
    gy = ndimage.gaussian_filter(w, scale, order=(1, 0), mode="wrap")
    gx = ndimage.gaussian_filter(w, scale, order=(0, 1), mode="wrap")
    return float(np.mean(gy * gy + gx * gx))


def _crest(energy: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Pixels where ``energy`` is not below either neighbour along the gradient direction.

    The direction ``atan2(gy, gx)`` is rounded to one of four (0, 45, 90, 135 degrees), as in
    the Canny detector's non-maximum suppression; edges of the image repeat the border.
    """
    theta = np.mod(np.arctan2(gy, gx), np.pi)
    d = np.round(theta / (np.pi / 4)).astype(np.intp) % 4
    p = np.pad(energy, 1, mode="edge")
    h, w = energy.shape
    out = np.zeros(energy.shape, bool)
    for k, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        behind = p[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        out |= (d == k) & (energy >= ahead) & (energy >= behind)
    return out


#: Step-like crests :func:`blur_index` needs for a reading.
MIN_CRESTS = 16


def blur_index(img, *, scales=(2.0, 4.0), strongest: float = 0.03, fine: float = 1.1, cap: float = 50.0) -> float:
    """Blur of a slice: the Gaussian width (px) of its strongest edges (module doc).

    Parameters
    ----------
    img : array_like, 2-D
    scales : (float, float)
        The two Gaussian scales ``s1 < s2`` (px).
    strongest : float
        Fraction of the sample's pixels, by gradient energy at ``s2``, whose edge crests count.
    fine : float
        Crests whose energy ratio exceeds ``fine * (s2 / s1)**2`` are left out: no blurred
        step edge reaches ``(s2 / s1)**2``; structure finer than an edge does (the dense
        streaks of too few projections, fine texture, noise), and it would read as sharpness.
    cap : float
        Value returned when the energy ratio reaches 1 or less (blur much wider than ``s2``).

    Returns
    -------
    float
        The width ``b`` (px) of a Gaussian blur that gives the crests' energy ratio: about
        0.4 for a sharp sampled step, ``b`` after a blur of width ``b``, at most ``cap``.
        Invariant to gain and offset. NaN without sample or contrast, and where fewer than
        :data:`MIN_CRESTS` step-like crests are found (a slice of fine texture only; also
        the three noise-free phantoms under the strongest blur of the study, whose few
        strong edges are all wider than the scales: trying weaker edges there reads them,
        but reads a real battery slice's texture as 1.7 px of blur with enough jitter to
        misorder a real gain series, so it is not done). Slices larger than ``MAX_SIDE / 2``
        are measured on their central square of that side.

    Crests are looked for in the sample with its enclosed holes filled
    (:func:`sample_mask` leaves out every constant 5 x 5 neighbourhood, and an 8-bit export
    of a smooth slice has such plateaus inside the sample: a Savu slice under a 2 px
    detector blur, saved as PNG, kept 15 crests of the float image's 175 and read no blur at
    all), then eroded by ``3 s2`` so that no filter reaches outside it.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> img = np.zeros((128, 128)); img[:, 64:] = 1.0
    >>> img = ndimage.gaussian_filter(img, 2.0) + np.random.default_rng(0).normal(0, 0.01, img.shape)
    >>> round(blur_index(img), 1)
    2.0
    """
    a = _central(_check(img), MAX_SIDE // 2)
    s1, s2 = (float(s) for s in scales)
    if not 0 < s1 < s2:
        raise OptionError(f"scales must satisfy 0 < s1 < s2, got {scales}")
    if not 0 < strongest <= 1:
        raise OptionError(f"strongest must be in (0, 1], got {strongest}")
    m = sample_mask(a)
    c = contrast(a, mask=m)
    if not (np.isfinite(c) and c > 0):
        return float("nan")
    x = np.where(np.isfinite(a), a, 0.0) / c
    # the largest white-equivalent level: correlated noise has gradient energy at these
    # scales that the finest band alone would not account for
    lv = noise_levels(x, mask=m)
    sn = float(np.nanmax(lv)) if np.isfinite(lv).any() else 0.0
    inner = ndimage.binary_erosion(ndimage.binary_fill_holes(m), iterations=int(math.ceil(3 * s2)))
    if inner.sum() < 64:
        return float("nan")
    energy = []
    for s in (s1, s2):
        gy = ndimage.gaussian_filter(x, s, order=(1, 0), mode="nearest")
        gx = ndimage.gaussian_filter(x, s, order=(0, 1), mode="nearest")
        energy.append(gy * gy + gx * gx - sn * sn * _white_gradient_energy(s))
    # gy, gx are those of the coarser scale: its crests are the edges' centre lines
    strong = energy[1] >= np.quantile(energy[1][inner], 1.0 - float(strongest))
    crest = inner & strong & _crest(energy[1], gy, gx)
    # a blurred step gives at most (s2 / s1)**2; structure finer than an edge gives more
    sel = crest & (energy[0] < float(fine) * (s2 / s1) ** 2 * energy[1])
    if sel.sum() < MIN_CRESTS:
        return float("nan")
    e1, e2 = float(np.mean(energy[0][sel])), float(np.mean(energy[1][sel]))
    if not e2 > 0:
        return float(cap)
    r = e1 / e2
    if r <= 1.0:
        return float(cap)
    return float(min(math.sqrt(max(s2 * s2 - r * s1 * s1, 0.0) / (r - 1.0)), cap))
