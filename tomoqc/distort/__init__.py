"""Distortions of reference slices at calibrated levels, in two domains.

``domain="image"``
    The TIQA report's recipes applied to the reconstructed slice
    (:mod:`tomoqc.distort.image`).
``domain="physics"``
    The same impairments as they arise in a scan: projections, counting noise,
    detector blur and detector-gain rings, then filtered back-projection
    (:mod:`tomoqc.distort.physics`); and a fourth, ``streak``: too few projections
    (angular undersampling), which only exists in the physics domain.

Both take images scaled to ``[0, 1]`` and return float32 images; level 0 is the
identity for the image domain and the clean reconstruction for the physics domain.
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["DISTORTIONS", "ALL_DISTORTIONS", "PHYSICS_ONLY", "LEVELS", "DOMAINS", "MIX_ORDER", "distortions_of",
           "apply", "apply_mixture", "reference"]

#: The impairments of both domains (the TIQA report's three).
DISTORTIONS = ("noise", "blur", "ring")
#: Impairments that only arise in a scan (physics domain).
PHYSICS_ONLY = ("streak",)
#: Every impairment the data engine makes.
ALL_DISTORTIONS = DISTORTIONS + PHYSICS_ONLY
LEVELS = (1, 2, 3, 4, 5)
DOMAINS = ("image", "physics")
#: Order in which the impairments of a mixture are applied in the image domain
#: (detector blur and ring offsets before counting noise, as in a scan).
MIX_ORDER = ("blur", "ring", "noise")


def distortions_of(domain: str) -> tuple[str, ...]:
    """The impairments ``domain`` can make."""
    _module(domain)
    return ALL_DISTORTIONS if domain == "physics" else DISTORTIONS


def _module(domain: str):
    if domain == "image":
        from tomoqc.distort import image

        return image
    if domain == "physics":
        from tomoqc.distort import physics

        return physics
    raise OptionError(f"unknown domain {domain!r}; choose from image, physics")


def apply(img, distortion: str, level: int, *, domain: str = "image", rng=None, **kwargs):
    """Apply ``distortion`` at ``level`` in ``domain``; see the domain modules."""
    return _module(domain).apply(img, distortion, level, rng=rng, **kwargs)


def reference(img, *, domain: str = "image", **kwargs) -> np.ndarray:
    """The clean reference a distorted image is compared with.

    For the image domain it is the image itself (float32); for the physics domain the
    noise-free, unblurred, ring-free reconstruction of the same object
    (:func:`tomoqc.distort.physics.reference`).
    """
    if domain == "image":
        return np.asarray(img, np.float32).copy()
    return _module(domain).reference(img, **kwargs)


def _check_mix(levels: dict, domain: str = "image") -> dict:
    if not isinstance(levels, dict) or not levels:
        raise OptionError("a mixture is a non-empty dict like {'noise': 2, 'ring': 3}")
    allowed = distortions_of(domain)
    out = {}
    for k, v in levels.items():
        if k not in allowed:
            raise OptionError(f"unknown distortion {k!r} in a {domain}-domain mixture; choose from {allowed}")
        if int(v) != v or not 0 <= int(v) <= 5:
            raise OptionError(f"mixture level for {k!r} must be an integer 0..5, got {v!r}")
        out[k] = int(v)
    return out


def apply_mixture(img, levels: dict, *, domain: str = "image", rng=None, **kwargs):
    """Apply several impairments together, e.g. ``{"noise": 2, "ring": 3}``.

    In the image domain they are applied one after the other in :data:`MIX_ORDER`;
    in the physics domain they enter one simulated scan together
    (:func:`tomoqc.distort.physics.apply_mixture`).
    """
    levels = _check_mix(levels, domain)
    if domain == "physics":
        return _module(domain).apply_mixture(img, levels, rng=rng, **kwargs)
    mod = _module(domain)
    rng = np.random.default_rng(rng)
    out = np.asarray(img, np.float32)
    for name in MIX_ORDER:
        if levels.get(name, 0):
            out = mod.apply(out, name, levels[name], rng=rng, **kwargs)
    return np.asarray(out, np.float32).copy() if out is img else out
