"""Training data for the TIQA network: manifest reading, rank blocks and fine-tuning samples.

A dataset directory holds ``manifest.csv`` (columns ``reference, domain, distortion,
level, file, label_file, params, seed``; after ``tomoqc label`` also ``label`` and
``obs_<name>``) and float32 ``.npy`` images. Images are normalised once, whole, with
:func:`tomoqc.preprocess.normalize_slice` (as at inference) and crops are cut from them.

The rank stage consumes *blocks*: one block per (reference, domain, distortion) holding
the reference and its distorted versions in order of level, least distorted first.
Batches are made of whole blocks; shuffling only ever permutes blocks, never images
inside a block, so the fixed pair indices of :func:`rank_pairs` stay valid for every
batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.preprocess import normalize_slice, patch_validity

DISTORTIONS = ("noise", "blur", "ring")
MAX_LEVEL = 5
REQUIRED_COLUMNS = ("reference", "domain", "distortion", "level", "file")


# --------------------------------------------------------------------------- manifest


def read_manifest(data_dir) -> list[dict]:
    """Read ``DIR/manifest.csv`` into a list of row dicts (``level`` as int).

    Raises
    ------
    InputError
        The folder or its manifest is missing, or a required column is absent.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(d, "dataset folder not found")
    path = d / "manifest.csv"
    if not path.is_file():
        raise InputError(path, "manifest.csv not found; build the dataset with `tomoqc dataset build`")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise InputError(path, f"manifest lacks column(s) {', '.join(missing)}")
        rows = []
        for i, row in enumerate(reader):
            try:
                row["level"] = int(float(row["level"]))
            except (TypeError, ValueError):
                raise InputError(path, f"row {i + 2}: level {row.get('level')!r} is not a number") from None
            rows.append(row)
    if not rows:
        raise InputError(path, "the manifest lists no images")
    return rows


