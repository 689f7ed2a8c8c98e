"""Real scan data: reading it, reconstructing it and degrading it the way a scan degrades.

Measured data, not simulated, with impairments whose *order* is physically known: fewer
photons, fewer or a limited range of angles, detector blur, miscalibrated detector
columns (rings) with and without stripe removal. Three sources are supported:

* raw parallel-beam projections with flat and dark fields in the layout of Savu's test
  data (:func:`read_savu`; Diamond Light Source I13 scan 24737), degraded on the raw
  counts (:func:`thin_counts`) or on the ``-log`` sinogram;
* the Helsinki Tomography Challenge 2022 fan-beam sinograms (:func:`read_htc2022`),
  rebinned to parallel beam (:func:`htc2022_parallel`) and degraded on the ``-log``
  sinogram (:func:`add_dose_noise` and the others);
* real *reconstructions* without raw data, re-projected and scanned again with the
  parallel-beam simulator of :mod:`tomoqc.distort.physics` (:func:`reproject`).

Geometry conventions follow :class:`tomoqc.distort.physics.Scanner`: a pixel at column
``x`` and row ``y`` (relative to the image centre) projects onto detector coordinate
``s = x cos(theta) + y sin(theta) + center``; sinograms are ``(n_angles, n_det)`` arrays
of line integrals in pixel units; angles are in radians.

References
----------
Kak, A. C., Slaney, M. (1988). *Principles of Computerized Tomographic Imaging*. IEEE
Press; reprinted SIAM 2001, ch. 3 (parallel-beam FBP, ramp filter) and 3.4 (fan-beam
rebinning). doi:10.1137/1.9780898719277
Vo, N. T., Atwood, R. C., Drakopoulos, M. (2018). Superior techniques for eliminating
ring artifacts in X-ray micro-tomography. *Opt. Express* 26(22), 28396-28412 (sorting-
based stripe removal; full, partial and dead stripes). doi:10.1364/OE.26.028396
Meaney, A. et al. (2022). Helsinki Tomography Challenge 2022 open tomographic dataset
(HTC 2022). Zenodo. doi:10.5281/zenodo.6984868
Kingman, J. F. C. (1993). *Poisson Processes*. Oxford University Press (thinning: a Poisson
variable of mean ``lam`` thinned by independent Bernoulli(``f``) trials is Poisson of mean
``f * lam``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from tomoqc.errors import InputError, OptionError

__all__ = [
    "RealSources",
    "degraded_series",
    "reconstructed_volumes",
    "ORDERING_GROUPS",
    "SERIES_KINDS",
    "CENTER_OFFSETS",
    "read_savu",
    "savu_sinogram",
    "read_htc2022",
    "htc2022_parallel",
    "find_center",
    "fbp",
    "thin_counts",
    "add_dose_noise",
    "subsample_angles",
    "limit_angles",
    "detector_blur",
    "zingers",
    "projection_jitter",
    "sample_motion",
    "detector_lag",
    "gain_mismatch",
    "own_stripes",
    "remove_stripes",
    "stripe_window",
    "reproject",
    "savu_reconstruct",
    "htc2022_reconstruct",
    "HTC2022_COUNTS",
]

#: Effective photon counts per unattenuated ray of the HTC2022 sinograms (NOTES: the
#: median absolute neighbour-angle difference of ``-log T`` gives 58 000-60 000).
HTC2022_COUNTS = 59000.0


# --------------------------------------------------------------------------- reading
def _read_tiff(path) -> np.ndarray:
    import tifffile

    try:
        return np.asarray(tifffile.imread(str(path)), dtype=np.float64)
    except Exception as err:  # pragma: no cover - depends on the file
        raise InputError(path, f"cannot read TIFF ({type(err).__name__}: {err})") from None


def _match_angles(values: np.ndarray, n: int, path) -> np.ndarray:
    """Pick the ``n`` projection angles out of a list that also names flats and darks.

    Savu's ``angles.txt`` repeats the first angle for the flats taken before the scan and
    the last one for those after; the projections are the one run of ``n`` entries whose
    steps are all non-zero and of one sign (the most uniformly spaced such run when a
    repeated end angle was written with round-off, e.g. 91.7999 then 91.8).
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == n:
        return v
    if v.size < n:
        raise InputError(path, f"{v.size} angles for {n} projections")
    cands = []
    for i in range(v.size - n + 1):
        d = np.diff(v[i:i + n])
        if n == 1 or (np.all(d > 0) or np.all(d < 0)):
            cands.append(i)
    if not cands:
        raise InputError(path, f"cannot match {v.size} angles to {n} projections "
                               f"(no monotonic run of {n} entries)")

    def irregularity(i):
        d = np.diff(v[i:i + n])
        return float(np.max(np.abs(d - np.median(d)))) if d.size else 0.0

    # several runs (a repeated end angle written with round-off): the most uniform one
    best = min(cands, key=irregularity)
    return v[best:best + n]


