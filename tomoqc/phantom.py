"""Synthetic battery-electrode microstructures with exact phase labels.

The phantoms imitate what micro-CT shows of a porous composite electrode such as an
NMC cathode: roughly spherical *secondary particles* (agglomerates of small *primary*
grains) with some internal porosity and cracks, a *carbon-binder domain* (CBD) that
gathers in the pore space around the particles, and pores. Every pixel (voxel) carries
an exact label:

==== ======================================
code phase
==== ======================================
0    pore
1    carbon-binder domain (CBD)
2    active material (secondary particles)
==== ======================================

The rendered image holds attenuation-like values, roughly in ``[0, 1]``, of the same
order as a normalised reconstruction: pores dark, CBD grey, active material bright.

Construction (n-D, the same code makes slices and volumes):

1. Secondary-particle radii are drawn from a lognormal distribution (median
   ``radius``, log-standard deviation ``radius_sigma``) and placed largest first by
   random sequential addition, with at most ``max_overlap`` of a candidate's area
   (volume) allowed to overlap particles already placed. Particles are slightly
   ellipsoidal (aspect ratio up to ``aspect``) with random orientation.
2. Inside each particle envelope, primary grains are the Boolean model of Poisson
   germs whose density is chosen so that the uncovered (pore) fraction is
   ``internal_porosity``; the grains are found with a local Euclidean distance
   transform, so each pixel knows its nearest grain (grain boundaries give a faint
   texture).
3. A fraction ``crack_prob`` of the particles receive one or two planar cracks
   through their centre region (pore label).
4. Placement stops as soon as the active-material fraction reaches
   ``active_fraction``.
5. The CBD is a smoothed, thresholded Gaussian random field biased toward particle
   surfaces, restricted to the space outside the particles; the threshold is the
   quantile that gives exactly ``cbd_fraction`` of the image (when the pore space
   allows it).

The rendering adds per-particle attenuation variation, an optional smooth background
(cupping-like) variation, a small Gaussian point-spread function (partial-volume
edges), a noise floor, an intensity offset/scale and an optional circular field of
view (zeros outside a disc, as reconstructions have).

:func:`random_params` draws all of these for domain randomisation.

References
----------
Usseglio-Viretta, F. L. E. et al. (2018). Resolving the discrepancy in tortuosity
factor estimation for Li-ion battery electrodes through micro-macro modeling and
experiment. *J. Electrochem. Soc.* 165(14), A3403. doi:10.1149/2.0731814jes
Chiu, S. N., Stoyan, D., Kendall, W. S., Mecke, J. (2013). *Stochastic Geometry and
its Applications*, 3rd ed., Wiley (Boolean model coverage). doi:10.1002/9781118658222
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from tomoqc.errors import OptionError

__all__ = [
    "PORE",
    "CBD",
    "ACTIVE",
    "DEFAULTS",
    "Microstructure",
    "microstructure",
    "render",
    "electrode_slice",
    "electrode_volume",
    "random_params",
]

PORE, CBD, ACTIVE = 0, 1, 2

#: Default parameters. Lengths are in pixels (voxels).
DEFAULTS: dict = {
    # morphology
    "active_fraction": 0.45,
    "cbd_fraction": 0.12,
    "radius": 14.0,  # median secondary-particle radius (px)
    "radius_sigma": 0.25,  # lognormal log-standard deviation
    "radius_min": 2.0,
    "max_overlap": 0.1,
    "aspect": 1.15,
    "primary_ratio": 0.22,  # primary grain radius / secondary radius
    "primary_min": 1.2,
    "internal_porosity": 0.04,
    "crack_prob": 0.3,
    "crack_width": 1.5,
    "cbd_scale": 2.0,  # correlation length of the CBD field (px)
    "cbd_reach": 4.0,  # decay length of the surface bias (px)
    # rendering
    "mu_pore": 0.06,
    "mu_cbd": 0.32,
    "mu_active": 0.80,
    "particle_contrast": 0.04,  # relative std of attenuation between particles
    "grain_contrast": 0.03,  # relative darkening at primary grain boundaries
    "background": 0.0,  # amplitude of a smooth additive background variation
    "psf_sigma": 0.6,  # Gaussian PSF of the clean image (px)
    "noise_floor": 0.0,  # std of Gaussian noise on the clean image
    "offset": 0.0,
    "scale": 1.0,
    "fov": None,  # None, or radius of the field-of-view disc as a fraction of min(shape)
    "clip": True,
}


@dataclass
class Microstructure:
    """A phantom before rendering.

    Attributes
    ----------
    labels : ndarray of uint8
        Phase labels (0 pore, 1 CBD, 2 active).
    particle_ids : ndarray of int32
        Secondary-particle index + 1 owning each pixel of a particle envelope (0 outside).
        A pixel in an overlap belongs to the particle placed first.
    grain_boundary : ndarray of bool
        Pixels on a boundary between two primary grains.
    centers, radii, axes : ndarray
        Centres (n, ndim), equivalent radii (n,) (geometric mean of the semi-axes) and
        semi-axes (n, ndim) of the placed particles, in pixels.
    params : dict
        The full parameter set used.
    """

    labels: np.ndarray
    particle_ids: np.ndarray
    grain_boundary: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    axes: np.ndarray
    params: dict = field(default_factory=dict)


def _merge_params(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise OptionError(
            f"unknown phantom parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    p = dict(DEFAULTS)
    p.update(params)
    for key in ("active_fraction", "cbd_fraction"):
        if not 0.0 <= float(p[key]) < 1.0:
            raise OptionError(f"{key} must be in [0, 1), got {p[key]!r}")
    if float(p["active_fraction"]) + float(p["cbd_fraction"]) >= 1.0:
        raise OptionError("active_fraction + cbd_fraction must be below 1")
    if not 0.0 < float(p["internal_porosity"]) < 1.0:
        raise OptionError(f"internal_porosity must be in (0, 1), got {p['internal_porosity']!r}")
    if float(p["radius"]) <= 0 or float(p["radius_sigma"]) < 0:
        raise OptionError("radius must be > 0 and radius_sigma >= 0")
    if float(p["aspect"]) < 1.0:
        raise OptionError(f"aspect must be >= 1, got {p['aspect']!r}")
    return p


def _check_shape(shape, ndim: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise OptionError(f"shape must be a tuple of {ndim} ints, got {shape!r}") from err
    if len(shape) != ndim or min(shape) < 8:
        raise OptionError(f"shape must be {ndim} sizes of at least 8, got {shape!r}")
    return shape


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _ball_volume(r: np.ndarray, ndim: int) -> np.ndarray:
    return math.pi * r**2 if ndim == 2 else 4.0 / 3.0 * math.pi * r**3


def _local_coords(center, half, shape):
    """Unclipped integer bounding box around ``center`` and its clipped part."""
    lo = np.floor(center - half).astype(int)
    hi = np.ceil(center + half).astype(int) + 1
    clo = np.maximum(lo, 0)
    chi = np.minimum(hi, shape)
    return lo, hi, clo, chi


def microstructure(shape, *, seed=0, **params) -> Microstructure:
    """Generate the labelled microstructure of a 2-D or 3-D electrode phantom.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` or ``(D, H, W)``.
    seed : int or numpy.random.SeedSequence or numpy.random.Generator
        Seed; equal seeds and parameters give identical output.
    **params
        Overrides of :data:`DEFAULTS` (morphology keys are used here).

    Returns
    -------
    Microstructure
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise OptionError(f"shape must have 2 or 3 dimensions, got {shape!r}")
    p = _merge_params(params)
    rng = np.random.default_rng(seed)
    shp = np.array(shape)
    n_total = int(np.prod(shape))

    target_active = float(p["active_fraction"]) * n_total
    r_med = float(p["radius"])
    r_sig = float(p["radius_sigma"])
    r_min = float(p["radius_min"])
    max_overlap = float(p["max_overlap"])
    aspect_max = float(p["aspect"])
    p_int = float(p["internal_porosity"])
    cov_const = -math.log(p_int)  # lambda * |grain| for the Boolean model
    crack_prob = float(p["crack_prob"])
    crack_half = float(p["crack_width"]) / 2.0

    labels = np.zeros(shape, np.uint8)
    active = np.zeros(shape, bool)
    ids = np.zeros(shape, np.int32)
    gb = np.zeros(shape, bool)
    centers, radii, axes_list = [], [], []
    n_active = 0

    def draw_radii(n):
        r = r_med * np.exp(r_sig * rng.normal(size=n))
        return np.sort(np.maximum(r, r_min))[::-1]

    # expected active volume per particle, to size the batches of radii
    mean_vol = float(_ball_volume(r_med, ndim)) * math.exp(ndim**2 * r_sig**2 / 2)
    pid = 0
    failures = 0
    while n_active < target_active and failures < 4:
        need = (target_active - n_active) / max(mean_vol * (1 - p_int), 1.0)
        batch = draw_radii(int(need) + 1)
        placed_any = False
        for r in batch:
            if n_active >= target_active:
                break
            a = rng.uniform(1.0, aspect_max)
            semi = np.full(ndim, r * a ** (-1.0 / ndim))
            semi[0] = r * a ** ((ndim - 1.0) / ndim)  # geometric mean stays r
            rot = _random_rotation(rng, ndim)
            half = semi.max() + 1.0
            ok = False
            for _ in range(40):
                c = rng.uniform(-0.5 * r, shp - 1 + 0.5 * r)
                ci = tuple(np.clip(np.round(c).astype(int), 0, shp - 1))
                if ids[ci]:
                    continue
                lo, hi, clo, chi = _local_coords(c, half, shp)
                grids = np.ogrid[tuple(slice(l_, h_) for l_, h_ in zip(lo, hi))]
                # coordinates in the particle frame: rot^T (x - c)
                rel = [g - c[k] for k, g in enumerate(grids)]
                q = 0.0
                for j in range(ndim):
                    u = sum(rot[k, j] * rel[k] for k in range(ndim))
                    q = q + (u / semi[j]) ** 2
                env = q <= 1.0
                inner = tuple(slice(cl - l_, ch - l_) for cl, ch, l_ in zip(clo, chi, lo))
                region = tuple(slice(cl, ch) for cl, ch in zip(clo, chi))
                env_in = env[inner]
                n_env = np.count_nonzero(env_in)
                if n_env == 0:
                    continue
                overlap = np.count_nonzero(env_in & (ids[region] > 0))
                if overlap > max_overlap * n_env:
                    continue
                ok = True
                break
            if not ok:
                continue
            placed_any = True
            pid += 1
            id_view = ids[region]
            id_view[env_in & (id_view == 0)] = pid
            # primary grains: Poisson germs in the local box, Boolean-model density
            rho = max(float(p["primary_ratio"]) * r, float(p["primary_min"]))
            box = env.shape
            lam = cov_const / float(_ball_volume(rho, ndim))
            n_g = rng.poisson(lam * float(np.prod(box)))
            germs = np.zeros(box, bool)
            if n_g:
                pts = tuple(rng.integers(0, b, n_g) for b in box)
                germs[pts] = True
            if germs.any():
                dist, ind = ndi.distance_transform_edt(~germs, return_indices=True)
                covered = env & (dist < rho)
                # nearest-germ identity -> grain boundaries
                flat = np.ravel_multi_index(tuple(ind), box)
                bnd = np.zeros(box, bool)
                for ax in range(ndim):
                    d = np.diff(flat, axis=ax) != 0
                    s0 = [slice(None)] * ndim
                    s0[ax] = slice(0, -1)
                    bnd[tuple(s0)] |= d
                bnd &= covered
            else:
                covered = np.zeros(box, bool)
                bnd = covered
            if rng.random() < crack_prob:
                for _ in range(int(rng.integers(1, 3))):
                    nvec = rng.normal(size=ndim)
                    nvec /= np.linalg.norm(nvec)
                    off = rng.uniform(-0.3, 0.3) * r
                    dplane = sum(nvec[k] * rel[k] for k in range(ndim)) - off
                    reach = np.sqrt(sum(rk**2 for rk in rel)) < rng.uniform(0.6, 1.05) * r
                    covered &= ~((np.abs(dplane) < crack_half) & reach)
            cov_in = covered[inner]
            act_view = active[region]
            n_active += int(np.count_nonzero(cov_in & ~act_view))
            act_view |= cov_in
            gb[region] |= bnd[inner]
            centers.append(c)
            radii.append(r)
            axes_list.append(semi)
        if not placed_any:
            failures += 1

    labels[active] = ACTIVE

    # carbon-binder domain outside the particle envelopes
    n_cbd = int(round(float(p["cbd_fraction"]) * n_total))
    if n_cbd > 0:
        cand = ids == 0
        n_cand = int(np.count_nonzero(cand))
        if n_cand <= n_cbd:
            labels[cand] = CBD
        else:
            noise = rng.normal(size=shape).astype(np.float32)
            fld = ndi.gaussian_filter(noise, float(p["cbd_scale"]), mode="wrap")
            fld /= fld.std() + 1e-12
            if active.any():
                dist = ndi.distance_transform_edt(~active).astype(np.float32)
                fld -= dist / float(p["cbd_reach"])
            vals = fld[cand]
            thr = np.partition(vals, n_cand - n_cbd)[n_cand - n_cbd]
            sel = np.zeros(shape, bool)
            sel[cand] = vals >= thr
            labels[sel] = CBD

    return Microstructure(
        labels=labels,
        particle_ids=ids,
        grain_boundary=gb & active,
        centers=np.array(centers, float).reshape(-1, ndim),
        radii=np.array(radii, float),
        axes=np.array(axes_list, float).reshape(-1, ndim),
        params=p,
    )


def _smooth_field(shape, rng, nodes=4) -> np.ndarray:
    """Smooth random field in [-1, 1] interpolated from a coarse grid."""
    coarse = rng.uniform(-1, 1, size=(nodes,) * len(shape))
    zoom = [s / nodes for s in shape]
    f = ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    f = f[tuple(slice(0, s) for s in shape)]
    return np.clip(f, -1.0, 1.0)


def render(ms: Microstructure, *, seed=0, **params) -> np.ndarray:
    """Render a :class:`Microstructure` to an attenuation-like float32 image.

    Parameters
    ----------
    ms : Microstructure
    seed : int or SeedSequence or Generator
    **params
        Rendering overrides (``mu_*``, ``particle_contrast``, ``grain_contrast``,
        ``background``, ``psf_sigma``, ``noise_floor``, ``offset``, ``scale``, ``fov``,
        ``clip``); defaults are those stored in ``ms.params``.
    """
    p = dict(ms.params)
    p.update(params)
    rng = np.random.default_rng(seed)
    shape = ms.labels.shape
    mu = np.array([p["mu_pore"], p["mu_cbd"], p["mu_active"]], np.float32)
    img = mu[ms.labels]
    n_part = len(ms.radii)
    if n_part and float(p["particle_contrast"]) > 0:
        factor = 1.0 + float(p["particle_contrast"]) * rng.standard_normal(n_part + 1)
        factor[0] = 1.0
        per = factor.astype(np.float32)[ms.particle_ids]
        act = ms.labels == ACTIVE
        img[act] *= per[act]
    if float(p["grain_contrast"]) > 0:
        img[ms.grain_boundary] *= 1.0 - float(p["grain_contrast"])
    if float(p["background"]) > 0:
        img += float(p["background"]) * _smooth_field(shape, rng).astype(np.float32)
    if float(p["psf_sigma"]) > 0:
        img = ndi.gaussian_filter(img, float(p["psf_sigma"]), mode="nearest")
    if float(p["noise_floor"]) > 0:
        img += float(p["noise_floor"]) * rng.standard_normal(shape).astype(np.float32)
    img = float(p["offset"]) + float(p["scale"]) * img
    if p.get("clip", True):
        np.clip(img, 0.0, 1.0, out=img)
    if p.get("fov") is not None:
        frac = float(p["fov"])
        # the disc lies in the (y, x) plane, around the rotation axis at the centre
        yy, xx = np.ogrid[: shape[-2], : shape[-1]]
        cy, cx = (shape[-2] - 1) / 2.0, (shape[-1] - 1) / 2.0
        outside = (yy - cy) ** 2 + (xx - cx) ** 2 > (frac * min(shape[-2:])) ** 2
        img[..., outside] = 0.0
    return img.astype(np.float32, copy=False)


def _split_seed(seed):
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(
        seed if not isinstance(seed, np.random.Generator) else seed.integers(2**63)
    )
    a, b = ss.spawn(2)
    return a, b


def _phantom(shape, seed, randomize, params):
    s_struct, s_render = _split_seed(seed)
    if randomize:
        rp = random_params(shape, seed=s_render.spawn(1)[0])
        rp.update(params)
        params = rp
    ms = microstructure(shape, seed=s_struct, **params)
    img = render(ms, seed=s_render)
    return img, ms.labels


def electrode_slice(shape=(256, 256), *, seed=0, randomize=False, **params):
    """A 2-D electrode phantom slice and its exact phase labels.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``.
    seed : int, SeedSequence or Generator
        Equal seeds (and parameters) give identical output.
    randomize : bool
        Draw morphology and rendering parameters with :func:`random_params` (domain
        randomisation); explicit ``params`` still override.
    **params
        Overrides of :data:`DEFAULTS`.

    Returns
    -------
    image : ndarray of float32, shape ``(H, W)``
        Attenuation-like values, roughly in ``[0, 1]``.
    labels : ndarray of uint8, shape ``(H, W)``
        0 pore, 1 carbon-binder domain, 2 active material.

    Examples
    --------
    >>> img, lab = electrode_slice((128, 128), seed=1, active_fraction=0.4)
    >>> img.dtype, lab.dtype
    (dtype('float32'), dtype('uint8'))
    """
    shape = _check_shape(shape, 2)
    return _phantom(shape, seed, randomize, params)


def electrode_volume(shape=(64, 128, 128), *, seed=0, randomize=False, **params):
    """A 3-D electrode phantom volume and its exact phase labels.

    Same parameters as :func:`electrode_slice`, with ``shape = (D, H, W)``; particles
    are ellipsoids, cracks planes, and the field-of-view disc (if any) a cylinder along
    the first axis.
    """
    shape = _check_shape(shape, 3)
    return _phantom(shape, seed, randomize, params)


def random_params(shape=(256, 256), *, seed=0) -> dict:
    """Draw phantom parameters for domain randomisation.

    Morphology (fractions, particle scale relative to the image, aspect, primary grain
    size, porosity, cracks), phase contrasts, the clean image's noise floor and PSF, an
    intensity offset and scale, a smooth background and, in a third of the draws, a
    circular field of view.

    Parameters
    ----------
    shape : tuple of int
        Image shape; the particle radius scales with ``min(shape[-2:])``.
    seed : int, SeedSequence or Generator

    Returns
    -------
    dict
        Keyword arguments for :func:`electrode_slice` / :func:`electrode_volume`.
    """
    rng = np.random.default_rng(seed)
    side = min(int(s) for s in shape[-2:])
    mu_pore = rng.uniform(0.0, 0.15)
    mu_cbd = mu_pore + rng.uniform(0.08, 0.35)
    mu_active = min(mu_cbd + rng.uniform(0.15, 0.6), 0.98)
    scale = rng.uniform(0.7, 1.0)
    p = {
        "active_fraction": rng.uniform(0.3, 0.6),
        "cbd_fraction": rng.uniform(0.04, 0.2),
        # median radius from 1.5 % to 12 % of the image side, log-uniform
        "radius": float(side * math.exp(rng.uniform(math.log(0.015), math.log(0.12)))),
        "radius_sigma": rng.uniform(0.1, 0.45),
        "aspect": rng.uniform(1.0, 1.4),
        "primary_ratio": rng.uniform(0.12, 0.35),
        "internal_porosity": float(math.exp(rng.uniform(math.log(0.01), math.log(0.15)))),
        "crack_prob": rng.uniform(0.0, 0.6),
        "crack_width": rng.uniform(1.0, 2.5),
        "cbd_scale": rng.uniform(1.0, 4.0),
        "cbd_reach": rng.uniform(2.0, 8.0),
        "mu_pore": mu_pore,
        "mu_cbd": mu_cbd,
        "mu_active": mu_active,
        "particle_contrast": rng.uniform(0.0, 0.08),
        "grain_contrast": rng.uniform(0.0, 0.08),
        "background": rng.uniform(0.0, 0.08),
        "psf_sigma": rng.uniform(0.3, 1.1),
        "noise_floor": float(math.exp(rng.uniform(math.log(1e-4), math.log(1e-2)))),
        "offset": rng.uniform(0.0, 0.1),
        "scale": scale,
        "fov": float(rng.uniform(0.46, 0.5)) if rng.random() < 1 / 3 else None,
    }
    p["radius"] = max(p["radius"], 2.5)
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in p.items()}