def manifest_sha256(data_dir) -> str:
    """SHA-256 of ``DIR/manifest.csv`` (identifies the training data in a model card)."""
    h = hashlib.sha256()
    with open(Path(data_dir) / "manifest.csv", "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()


def _float_or_nan(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def row_label(row: dict) -> float:
    """The regression target of a row: human ``mos`` where given, else the generated ``label``."""
    mos = _float_or_nan(row.get("mos"))
    if np.isfinite(mos):
        return mos
    return _float_or_nan(row.get("label"))


def row_severity(row: dict) -> np.ndarray:
    """Severity targets (noise, blur, ring) of a row: level / 5 of each distortion present.

    A single distortion gives its level; a mixture lists its components in ``params``
    (JSON) as ``{"components": {"noise": 2, "ring": 4}}``, ``{"levels": {...}}``, or as
    top-level keys named after the distortions; absent distortions are 0.
    """
    out = np.zeros(len(DISTORTIONS), np.float32)
    dist = row.get("distortion", "none")
    level = int(row.get("level", 0) or 0)
    if dist in DISTORTIONS:
        out[DISTORTIONS.index(dist)] = level / MAX_LEVEL
        return out
    if dist in ("none", ""):
        return out
    params = row.get("params") or "{}"
    try:
        p = json.loads(params) if isinstance(params, str) else dict(params)
    except ValueError:
        p = {}
    comp = None
    for key in ("components", "levels", "mixture"):
        if isinstance(p.get(key), dict):
            comp = p[key]
            break
        if isinstance(p.get(key), list):
            comp = {}
            for item in p[key]:
                if isinstance(item, dict) and "distortion" in item:
                    comp[item["distortion"]] = item.get("level", 0)
                elif isinstance(item, (list, tuple)) and len(item) == 2:
                    comp[item[0]] = item[1]
            break
    if comp is None:
        comp = {k: v for k, v in p.items() if k in DISTORTIONS}
    for k, v in comp.items():
        if k in DISTORTIONS:
            lv = v.get("level", 0) if isinstance(v, dict) else v
            try:
                out[DISTORTIONS.index(k)] = float(lv) / MAX_LEVEL
            except (TypeError, ValueError):
                pass
    return out


# --------------------------------------------------------------------------- images


class ImageStore:
    """Normalised images of a dataset, loaded lazily and kept in memory."""

    def __init__(self, data_dir):
        self.dir = Path(data_dir)
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, rel: str) -> np.ndarray:
        img = self._cache.get(rel)
        if img is None:
            path = self.dir / rel
            if not path.is_file():
                raise InputError(path, "image listed in the manifest not found")
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                arr = tifffile.imread(path)
            else:
                try:
                    arr = np.load(path, allow_pickle=False)
                except ValueError as err:
                    raise InputError(path, f"cannot read image: {err}") from None
            if arr.ndim != 2:
                raise InputError(path, f"expected a 2-D image, got shape {arr.shape}")
            img = normalize_slice(arr)
            self._cache[rel] = img
        return img

    def preload(self, files, progress=None) -> None:
        for f in files:
            self[f]
            if progress is not None:
                progress()


# --------------------------------------------------------------------------- splits


def split_references(refs, *, val_fraction: float = 0.15, seed: int = 0, min_val: int = 1):
    """Split reference names into (train, val) sets, reproducibly for a seed."""
    refs = sorted(set(refs))
    if len(refs) < 2:
        raise InputError(None, f"need at least 2 references to hold some out for validation, got {len(refs)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(refs))
    n_val = max(min_val, int(round(val_fraction * len(refs))))
    n_val = min(n_val, len(refs) - 1)
    val = {refs[i] for i in order[:n_val]}
    train = [r for r in refs if r not in val]
    return train, sorted(val)


def chosen_references(rows, references, data_dir) -> list[str]:
    """The sorted references of a manifest's ``rows`` to train on: all of them when
    ``references`` is None, else exactly the given ones, every one of which must be in the
    manifest (:class:`~tomoqc.errors.InputError` naming ``DIR/manifest.csv`` otherwise, so that
    a study's train split is never silently widened or emptied)."""
    present = sorted({r["reference"] for r in rows})
    if references is None:
        return present
    if isinstance(references, (str, bytes)):
        raise OptionError(f"references must be a list of reference names, got the string {references!r}")
    wanted = sorted({str(r) for r in references})
    if not wanted:
        raise OptionError("the list of references to learn from is empty")
    have = set(present)
    missing = [r for r in wanted if r not in have]
    if missing:
        raise InputError(Path(data_dir) / "manifest.csv",
                         f"{len(missing)} of the {len(wanted)} given references are not in the manifest "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    return wanted


# --------------------------------------------------------------------------- rank blocks


@dataclass
class Block:
    """One reference with one distortion type at every level, least distorted first."""

    reference: str
    domain: str
    distortion: str
    files: list[str]
    levels: list[int] = field(default_factory=list)


def rank_blocks(rows, *, references=None, levels=tuple(range(MAX_LEVEL + 1))) -> list[Block]:
    """Group manifest rows into complete rank blocks.

    A block is (reference, domain, distortion) for each single distortion type, holding the
    images at ``levels`` in that order (the level-0 image is the domain's reference, or the
    reference of any domain when the domain has none of its own). Incomplete groups are
    skipped, so every block has the same length and order.
    """
    levels = tuple(int(v) for v in levels)
    keep = None if references is None else set(references)
    refs0: dict[tuple[str, str], str] = {}
    any_ref: dict[str, str] = {}
    groups: dict[tuple[str, str, str], dict[int, str]] = {}
    for r in rows:
        ref = r["reference"]
        if keep is not None and ref not in keep:
            continue
        dom = r.get("domain") or "image"
        if r["level"] == 0 or r["distortion"] in ("none", ""):
            refs0.setdefault((ref, dom), r["file"])
            any_ref.setdefault(ref, r["file"])
            continue
        if r["distortion"] not in DISTORTIONS:
            continue
        groups.setdefault((ref, dom, r["distortion"]), {}).setdefault(r["level"], r["file"])
    blocks = []
    for (ref, dom, dist), by_level in sorted(groups.items()):
        files = []
        for lv in levels:
            if lv == 0:
                f = refs0.get((ref, dom), any_ref.get(ref))
            else:
                f = by_level.get(lv)
            if f is None:
                break
            files.append(f)
        if len(files) == len(levels):
            blocks.append(Block(ref, dom, dist, files, list(levels)))
    return blocks


def rank_pairs(n_blocks: int, levels) -> tuple[np.ndarray, np.ndarray]:
    """Fixed pair indices for a batch of ``n_blocks`` blocks of images at ``levels``.

    Returns ``(better, worse)`` index arrays into the flattened batch (block-major) for
    every pair of images of one block whose levels differ, the less distorted image being
    "better". Built once per batch shape; the loss is then one gather.
    """
    levels = np.asarray(levels)
    L = len(levels)
    bi, wi = [], []
    for i in range(L):
        for j in range(L):
            if levels[i] < levels[j]:
                bi.append(i)
                wi.append(j)
    bi = np.asarray(bi, np.int32)
    wi = np.asarray(wi, np.int32)
    offs = (np.arange(n_blocks, dtype=np.int32) * L)[:, None]
    return (offs + bi[None]).ravel(), (offs + wi[None]).ravel()


def _augment(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(-2, -1))
    if flip:
        x = x[..., ::-1]
    return x


def choose_crop(img: np.ndarray, size: int, rng: np.random.Generator, tries: int = 10) -> tuple[int, int]:
    """A random ``size`` crop origin whose content passes :func:`patch_validity`."""
    h, w = img.shape
    if h < size or w < size:
        raise InputError(None, f"image of shape {img.shape} is smaller than the crop size {size}")
    y = x = 0
    for _ in range(tries):
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        if patch_validity(img[y : y + size, x : x + size]):
            break
    return y, x


def block_batch(blocks, store: ImageStore, size: int, rng: np.random.Generator, *, augment: bool = True) -> np.ndarray:
    """Stack blocks into one batch (n_blocks * L, size, size, 1), block-major, in level order.

    All images of a block share one crop position and one flip/rotation, so within a block
    only the distortion differs.
    """
    out = []
    for b in blocks:
        ref = store[b.files[0]]
        y, x = choose_crop(ref, size, rng)
        k = int(rng.integers(0, 4)) if augment else 0
        flip = bool(rng.integers(0, 2)) if augment else False
        for f in b.files:
            img = store[f]
            if img.shape != ref.shape:
                raise InputError(store.dir / f, f"shape {img.shape} differs from its reference {ref.shape}")
            out.append(_augment(img[y : y + size, x : x + size], k, flip))
    return np.ascontiguousarray(np.stack(out)[..., None], dtype=np.float32)


def iterate_block_batches(blocks, store, *, blocks_per_batch: int, size: int, rng, augment: bool = True):
    """One epoch of rank batches: blocks shuffled (as units), grouped ``blocks_per_batch`` at a time.

    The last, incomplete group is dropped so that every batch has the same shape (and the
    pair indices stay fixed). Consecutive blocks of a batch are drawn so that a batch mixes
    references and distortion types, which keeps BatchNorm statistics representative.
    """
    if blocks_per_batch < 1:
        raise OptionError(f"blocks per batch must be >= 1, got {blocks_per_batch}")
    order = rng.permutation(len(blocks))
    for i in range(0, len(order) - blocks_per_batch + 1, blocks_per_batch):
        chosen = [blocks[j] for j in order[i : i + blocks_per_batch]]
        yield block_batch(chosen, store, size, rng, augment=augment)


# --------------------------------------------------------------------------- finetune samples


@dataclass
class Sample:
    file: str
    reference: str
    label: float
    severity: np.ndarray
    distortion: str
    level: int
    domain: str


def finetune_samples(rows, *, references=None) -> list[Sample]:
    """Every labelled image (reference, single distortions and mixtures) of the given references."""
    keep = None if references is None else set(references)
    out = []
    for r in rows:
        if keep is not None and r["reference"] not in keep:
            continue
        lab = row_label(r)
        if not np.isfinite(lab):
            continue
        out.append(
            Sample(r["file"], r["reference"], float(lab), row_severity(r), r["distortion"], int(r["level"]),
                   r.get("domain") or "image")
        )
    return out


def sample_batch(samples, store: ImageStore, size: int, rng, *, augment: bool = True):
    """Random crops of ``samples`` -> (x (n, size, size, 1), label (n,), severity (n, 3))."""
    xs, ys, ss = [], [], []
    for s in samples:
        img = store[s.file]
        y, x = choose_crop(img, size, rng)
        k = int(rng.integers(0, 4)) if augment else 0
        flip = bool(rng.integers(0, 2)) if augment else False
        xs.append(_augment(img[y : y + size, x : x + size], k, flip))
        ys.append(s.label)
        ss.append(s.severity)
    return (
        np.ascontiguousarray(np.stack(xs)[..., None], dtype=np.float32),
        np.asarray(ys, np.float32),
        np.stack(ss).astype(np.float32),
    )


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop (the slice padded by reflection if smaller)."""
    h, w = img.shape
    if h < size or w < size:
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w))), mode="symmetric")
        h, w = img.shape
    y0, x0 = (h - size) // 2, (w - size) // 2
    return img[y0 : y0 + size, x0 : x0 + size]
