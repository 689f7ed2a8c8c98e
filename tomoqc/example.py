"""An example volume whose image quality changes along z, with the truth attached.

:func:`make_example_volume` renders an electrode phantom volume
(:func:`tomoqc.phantom.electrode_volume`) and degrades its slices with the
image-domain recipes (:mod:`tomoqc.distort.image`: the TIQA report's Table S1 for noise
and blur, ring coefficients doubling per level), so that one
volume holds every situation a quality score should tell apart:

==========  ===================================================================
z range     content
==========  ===================================================================
first part  clean slices (level 0)
second      Gaussian noise, level rising 1 -> 5 along z
third       Gaussian blur, level rising 1 -> 5
fourth      ring artifacts, level rising 1 -> 5 (same ring radii on every slice,
            as a defective detector pixel gives at every height)
==========  ===================================================================

The four parts have equal length; any remainder slices join the clean part. The
returned truth (and the zarr attributes written by ``tomoqc example``) say which
distortion and level each slice carries.
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["SEGMENTS", "example_plan", "make_example_volume", "write_example"]

#: The parts of the example volume, in z order.
SEGMENTS = ("none", "noise", "blur", "ring")


def example_plan(n_slices: int) -> tuple[list[str], list[int], list[dict]]:
    """Distortion and level of each slice of an ``n_slices`` example volume.

    Returns
    -------
    distortions : list of str
        ``"none"``, ``"noise"``, ``"blur"`` or ``"ring"`` per slice.
    levels : list of int
        0 for clean slices, otherwise 1..5, non-decreasing within a part.
    segments : list of dict
        ``{"distortion", "z_start", "z_stop"}`` (half-open range) per part.
    """
    n = int(n_slices)
    if n < 8:
        raise OptionError(f"the example volume needs at least 8 slices, not {n_slices}")
    part = n // 4
    clean = n - 3 * part
    distortions, levels, segments = [], [], []
    z = 0
    for name in SEGMENTS:
        length = clean if name == "none" else part
        segments.append({"distortion": name, "z_start": z, "z_stop": z + length})
        for i in range(length):
            distortions.append(name)
            # levels 1..5 spread evenly over the part (every level present when length >= 5)
            levels.append(0 if name == "none" else 1 + (5 * i) // length)
        z += length
    return distortions, levels, segments


def make_example_volume(shape=(48, 256, 256), *, seed=0):
    """A phantom volume with impairments that vary along z, and its ground truth.

    Parameters
    ----------
    shape : (int, int, int)
        ``(D, H, W)``; ``D >= 8`` and ``H, W >= 16``.
    seed : int
        Equal seeds give identical volumes.

    Returns
    -------
    volume : ndarray of float32, shape ``(D, H, W)``
        Values in ``[0, 1]``.
    truth : dict
        ``distortion`` (list of str per slice), ``level`` (list of int per slice),
        ``segments`` (list of ``{"distortion", "z_start", "z_stop"}``), ``labels``
        (uint8 phase labels of the clean phantom, 0 pore, 1 CBD, 2 active material),
        ``clean`` (the undistorted volume) and ``seed``.
    """
    from tomoqc.distort import image as dimage
    from tomoqc.phantom import electrode_volume

    try:
        d, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise OptionError(f"shape must be 3 integers (D, H, W), not {shape!r}") from err
    if min(h, w) < 16:
        raise OptionError(f"slices must be at least 16 x 16, not {h} x {w}")
    distortions, levels, segments = example_plan(d)
    ss_vol, ss_noise, ss_ring = np.random.SeedSequence(int(seed)).spawn(3)
    clean, labels = electrode_volume(
        (d, h, w), seed=ss_vol, radius=max(3.0, min(h, w) / 18.0), noise_floor=0.002
    )
    vol = clean.copy()
    noise_rng = np.random.default_rng(ss_noise)
    ring_seed = int(ss_ring.generate_state(1)[0])
    for z, (name, lv) in enumerate(zip(distortions, levels)):
        if name == "none":
            continue
        # one ring pattern for the whole volume (same detector, same rotation axis)
        rng = np.random.default_rng(ring_seed) if name == "ring" else noise_rng
        vol[z] = dimage.apply(clean[z], name, lv, rng=rng)
    truth = {
        "distortion": distortions,
        "level": levels,
        "segments": segments,
        "labels": labels,
        "clean": clean,
        "seed": int(seed),
    }
    return vol, truth


def write_example(out, *, slices: int = 48, size: int = 256, seed: int = 0,
                  overwrite: bool = False, progress: bool = True):
    """Write the example volume to a zarr v3 array ``out`` (atomically).

    The array's attributes carry ``example`` (the segments, per-slice distortion and
    level, seed) so a quality report can be checked against the truth.

    Returns
    -------
    pathlib.Path
        The zarr written.
    """
    from tomoqc.io import write_zarr

    vol, truth = make_example_volume((int(slices), int(size), int(size)), seed=seed)
    attrs = {
        "source": "tomoqc example",
        "example": {
            "segments": truth["segments"],
            "distortion": truth["distortion"],
            "level": truth["level"],
            "seed": truth["seed"],
            "recipes": "tomoqc.distort.image (TIQA report Table S1 noise and blur; rings doubling per level)",
        },
    }
    return write_zarr(vol, out, overwrite=overwrite, progress=progress, attrs=attrs)
