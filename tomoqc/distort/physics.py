"""Sinogram-domain distortions: impairments as they arise in a parallel-beam scan.

A slice (values in ``[0, 1]``, read as attenuation) is scanned and reconstructed:

1. attenuation map ``mu = img * attenuation / N`` (``N`` the image side), so that a
   path of ``N`` pixels through material of value 1 attenuates by ``exp(-attenuation)``;
2. parallel-beam projections ``p(theta, s)`` over ``[0, pi)`` (pixel-driven, linear
   interpolation onto a detector wide enough to see the whole square image);
3. detected counts ``I = Poisson(g * (PSF * I0 exp(-p)))``: the Gaussian detector /
   focal-spot PSF acts on the intensity along the detector row, ``g`` is the gain of
   each detector pixel during the projections;
4. flat-field correction with flats of gain ``g_flat``: a gain shared by projections
   and flats cancels, so rings come from the *mismatch* ``g / g_flat`` - full stripes
   (a constant mismatch), partial stripes (a mismatch only at low transmission, an
   intensity-dependent response) and dead (unresponsive) pixels;
5. ``p_hat = -log(max(I, 1) / I0)`` (``-log`` of the ratio, without the clamp, when no
   counting noise is simulated) and filtered back-projection (ramp filter), scaled back
   to image units.

The fourth impairment, ``streak``, scans with fewer projections than the
``ceil(pi/2 * N)`` that sample an ``N`` px slice fully (a fast scan): filtered
back-projection of too few views leaves the streaks of angular aliasing (Kak and Slaney,
ch. 5). Its levels keep 1/3, 1/6, 1/12, 1/24 and 1/48 of the full set
(:data:`STREAK_FRACTION`); like the other single impairments it is simulated without
counting noise, so that it alone separates the image from its reference.

The clean reference is the same chain with no noise, no PSF, matched gains and the
full set of angles, so that a distorted image differs from its reference only by the
impairment. Levels 1..5 of each impairment are calibrated so that the mean PSNR
against that reference falls strictly with level over roughly the range of the
image-domain recipes (``benchmarks/distortion_psnr.py`` prints the table).

The projector and back-projector are vectorised NumPy (no threads), so results are
bit-identical for identical inputs and seeds.

References
----------
Kak, A. C., Slaney, M. (1988). *Principles of Computerized Tomographic Imaging*. IEEE
Press; reprinted SIAM 2001, ch. 3 (filtered back-projection, discrete ramp filter).
doi:10.1137/1.9780898719277
Vo, N. T., Atwood, R. C., Drakopoulos, M. (2018). Superior techniques for eliminating
ring artifacts in X-ray micro-tomography. *Opt. Express* 26(22), 28396-28412 (full,
partial and dead stripes; a dead pixel is modelled here as unresponsive, reading
the same value at every angle). doi:10.1364/OE.26.028396
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage as ndi

from tomoqc.distort.image import check_level
from tomoqc.errors import InputError, OptionError

__all__ = [
    "ATTENUATION",
    "FLUX",
    "PSF_SIGMA",
    "RING_DEFECTS",
    "STREAK_FRACTION",
    "streak_angles",
    "Scanner",
    "scanner",
    "stripe_gains",
    "simulate_scan",
    "reference",
    "apply",
    "apply_mixture",
    "apply_many",
    "level_params",
]

#: Total attenuation of a path of N pixels (the image side) through value 1.
ATTENUATION = 3.0
#: Incident counts per detector pixel and projection, levels 1..5 (noise).
FLUX = (20000.0, 4000.0, 1000.0, 340.0, 100.0)
#: Detector PSF standard deviation in detector pixels, levels 1..5 (blur).
PSF_SIGMA = (1.2, 2.5, 6.5, 15.2, 33.2)
#: Detector-gain defects per level 1..5 (rings): fraction of detector pixels with a full
#: stripe, relative gain mismatch of those (max), fraction with a partial stripe and the
#: number of dead pixels. Both the defect fractions and the mismatch grow with level, so
#: that the ring labels spread over about as wide a range as the noise and blur ones
#: (mean 4.5 -> 3.1 on fresh phantoms; ``benchmarks/label_structure.py``).
RING_DEFECTS = (
    {"full": 0.02, "mismatch": 0.03, "partial": 0.01, "dead": 0},
    {"full": 0.04, "mismatch": 0.05, "partial": 0.02, "dead": 0},
    {"full": 0.06, "mismatch": 0.08, "partial": 0.03, "dead": 0},
    {"full": 0.09, "mismatch": 0.13, "partial": 0.05, "dead": 0},
    {"full": 0.12, "mismatch": 0.20, "partial": 0.07, "dead": 1},
)


#: Share of the full set of projections kept at streak levels 1..5.
STREAK_FRACTION = (1 / 3, 1 / 6, 1 / 12, 1 / 24, 1 / 48)
_KINDS = ("noise", "blur", "ring", "streak")


def streak_angles(shape, level: int) -> int | None:
    """Projections of a scan of an image of ``shape`` at streak ``level`` (None: the full set)."""
    lv = check_level(level)
    if lv == 0:
        return None
    full = int(math.ceil(math.pi / 2 * max(int(s) for s in shape)))
    return max(2, int(round(full * STREAK_FRACTION[lv - 1])))


def _as_image(img) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(None, f"expected a 2-D image, got shape {a.shape}")
    if a.size == 0 or min(a.shape) < 2:
        raise InputError(None, f"image too small: {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(None, f"expected a numeric image, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise InputError(None, "image contains NaN or Inf")
    return a


def _ramp_filter(n_det: int, window: str = "ramp") -> np.ndarray:
    """Frequency response of the discrete ramp filter (Kak & Slaney eq. 3.61)."""
    size = max(64, int(2 ** math.ceil(math.log2(2 * n_det))))
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (math.pi * n) ** 2
    filt = np.real(np.fft.fft(h))
    if window != "ramp":
        f = np.fft.fftfreq(size)
        if window == "shepp-logan":
            w = np.sinc(f)
        elif window == "hann":
            w = 0.5 + 0.5 * np.cos(2 * math.pi * f)
        elif window == "cosine":
            w = np.cos(math.pi * f)
        else:
            raise OptionError(f"unknown filter {window!r}; choose ramp, shepp-logan, hann, cosine")
        filt = filt * w
    return filt


class Scanner:
    """Parallel-beam geometry for ``shape`` images: projector and FBP.

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(H, W)``.
    n_angles : int, optional
        Number of projections over ``[0, pi)``; default ``ceil(pi/2 * max(shape))``. A
        multiple of 4 is raised by one (such a set holds exactly 45 degrees, where the
        pixel-driven projector aliases).
    center : (float, float), optional
        Rotation axis ``(row, col)``; default the image centre.
    filter : str
        ``"ramp"`` (default), ``"shepp-logan"``, ``"hann"`` or ``"cosine"``.
    chunk : int
        Angles processed together (memory vs speed).
    """

    def __init__(self, shape, *, n_angles=None, center=None, filter="ramp", chunk=24):
        h, w = (int(s) for s in shape)
        self.shape = (h, w)
        self.n_angles = int(n_angles) if n_angles else int(math.ceil(math.pi / 2 * max(h, w)))
        if self.n_angles < 1:
            raise OptionError(f"n_angles must be >= 1, got {n_angles}")
        if self.n_angles % 4 == 0:
            # a set of n = 4k angles over [0, pi) holds exactly 45 degrees, where every pixel
            # centre projects onto a lattice of spacing 1 / sqrt(2) and the pixel-driven
            # projector aliases into a strong 45-degree streak; one more angle avoids it
            self.n_angles += 1
        self.angles = np.arange(self.n_angles) * (math.pi / self.n_angles)
        cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if center is None else map(float, center)
        self.center = (cy, cx)
        yy, xx = np.mgrid[:h, :w]
        self._x = (xx - cx).ravel().astype(np.float64)
        self._y = (yy - cy).ravel().astype(np.float64)
        half = float(np.sqrt(self._x**2 + self._y**2).max())
        self.n_det = 2 * int(math.ceil(half)) + 3
        #: detector coordinate of the rotation axis
        self.axis = (self.n_det - 1) / 2.0
        self.filter_name = filter
        self._filter = _ramp_filter(self.n_det, filter)
        self.chunk = int(chunk)
        self._cos = np.cos(self.angles)
        self._sin = np.sin(self.angles)

    def _positions(self, a0, a1):
        s = (
            np.outer(self._cos[a0:a1], self._x)
            + np.outer(self._sin[a0:a1], self._y)
            + self.axis
        )
        i0 = np.floor(s).astype(np.intp)
        w = s - i0
        return i0, w

    def project(self, img) -> np.ndarray:
        """Line integrals ``p(theta, s)`` (pixel-driven, in pixel units)."""
        f = np.asarray(img, np.float64).ravel()
        nd = self.n_det
        sino = np.empty((self.n_angles, nd))
        for a0 in range(0, self.n_angles, self.chunk):
            a1 = min(a0 + self.chunk, self.n_angles)
            i0, w = self._positions(a0, a1)
            base = (np.arange(a1 - a0) * nd)[:, None]
            idx = (i0 + base).ravel()
            fw = (f[None, :] * w).ravel()
            f0 = np.broadcast_to(f, w.shape).ravel() - fw
            m = (a1 - a0) * nd
            acc = np.bincount(idx, weights=f0, minlength=m)
            acc += np.bincount(idx + 1, weights=fw, minlength=m)
            sino[a0:a1] = acc[:m].reshape(a1 - a0, nd)
        return sino

    def filter_sinogram(self, sino) -> np.ndarray:
        sino = np.asarray(sino, np.float64)
        size = self._filter.size
        pad = np.zeros(sino.shape[:-1] + (size,))
        pad[..., : self.n_det] = sino
        out = np.real(np.fft.ifft(np.fft.fft(pad, axis=-1) * self._filter, axis=-1))
        return out[..., : self.n_det]

    def backproject(self, sino) -> np.ndarray:
        """Unfiltered back-projection of one ``(A, D)`` or a stack ``(K, A, D)``."""
        q = np.asarray(sino, np.float64)
        single = q.ndim == 2
        if single:
            q = q[None]
        k = q.shape[0]
        nd = self.n_det
        out = np.zeros((k, self._x.size))
        qf = q.reshape(k, -1)
        for a0 in range(0, self.n_angles, self.chunk):
            a1 = min(a0 + self.chunk, self.n_angles)
            i0, w = self._positions(a0, a1)
            idx = i0 + (np.arange(a0, a1) * nd)[:, None]
            for j in range(k):
                v0 = qf[j].take(idx)
                v1 = qf[j].take(idx + 1)
                out[j] += (v0 + w * (v1 - v0)).sum(axis=0)
        out = out.reshape((k,) + self.shape)
        return out[0] if single else out

    def reconstruct(self, sino) -> np.ndarray:
        """Filtered back-projection of one sinogram or a stack of them."""
        return self.backproject(self.filter_sinogram(sino)) * (math.pi / self.n_angles)


@functools.lru_cache(maxsize=8)
def scanner(shape, n_angles=None, filter="ramp") -> Scanner:
    """A cached :class:`Scanner` (geometry set-up is shared by calls of one shape)."""
    return Scanner(tuple(shape), n_angles=n_angles, filter=filter)


def stripe_gains(n_det, *, full=0.0, mismatch=0.0, partial=0.0, dead=0, rng=None,
                 extent=None):
    """Draw detector defects: which pixels stripe, and how.

    Parameters
    ----------
    n_det : int
        Detector width.
    full, partial : float
        Fractions of detector pixels with a full / partial (intensity-dependent) stripe.
    mismatch : float
        Largest relative gain mismatch; each defective pixel draws
        ``uniform(0.3, 1) * mismatch`` with a random sign.
    dead : int
        Number of dead pixels.
    extent : (int, int), optional
        Detector pixel range the defects are drawn from (default: all).

    Returns
    -------
    dict
        ``full`` (n_det,) mismatch of full stripes, ``partial`` (n_det,) mismatch of
        partial stripes, ``threshold`` (n_det,) transmission below which a partial
        stripe is active, ``dead`` (n_det,) bool.
    """
    rng = np.random.default_rng(rng)
    lo, hi = (0, n_det) if extent is None else (max(0, int(extent[0])), min(n_det, int(extent[1])))
    cols = np.arange(lo, hi)
    out = {
        "full": np.zeros(n_det),
        "partial": np.zeros(n_det),
        "threshold": np.zeros(n_det),
        "dead": np.zeros(n_det, bool),
    }

    def pick(frac):
        n = int(round(frac * cols.size))
        return rng.choice(cols, size=min(n, cols.size), replace=False) if n else cols[:0]

    def amp(n):
        return rng.uniform(0.3, 1.0, n) * mismatch * rng.choice([-1.0, 1.0], n)

    j = pick(full)
    out["full"][j] = amp(j.size)
    j = pick(partial)
    out["partial"][j] = amp(j.size)
    out["threshold"][j] = rng.uniform(0.2, 0.6, j.size)
    if dead:
        # dead pixels away from the axis, where their ring stays inside the image
        span = cols[np.abs(cols - (n_det - 1) / 2.0) > 3]
        out["dead"][rng.choice(span, size=min(int(dead), span.size), replace=False)] = True
    return out


def _measure(p, *, flux=None, psf_sigma=0.0, defects=None, rng=None):
    """Projections -> flat-field-corrected, log-converted sinogram ``p_hat``."""
    rng = np.random.default_rng(rng)
    trans = np.exp(-p)  # relative intensity I / (g I0) before the detector
    if psf_sigma and psf_sigma > 0:
        # the PSF blurs intensity along the detector row; the flat field is uniform
        trans = ndi.gaussian_filter1d(trans, float(psf_sigma), axis=-1, mode="nearest")
    gain = np.ones_like(trans)
    dead = None
    if defects is not None:
        gain = gain * (1.0 + defects["full"])[None, :]
        part = defects["partial"]
        if np.any(part):
            # intensity-dependent response: mismatch only at low transmission, smoothly
            on = 1.0 / (1.0 + np.exp((trans - defects["threshold"][None, :]) / 0.03))
            gain = gain * (1.0 + part[None, :] * on)
        if np.any(defects["dead"]):
            dead = defects["dead"]
    expected = trans * gain
    if dead is not None:
        # an unresponsive pixel reads the same value at every angle (its mean signal)
        expected[:, dead] = expected[:, dead].mean(axis=0)
    if flux is None:
        return -np.log(np.maximum(expected, 1e-12))
    flux = float(flux)
    if not flux > 0:
        raise OptionError(f"flux must be > 0, got {flux}")
    counts = rng.poisson(flux * expected).astype(np.float64)
    return -np.log(np.maximum(counts, 1.0) / flux)


def simulate_scan(
    img,
    *,
    flux=None,
    psf_sigma=0.0,
    defects=None,
    n_angles=None,
    attenuation=ATTENUATION,
    filter="ramp",
    rng=None,
    return_sinogram=False,
):
    """Scan and reconstruct a slice with the given impairments.

    Parameters
    ----------
    img : array_like, 2-D
        Slice scaled to ``[0, 1]``, read as attenuation.
    flux : float, optional
        Incident counts ``I0`` per detector pixel and projection; ``None`` simulates no
        counting noise.
    psf_sigma : float
        Detector PSF standard deviation (detector pixels).
    defects : dict, optional
        Detector defects from :func:`stripe_gains`.
    n_angles : int, optional
        Number of projections (angular undersampling when below the default
        ``ceil(pi/2 * N)``).
    attenuation : float
        Attenuation of a path of ``N`` pixels through value 1.
    filter : str
        FBP filter.
    rng : int or Generator, optional
    return_sinogram : bool
        Also return the measured sinogram ``p_hat``.

    Returns
    -------
    recon : ndarray of float32
        Reconstruction in the units of ``img``.
    sinogram : ndarray, optional
    """
    a = _as_image(img)
    sc = scanner(a.shape, n_angles, filter)
    k = attenuation / max(a.shape)
    p = sc.project(a) * k
    p_hat = _measure(p, flux=flux, psf_sigma=psf_sigma, defects=defects, rng=rng)
    rec = (sc.reconstruct(p_hat) / k).astype(np.float32)
    return (rec, p_hat) if return_sinogram else rec


def reference(img, *, attenuation=ATTENUATION, filter="ramp") -> np.ndarray:
    """Noise-free, unblurred, ring-free reconstruction of ``img`` (float32)."""
    return simulate_scan(img, attenuation=attenuation, filter=filter)


def level_params(distortion: str, level: int) -> dict:
    """Scan parameters of ``distortion`` at ``level`` (1..5), for manifests."""
    lv = check_level(level)
    if distortion not in _KINDS:
        raise OptionError(f"unknown distortion {distortion!r}; choose from {', '.join(_KINDS)}")
    if lv == 0:
        return {}
    if distortion == "streak":
        return {"angle_fraction": STREAK_FRACTION[lv - 1]}
    if distortion == "noise":
        return {"flux": FLUX[lv - 1]}
    if distortion == "blur":
        return {"psf_sigma": PSF_SIGMA[lv - 1]}
    return dict(RING_DEFECTS[lv - 1])


def _scan_kwargs(levels: dict, n_det: int, shape, rng) -> dict:
    kw = {}
    if levels.get("noise"):
        kw["flux"] = FLUX[levels["noise"] - 1]
    if levels.get("blur"):
        kw["psf_sigma"] = PSF_SIGMA[levels["blur"] - 1]
    if levels.get("ring"):
        half = max(shape) / 2.0
        ax = (n_det - 1) / 2.0
        kw["defects"] = stripe_gains(
            n_det, rng=rng, extent=(ax - half, ax + half + 1), **RING_DEFECTS[levels["ring"] - 1]
        )
    return kw


def apply_many(img, specs, *, rng=None, attenuation=ATTENUATION, filter="ramp",
               n_angles=None):
    """Reference and several distorted reconstructions of one slice, sharing its scan.

    Parameters
    ----------
    img : array_like, 2-D
    specs : list of dict
        Each a mixture like ``{"noise": 2}`` or ``{"blur": 1, "ring": 3}`` (levels 0..5).
    rng : int or Generator
        One stream used for all specs in order (deterministic for a seed).
    n_angles : int, optional
        Projections of the *distorted* scans (undersampling); the reference always uses
        the full default set.

    Returns
    -------
    reference : ndarray of float32
    distorted : list of ndarray of float32
    """
    a = _as_image(img)
    rng = np.random.default_rng(rng)
    sc_ref = scanner(a.shape, None, filter)
    k = attenuation / max(a.shape)
    p_ref = sc_ref.project(a) * k
    # specs grouped by their number of projections (a streak level scans fewer of them)
    levels = []
    for spec in specs:
        lv = {d: check_level(v) for d, v in spec.items()}
        for d in lv:
            if d not in _KINDS:
                raise OptionError(f"unknown distortion {d!r}; choose from {', '.join(_KINDS)}")
        levels.append(lv)
    projections = {}
    dist: list = [None] * len(levels)
    ref = None
    for i, lv in enumerate(levels):
        na = streak_angles(a.shape, lv["streak"]) if lv.get("streak") else n_angles
        projections.setdefault(na, []).append(i)
    groups = sorted(projections.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    if not any(na is None for na, _ in groups):
        groups.insert(0, (None, []))
    for na, idx in groups:
        sc = scanner(a.shape, na, filter)
        p = p_ref if sc is sc_ref else sc.project(a) * k
        sinos = [_measure(p, rng=rng, **_scan_kwargs(levels[i], sc.n_det, a.shape, rng)) for i in idx]
        if sc is sc_ref and ref is None:
            sinos.insert(0, p_ref)
        if not sinos:
            continue
        recs = list(sc.reconstruct(np.stack(sinos)) / k)
        if sc is sc_ref and ref is None:
            ref = recs.pop(0)
        for i, r in zip(idx, recs):
            dist[i] = r
    if ref is None:
        ref = sc_ref.reconstruct(p_ref) / k
    return ref.astype(np.float32), [d.astype(np.float32) for d in dist]


def apply(img, distortion: str, level: int, *, rng=None, center=None, **kwargs):
    """Scan ``img`` with ``distortion`` at ``level`` and reconstruct it.

    Level 0 gives the clean reference reconstruction (:func:`reference`). ``center`` is
    accepted for signature compatibility with the image domain; the rotation axis is
    the image centre. Extra keyword arguments go to :func:`apply_many`.
    """
    if distortion not in _KINDS:
        raise OptionError(f"unknown distortion {distortion!r}; choose from {', '.join(_KINDS)}")
    if center is not None:
        raise OptionError("the physics domain rotates about the image centre; center is not supported")
    _, (out,) = apply_many(img, [{distortion: check_level(level)}], rng=rng, **kwargs)
    return out


def apply_mixture(img, levels: dict, *, rng=None, **kwargs):
    """One scan with several impairments together, e.g. ``{"noise": 2, "ring": 3}``."""
    _, (out,) = apply_many(img, [dict(levels)], rng=rng, **kwargs)
    return out
