"""A no-reference measure of ring artifacts: coherent concentric structure about the axis.

Ring artifacts come from detector elements whose gain differs from their neighbours'. In
the reconstruction every such element draws a circle about the rotation axis, at the
radius of its distance to the axis, with the same sign all the way round. Real
structure does not: a particle or a pore sits at one angle, so a thin band of radius
seen in one direction is unrelated to the same band seen in another.

:func:`ring_profile` measures exactly that. The slice is cut into ``sectors`` equal
angular sectors about the axis; in each sector the mean value is taken in radial bins of
half a pixel, and the local level is removed by a running median over ``window`` pixels
of radius (a ring is about 1-3 px wide; slow radial trends, steps and the field-of-view
edge are kept in the median and so removed). Calling the residual of sector ``k`` at
radius ``r`` ``d_k(r)``, the *coherent power* at ``r`` is the mean product over pairs of
sectors 2 and 3 apart (``pairs="local"``, the default; :data:`LAGS`),

    P(r) = sum_k sum_{l in (2, 3)} d_k d_{k+l} / (2 K)   (sectors present only),

which is the squared amplitude of what neighbouring sectors share (a ring, or the part of a
ring that an arc covers) and has expectation 0 for what they do not (texture, noise),
however strong. Pairs of adjacent sectors are left out: near the axis adjacent cells touch,
and texture correlated across their border would read as a ring. ``pairs="all"`` averages
over all pairs of different sectors, ``((sum_k d_k)**2 - sum_k d_k**2) / (K (K - 1))`` (the
definition of earlier versions). :func:`ring_index` is ``sqrt(max(0, mean_r P(r)))`` over
the radii from ``min_radius`` to the largest circle about the axis that fits in the slice:
the RMS ring amplitude in the slice's own units, or in units of its robust range (0.5 to
99.5 percentile mapped to 0-1, as the network sees it) when ``normalize`` is True.

For a full ring pattern of amplitude ``A`` whose rings fill a share ``f`` of the radii, the
index is ``A * sqrt(f)`` under both definitions. An arc over ``n`` of the ``K`` sectors keeps
``(2 n - 5) / (2 K)`` of the full ring's power with local pairs (a 90-degree arc: 0.17, index
ratio 0.41; 180 degrees: 0.42, ratio 0.65) but only about ``(n / K)**2`` with all pairs
(0.06 and 0.25), so partial rings (a stripe in part of the projections, a wide stripe in a
180-degree scan) are seen. The price is a noisier estimate (64 pairs per radius instead of
496 at 32 sectors). The index rises with the ring amplitude once the rings dominate the
chance cross terms with noise (tests/test_rings.py). The figures below were measured with
all pairs and the slice centre as axis: on the evaluation phantoms of the bundled model the
index of clean slices stays below 0.011 while image-domain rings of level 1-5 read
0.006-0.013, 0.011-0.023, 0.020-0.038, 0.035-0.070 and 0.060-0.115 (32 sectors), following
the generated ring labels with Spearman -0.95; a ring term fitted on that definition needs
refitting for the local one.

The axis: ``center=None`` (default) is the slice centre; ``(row, col)`` forces one (it must
lie inside the slice); ``center="auto"`` searches it with :func:`find_ring_center`, which is
experimental (slow, and reliable for strong rings only: see its doc).

Layered samples: a wound or layered cylinder (the jelly roll of a cylindrical battery cell,
concentric tubes) is concentric structure too, and its layers are as coherent from sector to
sector as rings are (lab CT of a cylindrical Li-ion cell, `battery_xct/cell_vol` of the real-data
folder: its wound slices read 0.020-0.022 about the cell's centre, where its end-cap slices read
0.002-0.003 and the evaluation phantoms' clean slices below 0.011). What sets the layers apart
is that they repeat: the sector-averaged residual ``mean(r)`` is periodic in the radius, with
the winding pitch (11-12 px there), where detector rings sit at the radii of unrelated
detector elements. :func:`ring_profile` measures that as ``layering``
(:func:`radial_layering`: how well ``mean(r)`` is in step with itself one and two periods
on; the eight wound slices of that cell 0.58-0.87 about its centre, 256-384 px crops of one
0.47-0.62, the `im_1` cell 0.68-0.70; the cell's end-cap slices at most 0.17; the 1032 images
of a full study run, phantoms clean, impaired and with image-domain and scanned rings, at most
0.34; the real Savu rings 0.10; a blurred HTC2022 disc about an axis the search put far off
its centre 0.42; the report's ring recipe, :func:`tomoqc.distort.image.ring_artifact`, whose
rings alternate in sign at random steps of 4-14 px, at most 0.48 over 60 draws on a smooth
background, its highest reading). At
:data:`LAYERED_LIMIT` or more the slice is a layered sample and its ring index is NaN: rings
cannot be told from its layers (a ring term then counts it as typical,
:mod:`tomoqc.models.measured`). Evenly spaced synthetic rings repeat too and read as layers.
A crop whose layers are cut short by the slice edge can stay below the limit and read as
rings (a 256 px crop 25 px off the cell's centre: 0.35 about the cell's centre, which the
search finds, with a ring index of 0.041).

Limits: a reconstruction cropped off-axis needs the axis given (about a wrong axis the index
reads near 0); the axis cannot lie outside the slice; a real thin concentric structure, such
as the wall of a cylindrical sample holder centred on the axis, counts as a ring, and with
local pairs so does a thin arc-shaped structure concentric with the axis over 20 degrees or more.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
from scipy import ndimage

from tomoqc.errors import InputError, OptionError

__all__ = ["RingProfile", "ring_profile", "ring_index", "find_ring_center", "resolve_ring_center", "check_center",
           "radial_layering", "BIN", "LAGS", "LAYERED_LIMIT", "AUTO_MIN_GAIN", "AUTO_MIN_EXCESS", "AUTO_MAX_SIDE"]

#: Radial bin width (px).
BIN = 0.5
#: Sector offsets whose pairs make the coherent power (``pairs="local"``).
LAGS = (2, 3)
#: ``layering`` (:func:`radial_layering`) from which a slice is a layered sample whose ring index is NaN.
LAYERED_LIMIT = 0.5
#: Shortest radial lag (px) of the layering measure: below it the autocorrelation is that of one ring's width.
LAYER_MIN_LAG = 4.0


class RingProfile(dict):
    """Result of :func:`ring_profile` (a dict with attribute access).

    Keys: ``radius`` (bin centres, px), ``power`` (coherent power ``P(r)``), ``amplitude``
    (signed coherent amplitude: ``sign(mean residual) * sqrt(max(P, 0))``), ``mean``
    (the residual averaged over sectors), ``index`` (the ring index; NaN for a layered
    sample), ``layering`` and ``layer_period`` (:func:`radial_layering`), ``layered``
    (``layering >= LAYERED_LIMIT``), ``center``, ``sectors``, ``window``, ``min_radius``.
    """

    __getattr__ = dict.__getitem__


def _check(img) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(None, f"ring measure needs a 2-D slice, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise InputError(None, f"ring measure needs a numeric slice, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def check_center(center, name: str = "center"):
    """A rotation axis as a ``(row, col)`` tuple of finite floats (None and ``"auto"`` stay as they are).

    ``center`` is a pair of numbers, a ``"ROW,COL"`` string (a command-line value) or ``"auto"``
    (any case: find the axis, :func:`find_ring_center`); anything else raises
    :class:`OptionError` naming ``name``.
    """
    if center is None:
        return None
    if isinstance(center, str) and center.strip().lower() == "auto":
        return "auto"
    parts = center.split(",") if isinstance(center, str) else center
    try:
        c = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        c = ()
    if len(c) != 2 or not all(math.isfinite(v) for v in c):
        raise OptionError(f"{name} must be ROW,COL (two finite numbers), got {center!r}")
    return c




def _geometry(h: int, w: int, cy: float, cx: float, k: int, n: int, step: int = 1, dtype=np.float64) -> np.ndarray:
    """(sector, radial bin) cell of every ``step``-th pixel as ``sector * n + bin``; -1 beyond ``n`` bins."""
    dy = (np.arange(0, h, step, dtype=dtype) - dtype(cy))[:, None]
    dx = (np.arange(0, w, step, dtype=dtype) - dtype(cx))[None, :]
    b = np.floor(np.sqrt(dy * dy + dx * dx) / dtype(BIN)).astype(np.int64)
    sec = np.floor((np.arctan2(dy, dx) + dtype(np.pi)) / dtype(2 * np.pi) * k).astype(np.int64) % k
    return np.where(b < n, sec * n + b, -1).astype(np.int32 if k * n < 2**31 else np.int64)


@functools.lru_cache(maxsize=8)
def _cells(h: int, w: int, cy: float, cx: float, k: int, n: int) -> np.ndarray:
    """:func:`_geometry` of the whole slice, kept for the last few axes: a volume's slices share one."""
    cell = _geometry(h, w, cy, cx, k, n)
    cell.setflags(write=False)
    return cell


