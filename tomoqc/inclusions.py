"""Dense inclusions: small regions far denser than the rest of a slice, filled before scoring.

Real samples hold things far denser than their matrix: metal particles, fragments of a
current collector, high-Z minerals. Such an inclusion is structure, not an impairment, yet it
moves a quality score: it takes the top of the intensity range, so the rest of the slice is
seen compressed and smoother, and its hard edges enter the measured indicators. Drawn into
real slices, a few small discs moved the score by up to 1.15 on slices at least a patch wide
and by up to 3 on smaller ones (``benchmarks/bright_inclusions.py``).

:func:`dense_inclusion_mask` finds them and :func:`fill_inclusions` replaces each with the
texture of its own neighbourhood, so the slice is scored as the sample around them.

What counts as an inclusion (all of it measured on ``../shared/realdata``, the study's 1032
phantom images and discs drawn into real slices; ``benchmarks/bright_inclusions.py``):

* **Far above the bulk.** The bulk is the slice's values between the :data:`BULK_LOW` and
  :data:`BULK_HIGH` percentiles; a pixel is dense when it lies more than :data:`DENSE_RANGES`
  bulk ranges above the bulk's upper end. The inclusions must therefore hold less than
  ``100 - BULK_HIGH`` % of the slice: a denser phase any larger is part of the sample.
* **Grown over its partial-volume edge**: by :data:`GROW_PX` px into pixels above the bulk,
  then one more pixel.
* **In a sample, not a sample in air.** A sparse sample (a fly in a tube) is itself far above
  its bulk, the air. Nothing is filled when the bulk holds no structure beyond noise (less
  than :data:`STRUCTURE_SHARE` of its variance survives a 4 px Gaussian: 0.2-0.3 on the
  qim3d fly's slices of air with a few sample fragments, 0.4-0.9 on every real slice with a
  sample), nor when the candidates cover more than :data:`MAX_SUPPORT_SHARE` of the
  sample's support (the bright side of an Otsu threshold of the smoothed bulk, closed and
  filled).
* **Not an artefact about the axis.** Strong rings leave bright arcs and a bright dot close to
  the rotation axis. A component is kept only when it has at least :data:`MIN_CORE_PX` dense
  pixels (and at most :data:`MAX_CORE_PX`: a larger dense object is a main part of the
  sample's contrast, not a speck in it), its centre lies at least :data:`AXIS_CLEARANCE_PX` from the axis, and it is not an
  arc about the axis (tangential spread at most :data:`ARC_RATIO` times its radial spread).
  With these rules none of the study's ring-impaired phantoms has an inclusion (51 of the
  1032 images had one without them).
* **Inside the slice**: a component touching the slice's border is left (the bright rim of a
  truncated reconstruction).

Limits: an inclusion closer to the axis than :data:`AXIS_CLEARANCE_PX`, or larger than
:data:`MAX_CORE_PX`, is left as it is, and so are inclusions that together cover more than
``100 - BULK_HIGH`` % of a slice (on slices much smaller than a patch they soon do).
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import InputError
from tomoqc.preprocess import check_slice

__all__ = [
    "BULK_LOW",
    "BULK_HIGH",
    "DENSE_RANGES",
    "GROW_PX",
    "STRUCTURE_SHARE",
    "MAX_SUPPORT_SHARE",
    "MIN_CORE_PX",
    "MAX_CORE_PX",
    "AXIS_CLEARANCE_PX",
    "ARC_RATIO",
    "dense_inclusion_mask",
    "fill_inclusions",
    "remove_dense_inclusions",
]

#: Percentiles (0-100) bounding a slice's bulk.
BULK_LOW, BULK_HIGH = 0.5, 98.0
#: Bulk ranges above the bulk's upper end from which a pixel is dense.
DENSE_RANGES = 1.0
#: Pixels by which the dense core grows into its partial-volume edge (then one more).
GROW_PX = 2
#: Least share of the bulk's variance kept by a 4 px Gaussian for the bulk to count as sample.
STRUCTURE_SHARE = 0.35
#: Largest share of the sample's support the inclusions may cover.
MAX_SUPPORT_SHARE = 0.10
#: Fewest dense pixels of one inclusion.
MIN_CORE_PX = 4
#: Most dense pixels of one inclusion (a disc of radius 8 px): a larger dense object is a main
#: part of what a patch shows, not a speck in it (the Savu sample's particle, 490-1420 dense
#: pixels in the 320 px reconstructions of the real orderings, is most of that sample's contrast:
#: filled, the row's angle and blur series lost their order).
MAX_CORE_PX = 200
#: Least distance (px) of an inclusion's centre from the rotation axis.
AXIS_CLEARANCE_PX = 16.0
#: Tangential over radial spread about the axis above which a component is an arc (a ring).
ARC_RATIO = 2.0


def _is_arc(ys: np.ndarray, xs: np.ndarray) -> bool:
    """Whether points (relative to the axis) spread along a circle about it rather than across."""
    rho = np.hypot(ys, xs)
    theta = np.arctan2(ys, xs)
    mean_dir = np.angle(np.mean(np.exp(1j * theta)))
    tangential = float(np.std(np.angle(np.exp(1j * (theta - mean_dir))))) * float(rho.mean())
    return tangential > ARC_RATIO * max(float(np.std(rho)), 0.5)


def dense_inclusion_mask(img, *, center=None) -> np.ndarray:
    """The pixels of ``img`` that belong to dense inclusions (module docstring), as a bool mask.

    Parameters
    ----------
    img : array_like, 2-D
        A slice of any real dtype and scale; non-finite pixels are never part of the mask.
    center : (float, float), optional
        The rotation axis (row, col); default the slice centre.
    """
    from scipy import ndimage as ndi

    a = check_slice(img)
    x = a.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    none = np.zeros(x.shape, bool)
    if finite.sum() < 16:
        return none
    lo, hi = (float(v) for v in np.percentile(x[finite], [BULK_LOW, BULK_HIGH]))
    span = hi - lo
    if not span > 0:
        return none
    core = finite & (x > hi + DENSE_RANGES * span)
    if core.sum() < MIN_CORE_PX:
        return none
    bulk = finite & (x <= hi)
    clipped = np.clip(np.where(finite, x, lo), lo, hi)
    var = float(np.var(clipped[bulk]))
    if not var > 0 or float(np.var(ndi.gaussian_filter(clipped, 4.0)[bulk])) < STRUCTURE_SHARE * var:
        return none
    grown = core | (ndi.binary_dilation(core, iterations=GROW_PX) & finite & (x > hi))
    grown = ndi.binary_dilation(grown, iterations=1) & finite
    labels, n = ndi.label(grown)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    drop = set(int(v) for v in np.unique(border[border > 0]))
    cy, cx = ((x.shape[0] - 1) / 2.0, (x.shape[1] - 1) / 2.0) if center is None else (float(center[0]),
                                                                                      float(center[1]))
    for j, box in enumerate(ndi.find_objects(labels), start=1):
        if j in drop or box is None:
            continue
        ys, xs = np.nonzero((labels[box] == j) & core[box])
        ys = ys + box[0].start - cy
        xs = xs + box[1].start - cx
        if (not MIN_CORE_PX <= len(ys) <= MAX_CORE_PX or float(np.hypot(ys.mean(), xs.mean())) < AXIS_CLEARANCE_PX
                or _is_arc(ys, xs)):
            drop.add(j)
    mask = grown & ~np.isin(labels, sorted(drop)) if drop else grown
    if not mask.any():
        return none
    from skimage.filters import threshold_otsu

    smooth = ndi.gaussian_filter(clipped, 2.0)
    sample = ndi.binary_fill_holes(ndi.binary_closing(smooth > threshold_otsu(smooth[finite]), iterations=3))
    # every dense candidate counts here, kept or not: a dense phase is not a few inclusions
    if grown.sum() > MAX_SUPPORT_SHARE * max(int((sample | grown).sum()), 1):
        return none
    return mask


def fill_inclusions(img, mask, *, margin: int = 3) -> np.ndarray:
    """``img`` with each connected region of ``mask`` replaced by a shifted copy of its surroundings.

    For each region the copy comes from the one of eight shifts (one region extent plus
    ``margin`` px up, down, sideways or diagonally) whose source is inside the slice, finite
    and unmasked, and whose 2 px ring around the region best matches the ring around the
    source (least mean squared difference): the fill keeps the sample's texture and noise, so
    that the noise reading does not fall. With no usable shift the region gets its ring's
    median. Pixels outside ``mask`` are unchanged; the result has ``img``'s dtype; ``img`` is
    not modified.
    """
    from scipy import ndimage as ndi

    a = check_slice(img)
    m = np.asarray(mask, bool)
    if m.shape != a.shape:
        raise InputError(None, f"mask of shape {m.shape} does not match the slice's {a.shape}")
    out = np.array(a, copy=True)
    if not m.any():
        return out
    values = a.astype(np.float64, copy=False)
    bad = m | ~np.isfinite(values)
    h, w = a.shape
    labels, _ = ndi.label(m)
    for j, box in enumerate(ndi.find_objects(labels), start=1):
        region = labels == j
        ys, xs = np.nonzero(region)
        ry, rx = np.nonzero(ndi.binary_dilation(region, iterations=2) & ~bad)
        ext_y = box[0].stop - box[0].start + margin
        ext_x = box[1].stop - box[1].start + margin
        best = None
        for dy, dx in ((ext_y, 0), (-ext_y, 0), (0, ext_x), (0, -ext_x),
                       (ext_y, ext_x), (-ext_y, -ext_x), (ext_y, -ext_x), (-ext_y, ext_x)):
            ty, tx = ys + dy, xs + dx
            if ty.min() < 0 or tx.min() < 0 or ty.max() >= h or tx.max() >= w or bad[ty, tx].any():
                continue
            sy, sx = ry + dy, rx + dx
            inside = (sy >= 0) & (sx >= 0) & (sy < h) & (sx < w)
            inside[inside] &= ~bad[sy[inside], sx[inside]]
            if inside.sum() < max(1, len(ry) // 2):
                continue
            err = float(np.mean((values[ry[inside], rx[inside]] - values[sy[inside], sx[inside]]) ** 2))
            if best is None or err < best[0]:
                best = (err, dy, dx)
        if best is not None:
            out[ys, xs] = a[ys + best[1], xs + best[2]]
        elif len(ry):
            fill = np.median(values[ry, rx])
            out[ys, xs] = np.round(fill) if np.issubdtype(a.dtype, np.integer) else fill
    return out


def remove_dense_inclusions(img, *, center=None) -> tuple[np.ndarray, float]:
    """``(slice, share)``: ``img`` with its dense inclusions filled, and the share of its pixels
    they covered. The slice is ``img`` itself (not a copy) when it has none."""
    a = check_slice(img)
    mask = dense_inclusion_mask(a, center=center)
    if not mask.any():
        return a, 0.0
    return fill_inclusions(a, mask), float(mask.mean())
