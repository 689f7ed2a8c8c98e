"""Training data of the segmentation network: labelled slices from three sources, crops, batches.

Every training image is a :class:`SegItem`: a slice normalised like at inference
(:func:`tomoqc.preprocess.normalize_slice`), its class map and, where part of the slice
has no meaningful label, a validity mask. Three sources give them:

``dataset``
    A folder made by ``tomoqc dataset build --source phantom`` (:mod:`tomoqc.dataset`):
    every distorted slice is paired with its reference's phase labels
    (``labels/<ref>.npy``), so the data engine's impairments (image and physics domain)
    are the augmentation. Slices are read when drawn, not kept in memory.
``phantoms``
    ``n`` domain-randomised electrode phantoms (:func:`tomoqc.phantom.random_params`,
    :func:`tomoqc.phantom.electrode_slice`) drawn once from the seed. Each time a clean
    phantom is drawn it gets a new random image-domain impairment
    (:func:`tomoqc.distort.apply_mixture`: none, or one or two of noise, blur and ring at
    levels up to ``max_level``); a share ``physics_fraction`` of the phantoms also has a
    scan-simulated version (:mod:`tomoqc.distort.physics`, one impairment, computed once:
    a simulated scan takes seconds).
``htc2022``
    The Helsinki Tomography Challenge 2022 discs with the organisers' segmentation
    (``htc2022/*_full_recon_fbp_seg.mat``, five discs): each disc is reconstructed from
    its measured sinogram (parallel rebinning and FBP of :mod:`tomoqc.realdata`) at full
    quality and degraded on the measured data (:data:`HTC2022_VARIANTS`: fewer photons,
    fewer angles, detector blur), every version paired with the same ground truth.

Labels are mapped to the model's classes by :func:`to_classes`: three phases (0 pore,
1 carbon-binder, 2 active material) or binary (0 void: pore, holes, background; 1
material: carbon-binder or active material, disc).

Outside the reconstructed field of view of a phantom (the disc of ``fov``) the image is
zero but the phantom's labels go on: those pixels are marked invalid and count neither
in the loss nor in the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.preprocess import normalize_slice

__all__ = [
    "SegItem",
    "CLASS_NAMES",
    "HTC2022_GT_DISCS",
    "HTC2022_VARIANTS",
    "to_classes",
    "fov_mask",
    "dataset_items",
    "phantom_items",
    "htc2022_files",
    "htc2022_ground_truth",
    "htc2022_recon",
    "htc2022_items",
    "random_impairment",
    "draw_batch",
]

#: Class names of the two heads, by number of classes.
CLASS_NAMES = {
    2: ("void", "material"),
    3: ("pore", "carbon-binder", "active material"),
}

#: The HTC2022 discs that come with the organisers' segmentation.
HTC2022_GT_DISCS = ("solid_disc", "ta", "tb", "tc", "td")

#: Degraded versions of each HTC2022 disc (applied to the measured fan-beam sinogram):
#: ``dose`` fraction of the photons (:func:`tomoqc.realdata.add_dose_noise`), ``angles``
#: keep every k-th of 360 parallel projections, ``blur`` detector PSF sigma in detector
#: pixels (:func:`tomoqc.realdata.detector_blur`).
HTC2022_VARIANTS = (
    ("full", {}),
    ("dose 1/4", {"dose": 0.25}),
    ("dose 1/16", {"dose": 0.0625}),
    ("angles 1/4", {"angles": 4}),
    ("angles 1/8", {"angles": 8}),
    ("blur 2 px", {"blur": 2.0}),
    ("blur 4 px", {"blur": 4.0}),
    ("dose 1/4, angles 1/4", {"dose": 0.25, "angles": 4}),
)

#: Image side of the organisers' segmentations.
HTC2022_SIDE = 512


#: Share of the training draws of a phantom that are left unimpaired.
CLEAN_SHARE = 0.2


@dataclass
class SegItem:
    """One labelled training or validation slice.

    Exactly one of ``image`` (normalised, in memory), ``path`` (a ``.npy`` read and
    normalised when drawn) and ``raw`` (a clean phantom impaired anew each time it is
    drawn, then normalised) is set.
    """

    name: str
    source: str
    labels: np.ndarray
    valid: np.ndarray | None = None
    image: np.ndarray | None = None
    path: Path | None = None
    raw: np.ndarray | None = None

    def load(self, rng: np.random.Generator | None = None, *, max_level: int = 3,
             clean_share: float = CLEAN_SHARE) -> np.ndarray:
        """The normalised slice (for ``raw`` items: with a new random impairment, none in a
        share ``clean_share`` of the draws)."""
        if self.image is not None:
            img = self.image
        elif self.raw is not None:
            spec = random_impairment(rng, max_level, clean_share) if rng is not None else {}
            img = self.raw
            if spec:
                from tomoqc.distort import apply_mixture

                img = apply_mixture(self.raw, spec, domain="image", rng=rng)
            img = normalize_slice(img)
        else:
            try:
                arr = np.load(self.path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(self.path, f"cannot read image: {err}") from None
            if arr.shape != self.labels.shape:
                raise InputError(self.path, f"image shape {arr.shape} differs from its labels {self.labels.shape}")
            img = normalize_slice(arr)
        return np.asarray(img, np.float32)


def to_classes(phases, classes: int) -> np.ndarray:
    """Phase labels (0 pore, 1 carbon-binder, 2 active) as the model's class map.

    ``classes=3`` keeps them; ``classes=2`` gives 1 for material (carbon-binder or active
    material) and 0 for pore.
    """
    lab = np.asarray(phases)
    if classes == 3:
        return lab.astype(np.uint8)
    if classes == 2:
        return (lab >= 1).astype(np.uint8)
    raise OptionError(f"classes must be 2 (binary) or 3 (phases), got {classes}")


def fov_mask(shape, fov) -> np.ndarray | None:
    """Pixels inside a phantom's field-of-view disc (``None`` when it has none).

    The disc is the one :func:`tomoqc.phantom.render` zeroes outside of: centred, radius
    ``fov * min(H, W)``.
    """
    if fov is None:
        return None
    h, w = shape[-2:]
    yy, xx = np.ogrid[:h, :w]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= (float(fov) * min(h, w)) ** 2


# --------------------------------------------------------------------------- dataset folder


def _reference_fov(rows) -> float | None:
    for r in rows:
        if r.get("distortion") != "none":
            continue
        try:
            p = json.loads(r.get("params") or "{}")
        except ValueError:
            continue
        ph = p.get("phantom") if isinstance(p, dict) else None
        if isinstance(ph, dict):
            return ph.get("fov")
    return None


def dataset_items(data_dir, *, classes: int, max_level: int = 3, val_fraction: float = 0.15,
                  seed: int = 0) -> tuple[list[SegItem], list[SegItem]]:
    """Training and validation items of a ``tomoqc dataset build`` folder with phase labels.

    References are split into training and validation sets
    (:func:`tomoqc.train.data.split_references`); every image of a reference whose
    level is at most ``max_level`` (the reference itself included) is an item with that
    reference's labels.

    Raises
    ------
    InputError
        The folder or its manifest is missing or malformed, no row has phase labels (a
        dataset built from real volumes), or a label file cannot be read.
    """
    from tomoqc.train.data import read_manifest, split_references

    d = Path(data_dir)
    rows = read_manifest(d)
    labelled = [r for r in rows if (r.get("label_file") or "").strip()]
    if not labelled:
        raise InputError(d / "manifest.csv", "no image has phase labels (empty label_file column); segmentation "
                         "training needs a dataset built from phantoms (tomoqc dataset build --source phantom)")
    by_ref: dict[str, list[dict]] = {}
    for r in labelled:
        by_ref.setdefault(r["reference"], []).append(r)
    train_refs, val_refs = split_references(list(by_ref), val_fraction=val_fraction, seed=seed)
    val_set = set(val_refs)
    train, val = [], []
    for ref, rr in sorted(by_ref.items()):
        lab_path = d / rr[0]["label_file"]
        try:
            phases = np.load(lab_path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(lab_path, f"cannot read phase labels: {err}") from None
        if phases.ndim != 2:
            raise InputError(lab_path, f"expected a 2-D label map, got shape {phases.shape}")
        labels = to_classes(phases, classes)
        valid = fov_mask(labels.shape, _reference_fov(rr))
        for r in rr:
            if int(r["level"]) > max_level:
                continue
            item = SegItem(name=r["file"], source="dataset", labels=labels, valid=valid, path=d / r["file"])
            (val if ref in val_set else train).append(item)
    return train, val


# --------------------------------------------------------------------------- phantoms


def check_clean_share(clean_share: float) -> None:
    """Raise :class:`OptionError` unless ``clean_share`` is a share in [0, 1]."""
    if not 0.0 <= clean_share <= 1.0:
        raise OptionError(f"the clean share must be in [0, 1], got {clean_share}")


def random_impairment(rng: np.random.Generator, max_level: int = 3, clean_share: float = CLEAN_SHARE) -> dict:
    """A random image-domain impairment: ``{}`` (a share ``clean_share`` of the draws, a
    fifth by default) or one or two of noise, blur and ring at levels 1..``max_level``."""
    check_clean_share(clean_share)
    if max_level < 1 or rng.random() < clean_share:
        return {}
    kinds = ("noise", "blur", "ring")
    n = 1 if rng.random() < 0.7 else 2
    pick = rng.choice(len(kinds), size=n, replace=False)
    return {kinds[int(i)]: int(rng.integers(1, max_level + 1)) for i in pick}


def phantom_items(n: int, *, size: int = 256, classes: int = 3, seed: int = 0, physics_fraction: float = 0.25,
                  max_level: int = 3, fixed: bool = False, source: str = "phantoms",
                  clean_share: float = CLEAN_SHARE) -> list[SegItem]:
    """``n`` domain-randomised phantom slices with their labels, reproducible from ``seed``.

    Parameters
    ----------
    n, size : int
        Number of phantoms and their side in pixels.
    classes : {2, 3}
        Class map (see :func:`to_classes`).
    seed : int
        Everything (morphology, rendering, impairments) follows from it.
    physics_fraction : float
        Share of the phantoms that also get a scan-simulated impairment (one of noise,
        blur, ring, streak of :mod:`tomoqc.distort.physics` at level 1..``max_level``),
        added as a further item with the same labels.
    fixed : bool
        False: clean phantoms are impaired anew each time they are drawn (training).
        True: each gets one random image-domain impairment now (validation sets, which
        must not change between epochs), none in a share ``clean_share``.
    """
    from tomoqc import distort
    from tomoqc.phantom import electrode_slice, random_params

    if n < 0 or size < 8:
        raise OptionError(f"need n >= 0 phantoms of size >= 8, got n={n}, size={size}")
    root = np.random.SeedSequence([int(seed), 0x5E6])
    items: list[SegItem] = []
    for i, ss in enumerate(root.spawn(int(n))):
        s_par, s_img, s_phys = ss.spawn(3)
        params = random_params((size, size), seed=s_par)
        raw, phases = electrode_slice((size, size), seed=s_img, **params)
        labels = to_classes(phases, classes)
        valid = fov_mask(labels.shape, params.get("fov"))
        name = f"phantom{i:05d}"
        if fixed:
            rng = np.random.default_rng(s_img.spawn(1)[0])
            spec = random_impairment(rng, max_level, clean_share)
            img = distort.apply_mixture(raw, spec, domain="image", rng=rng) if spec else raw
            items.append(SegItem(name=name, source=source, labels=labels, valid=valid, image=normalize_slice(img)))
        else:
            items.append(SegItem(name=name, source=source, labels=labels, valid=valid, raw=raw))
        prng = np.random.default_rng(s_phys)
        if max_level >= 1 and prng.random() < physics_fraction:
            kinds = distort.distortions_of("physics")
            kind = kinds[int(prng.integers(len(kinds)))]
            level = int(prng.integers(1, max_level + 1))
            img = distort.apply(raw, kind, level, domain="physics", rng=prng)
            items.append(SegItem(name=f"{name}_physics_{kind}{level}", source=source, labels=labels, valid=valid,
                                 image=normalize_slice(img)))
    return items


# --------------------------------------------------------------------------- HTC2022


def htc2022_files(realdata) -> dict[str, tuple[Path, Path]]:
    """The HTC2022 discs with ground truth under ``realdata`` (or its ``htc2022/``).

    Returns ``{disc: (sinogram_file, segmentation_file)}``.

    Raises
    ------
    InputError
        No disc with both files is there.
    """
    root = Path(realdata)
    if not root.exists():
        raise InputError(root, "no such folder")
    folder = root / "htc2022" if (root / "htc2022").is_dir() else root
    out = {}
    for seg in sorted(folder.glob("htc2022_*_full_recon_fbp_seg.mat")):
        disc = seg.name[len("htc2022_") : -len("_full_recon_fbp_seg.mat")]
        sino = folder / f"htc2022_{disc}_full.mat"
        if sino.is_file():
            out[disc] = (sino, seg)
    if not out:
        raise InputError(root, "no HTC2022 disc with ground truth (htc2022/htc2022_<disc>_full.mat and "
                         "htc2022_<disc>_full_recon_fbp_seg.mat)")
    return out


def htc2022_ground_truth(path, *, bin: int = 1) -> np.ndarray:
    """The organisers' binary segmentation (1 disc material, 0 holes and background).

    ``bin`` > 1 averages ``bin x bin`` blocks and keeps the majority.
    """
    import scipy.io as sio

    p = Path(path)
    try:
        m = sio.loadmat(str(p), squeeze_me=True, struct_as_record=False)
    except Exception as err:
        raise InputError(p, f"not a MATLAB file ({type(err).__name__})") from None
    keys = [k for k in m if not k.startswith("__")]
    if len(keys) != 1:
        raise InputError(p, f"expected one segmentation array, found {keys}")
    gt = np.asarray(m[keys[0]])
    if gt.ndim != 2 or gt.shape[0] != gt.shape[1]:
        raise InputError(p, f"expected a square 2-D segmentation, got shape {gt.shape}")
    gt = (gt > 0).astype(np.float32)
    b = int(bin)
    if b > 1:
        n = gt.shape[0] // b
        gt = gt[: n * b, : n * b].reshape(n, b, n, b).mean(axis=(1, 3))
        return (gt >= 0.5).astype(np.uint8)
    return gt.astype(np.uint8)


def htc2022_recon(path, *, dose: float = 1.0, angles: int = 1, blur: float = 0.0, bin: int = 1,
                  size: int | None = None, rng=None, arc: float | None = None, filter: str = "ramp") -> np.ndarray:
    """FBP of an HTC2022 disc in the orientation of the organisers' segmentation.

    The measured fan-beam sinogram is degraded (``dose`` < 1: the noise of a lower dose,
    :func:`tomoqc.realdata.add_dose_noise`; ``blur`` > 0: a detector PSF of that sigma
    in detector pixels, :func:`tomoqc.realdata.detector_blur`), rebinned to 360 parallel
    projections (:func:`tomoqc.realdata.htc2022_parallel`, ``560 / bin`` samples), thinned
    to every ``angles``-th projection, limited to the first ``arc`` degrees of the half
    turn when ``arc`` is given (limited angle, :func:`tomoqc.realdata.limit_angles`) and
    reconstructed (:func:`tomoqc.realdata.fbp`, with its ``filter``) on a ``size`` grid
    (default ``512 / bin``, the segmentation's grid).

    Notes
    -----
    The ground truth's rows run the other way: the reconstruction is flipped up-down. The
    flip was found by trying the eight flips and quarter turns: with it the
    Otsu-thresholded full-quality reconstruction overlaps the ground truth with IoU 0.989
    to 0.999 on the five discs (0.979-0.997 at ``bin=4``), while the other seven give
    0.45-0.89 on the discs with holes (the plain solid disc fits any of them, 0.97-0.99).
    ``tests/test_train_segment.py`` checks the overlap on every disc.
    """
    from tomoqc import realdata as rd

    b = int(bin)
    if b < 1:
        raise OptionError(f"bin must be >= 1, got {bin}")
    d = dict(rd.read_htc2022(path))
    sino = d["sinogram"]
    if blur > 0:
        sino = rd.detector_blur(sino, blur)
    if dose < 1.0:
        sino = rd.add_dose_noise(sino, dose, rng=rng)
    d["sinogram"] = sino
    n_det = sino.shape[1] // b
    par, theta, center = rd.htc2022_parallel(d, n_angles=360, n_det=n_det, pixel=b * d["pixel"] / d["magnification"])
    if angles > 1:
        par, theta = rd.subsample_angles(par, theta, int(angles))
    if arc is not None:
        par, theta = rd.limit_angles(par, theta, np.deg2rad(float(arc)))
    side = HTC2022_SIDE // b if size is None else int(size)
    rec = rd.fbp(par, theta, center=center, size=side, filter=filter)
    return np.ascontiguousarray(np.flipud(rec)).astype(np.float32)


def htc2022_items(realdata, *, discs=None, bin: int = 1, seed: int = 0, variants=HTC2022_VARIANTS,
                  progress=None) -> dict[str, list[SegItem]]:
    """Items of the HTC2022 discs with ground truth: every variant of every disc.

    Returns ``{disc: [items]}`` (binary labels: 1 disc material). The noise of the
    ``dose`` variants is seeded from ``seed`` and the disc's name.
    """
    files = htc2022_files(realdata)
    if discs is not None:
        missing = sorted(set(discs) - set(files))
        if missing:
            raise InputError(realdata, f"no HTC2022 disc with ground truth named {', '.join(missing)} "
                             f"(have {', '.join(files)})")
        files = {k: files[k] for k in discs}
    out = {}
    for disc, (sino_path, seg_path) in files.items():
        gt = htc2022_ground_truth(seg_path, bin=bin)
        items = []
        for vi, (vname, opts) in enumerate(variants):
            rng = np.random.default_rng([int(seed), vi, *disc.encode()])
            rec = htc2022_recon(sino_path, bin=bin, size=gt.shape[0], rng=rng, **opts)
            items.append(SegItem(name=f"{disc} {vname}", source="htc2022", labels=gt, image=normalize_slice(rec)))
            if progress is not None:
                progress()
        out[disc] = items
    return out


# --------------------------------------------------------------------------- batches


def _crop_one(img, labels, valid, crop, rng):
    h, w = labels.shape
    wmap = np.ones((h, w), np.float32) if valid is None else valid.astype(np.float32)
    if h < crop or w < crop:
        py, px = max(0, crop - h), max(0, crop - w)
        pad = ((0, py), (0, px))
        mode = "reflect" if min(h, w) > 1 else "edge"
        img = np.pad(img, pad, mode=mode)
        labels = np.pad(labels, pad, mode=mode)
        wmap = np.pad(wmap, pad, mode="constant")
        h, w = labels.shape
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    sl = (slice(y, y + crop), slice(x, x + crop))
    return img[sl], labels[sl], wmap[sl]


def draw_batch(sources: dict, rng: np.random.Generator, *, batch_size: int, crop: int, max_level: int = 3,
               augment: bool = True, clean_share: float = CLEAN_SHARE):
    """A training batch: random crops from items drawn source by source.

    Each image of the batch comes from a source chosen with equal probability, then an
    item of it chosen uniformly, so that a small real source is not drowned by a large
    synthetic one. Crops are ``crop x crop`` (smaller images are reflect-padded, with
    zero weight on the padding); with ``augment`` each crop is turned by a random
    multiple of 90 degrees and flipped with probability 1/2.

    Returns
    -------
    x : float32 (B, crop, crop, 1)
    y : uint8 (B, crop, crop)
        Class labels.
    w : float32 (B, crop, crop)
        1 where the label counts, 0 outside a field of view or on padding.
    """
    names = [k for k, v in sources.items() if v]
    if not names:
        raise OptionError("no training images")
    xs = np.empty((batch_size, crop, crop, 1), np.float32)
    ys = np.empty((batch_size, crop, crop), np.uint8)
    ws = np.empty((batch_size, crop, crop), np.float32)
    for b in range(batch_size):
        pool = sources[names[int(rng.integers(len(names)))]]
        item = pool[int(rng.integers(len(pool)))]
        img = item.load(rng, max_level=max_level, clean_share=clean_share)
        xi, yi, wi = _crop_one(img, item.labels, item.valid, crop, rng)
        if augment:
            k = int(rng.integers(4))
            flip = bool(rng.random() < 0.5)
            xi, yi, wi = (np.rot90(a, k) for a in (xi, yi, wi))
            if flip:
                xi, yi, wi = (a[:, ::-1] for a in (xi, yi, wi))
        xs[b, ..., 0] = xi
        ys[b] = yi
        ws[b] = wi
    return xs, ys, ws