def _residuals(a, finite, cell, k: int, n: int, window: float):
    """Per (sector, radial bin) mean minus its running radial median: ``(resid, has)``, both (k, n)."""
    use = finite & (cell >= 0)
    idx = cell[use]
    cnt = np.bincount(idx, minlength=k * n).reshape(k, n)
    tot = np.bincount(idx, weights=a[use], minlength=k * n).reshape(k, n)
    means = np.full((k, n), np.nan)
    has = cnt > 0
    means[has] = tot[has] / cnt[has]
    # cells no pixel centre fell in (narrow sectors near the axis) stay missing: the local level
    # is the median of the cells present in the window
    win = max(3, int(round(window / BIN)) | 1)
    half = win // 2
    level = ndimage.median_filter(np.where(has, means, 0.0), size=(1, win), mode="nearest")
    touch = ndimage.maximum_filter1d((~has).astype(np.uint8), size=win, axis=1, mode="nearest").astype(bool)
    if touch.any():
        padded = np.pad(means, ((0, 0), (half, half)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, win, axis=1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing window gives NaN
            level[touch] = np.nanmedian(windows[touch], axis=1)
    # a present cell lies in its own window, so its level is finite
    return np.where(has, means - level, 0.0), has


def _power(resid, has, pairs: str, lags=LAGS):
    """Coherent power per radius (axis -1) from residuals ``(..., k, n)``: mean product over sector pairs.

    ``"local"``: pairs ``lags`` sectors apart (each sector with the sectors 2 and 3 further round);
    ``"all"``: all pairs of different sectors. NaN where no pair is present.
    """
    with np.errstate(all="ignore"):
        if pairs == "all":
            m = has.sum(axis=-2).astype(np.float64)
            total = resid.sum(axis=-2)
            return np.where(m >= 2, (total**2 - (resid**2).sum(axis=-2)) / (m * (m - 1)), np.nan)
        num = 0.0
        den = 0.0
        hf = has.astype(np.float64)
        for lag in lags:
            num = num + (resid * np.roll(resid, -lag, axis=-2)).sum(axis=-2)
            den = den + (hf * np.roll(hf, -lag, axis=-2)).sum(axis=-2)
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _check_options(sectors, window, min_radius, pairs):
    if int(sectors) != sectors or sectors < 8:
        raise OptionError(f"sectors must be an integer >= 8, got {sectors}")
    if not window > 0 or not min_radius >= 0:
        raise OptionError(f"window must be > 0 and min_radius >= 0, got {window} and {min_radius}")
    if pairs not in ("both", "local", "all"):
        raise OptionError(f"pairs must be 'both', 'local' or 'all', got {pairs!r}")


def radial_layering(mean, radius, min_radius: float) -> tuple[float, float]:
    """How periodic the sector-averaged ring residual is along the radius (module doc).

    ``mean`` is :func:`ring_profile`'s residual averaged over sectors at ``radius`` (bins of
    :data:`BIN` px). Over the radii from ``min_radius`` on, the residual (adjacent bins
    averaged, minus its mean) has a normalised autocorrelation
    ``a(L) = (sum x_i x_{i+L} / (n - L)) / (sum x_i**2 / n)``. A layer pattern repeats: it is
    in step with itself again one period on *and* two periods on. Returns the largest
    ``min(a(L), a(2 L))`` over lags ``L`` up to a quarter of the radii, past both
    :data:`LAYER_MIN_LAG` px and the first lag where ``a`` turns negative (a repeat must first
    fall out of step: a smooth residual, as of a blurred slice, stays correlated at short lags
    without repeating), and the period: the shortest such lag at a local maximum within 0.05
    of it, in px. A sample wound or layered every ``p`` px reads
    close to 1 at ``p``; rings at unrelated radii, texture, noise and blur stay low (0 when
    ``a`` never turns negative). ``(nan, nan)`` with too few radii or no residual.
    """
    m = np.asarray(mean, np.float64)
    keep = (np.asarray(radius) >= min_radius) & np.isfinite(m)
    # in 1-px steps: the half-pixel bins alternate with where pixel centres fall, and on a
    # slice with almost no ring residual (a strongly blurred one) that 1-px alternation is all
    # there is; averaging bin pairs removes it
    x = m[keep]
    x = 0.5 * (x[:-1] + x[1:]) if x.size > 1 else x
    n = x.size
    lo, hi = int(round(LAYER_MIN_LAG / BIN)), n // 4
    if hi <= lo:
        return math.nan, math.nan
    x = x - x.mean()
    var = float(np.mean(x * x))
    if not var > 0:
        return math.nan, math.nan
    ac = np.array([np.mean(x[:-lag] * x[lag:]) for lag in range(1, 2 * hi)]) / var  # ac[j]: lag j + 1
    neg = np.flatnonzero(ac[:hi] < 0)
    first = max(lo, int(neg[0]) + 2 if neg.size else hi)
    if first >= hi:
        return 0.0, math.nan
    lags = np.arange(first, hi)
    both = np.minimum(ac[lags - 1], ac[2 * lags - 1])
    top = float(both.max())
    # the period: the first local maximum that comes close to the best (multiples of the period
    # are in step as well, and can read a little higher)
    padded = np.r_[-np.inf, both, -np.inf]
    peaks = np.flatnonzero((both >= padded[:-2]) & (both >= padded[2:]) & (both >= top - 0.05))
    return top, float(lags[int(peaks[0])] * BIN)


def _inscribed(h, w, cy, cx) -> float:
    return min(cy, cx, h - 1 - cy, w - 1 - cx)


def ring_profile(img, *, center=None, sectors: int = 32, window: float = 4.5, min_radius: float = 12.0,
                 normalize: bool = True, pairs: str = "local", max_shift: float = 0.2) -> RingProfile:
    """Coherent ring power about the rotation axis as a function of radius (module doc).

    Parameters
    ----------
    img : array_like, 2-D
        A slice; non-finite pixels are left out.
    center : None, (float, float) or "auto"
        ``(row, col)`` of the rotation axis; None (default for now) is the slice centre
        ``((H - 1) / 2, (W - 1) / 2)``; ``"auto"`` finds it (:func:`find_ring_center`,
        experimental: see its limits). The axis must lie inside the slice.
    sectors : int
        Angular sectors (>= 8).
    window : float
        Running-median length along the radius (px) that gives each sector's local level.
    min_radius : float
        Radii below this (px) are left out of the index: near the axis a sector holds
        too few pixels.
    normalize : bool
        Measure in units of the slice's robust range
        (:func:`tomoqc.preprocess.normalize_slice`), so that the index does not depend on
        the intensity units of the reconstruction.
    pairs : "both", "local" or "all"
        Which sector pairs make the coherent power: ``"local"`` the pairs 2 and 3 sectors
        apart, which sees partial rings (arcs); ``"all"`` every pair of different sectors
        (earlier versions' index: an arc over a share f of the circle counts f**2);
        ``"both"`` the larger of the two indices. Local pairs (the default) see arcs. About
        an axis off the centre of a wound sample, local pairs read its layers weakly (the
        `battery_xct/im_1` cell about the slice centre: a coherent amplitude of 0.006); about
        the sample's own centre, which the axis search finds, they read them as strong rings
        (0.047). The layering test (module doc) tells them apart, and the index of either
        is NaN.
    max_shift : float
        With ``center="auto"``: how far from the slice centre the axis is searched, as a
        share of the smaller side.

    Returns
    -------
    RingProfile
        ``index`` is NaN when no radius between ``min_radius`` and the edge is left (a
        slice too small for its axis), the slice has no finite pixel, or it is a layered
        sample (``layered``: its concentric layers repeat along the radius, module doc).
    """
    _check_options(sectors, window, min_radius, pairs)
    a = _check(img)
    h, w = a.shape
    center = check_center(center)
    k = int(sectors)
    if isinstance(center, str):
        center = find_ring_center(a, sectors=k, window=window, min_radius=min_radius, pairs=pairs,
                                  max_shift=max_shift)
    cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if center is None else center
    if not (0 <= cy <= h - 1 and 0 <= cx <= w - 1):
        raise OptionError(f"the axis ({cy:g}, {cx:g}) lies outside the {h} x {w} slice")
    finite = np.isfinite(a)
    if normalize and finite.any():
        from tomoqc.preprocess import normalize_slice

        a = normalize_slice(np.where(finite, a, np.nan)).astype(np.float64)
    rmax = _inscribed(h, w, cy, cx)
    n = int(np.floor(rmax / BIN)) if rmax > 0 else 0
    radius = (np.arange(n) + 0.5) * BIN
    empty = RingProfile(radius=radius, power=np.full(n, np.nan), amplitude=np.full(n, np.nan),
                        mean=np.full(n, np.nan), index=float("nan"), layering=float("nan"), layer_period=float("nan"),
                        layered=False, center=(cy, cx), sectors=k, window=float(window),
                        min_radius=float(min_radius), pairs=pairs)
    keep_r = radius >= min_radius
    if n == 0 or not keep_r.any() or not finite.any():
        return empty
    resid, has = _residuals(a, finite, _cells(h, w, cy, cx, k, n), k, n, window)
    if pairs == "both":
        candidates = [_power(resid, has, "all"), _power(resid, has, "local")]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = [np.nanmean(np.where(keep_r, p, np.nan)) for p in candidates]
        power = candidates[int(np.nanargmax([-np.inf if not np.isfinite(v) else v for v in means]))]
    else:
        power = _power(resid, has, pairs)
    m = has.sum(axis=0)
    with np.errstate(all="ignore"):
        mean = np.where(m >= 1, resid.sum(axis=0) / np.maximum(m, 1), np.nan)
    amplitude = np.sign(mean) * np.sqrt(np.maximum(power, 0.0))
    use_r = keep_r & np.isfinite(power)
    if not use_r.any():
        return empty
    index = float(np.sqrt(max(0.0, float(np.mean(power[use_r])))))
    layering, period = radial_layering(mean, radius, min_radius)
    layered = bool(layering >= LAYERED_LIMIT)
    return RingProfile(radius=radius, power=power, amplitude=amplitude, mean=mean,
                       index=float("nan") if layered else index, layering=layering, layer_period=period,
                       layered=layered, center=(cy, cx), sectors=k, window=float(window),
                       min_radius=float(min_radius), pairs=pairs)


def ring_index(img, *, center=None, sectors: int = 32, window: float = 4.5, min_radius: float = 12.0,
               normalize: bool = True, pairs: str = "local", max_shift: float = 0.2) -> float:
    """RMS coherent ring amplitude of a slice (0 without rings; NaN when it cannot be measured).

    Same parameters as :func:`ring_profile`.
    """
    return ring_profile(img, center=center, sectors=sectors, window=window, min_radius=min_radius,
                        normalize=normalize, pairs=pairs, max_shift=max_shift)["index"]


# --- the axis search -------------------------------------------------------------------------------

#: Tile (px of the search image) of the far-pair point-symmetry map: pairs of pixels in tiles at most
#: :data:`_NEAR` tiles apart are left out, so that small round objects (particles, pores), each
#: point-symmetric about its own centre, do not read as an axis.
_TILE = 16
_NEAR = 2
#: Candidate axes (maxima of the symmetry map) scored by the all-sector coherence.
_CANDIDATES = 12
#: Sectors of the candidate score (all pairs: a full ring is coherent in every one of them).
_SEARCH_SECTORS = 64
#: Slices larger than this are searched on a 2 x 2 block average (rings survive it).
_SEARCH_SIDE = 512


def _far_autoconv(hp: np.ndarray, b: int = _TILE, near: int = _NEAR) -> np.ndarray:
    """``C(s) = sum_x hp(x) hp(s - x)`` over pairs of pixels in tiles more than ``near`` tiles apart.

    ``C`` peaks at ``s = 2 a`` for structure point-symmetric about ``a`` (rings about the axis),
    shape ``(2 H - 1, 2 W - 1)``. The full self-convolution (one FFT) minus each tile's
    convolution with its ``(2 near + 1)**2`` neighbourhood (small batched FFTs).
    """
    from scipy import fft as sfft

    h, w = hp.shape
    ny, nx = -(-h // b), -(-w // b)
    H, W = ny * b, nx * b
    a = np.zeros((H, W))
    a[:h, :w] = hp
    P, Q = sfft.next_fast_len(2 * H, real=True), sfft.next_fast_len(2 * W, real=True)
    F = sfft.rfft2(a, (P, Q))
    C = sfft.irfft2(F * F, (P, Q))[:2 * H - 1, :2 * W - 1]
    m = 2 * near + 1
    off = near * b
    pad = np.zeros((H + 2 * off, W + 2 * off))
    pad[off:off + H, off:off + W] = a
    tiles = a.reshape(ny, b, nx, b).transpose(0, 2, 1, 3).reshape(-1, b, b)
    nb = np.lib.stride_tricks.sliding_window_view(pad, (m * b, m * b))[::b, ::b][:ny, :nx].reshape(-1, m * b, m * b)
    S = (m + 1) * b - 1
    L = sfft.next_fast_len(S, real=True)
    cn = sfft.irfft2(sfft.rfft2(tiles, (L, L)) * sfft.rfft2(nb, (L, L)), (L, L))[:, :S, :S]
    big = np.zeros((2 * H + 2 * off + S, 2 * W + 2 * off + S))
    k = 0
    for iy in range(ny):
        for ix in range(nx):
            oy, ox = 2 * iy * b, 2 * ix * b  # (2 iy - near) b + off
            big[oy:oy + S, ox:ox + S] += cn[k]
            k += 1
    return C - big[off:off + 2 * H - 1, off:off + 2 * W - 1]


def _fine_score(a, finite, cy, cx, k, window, min_radius, pairs="all", step=1):
    """Mean coherent power about ``(cy, cx)`` (``pairs``, default all sectors) on every ``step``-th pixel.

    -inf when no radius fits.
    """
    h, w = a.shape
    rmax = _inscribed(h, w, cy, cx)
    n = int(np.floor(rmax / BIN)) if rmax > 0 else 0
    if n == 0 or (n * BIN) < min_radius + BIN:
        return -np.inf
    cell = _geometry(h, w, cy, cx, k, n, step=step, dtype=np.float32)
    sub = a[::step, ::step]
    resid, has = _residuals(sub, finite[::step, ::step], cell, k, n, window)
    power = _power(resid, has, pairs)
    radius = (np.arange(n) + 0.5) * BIN
    use = (radius >= min_radius) & np.isfinite(power)
    return float(np.mean(power[use])) if use.any() else -np.inf


def _peaks(win: np.ndarray, count: int):
    """Positions of the ``count`` largest local maxima (5 x 5) of ``win``, largest first."""
    mx = ndimage.maximum_filter(win, size=5, mode="nearest")
    ys, xs = np.nonzero(win >= mx)
    order = np.argsort(win[ys, xs])[::-1][:count]
    return list(zip(ys[order], xs[order]))


def _subpixel(C, y, x):
    def para(m, lo, hi):
        d = lo - 2 * m + hi
        return 0.0 if d >= 0 else float(np.clip(0.5 * (lo - hi) / d, -0.5, 0.5))
    fy = para(C[y, x], C[y - 1, x], C[y + 1, x]) if 0 < y < C.shape[0] - 1 else 0.0
    fx = para(C[y, x], C[y, x - 1], C[y, x + 1]) if 0 < x < C.shape[1] - 1 else 0.0
    return y + fy, x + fx


def find_ring_center(img, *, sectors: int = 32, window: float = 4.5, min_radius: float = 12.0,
                     pairs: str = "local", max_shift: float = 0.2) -> tuple[float, float]:
    """The rotation axis ``(row, col)`` of a slice: the centre of its concentric (ring) structure.

    Rings are point-symmetric about the axis ``a``: the self-convolution of the slice's thin
    structure (the slice minus its 5 x 5 median, which keeps lines 1-3 px wide and drops
    edges and smooth texture) peaks at ``2 a``. Pairs of pixels close to each other are left
    out of it (tiles of 16 px, neighbours up to 2 tiles), so that small round objects, each
    symmetric about its own centre, do not compete. The largest local maxima of that map
    within ``max_shift`` times the smaller side of the slice centre (sub-pixel by a parabola)
    and the slice centre itself are scored by the coherence of all pairs of 64 narrow
    sectors (a full ring is coherent in all of them only about its own centre, to about a
    pixel); the best is refined by a pattern search with that score (steps 1 and 0.5 px),
    and returned. Slices larger than 512 px are searched on their 2 x 2 block average.
    ``sectors``, ``window`` and ``pairs`` are checked but the search uses its own
    (``window`` and ``min_radius`` do enter the score). Without rings the result is
    arbitrary, with an index about it close to the centre's (:func:`resolve_ring_center`
    decides); the axis is looked for at least ``min_radius`` + 8 px inside the slice.
    """
    _check_options(sectors, window, min_radius, pairs)
    if not 0 <= max_shift <= 0.5:
        raise OptionError(f"max_shift must be between 0 and 0.5, got {max_shift}")
    a = _check(img)
    h, w = a.shape
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    finite = np.isfinite(a)
    if not finite.any() or min(h, w) < 2 * (min_radius + 8):
        return centre
    fill = float(np.median(a[finite]))
    af = np.where(finite, a, fill)
    d = 2 if min(h, w) > _SEARCH_SIDE else 1
    if d > 1:
        hs, ws = h // d, w // d
        s = af[:hs * d, :ws * d].reshape(hs, d, ws, d).mean(axis=(1, 3))
        fin = finite[:hs * d, :ws * d].reshape(hs, d, ws, d).all(axis=(1, 3))
    else:
        s, fin, hs, ws = af, finite, h, w
    mr = max(4.0, min_radius / d)
    win_r = max(1.0, window / d)
    lo = mr + 8.0 / d
    cs = ((hs - 1) / 2.0, (ws - 1) / 2.0)

    def score(c, step=1):
        if not (lo <= c[0] <= hs - 1 - lo and lo <= c[1] <= ws - 1 - lo):
            return -np.inf
        return _fine_score(s, fin, c[0], c[1], _SEARCH_SECTORS, win_r, mr, "all", step=step)

    cands = [cs]
    t = int(np.ceil(2 * max_shift * min(hs, ws)))
    if t > 0:
        hp = np.where(fin, s - ndimage.median_filter(s, size=5, mode="nearest"), 0.0)
        C = _far_autoconv(hp)
        y0, x0 = hs - 1, ws - 1
        ylo, xlo = max(1, y0 - t), max(1, x0 - t)
        win = C[ylo:min(C.shape[0] - 1, y0 + t + 1), xlo:min(C.shape[1] - 1, x0 + t + 1)]
        for py, px in _peaks(win, _CANDIDATES):
            sy, sx = _subpixel(C, ylo + py, xlo + px)
            cands.append((sy / 2.0, sx / 2.0))
    best_s, best_c = max(((score(c), c) for c in cands), key=lambda v: v[0])
    if best_c is not cs:
        for stp in (1.0, 0.5):
            moved = True
            while moved:
                moved = False
                for dy, dx in ((stp, 0), (-stp, 0), (0, stp), (0, -stp)):
                    cand = (best_c[0] + dy, best_c[1] + dx)
                    sc = score(cand)
                    if sc > best_s:
                        best_c, best_s, moved = cand, sc, True
                        break
    if best_c is cs:
        return centre
    return (float(best_c[0] * d + (d - 1) / 2.0), float(best_c[1] * d + (d - 1) / 2.0))


#: An automatically found axis replaces the slice centre only when the index about it is at
#: least this many times the index about the centre ...
AUTO_MIN_GAIN = 1.5
#: ... and higher by at least this much (in the normalised units of the index): the search
#: maximises the index, so without a margin it would find "rings" in texture and noise.
AUTO_MIN_EXCESS = 0.003
#: Slices larger than this are block-averaged down to it for the search (the axis found is
#: scaled back; the index itself is then measured at full resolution).
AUTO_MAX_SIDE = 512


def resolve_ring_center(slices, center=None, **options) -> tuple[tuple[float, float], str]:
    """The rotation axis to measure rings about, for one slice or a stack of slices of one volume.

    Parameters
    ----------
    slices : array_like, (H, W) or (n, H, W)
        Normalised slices (values in [0, 1]) sharing one axis.
    center : None, "auto" or (row, col)
        A given ``(row, col)`` is returned as it is. ``None`` and ``"auto"`` search: the mean
        of the slices (rings of one detector defect sit at the same radius in neighbouring
        slices, texture and noise average down), block-averaged to at most
        ``AUTO_MAX_SIDE`` px, goes to :func:`find_ring_center`; its axis is kept only when
        the index about it beats the index about the slice centre by ``AUTO_MIN_GAIN`` times
        and by ``AUTO_MIN_EXCESS``, or when the slices are a layered sample about it (their
        ring index is then NaN), otherwise the slice centre is used (also when they are a
        layered sample about the slice centre).
    options
        ``sectors``, ``window``, ``min_radius``, ``pairs`` for the index.

    Returns
    -------
    (row, col), source
        ``source`` is ``"given"``, ``"found"`` or ``"slice centre"``.
    """
    c = check_center(center)
    arr = np.asarray(slices, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(None, f"slices must have shape (n, H, W), got {arr.shape}")
    h, w = arr.shape[1:]
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    if c is not None and c != "auto":
        return c, "given"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, axis=0) if arr.shape[0] > 1 else arr[0]
    d = max(1, int(math.ceil(max(h, w) / AUTO_MAX_SIDE)))
    small = mean
    if d > 1:
        hs, ws = h // d, w // d
        small = mean[: hs * d, : ws * d].reshape(hs, d, ws, d).mean(axis=(1, 3))
    opts = {k: v for k, v in options.items() if k in ("sectors", "window", "min_radius", "pairs")}
    if d > 1 and "min_radius" in opts:
        opts["min_radius"] = max(4.0, opts["min_radius"] / d)
    try:
        found = find_ring_center(small, **opts)
    except (OptionError, InputError, ValueError):
        return centre, "slice centre"
    found = (found[0] * d + (d - 1) / 2.0, found[1] * d + (d - 1) / 2.0)
    if abs(found[0] - centre[0]) < 0.5 and abs(found[1] - centre[1]) < 0.5:
        return centre, "slice centre"
    full = {k: v for k, v in options.items() if k in ("sectors", "window", "min_radius", "pairs")}
    about_found = ring_profile(mean, center=found, normalize=False, **full)
    if about_found.layered:
        # a layered sample centred there (a wound cell off the slice centre): about any other
        # axis its layers merely decorrelate and would read as a slice without rings
        return (float(found[0]), float(found[1])), "found"
    about_centre = ring_profile(mean, center=centre, normalize=False, **full)
    if about_centre.layered:  # layered about the slice centre: a search a pixel off must not read its layers
        return centre, "slice centre"
    at_centre = about_centre.index
    at_found = about_found.index
    if not (np.isfinite(at_found) and at_found >= AUTO_MIN_GAIN * np.nan_to_num(at_centre)
            and at_found >= np.nan_to_num(at_centre) + AUTO_MIN_EXCESS):
        return centre, "slice centre"
    return (float(found[0]), float(found[1])), "found"