def read_savu(root) -> dict:
    """Read raw projections, flat, dark and angles in the layout of Savu's test data.

    Parameters
    ----------
    root : path
        Folder with ``tiffs/*.tif*`` (projections, one file each, sorted by name),
        ``flat_*.tif*``, ``dark_*.tif*`` (averaged when several) and ``angles.txt`` (one
        angle per line in degrees; entries for flats and darks are matched away by count,
        see :func:`_match_angles`).

    Returns
    -------
    dict
        ``counts`` (n_angles, rows, det) float64 raw counts, ``flat`` and ``dark``
        (rows, det) float64, ``angles`` (n_angles,) radians, ``path``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    proj_dir = root / "tiffs" if (root / "tiffs").is_dir() else root
    files = sorted(p for p in proj_dir.iterdir()
                   if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(("flat", "dark")))
    if not files:
        raise InputError(proj_dir, "no projection TIFFs")

    def mean_of(prefix):
        fs = sorted(root.glob(prefix + "*.tif*"))
        if not fs:
            raise InputError(root, f"no {prefix}*.tif file")
        return np.mean([_read_tiff(f) for f in fs], axis=0)

    counts = np.stack([_read_tiff(f) for f in files])
    flat, dark = mean_of("flat"), mean_of("dark")
    if flat.shape != counts.shape[1:] or dark.shape != counts.shape[1:]:
        raise InputError(root, f"flat {flat.shape} / dark {dark.shape} do not match projections "
                               f"{counts.shape[1:]}")
    ang_file = root / "angles.txt"
    if not ang_file.exists():
        raise InputError(ang_file, "no such file")
    try:
        values = np.loadtxt(ang_file, ndmin=1)
    except ValueError as err:
        raise InputError(ang_file, f"not a list of numbers ({err})") from None
    angles = np.deg2rad(_match_angles(values, counts.shape[0], ang_file))
    return {"counts": counts, "flat": flat, "dark": dark, "angles": angles, "path": str(root)}


def savu_sinogram(data: dict, row: int, *, counts=None, fraction: float = 1.0) -> np.ndarray:
    """Flat/dark-corrected ``-log`` sinogram of detector ``row`` of :func:`read_savu` data.

    ``counts`` (optional) replaces ``data["counts"][:, row]`` by *dark-subtracted* counts,
    e.g. from :func:`thin_counts` with ``fraction``; the flat is scaled by ``fraction``.
    """
    flat = data["flat"][row] - data["dark"][row]
    if counts is None:
        sig = data["counts"][:, row] - data["dark"][row]
    else:
        sig = np.asarray(counts, np.float64)
    ref = np.maximum(flat * float(fraction), 1e-6)
    return -np.log(np.clip(sig / ref, 1e-6, None))


def read_htc2022(path) -> dict:
    """Read a Helsinki Tomography Challenge 2022 ``*_full.mat`` file (fan beam).

    Returns
    -------
    dict
        ``sinogram`` (n_angles, n_det) float64 (``-log`` of flat/dark corrected data),
        ``angles`` (radians, source angles ``beta``), ``sod`` and ``sdd`` (mm),
        ``pixel`` (detector pixel after binning, mm), ``magnification``, ``path``.

    Notes
    -----
    Meaney et al. (2022), doi:10.5281/zenodo.6984868. Flat detector, centred.
    """
    import scipy.io as sio

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        m = sio.loadmat(str(p), squeeze_me=True, struct_as_record=False)
    except Exception as err:
        raise InputError(p, f"not a MATLAB file ({type(err).__name__})") from None
    key = next((k for k in m if k.startswith("CtData")), None)
    if key is None:
        raise InputError(p, "no CtData* structure (not an HTC2022 file)")
    c = m[key]
    par = c.parameters
    sino = np.asarray(c.sinogram, np.float64)
    angles = np.deg2rad(np.asarray(par.angles, np.float64).ravel())
    if sino.shape[0] != angles.size:
        raise InputError(p, f"sinogram {sino.shape} does not match {angles.size} angles")
    sod, sdd = float(par.distanceSourceOrigin), float(par.distanceSourceDetector)
    return {
        "sinogram": sino,
        "angles": angles,
        "sod": sod,
        "sdd": sdd,
        "pixel": float(par.pixelSizePost),
        "magnification": sdd / sod,
        "path": str(p),
    }


def htc2022_parallel(path_or_data, *, n_angles: int = 360, n_det: int | None = None,
                     pixel: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Rebin an HTC2022 fan-beam sinogram to a parallel-beam one over ``[0, pi)``.

    With ``s`` the parallel detector coordinate at the rotation axis (mm), the ray of
    parallel angle ``theta`` is the fan ray of fan angle ``gamma = asin(s / SOD)`` from
    source angle ``beta = theta + gamma``, which meets the flat detector at
    ``u = SDD tan(gamma)``; the fan data are interpolated linearly in ``beta``
    (periodic over 2 pi) and ``u`` (Kak & Slaney 1988, sec. 3.4.3). The sign is the one
    checked on these files (the opposite sign doubles edges).

    Parameters
    ----------
    path_or_data : path or dict
        An HTC2022 file or the dict of :func:`read_htc2022`.
    n_angles : int
        Parallel angles over ``[0, pi)``.
    n_det : int, optional
        Parallel detector samples (default: the fan detector's count).
    pixel : float, optional
        Parallel sample spacing in mm (default: detector pixel / magnification).

    Returns
    -------
    sino : ndarray (n_angles, n_det)
    angles : ndarray (radians)
    center : float
        Detector coordinate of the rotation axis, ``(n_det - 1) / 2``.
    """
    d = path_or_data if isinstance(path_or_data, dict) else read_htc2022(path_or_data)
    fan = d["sinogram"]
    beta = d["angles"]
    nb, nu = fan.shape
    n_det = nu if n_det is None else int(n_det)
    if n_angles < 2 or n_det < 2:
        raise OptionError("n_angles and n_det must be >= 2")
    pixel = d["pixel"] / d["magnification"] if pixel is None else float(pixel)
    # fan samples on a uniform beta grid: drop a closing duplicate of 2 pi
    if nb > 1 and abs((beta[-1] - beta[0]) - 2 * math.pi) < 1e-6:
        fan, beta = fan[:-1], beta[:-1]
        nb -= 1
    dbeta = float(np.median(np.diff(beta)))
    if abs(dbeta * nb - 2 * math.pi) > 1e-3:
        raise InputError(d.get("path"), "fan-beam angles must cover 360 degrees uniformly")
    theta = np.arange(n_angles) * (math.pi / n_angles)
    s = (np.arange(n_det) - (n_det - 1) / 2.0) * pixel
    if np.abs(s).max() >= d["sod"]:
        raise OptionError("parallel detector wider than the source distance")
    gamma = np.arcsin(s / d["sod"])
    u = d["sdd"] * np.tan(gamma)
    b = (theta[:, None] + gamma[None, :] - beta[0]) / dbeta
    b = np.mod(b, nb)
    ui = u / d["pixel"] + (nu - 1) / 2.0
    ext = np.concatenate([fan, fan[:1]], axis=0)  # periodic in beta
    coords = np.stack([b, np.broadcast_to(ui, b.shape)])
    sino = ndi.map_coordinates(ext, coords, order=1, mode="nearest")
    return sino, theta, (n_det - 1) / 2.0


