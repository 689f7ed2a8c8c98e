"""Refining a trained TIQA network on series of known quality order, anchored on itself.

The rank and fine-tune stages (:mod:`tomoqc.train.rank`, :mod:`tomoqc.train.finetune`) learn
from phantoms and sample images distorted by recipes. Real reconstructions differ in noise
texture, streaks and rings in ways no recipe reproduces, so here the finished network goes
on learning from **series whose order physics fixes**:

* real measured data degraded directly (:func:`tomoqc.realdata.degraded_series` on
  :data:`tomoqc.train.measured.TRAIN_SERIES`: thinned counts, fewer projections, detector
  blur, gain-mismatched columns, stripe removal on/off), each as the float reconstruction and
  as 8-bit PNG and JPEG exports;
* real reconstructions and phantoms re-projected and scanned again
  (:func:`tomoqc.train.measured.series_for`: dose, detector blur, ring defects, fewer angles),
  and the report's image-domain recipes on the phantoms.

* optionally, the report's image-domain rings drawn into the real reference slices
  (:func:`tomoqc.train.score_head.image_ring_series`, source ``"image"``): the network's
  score head alone could not learn to read heavy rings on real slices it had not seen, so
  the backbone learns it here.
* optionally, **labelled phantoms** (:func:`labelled_series`, source ``"labelled"``): the
  images of one reference, every impairment and domain together, ordered by their projected
  labels, with labels at least ``spacing`` apart. The other series only ever order one
  impairment against itself; these order a ring against a noise against a blur of the same
  reference, which is where a pooled ranking over impairments loses order.

None of them comes from a sample of ``benchmarks/real_orderings.py`` (see
:mod:`tomoqc.train.measured`).

Loss, per mini-batch of blocks (one series, up to ``length`` of its images in order, one
shared crop and flip/rotation):

* the hinge rank loss of :func:`tomoqc.train.rank.rank_loss` on every ordered pair of a
  block, with a small margin (raw-score units);
* an **anchor**: the mean squared difference between the network's raw score and severities
  and those of the frozen parent on the same crops. It keeps what the parent does well (the
  phantom table, the calibration and the severity baseline stay valid) and lets the scores
  move only where a series asks for it.

BatchNorm runs in inference mode (its statistics stay the parent's; no re-estimation is
needed) and dropout is off, so the loss sees exactly the network that will score. The
severity head's own weights are frozen.

Validation: held-out series (:data:`VAL_SAMPLES`), pair accuracy of the mean raw score over
fixed 224-px crops, each source weighing alike; the best checkpoint is kept.
Checkpoints after every epoch, ``resume``, SIGTERM/SIGUSR1 save-and-exit as in the other
training stages.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.train import common
from tomoqc.train.data import _augment, choose_crop

__all__ = ["OrderedSeries", "build_training_series", "cached_series", "cached_training_series", "write_series", "read_series",
           "series_block_batch", "refine_on_series", "VAL_SAMPLES", "series_pair_accuracy", "labelled_series"]

#: Samples whose series are held out for validation (real: ``kind/sample``; simulated:
#: the reference name of :func:`tomoqc.train.measured.reference_slices`).
VAL_SAMPLES = ("dose/htc:06b", "angles/htc:07b", "stripes/htc:06c", "blur/htc:tc", "gain/htc:td",
               "wood#0", "phantom#5")
REAL_KINDS = ("dose", "angles", "stripes", "blur", "gain")
#: Sources of series: real measured data degraded directly, re-projected slices and phantoms
#: scanned again, and image-domain recipes drawn into real slices
#: (:func:`tomoqc.train.score_head.image_ring_series`).
SOURCES = ("real", "simulated", "image", "labelled")
REFINE_FIELDS = ["epoch", "steps", "loss", "rank_loss", "anchor_loss", "lr", "val_accuracy",
                 *(f"val_{k}" for k in SOURCES), "seconds"]


@dataclass
class OrderedSeries:
    """Images of one series, best first, each normalised as the scorer normalises it."""

    name: str
    kind: str
    source: str  # "real" or "simulated"
    images: list = field(default_factory=list)


def _normalised(img) -> np.ndarray:
    from tomoqc.preprocess import normalize_slice

    return np.ascontiguousarray(normalize_slice(np.asarray(img, np.float32)), dtype=np.float32)


def build_training_series(realdata, *, phantoms: int = 6, seed: int = 20261130, log=print) -> list[OrderedSeries]:
    """Every training and validation series (see the module text), seeded by ``seed``."""
    from tomoqc.realdata import RealSources, degraded_series
    from tomoqc.train.measured import EXPORTS, TRAIN_SERIES, export_roundtrip, image_series, reference_slices
    from tomoqc.train.measured import series_for

    realdata = Path(realdata)
    if not realdata.is_dir():
        raise InputError(realdata, "real-data folder not found")
    out: list[OrderedSeries] = []
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    for name, img in reference_slices(realdata, phantoms, seed):
        ser = series_for(img, rng)
        if name.startswith("phantom"):
            ser.update(image_series(img, rng))
        for kind, imgs in ser.items():
            out.append(OrderedSeries(name, kind, "simulated", [_normalised(a) for a in imgs]))
    log(f"simulated series: {len(out)} ({time.monotonic() - t0:.0f} s)")
    src = RealSources(realdata)
    for j, (kind, sample) in enumerate(TRAIN_SERIES):
        if kind not in REAL_KINDS:
            continue
        imgs = [np.asarray(a, np.float32) for _, a in degraded_series(src, kind, sample, seed + j)]
        lo, hi = np.percentile(imgs[0], [0.5, 99.5])
        window = (float(lo), float(hi if hi > lo else lo + 1))
        for fmt in ("float",) + EXPORTS:
            stack = imgs if fmt == "float" else [export_roundtrip(a, window, fmt) for a in imgs]
            out.append(OrderedSeries(f"{kind}/{sample}", f"real_{kind}", "real", [_normalised(a) for a in stack]))
    log(f"all series: {len(out)} ({time.monotonic() - t0:.0f} s)")
    return out


def labelled_series(dataset, *, spacing: float = 0.15, per_reference: int = 6, length: int = 8, seed: int = 0,
                    val_references: int = 0, pooled: bool = False) -> list[OrderedSeries]:
    """Series of a labelled dataset's images (``tomoqc dataset build`` + ``tomoqc label``), ordered by label.

    Per reference, ``per_reference`` series, each drawn from all its images (both domains,
    every impairment and level, the references themselves) in random order and kept only
    where its label is at least ``spacing`` below every image kept before it, up to ``length``
    images, best first: label differences smaller than that are within what the observers'
    projection resolves. Named ``labelled:<reference>#<k>``; the last ``val_references``
    references (in sorted order) are named ``labelled-val:...`` for :data:`VAL_SAMPLES`-style
    holding out (pass their names as ``val_samples``).

    With ``pooled`` each series is drawn instead from the images of *every* reference on its
    side of the split (the held-out ones for the held-out series), as a pooled ranking across
    samples orders them (Table 2 of :mod:`tomoqc.study`); there are as many series as without
    it, named ``labelled:pooled#<k>`` and ``labelled-val:pooled#<k>``.
    """
    from tomoqc.dataset import read_manifest

    if spacing <= 0 or per_reference < 1 or length < 2:
        raise OptionError("spacing must be > 0, per_reference >= 1 and length >= 2")
    root = Path(dataset)
    rows = read_manifest(root)
    if not rows or "label" not in rows[0] or any(not isinstance(r.get("label"), float) for r in rows):
        raise InputError(root / "manifest.csv", "no projected label on every image (run tomoqc label first)")
    by_ref: dict[str, list[dict]] = {}
    for r in rows:
        by_ref.setdefault(r["reference"], []).append(r)
    refs = sorted(by_ref)
    held = set(refs[len(refs) - int(val_references):]) if val_references else set()
    rng = np.random.default_rng(seed)
    cache: dict[str, np.ndarray] = {}

    def image(r):
        if r["file"] not in cache:
            cache[r["file"]] = _normalised(np.load(root / r["file"]))
        return cache[r["file"]]

    if pooled:  # one pool per side of the split, as many series from each as its references give
        pools = {"labelled": [r for ref in refs if ref not in held for r in by_ref[ref]],
                 "labelled-val": [r for ref in refs if ref in held for r in by_ref[ref]]}
        counts = {"labelled": len(refs) - len(held), "labelled-val": len(held)}
        groups = [(f"{side}:pooled", pools[side], counts[side] * per_reference)
                  for side in ("labelled", "labelled-val") if pools[side]]
    else:
        groups = [(f"{'labelled-val' if ref in held else 'labelled'}:{ref}", by_ref[ref], per_reference)
                  for ref in refs]
    out = []
    for name, members, count in groups:
        for k in range(count):
            kept: list[dict] = []
            for i in rng.permutation(len(members)):
                r = members[i]
                if all(abs(r["label"] - q["label"]) >= spacing for q in kept):
                    kept.append(r)
                if len(kept) == length:
                    break
            kept.sort(key=lambda r: -r["label"])
            out.append(OrderedSeries(f"{name}#{k}", "label", "labelled", [image(r) for r in kept]))
    return out


def cached_series(cache, build, *, log=print) -> list[OrderedSeries]:
    """The series in ``cache`` (an ``.npz`` of :func:`write_series`) when it is there; else
    ``build()``, written there (atomically)."""
    cache = Path(cache)
    if cache.is_file():
        series = read_series(cache)
        log(f"read {len(series)} series from {cache}")
        return series
    series = build()
    write_series(cache, series)
    return series


def cached_training_series(realdata, cache, *, seed: int = 20261130, log=print) -> list[OrderedSeries]:
    """:func:`build_training_series`, through :func:`cached_series`."""
    return cached_series(cache, lambda: build_training_series(realdata, seed=seed, log=log), log=log)


def write_series(path, series) -> None:
    """Write ``series`` to ``path`` (``.npz``), atomically."""
    path = Path(path)
    arrays, meta = {}, []
    for i, s in enumerate(series):
        meta.append([s.name, s.kind, s.source, len(s.images)])
        arrays.update({f"s{i}_{j}": np.asarray(a, np.float32) for j, a in enumerate(s.images)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, meta=np.array(meta, dtype=object), **arrays)
    os.replace(tmp, path)


def read_series(path) -> list[OrderedSeries]:
    """The series :func:`write_series` wrote to ``path``."""
    try:
        z = np.load(path, allow_pickle=True)
        return [OrderedSeries(str(name), str(kind), str(source), [z[f"s{i}_{j}"] for j in range(int(n))])
                for i, (name, kind, source, n) in enumerate(z["meta"])]
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as err:
        raise InputError(path, f"not a series cache ({err}); delete it to rebuild") from None


def series_block_batch(blocks, size: int, length: int, rng: np.random.Generator, *, augment: bool = True):
    """One batch from ``blocks`` (a list of :class:`OrderedSeries`).

    Each block contributes up to ``length`` of its images, chosen at random and kept in
    order, cropped at one shared position (``size`` px, or the image's smaller side) with one
    shared flip/rotation. Returns ``(x, better, worse)``: the stacked crops ``(n, s, s, 1)``
    and index arrays of every ordered pair within a block (better first). All crops of a
    batch share one side.
    """
    side = min([size] + [min(s.images[0].shape) for s in blocks])
    xs, better, worse = [], [], []
    for s in blocks:
        n = len(s.images)
        pick = np.sort(rng.choice(n, size=min(length, n), replace=False))
        y, x = choose_crop(s.images[pick[0]], side, rng)
        k = int(rng.integers(0, 4)) if augment else 0
        flip = bool(rng.integers(0, 2)) if augment else False
        base = len(xs)
        for i in pick:
            xs.append(_augment(s.images[i][y : y + side, x : x + side], k, flip))
        for a in range(len(pick)):
            for b in range(a + 1, len(pick)):
                better.append(base + a)
                worse.append(base + b)
    x = np.ascontiguousarray(np.stack(xs)[..., None], dtype=np.float32)
    return x, np.asarray(better, np.int32), np.asarray(worse, np.int32)


def series_pair_accuracy(series, scores) -> dict:
    """Share of ordered pairs (within each series) whose scores are in that order (ties count half).

    ``scores`` is a list parallel to ``series`` of per-image score lists. Returns the
    accuracy per source present (``"real"``, ``"simulated"``, ``"image"``) and ``"all"``, the
    mean over the sources present, each weighing alike.
    """
    acc: dict[str, list] = {}
    for s, v in zip(series, scores):
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                acc.setdefault(s.source, []).append(0.5 if v[i] == v[j] else float(v[i] > v[j]))
    out = {k: float(np.mean(v)) for k, v in acc.items()}
    parts = [out[k] for k in SOURCES if k in out]
    out["all"] = float(np.mean(parts)) if parts else float("nan")
    return out


def _val_crops(series, size: int, crops: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for s in series:
        side = min(size, *s.images[0].shape)
        pos = [choose_crop(s.images[0], side, rng) for _ in range(crops)]
        out.append(np.stack([[img[y : y + side, x : x + side] for (y, x) in pos] for img in s.images]))
    return out  # per series: (n_images, crops, s, s)


def _validate(predict, series, crops) -> dict:
    from tomoqc.train.rank import predict_raw

    scores = []
    for c in crops:
        n, k = c.shape[:2]
        raw = predict_raw(predict, c.reshape(n * k, *c.shape[2:])[..., None])
        scores.append(raw.reshape(n, k).mean(1).tolist())
    return series_pair_accuracy(series, scores)


def _val_fields(ev: dict) -> dict:
    """``val_<source>`` of every source (NaN where it has no held-out series)."""
    return {f"val_{k}": ev.get(k, float("nan")) for k in SOURCES}


def _by_source(row: dict) -> str:
    return ", ".join(f"{k} {row[f'val_{k}']:.3f}" for k in SOURCES
                     if np.isfinite(row.get(f"val_{k}", float("nan"))))


def refine_on_series(
    init,
    series,
    out_dir,
    *,
    epochs: int = 30,
    steps_per_epoch: int = 50,
    blocks_per_batch: int = 6,
    length: int = 4,
    crop: int = 160,
    margin: float = 0.3,
    anchor_weight: float = 1.0,
    lr: float = 2e-5,
    val_samples=VAL_SAMPLES,
    val_size: int = 224,
    val_crops: int = 3,
    seed: int = 0,
    resume: bool = False,
    time_limit_s: float | None = None,
    log=print,
    command: str | None = None,
) -> dict:
    """Refine the TIQA model ``init`` (``.keras``) on ordered ``series``; see the module text.

    Every source present (real, simulated and, when given, image-domain series of real
    slices) gets an equal share of every batch's blocks, each drawn at random with every kind
    equally likely. Writes ``out_dir/{best,last}.keras``, ``log.csv``,
    ``curves.png``, ``record.json`` and ``state/`` (for ``resume``). Returns a record with the
    best validation accuracy and the paths.
    """
    import keras
    import tensorflow as tf

    from tomoqc.models.tiqa import file_sha256, load_model
    from tomoqc.train.rank import make_predict, rank_loss

    if epochs < 1 or steps_per_epoch < 1:
        raise OptionError("epochs and steps per epoch must be >= 1")
    if margin < 0 or anchor_weight < 0:
        raise OptionError("margin and anchor weight must be >= 0")
    if length < 2:
        raise OptionError(f"length must be at least 2 (a pair), got {length}")
    init = Path(init)
    out_dir = Path(out_dir)
    val_keys = set(val_samples)
    val = [s for s in series if s.name in val_keys]
    train = [s for s in series if s.name not in val_keys and len(s.images) >= 2]
    by_source: dict[str, dict[str, list]] = {}
    for s in train:
        by_source.setdefault(s.source, {}).setdefault(s.kind, []).append(s)
    if not by_source:
        raise InputError(None, "no training series")
    out_dir.mkdir(parents=True, exist_ok=True)

    common.set_seed(seed)
    parent = load_model(init).model
    start = common.Start(out_dir, resume=resume, seed=seed)
    model, opt_arrays, rng = start.model, start.optimizer_arrays, start.rng
    start_epoch, history, best = start.epoch, start.history, start.best
    if model is None:
        model = load_model(init).model
    train_vars = [v for v in model.trainable_variables if not v.path.startswith("severity")]
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    common.build_optimizer(optimizer, train_vars, opt_arrays, where=out_dir)

    spec = (tf.TensorSpec([None, None, None, 1], tf.float32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32))

    @tf.function(input_signature=spec)
    def step(x, better, worse):
        ref = parent(x, training=False)
        with tf.GradientTape() as tape:
            out = model(x, training=False)
            s = out["score"][:, 0]
            r = rank_loss(s, better, worse, margin)
            a = tf.reduce_mean(tf.square(s - ref["score"][:, 0])) + tf.reduce_mean(
                tf.square(out["severity"] - ref["severity"]))
            loss = r + anchor_weight * a
        optimizer.apply_gradients(zip(tape.gradient(loss, train_vars), train_vars))
        return loss, r, a

    predict = make_predict(model)
    crops = _val_crops(val, val_size, val_crops, seed + 1)
    log_csv = common.CsvLog(out_dir / "log.csv", REFINE_FIELDS, resume_epoch=start_epoch if resume else None)
    if start_epoch == 0 and not history:
        ev = _validate(predict, val, crops)
        row = {"epoch": 0, "steps": 0, "loss": float("nan"), "rank_loss": float("nan"), "anchor_loss": float("nan"),
               "lr": lr, "val_accuracy": ev["all"], **_val_fields(ev), "seconds": 0.0}
        history.append(row)
        log_csv.append(row)
        best = ev["all"]
        common.save_keras_atomic(model, out_dir / "best.keras")
        log(f"epoch 0 (parent): val pair accuracy {ev['all']:.3f} ({_by_source(row)})")

    sources = sorted(by_source)
    half = max(1, blocks_per_batch // len(sources))

    def draw():
        blocks = []
        for src in sources:
            kinds = sorted(by_source[src])
            for _ in range(half):
                pool = by_source[src][kinds[int(rng.integers(len(kinds)))]]
                blocks.append(pool[int(rng.integers(len(pool)))])
        return blocks

    t_run = time.monotonic()
    interrupted = False
    epoch_times: list[float] = []
    with common.StopFlag() as stop:
        for epoch in range(start_epoch + 1, epochs + 1):
            if time_limit_s is not None and epoch_times and \
                    time.monotonic() - t_run + float(np.mean(epoch_times)) > time_limit_s:
                break
            t0 = time.monotonic()
            losses = []
            for _ in range(steps_per_epoch):
                x, b, w = series_block_batch(draw(), crop, length, rng)
                losses.append([float(v) for v in step(tf.constant(x), tf.constant(b), tf.constant(w))])
                if stop:
                    break
            if stop:
                interrupted = True
                common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch - 1, rng=rng,
                                  extra={"history": history, "best": best, "stage": "series_refine"})
                break
            ev = _validate(predict, val, crops)
            dt = time.monotonic() - t0
            epoch_times.append(dt)
            m = np.mean(losses, axis=0)
            row = {"epoch": epoch, "steps": len(losses), "loss": float(m[0]), "rank_loss": float(m[1]),
                   "anchor_loss": float(m[2]), "lr": lr, "val_accuracy": ev["all"], **_val_fields(ev), "seconds": dt}
            history.append(row)
            log_csv.append(row)
            log(f"epoch {epoch}: loss {row['loss']:.4f} (rank {row['rank_loss']:.4f}, anchor {row['anchor_loss']:.4f}) "
                f"val {ev['all']:.3f} ({_by_source(row)}) {dt:.0f} s")
            common.save_keras_atomic(model, out_dir / "last.keras")
            if np.isfinite(ev["all"]) and ev["all"] > best:
                best = ev["all"]
                common.save_keras_atomic(model, out_dir / "best.keras")
            common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch, rng=rng,
                              extra={"history": history, "best": best, "stage": "series_refine"})
    if not (out_dir / "last.keras").exists():
        common.save_keras_atomic(model, out_dir / "last.keras")
    common.plot_curves(out_dir / "log.csv", out_dir / "curves.png",
                       metric_keys=["val_accuracy"] + [f"val_{k}" for k in SOURCES if f"val_{k}" in history[-1]
                                                       and np.isfinite(history[-1][f"val_{k}"])],
                       title=f"refine on ordered series (margin {margin:g}, anchor {anchor_weight:g})")
    record = {
        "stage": "series_refine",
        "init": str(init), "init_sha256": file_sha256(init),
        "best": str(out_dir / "best.keras"), "best_val_accuracy": best,
        "series": {"train": len(train), "val": len(val), "val_samples": list(val_samples),
                   "by_source": {k: {kk: len(vv) for kk, vv in v.items()} for k, v in by_source.items()}},
        "hyperparameters": {"epochs": epochs, "steps_per_epoch": steps_per_epoch,
                            "blocks_per_batch": blocks_per_batch, "length": length, "crop": crop, "margin": margin,
                            "anchor_weight": anchor_weight, "lr": lr, "val_size": val_size,
                            "val_crops": val_crops, "batchnorm": "inference mode (parent statistics)"},
        "seed": seed, "history": history, "interrupted": interrupted,
        "command": command or common.command_line(),
    }
    common.atomic_write_text(out_dir / "record.json",
                             __import__("json").dumps(record, indent=1, default=float) + "\n")
    return record