# --------------------------------------------------------------------- reconstruction
def _angle_weights(angles: np.ndarray) -> np.ndarray:
    """Quadrature weights of an arbitrary set of parallel-beam angles (sum ~pi when full).

    Each angle gets half the gaps to its neighbours on the circle of period pi; a gap
    wider than both four median gaps and 10 degrees (the missing wedge of a limited-angle
    set) counts as one median gap, so the ends of the wedge are not over-weighted.
    """
    a = np.mod(np.asarray(angles, np.float64), math.pi)
    n = a.size
    if n == 1:
        return np.array([math.pi])
    order = np.argsort(a, kind="stable")
    s = a[order]
    gaps = np.diff(np.concatenate([s, [s[0] + math.pi]]))  # gap after each sorted angle
    med = float(np.median(gaps[gaps > 1e-9])) if np.any(gaps > 1e-9) else math.pi / n
    wedge = max(4 * med, math.radians(10.0))
    gaps = np.where(gaps > wedge, med, gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty(n)
    w[order] = w_sorted
    return w



def _sinogram(sino) -> np.ndarray:
    """``sino`` as a float64 2-D array (angles x detector), or one error line."""
    p = np.asarray(sino, np.float64)
    if p.ndim != 2:
        raise InputError(None, f"expected a 2-D sinogram, got shape {p.shape}")
    return p

def fbp(sino, angles, *, center=None, size=None, filter="ramp", pixel=1.0, chunk=4) -> np.ndarray:
    """Parallel-beam filtered back-projection for any set of angles and axis position.

    Parameters
    ----------
    sino : array_like (n_angles, n_det)
        Line integrals (pixel units).
    angles : array_like (n_angles,)
        Projection angles in radians: any set (uniform, non-uniform, limited, over 180 or
        360 degrees); each is weighted by its share of the angular range
        (:func:`_angle_weights`).
    center : float, optional
        Detector coordinate of the rotation axis (default ``(n_det - 1) / 2``).
    size : int, optional
        Side of the square output, centred on the axis (default ``n_det``).
    filter : str
        ``"ramp"``, ``"shepp-logan"``, ``"hann"`` or ``"cosine"``.
    pixel : float
        Output pixel size in detector pixels (e.g. 0.5 for a finer grid); values stay
        attenuation per detector pixel.

    Returns
    -------
    ndarray of float32 (size, size)

    Notes
    -----
    Kak & Slaney (1988), ch. 3, doi:10.1137/1.9780898719277: the discrete ramp filter
    (their eq. 3.61, :func:`tomoqc.distort.physics._ramp_filter`) on edge-padded rows and
    linear interpolation in the back-projection; units as
    :meth:`tomoqc.distort.physics.Scanner.reconstruct`.
    """
    from tomoqc.distort.physics import _ramp_filter

    q = _sinogram(sino)
    th = np.asarray(angles, np.float64).ravel()
    if q.shape[0] != th.size:
        raise OptionError(f"{th.size} angles for a sinogram of {q.shape[0]} rows")
    if not np.isfinite(q).all():
        raise InputError(None, "sinogram contains NaN or Inf")
    na, nd = q.shape
    center = (nd - 1) / 2.0 if center is None else float(center)
    size = nd if size is None else int(size)
    if size < 2:
        raise OptionError(f"size must be >= 2, got {size}")
    filt = _ramp_filter(nd, filter)
    L = filt.size
    left = (L - nd) // 2
    pad = np.pad(q, ((0, 0), (left, L - nd - left)), mode="edge")
    qf = np.real(np.fft.ifft(np.fft.fft(pad, axis=1) * filt, axis=1))[:, left:left + nd]
    qf = qf * _angle_weights(th)[:, None]
    # guard column of zeros on both sides for rays that leave the detector
    qf = np.concatenate([np.zeros((na, 1)), qf, np.zeros((na, 2))], axis=1).astype(np.float32)
    width = nd + 3
    c = (size - 1) / 2.0
    if not float(pixel) > 0:
        raise OptionError(f"pixel must be > 0, got {pixel}")
    x = (np.arange(size, dtype=np.float32) - c) * np.float32(pixel)
    out = np.zeros((size, size), np.float32)
    cos, sin = np.cos(th).astype(np.float32), np.sin(th).astype(np.float32)
    flat = qf.ravel()
    for a0 in range(0, na, chunk):
        a1 = min(a0 + chunk, na)
        # s = x cos + y sin + center (+1 for the guard column)
        sx = x[None, :] * cos[a0:a1, None]  # (k, W)
        sy = x[None, :] * sin[a0:a1, None] + np.float32(center + 1)  # (k, H)
        s = sy[:, :, None] + sx[:, None, :]  # (k, H, W)
        np.clip(s, 0, width - 2, out=s)
        i0 = s.astype(np.intp)
        w = s - i0
        i0 += (np.arange(a0, a1) * width)[:, None, None]
        v0 = flat.take(i0)
        v1 = flat.take(i0 + 1)
        out += (v0 + w * (v1 - v0)).sum(axis=0)
    return out


def _mirror(row: np.ndarray, c: float) -> np.ndarray:
    """``row(2c - s)`` by linear interpolation, NaN outside the detector."""
    n = row.size
    s = 2 * c - np.arange(n)
    return np.interp(s, np.arange(n), row, left=np.nan, right=np.nan)


def find_center(sino, angles, *, search=None) -> float:
    """Centre of rotation of a parallel-beam sinogram covering (about) 180 degrees.

    A projection at ``theta + pi`` is the mirror image about the axis ``c`` of the one at
    ``theta``: ``p(theta + pi, s) = p(theta, 2c - s)``. Where the set holds such pairs
    (within a tenth of an angle step; e.g. 0 and 180 degrees) the mirrored rows are
    matched directly; otherwise (``[0, pi)``) the mirrored first rows continue the last
    ones, and ``c`` minimises the squared second difference along angle across that seam.
    The cost is minimised on a half-pixel grid and refined to sub-pixel precision.

    Parameters
    ----------
    sino : array_like (n_angles, n_det)
    angles : array_like (radians)
    search : (float, float), optional
        Range of ``c`` to search (default: the middle half of the detector).

    Returns
    -------
    float
        Detector coordinate (pixels) of the rotation axis.

    Notes
    -----
    The principle of matching 0 and 180 degree projections: e.g. Vo, N. T., Drakopoulos,
    M., Atwood, R. C., Reinhard, C. (2014), Reliable method for calculating the center of
    rotation in parallel-beam tomography, *Opt. Express* 22(16), 19078,
    doi:10.1364/OE.22.019078 (which uses the whole sinogram in Fourier space).
    """
    from scipy.optimize import minimize_scalar

    q = np.asarray(sino, np.float64)
    th = np.asarray(angles, np.float64).ravel()
    if q.ndim != 2 or q.shape[0] != th.size:
        raise OptionError(f"sinogram {q.shape} does not match {th.size} angles")
    na, nd = q.shape
    order = np.argsort(th)
    q, th = q[order], th[order]
    step = float(np.median(np.diff(th))) if na > 1 else math.pi
    span = th[-1] - th[0]
    if span < math.pi - 2.5 * step:
        raise OptionError(f"find_center needs about 180 degrees of projections; these span "
                          f"{math.degrees(span):.1f}")
    pairs = [(i, j) for i in range(na) for j in range(i + 1, na)
             if abs(th[j] - th[i] - math.pi) < 0.1 * step]
    k = max(2, min(8, na // 8))

    if pairs:
        def cost(c):
            tot, cnt = 0.0, 0
            for i, j in pairs:
                m = _mirror(q[i], c)
                ok = np.isfinite(m)
                if ok.sum() < nd // 4:
                    return np.inf
                tot += float(np.sum((m[ok] - q[j, ok]) ** 2))
                cnt += int(ok.sum())
            return tot / cnt
    else:
        tail = list(range(na - k, na))
        head = list(range(k))
        ang = np.concatenate([th[tail], th[head] + math.pi])

        def cost(c):
            rows = [q[i] for i in tail] + [_mirror(q[i], c) for i in head]
            r = np.stack(rows)
            tot, cnt = 0.0, 0
            for m in range(1, r.shape[0] - 1):
                a0, a1, a2 = ang[m - 1], ang[m], ang[m + 1]
                t = (a1 - a0) / (a2 - a0)
                d = r[m] - ((1 - t) * r[m - 1] + t * r[m + 1])
                ok = np.isfinite(d)
                if ok.sum() < nd // 4:
                    return np.inf
                tot += float(np.sum(d[ok] ** 2))
                cnt += int(ok.sum())
            return tot / cnt

    lo, hi = (nd / 4.0, 3 * nd / 4.0) if search is None else map(float, search)
    grid = np.arange(lo, hi + 1e-9, 0.5)
    costs = np.array([cost(c) for c in grid])
    if not np.isfinite(costs).any():
        raise InputError(None, "cannot find the centre: no overlap of mirrored projections")
    b = int(np.nanargmin(np.where(np.isfinite(costs), costs, np.nan)))
    res = minimize_scalar(cost, bounds=(grid[b] - 0.75, grid[b] + 0.75), method="bounded",
                          options={"xatol": 0.01})
    return float(res.x) if res.fun <= costs[b] else float(grid[b])


# ---------------------------------------------------------------------- degradations
def _check_fraction(fraction) -> float:
    f = float(fraction)
    if not 0.0 < f <= 1.0:
        raise OptionError(f"fraction must be in (0, 1], got {fraction}")
    return f


def thin_counts(counts, fraction, rng=None, *, dark=0.0, gain=1.0) -> np.ndarray:
    """Binomial thinning of dark-subtracted counts: the same scan with fewer photons.

    Each detected photon is kept with probability ``fraction``, independently; a Poisson
    count of mean ``lam`` becomes a Poisson count of mean ``fraction * lam`` (Kingman
    1993, sec. 5.1), so the result is a real scan at ``fraction`` of the dose with the
    sample, the detector response and the structure noise of the measurement.

    Parameters
    ----------
    counts : array_like
        Raw counts (any shape).
    fraction : float in (0, 1]
    rng : int or Generator
    dark : float or array_like
        Dark level subtracted first (broadcast against ``counts``).
    gain : float
        Detector units per photon; counts are converted to photons (rounded) before
        thinning and back after.

    Returns
    -------
    ndarray of float64
        Thinned *dark-subtracted* counts (mean ``fraction * (counts - dark)``). Correct
        them with the flat field scaled by ``fraction`` (flats are kept at full dose).
    """
    f = _check_fraction(fraction)
    g = float(gain)
    if not g > 0:
        raise OptionError(f"gain must be > 0, got {gain}")
    rng = np.random.default_rng(rng)
    sig = np.asarray(counts, np.float64) - np.asarray(dark, np.float64)
    photons = np.rint(np.clip(sig, 0, None) / g).astype(np.int64)
    if f == 1.0:
        return photons * g
    return rng.binomial(photons, f).astype(np.float64) * g


def add_dose_noise(sino_log, fraction, counts_per_ray=HTC2022_COUNTS, rng=None) -> np.ndarray:
    """Extra noise on a ``-log`` sinogram so that its noise is that of a lower dose.

    A measured ``p = -log(I / I0)`` with ``N0`` counts per unattenuated ray has variance
    ``exp(p) / N0``; at ``fraction`` of the dose it is ``exp(p) / (fraction N0)``. Gaussian
    noise of variance ``exp(p) / N0 * (1 / fraction - 1)`` makes up the difference (the
    Gaussian approximation of Poisson counts, valid for the counts of HTC2022).

    Parameters
    ----------
    sino_log : array_like
    fraction : float in (0, 1]
    counts_per_ray : float
        Effective counts ``N0`` of the measurement (HTC2022: about 59 000, NOTES).
    rng : int or Generator
    """
    f = _check_fraction(fraction)
    n0 = float(counts_per_ray)
    if not n0 > 0:
        raise OptionError(f"counts_per_ray must be > 0, got {counts_per_ray}")
    p = np.asarray(sino_log, np.float64)
    rng = np.random.default_rng(rng)
    var = np.exp(np.clip(p, -5, 30)) / n0 * (1.0 / f - 1.0)
    return p + rng.standard_normal(p.shape) * np.sqrt(var)


def subsample_angles(sino, angles, factor: int):
    """Every ``factor``-th projection: ``(sino[::factor], angles[::factor])``."""
    k = int(factor)
    if k < 1 or k != factor:
        raise OptionError(f"factor must be a positive integer, got {factor}")
    return np.asarray(sino)[::k], np.asarray(angles)[::k]


def limit_angles(sino, angles, span: float, *, start=None):
    """Projections with angles in ``[start, start + span)`` (radians; limited angle).

    ``start`` defaults to the first angle.
    """
    th = np.asarray(angles, np.float64)
    sp = float(span)
    if not sp > 0:
        raise OptionError(f"span must be > 0, got {span}")
    a0 = float(th.min()) if start is None else float(start)
    keep = (th >= a0 - 1e-9) & (th < a0 + sp - 1e-9)
    if not keep.any():
        raise OptionError("no projection in the requested range")
    return np.asarray(sino)[keep], th[keep]


def _attenuation(t: np.ndarray) -> np.ndarray:
    """``-log`` of a transmission, floored at 1e-12 so that no reading turns infinite."""
    return -np.log(np.maximum(t, 1e-12))


def detector_blur(sino_log, sigma: float) -> np.ndarray:
    """Gaussian detector PSF of ``sigma`` pixels on the transmission along each row.

    The PSF (scintillator light spread, focal spot) acts on intensity, not on ``-log``:
    ``-log(G_sigma * exp(-p))``; the row mean of the transmission is preserved.
    """
    s = float(sigma)
    if s < 0:
        raise OptionError(f"sigma must be >= 0, got {sigma}")
    p = np.asarray(sino_log, np.float64)
    if s == 0:
        return p.copy()
    return _attenuation(ndi.gaussian_filter1d(np.exp(-p), s, axis=-1, mode="nearest"))


def zingers(sino_log, fraction: float, rng=None) -> np.ndarray:
    """Direct hits on the detector: a share ``fraction`` of the readings gains counts.

    A photon or particle hitting the scintillator directly adds light to one reading, so its
    transmission rises: ``exp(-p) + a`` with ``a`` uniform in [0.5, 1.5] of the open beam,
    and ``-log`` of that. Every other reading is unchanged. Filtered back-projection turns each
    hit into a thin line across the slice along its view.
    """
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise OptionError(f"fraction must be in [0, 1], got {fraction}")
    p = _sinogram(sino_log).copy()
    if f == 0:
        return p
    g = np.random.default_rng(rng)
    hit = g.random(p.shape) < f
    p[hit] = -np.log(np.exp(-p[hit]) + g.uniform(0.5, 1.5, int(hit.sum())))
    return p


def _shift_rows(p: np.ndarray, shifts) -> np.ndarray:
    """Each row of the ``-log`` sinogram ``p`` moved across the detector by its shift (px),
    on the transmission (linear interpolation, the border reading repeated)."""
    x = np.arange(p.shape[1], dtype=np.float64)
    return _attenuation(np.stack([np.interp(x - d, x, row) for row, d in zip(np.exp(-p), shifts)]))


def projection_jitter(sino_log, sigma: float, rng=None) -> np.ndarray:
    """A wobbling stage: each projection moved across the detector by its own normal shift of
    standard deviation ``sigma`` pixels (on the transmission, linear interpolation)."""
    s = float(sigma)
    if s < 0:
        raise OptionError(f"sigma must be >= 0, got {sigma}")
    p = _sinogram(sino_log)
    if s == 0:
        return p.copy()
    d = np.random.default_rng(rng).normal(0.0, s, p.shape[0])
    return _shift_rows(p, d)


def sample_motion(sino_log, shift: float, *, start: float = 0.5) -> np.ndarray:
    """The sample slips once: from the projection at ``start`` (a share of the scan) onward,
    every projection is moved across the detector by ``shift`` pixels (on the transmission)."""
    if not 0.0 <= float(start) <= 1.0:
        raise OptionError(f"start must be in [0, 1], got {start}")
    p = _sinogram(sino_log)
    out = p.copy()
    k = int(round(float(start) * p.shape[0]))
    if shift == 0 or k >= p.shape[0]:
        return out
    out[k:] = _shift_rows(p[k:], np.full(p.shape[0] - k, float(shift)))
    return out


def detector_lag(sino_log, carry: float) -> np.ndarray:
    """Scintillator afterglow: each reading keeps a share ``carry`` of the one before it in time.

    On the transmission, in acquisition order (the rows), ``t'_i = (1 - carry) t_i + carry t'_(i-1)``
    (``t'_0 = t_0``): a signal that does not change between projections is kept, a change decays
    by ``carry`` per projection, and the slice is smeared along the direction of rotation, more
    the farther from the axis.
    """
    a = float(carry)
    if not 0.0 <= a < 1.0:
        raise OptionError(f"carry must be in [0, 1), got {carry}")
    p = _sinogram(sino_log)
    if a == 0:
        return p.copy()
    t = np.exp(-p)
    out = np.empty_like(t)
    out[0] = t[0]
    for i in range(1, len(t)):
        out[i] = (1.0 - a) * t[i] + a * out[i - 1]
    return _attenuation(out)


def beam_hardening(sino_log, spread: float) -> np.ndarray:
    """A polychromatic beam: the measured attenuation grows more slowly than the path through
    the sample.

    Two equal parts of the spectrum see the sample's attenuation scaled by ``1 + spread`` and
    ``1 - spread``: a reading of line integral ``p`` becomes
    ``-log((exp(-(1 + spread) p) + exp(-(1 - spread) p)) / 2)``. ``spread = 0`` leaves it as it
    is; for small ``p`` it is ``p - spread**2 p**2 / 2``, always below ``p`` and concave in it, so
    long paths read too weak: the reconstruction is cupped (darker inside a uniform object) and
    dark streaks join dense regions. The measured sinogram is taken as the line integrals (its
    own hardening, if any, stays).
    """
    k = float(spread)
    if not 0.0 <= k < 1.0:
        raise OptionError(f"spread must be in [0, 1), got {spread}")
    p = _sinogram(sino_log)
    if k == 0:
        return p.copy()
    # -log of the mean of the two exponentials, written to stay finite for long paths
    return (1.0 - k) * p - np.log(0.5 * (1.0 + np.exp(-2.0 * k * p)))


#: Defect pattern of :func:`gain_mismatch` per unit level, by kind.
GAIN_KINDS = {
    "full": {"full": 0.06, "mismatch": 0.01},
    "partial": {"partial": 0.06, "mismatch": 0.03},
    "dead": {},
}


def own_stripes(sino_log, width: int = 9) -> np.ndarray:
    """A measured sinogram's own stripe profile: each column's mean over the angles minus the
    running median of those means over ``width`` columns (log units, one value per column)."""
    p = _sinogram(sino_log)
    m = p.mean(axis=0)
    return m - ndi.median_filter(m, size=int(width), mode="nearest")


def gain_mismatch(sino_log, level: float, rng=None, *, kind: str = "full", extent=None,
                  deepen: bool = False) -> np.ndarray:
    """Miscalibrated detector columns (ring artifacts after reconstruction).

    Detector pixels whose gain during the projections differs from that in the flats
    (Vo et al. 2018, doi:10.1364/OE.26.028396): ``"full"`` a constant relative mismatch
    (6 % of the columns, up to ``level`` %), ``"partial"`` a mismatch only at low
    transmission (6 % of the columns, up to ``3 level`` %), ``"dead"`` ``round(level)``
    unresponsive pixels. The pattern comes from
    :func:`tomoqc.distort.physics.stripe_gains`; with the same integer seed the columns
    and signs are the same at every level and only the amplitude grows, so levels of
    one seed are ordered.

    Parameters
    ----------
    sino_log : array_like (n_angles, n_det)
    level : float >= 0
    rng : int or Generator
    kind : {"full", "partial", "dead"}
    extent : (int, int), optional
        Detector columns the defects are drawn from.
    deepen : bool
        For measured data with stripes of their own: give each defect the sign that deepens
        its column's own stripe (:func:`own_stripes`) instead of a random one. A random sign
        can cancel part of a real detector's mismatch, and then a higher level has *fewer*
        stripes (on Savu row 104 the defects of one seed correlate -0.26 with the column's
        own stripes, whose RMS falls 2-4 % over the levels), so the levels are no longer
        ordered. With ``deepen`` every column's stripe grows with the level.
    """
    from tomoqc.distort.physics import _measure, stripe_gains

    if kind not in GAIN_KINDS:
        raise OptionError(f"unknown kind {kind!r}; choose full, partial or dead")
    lv = float(level)
    if lv < 0:
        raise OptionError(f"level must be >= 0, got {level}")
    p = _sinogram(sino_log)
    if lv == 0:
        return p.copy()
    spec = dict(GAIN_KINDS[kind])
    if kind == "dead":
        spec["dead"] = int(round(lv))
    else:
        spec["mismatch"] = spec["mismatch"] * lv
    defects = stripe_gains(p.shape[1], rng=rng, extent=extent, **spec)
    if deepen:
        # a gain g > 1 lowers -log T: the column's stripe moves by about -g
        sign = np.where(own_stripes(p) > 0, -1.0, 1.0)
        for key in ("full", "partial"):
            defects[key] = np.abs(defects[key]) * sign
    return _measure(p, defects=defects)


def remove_stripes(sino_log, strength: float) -> np.ndarray:
    """Sorting-based stripe removal (Vo, Atwood & Drakopoulos 2018, algorithm 3).

    Each detector column is sorted along the angle axis, so that a column's values form
    a smooth profile and a stripe becomes a column offset; a median filter across the
    detector (window ``2 * round(strength) + 1`` columns, along the row of the sorted
    image) removes the offset; the values are put back in their original order.

    Parameters
    ----------
    sino_log : array_like (n_angles, n_det)
    strength : float >= 0
        Half-width of the median window in detector pixels; 0 returns the input.

    References
    ----------
    doi:10.1364/OE.26.028396
    """
    st = float(strength)
    if st < 0:
        raise OptionError(f"strength must be >= 0, got {strength}")
    p = _sinogram(sino_log)
    half = int(round(st))
    if half == 0:
        return p.copy()
    idx = np.argsort(p, axis=0, kind="stable")
    srt = np.take_along_axis(p, idx, axis=0)
    srt = ndi.median_filter(srt, size=(1, 2 * half + 1), mode="reflect")
    out = np.empty_like(p)
    np.put_along_axis(out, idx, srt, axis=0)
    return out


# ----------------------------------------------------------------- real reconstructions
def _unit(img, *, lo=0.5, hi=99.5) -> np.ndarray:
    a = np.asarray(img, np.float64)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D slice, got shape {a.shape}")
    v0, v1 = np.percentile(a, [lo, hi])
    if not v1 > v0:
        raise InputError(None, "constant slice")
    return np.clip((a - v0) / (v1 - v0), 0.0, 1.0)


def reproject(img, *, flux=None, psf_sigma=0.0, defects=None, n_angles=None,
              attenuation=None, rng=None, normalize=True, return_sinogram=False):
    """Re-project a real reconstructed slice and scan it again with known impairments.

    The slice is scaled to ``[0, 1]`` between its 0.5 and 99.5 percentiles (values below
    read as air) and passed to :func:`tomoqc.distort.physics.simulate_scan`: parallel-beam
    projections, Poisson counts of ``flux`` per unattenuated ray, a Gaussian detector PSF,
    detector gain defects (:func:`tomoqc.distort.physics.stripe_gains`), ``n_angles``
    projections over ``[0, pi)``, ramp FBP. Real content, simulated measurement: for real
    reconstructions without raw data.

    Returns
    -------
    recon : ndarray of float32 (in the units of the scaled slice)
    sinogram : ndarray, optional
    """
    from tomoqc.distort import physics

    a = _unit(img) if normalize else np.asarray(img, np.float64)
    return physics.simulate_scan(
        a, flux=flux, psf_sigma=psf_sigma, defects=defects, n_angles=n_angles,
        attenuation=physics.ATTENUATION if attenuation is None else attenuation,
        rng=rng, return_sinogram=return_sinogram,
    )


# ---------------------------------------------------------------------- conveniences
def savu_reconstruct(root, row: int, *, center=None, size=None, data=None) -> np.ndarray:
    """Clean FBP of detector ``row`` of a Savu-layout scan (axis found when not given)."""
    d = read_savu(root) if data is None else data
    nrows = d["counts"].shape[1]
    if not 0 <= int(row) < nrows:
        raise OptionError(f"row must be in [0, {nrows}), got {row}")
    sino = savu_sinogram(d, int(row))
    c = find_center(sino, d["angles"]) if center is None else float(center)
    return fbp(sino, d["angles"], center=c, size=size)


def htc2022_reconstruct(path, *, n_angles: int = 360, size: int = 512, bin: int = 1) -> np.ndarray:
    """Clean FBP of an HTC2022 disc: parallel rebinning, ramp filter, ``size`` pixels.

    ``bin`` > 1 rebins to ``560 / bin`` parallel samples of ``bin`` times the pixel (and
    shrinks the default output accordingly when ``size`` is given in original pixels).
    Values are attenuation per parallel sample.
    """
    d = read_htc2022(path)
    b = int(bin)
    if b < 1:
        raise OptionError(f"bin must be >= 1, got {bin}")
    nd = d["sinogram"].shape[1] // b
    sino, th, c = htc2022_parallel(d, n_angles=n_angles, n_det=nd,
                                   pixel=b * d["pixel"] / d["magnification"])
    return fbp(sino, th, center=c, size=int(size))


# ------------------------------------------------------------------ series of known order
#: Kinds of :func:`degraded_series`.
SERIES_KINDS = ("dose", "angles", "stripes", "blur", "gain", "center")
#: Rotation-axis offsets (detector pixels) of the ``center`` series: the found axis first.
CENTER_OFFSETS = (0.0, 1.0, 2.0, 4.0, 8.0)
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
ANGLE_FACTORS = (1, 2, 4, 8)
SIGMAS = (0.0, 1.0, 2.0, 4.0)
GAIN_LEVELS = (0.0, 1.0, 2.0, 3.0)
REPROJ_FLUX = 8000.0
REPROJ_SIDE = 256
SAVU_PIXEL = 0.5  # savu rows (160 px detector) reconstructed on a 320 px grid


# ------------------------------------------------------------------------ sources
def reconstructed_volumes(realdata) -> list[Path]:
    """The real reconstructions of the real-data folder that are read as they are (no sinogram
    to reconstruct): the battery_xct slices, imars3d, psi_shell, qbi and qim3d volumes."""
    r = Path(realdata)
    return [*sorted(r.glob("battery_xct/im_*.tif")), *sorted(r.glob("imars3d/*.npy")),
            *sorted(r.glob("psi_shell/*.npy")), *sorted(r.glob("qbi/*.tif")), *sorted(r.glob("qim3d/*.tif"))]


class RealSources:
    """Lazy readers of the real-data folder shared by :func:`degraded_series` calls (cached)."""

    def __init__(self, realdata: Path):
        self.root = Path(realdata)
        self._savu = None
        self._savu_center = None
        self._htc = {}
        self._slices = {}

    # savu ---------------------------------------------------------------
    def savu(self):
        if self._savu is None:
            self._savu = read_savu(self.root / "savu_24737")
            # the axis from four content rows (rows 0-56 are air only)
            cs = [find_center(savu_sinogram(self._savu, r), self._savu["angles"])
                  for r in (72, 88, 104, 120)]
            self._savu_center = float(np.median(cs))
        return self._savu

    def savu_recon(self, sino, angles, *, offset: float = 0.0):
        """FBP of a Savu sinogram about the found axis (``offset``: detector pixels off it)."""
        d = self.savu()
        nd = d["counts"].shape[2]
        return fbp(sino, angles, center=self._savu_center + float(offset), size=int(nd / SAVU_PIXEL),
                   pixel=SAVU_PIXEL)

    # htc ------------------------------------------------------------------
    def htc(self, name):
        if name not in self._htc:
            sino, th, c = htc2022_parallel(self.root / "htc2022" / f"htc2022_{name}_full.mat")
            self._htc[name] = (sino, th, c)
        return self._htc[name]

    # real reconstructions ----------------------------------------------------
    def slice(self, name):
        if name in self._slices:
            return self._slices[name]
        import tifffile
        from scipy import ndimage as ndi

        if name == "battery_im1":
            a = tifffile.imread(self.root / "battery_xct" / "im_1.tif")
        elif name in ("bone", "cement"):
            a = tifffile.imread(self.root / "qim3d" / f"{name}_128x128x128.tif")[64]
        elif name.startswith("qim3d/"):
            vol = tifffile.imread(next((self.root / "qim3d").glob(name.split("/", 1)[1] + "_*.tif")))
            a = vol[vol.shape[0] // 2]
        elif name == "shellX":
            a = np.load(self.root / "psi_shell" / "shellX.npy")
            h, w = a.shape
            m = min(h, w)
            a = a[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
        else:
            raise KeyError(name)
        a = np.asarray(a, np.float64)
        a = ndi.zoom(a, REPROJ_SIDE / a.shape[0], order=1)[:REPROJ_SIDE, :REPROJ_SIDE]
        a = _unit(a)
        self._slices[name] = a
        return a


#: Width of the stripe-removal median window, as a share of the detector (:func:`stripe_window`).
STRIPE_WINDOW_SHARE = 0.02


def stripe_window(n_det: int) -> int:
    """Half-width (columns) of the median window of :func:`remove_stripes` in the stripe series.

    The window spans about :data:`STRIPE_WINDOW_SHARE` of the detector (the odd number of
    columns nearest to it, at least 3), the same share of the field of view on every
    detector: 11 columns on HTC2022's 560, 7 on the re-projection's 365, 3 on Savu's 160. A
    wider window draws streaks from dense features: the sorted trace of a small dense
    particle spans few columns, and the median across the window moves it (11 columns on
    Savu, 7 % of its detector, drew streaks through the particle of rows 88 and 104 stronger
    than the rings it removed).
    """
    n = int(n_det)
    if n < 1:
        raise OptionError(f"n_det must be >= 1, got {n_det}")
    return max(1, int(round((STRIPE_WINDOW_SHARE * n - 1) / 2)))


# ------------------------------------------------------------------------- groups
#: The real series of known quality order that tomoqc is judged on (``kind``, ``sample``
#: of :func:`degraded_series`): ``benchmarks/real_orderings.py`` and :mod:`tomoqc.study`.
#: None of them is used to fit the bundled model's measured terms.
ORDERING_GROUPS = [
    *[("dose", s) for s in ("savu:72", "savu:88", "savu:104", "savu:120", "htc:ta", "htc:01a", "htc:03b",
                            "htc:05c", "reproj:battery_im1", "reproj:bone", "reproj:shellX")],
    *[("angles", s) for s in ("savu:88", "savu:104", "htc:tb", "htc:02a", "htc:04b", "reproj:battery_im1",
                              "reproj:cement", "reproj:shellX")],
    *[("stripes", s) for s in ("savu:88", "savu:104", "savu:120", "htc:ta", "htc:06a", "reproj:battery_im1",
                               "reproj:bone")],
    *[("blur", s) for s in ("savu:88", "htc:01b", "htc:07a", "reproj:bone", "reproj:shellX")],
    *[("gain", s) for s in ("savu:104", "htc:02b", "htc:05a", "reproj:battery_im1", "reproj:cement")],
]


def degraded_series(src: "RealSources", kind: str, sample: str, seed: int):
    """One series of real images of known quality order: ``[(parameter, float image)]``, best first.

    ``kind`` is one of :data:`SERIES_KINDS` (``center``: the rotation axis at the found
    value and :data:`CENTER_OFFSETS` off it, the sign from the seed's parity; Savu and
    HTC2022 only); ``sample`` is ``"savu:ROW"`` (the Savu raw
    projections, one detector row), ``"htc:NAME"`` (an HTC2022 disc, e.g. ``"htc:01a"``) or
    ``"reproj:NAME"`` (a real reconstruction re-projected and scanned again: battery_im1,
    bone, cement, shellX, or any ``qim3d/<name>`` volume stem). Seeded by ``seed``.
    """
    rng_seed = seed
    fam, _, name = sample.partition(":")
    out = []
    if fam == "savu":
        d = src.savu()
        row = int(name)
        th = d["angles"]
        base = savu_sinogram(d, row)
        if kind == "dose":
            for i, f in enumerate(FRACTIONS):
                cnt = thin_counts(d["counts"][:, row], f, rng_seed + i, dark=d["dark"][row])
                out.append((f"fraction={f:g}", src.savu_recon(savu_sinogram(d, row, counts=cnt, fraction=f), th)))
        elif kind == "angles":
            for k in ANGLE_FACTORS:
                s, a = subsample_angles(base, th, k)
                out.append((f"every={k}", src.savu_recon(s, a)))
        elif kind == "stripes":
            h = stripe_window(base.shape[1])
            out.append((f"removal={h}", src.savu_recon(remove_stripes(base, h), th)))
            out.append(("removal=0", src.savu_recon(base, th)))
        elif kind == "blur":
            for s in SIGMAS:
                out.append((f"sigma={s:g}", src.savu_recon(detector_blur(base, s), th)))
        elif kind == "gain":
            for lv in GAIN_LEVELS:
                out.append((f"level={lv:g}", src.savu_recon(gain_mismatch(base, lv, rng_seed, extent=(20, 140),
                                                                         deepen=True), th)))
        elif kind == "center":
            sign = 1.0 if rng_seed % 2 == 0 else -1.0
            for off in CENTER_OFFSETS:
                out.append((f"offset={sign * off:g}", src.savu_recon(base, th, offset=sign * off)))
    elif fam == "htc":
        sino, th, c = src.htc(name)
        nd = sino.shape[1]
        size = 512

        def rec(s, a=th):
            return fbp(s, a, center=c, size=size)

        ext = (nd // 2 - 230, nd // 2 + 230)
        if kind == "dose":
            for i, f in enumerate(FRACTIONS):
                out.append((f"fraction={f:g}", rec(add_dose_noise(sino, f, HTC2022_COUNTS, rng_seed + i))))
        elif kind == "angles":
            for k in ANGLE_FACTORS:
                s, a = subsample_angles(sino, th, k)
                out.append((f"every={k}", rec(s, a)))
        elif kind == "stripes":
            st = gain_mismatch(sino, 2.0, rng_seed, kind="full", extent=ext)
            h = stripe_window(nd)
            out.append((f"injected=full2,removal={h}", rec(remove_stripes(st, h))))
            out.append(("injected=full2,removal=0", rec(st)))
        elif kind == "blur":
            for s in SIGMAS:
                out.append((f"sigma={s:g}", rec(detector_blur(sino, s))))
        elif kind == "gain":
            for lv in GAIN_LEVELS:
                out.append((f"level={lv:g}", rec(gain_mismatch(sino, lv, rng_seed, kind="partial", extent=ext,
                                                                deepen=True))))
        elif kind == "center":
            sign = 1.0 if rng_seed % 2 == 0 else -1.0
            for off in CENTER_OFFSETS:
                out.append((f"offset={sign * off:g}", fbp(sino, th, center=c + sign * off, size=size)))
    elif fam == "reproj":
        from tomoqc.distort import physics

        img = src.slice(name)
        n_full = int(math.ceil(math.pi / 2 * REPROJ_SIDE))
        sc = physics.scanner(img.shape, None, "ramp")
        if kind == "dose":
            for i, f in enumerate(FRACTIONS):
                out.append((f"flux={REPROJ_FLUX * f:g}", reproject(img, flux=REPROJ_FLUX * f, rng=rng_seed + i,
                                                                        normalize=False)))
        elif kind == "angles":
            for k in ANGLE_FACTORS:
                out.append((f"n_angles={n_full // k}", reproject(img, n_angles=n_full // k, normalize=False)))
        elif kind == "stripes":
            half = REPROJ_SIDE / 2.0
            ax = sc.axis
            defects = physics.stripe_gains(sc.n_det, full=0.06, mismatch=0.03, partial=0.03,
                                           rng=rng_seed, extent=(ax - half, ax + half))
            _, p = reproject(img, normalize=False, return_sinogram=True)
            k = physics.ATTENUATION / REPROJ_SIDE
            # the clean line integrals (ring-free) then the defects, as physics._measure does
            st = physics._measure(p, defects=defects)
            h = stripe_window(sc.n_det)
            out.append((f"injected=full+partial,removal={h}",
                        (sc.reconstruct(remove_stripes(st, h)) / k).astype(np.float32)))
            out.append(("injected=full+partial,removal=0", (sc.reconstruct(st) / k).astype(np.float32)))
        elif kind == "blur":
            for s in SIGMAS:
                out.append((f"sigma={s:g}", reproject(img, psf_sigma=s, normalize=False)))
        elif kind == "gain":
            half = REPROJ_SIDE / 2.0
            for lv in GAIN_LEVELS:
                if lv == 0:
                    out.append(("level=0", reproject(img, normalize=False)))
                    continue
                defects = physics.stripe_gains(sc.n_det, full=0.06, mismatch=0.01 * lv, rng=rng_seed,
                                               extent=(sc.axis - half, sc.axis + half))
                out.append((f"level={lv:g}", reproject(img, defects=defects, normalize=False)))
    else:
        raise KeyError(sample)
    if not out:
        raise KeyError((kind, sample))
    return out
