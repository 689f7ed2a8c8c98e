"""Refitting the score head of a trained TIQA network on frozen features: phantom labels and
series of known order together.

The score head (``score_dense`` and ``score``, :func:`tomoqc.models.tiqa.build_tiqa`) sits
on the pooled backbone features. After the series refinement
(:mod:`tomoqc.train.series_refine`) the network orders real series well, but on labelled
phantoms it follows the labels of noise, blur and rings far better than those of streaks
(``benchmarks/phantom_table.py``, its per-level table), and a linear readout of the same
frozen features orders held-out phantom labels better than the head does
(``benchmarks/feature_readout.py``): the features hold what the head does not use. A readout
fitted to phantom labels alone, though, loses order on real series. So here the head alone
(the backbone and the severity head stay as they are) is refitted on two kinds of evidence
at once:

* **labelled phantoms**: the slice score, computed exactly as the scorer computes it
  (every valid 224-px grid patch of the slice, one view; each patch's raw output through
  the card's calibration; the mean), is brought to the label (mean squared error);
* **series of known order** (:func:`tomoqc.train.series_refine.build_training_series`:
  real measured data degraded directly and re-projected real slices and phantoms): a hinge
  on every ordered pair of a series, ``relu(margin - (s_better - s_worse))``, the real and
  the simulated half weighing alike;
* **image-domain rings on real slices** (:func:`image_ring_series`, series source
  ``"image"``): the same hinge, as a third group of weight ``image_weight`` against the two
  halves' 1 each. Strong rings drawn straight into a natural slice are where a head
  refitted without them let the score *rise* with the level (a real CT slice, level 4 -> 5:
  3.02 -> 3.69, the network alone); the phantoms' image-domain rings did not teach it;
* an **anchor** on the head's own starting weights (squared distance, each array relative
  to its size), so that the head moves only as far as the evidence asks;
* optionally (``level_weight``) the same hinge on the labelled phantoms' levels: within each
  reference, domain and single distortion, every lower level above every higher one
  (:func:`level_pairs`).

Features are computed once (one backbone pass per patch, in inference mode); the head then
trains full-batch in seconds per hundred steps. Validation: held-out phantom references
(SROCC against the label) and the held-out series of
:data:`tomoqc.train.series_refine.VAL_SAMPLES` (pair accuracy); the step kept is the one with
the best mean of the two (ties: the earlier); image-domain ring series of held-out slices
are reported (``val_series_image``) but do not choose the step. Nothing from ``benchmarks/real_orderings.py``
or from the phantom table's evaluation set is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = ["HEAD_LAYERS", "PatchFeatures", "labelled_features", "series_features", "image_ring_series",
           "refit_score_head", "head_scores", "level_pairs", "head_weights", "set_head_weights"]

#: The layers this stage trains, in order: a ReLU dense layer and the linear score output.
HEAD_LAYERS = ("score_dense", "score")


def head_weights(keras_model) -> list[np.ndarray]:
    """The score head's arrays ``[W1, b1, W2, b2]`` (:data:`HEAD_LAYERS`, in order)."""
    return [np.asarray(w, np.float32) for n in HEAD_LAYERS for w in keras_model.get_layer(n).get_weights()]


def set_head_weights(keras_model, weights) -> None:
    """Put ``weights`` (as :func:`head_weights` returns them) into the score head of ``keras_model``."""
    k = 0
    for name in HEAD_LAYERS:
        layer = keras_model.get_layer(name)
        n = len(layer.get_weights())
        layer.set_weights(weights[k : k + n])
        k += n


@dataclass
class PatchFeatures:
    """Per-image pooled features of the valid grid patches, as the scorer computes them."""

    patches: list = field(default_factory=list)  # per image: (n_patches, dim)
    labels: np.ndarray | None = None  # per image, for labelled sets
    groups: list = field(default_factory=list)  # per image: reference (labelled) or series index
    kinds: list = field(default_factory=list)  # per image: distortion (labelled) or series kind
    domains: list = field(default_factory=list)  # per image: "image" or "physics" (labelled)
    levels: list = field(default_factory=list)  # per image: distortion level, 0 for the clean reference


def _features(model, images, *, normalize: bool) -> list[np.ndarray]:
    res = model.score_slices(images, measured_terms=False, tta=1, ood=False, measure=False, features=True,
                             normalize=normalize)
    return [np.asarray(f, np.float32) for f in res["features"]]


def labelled_features(model, data_dir, *, log=print) -> PatchFeatures:
    """Patch features of every labelled image of a dataset (``tomoqc dataset build`` + ``tomoqc label``)."""
    from tomoqc.dataset import read_manifest

    data_dir = Path(data_dir)
    rows = [r for r in read_manifest(data_dir) if r.get("label") not in (None, "")]
    if not rows:
        raise InputError(data_dir / "manifest.csv", "no labelled images (run tomoqc label first)")
    by: dict = {}
    for r in rows:
        by.setdefault((r["reference"], r.get("domain") or "image"), []).append(r)
    out = PatchFeatures()
    labels = []
    t0 = time.monotonic()
    for rr in by.values():
        imgs = [np.load(data_dir / r["file"]).astype(np.float32) for r in rr]
        shapes = {a.shape for a in imgs}
        feats = _features(model, np.stack(imgs), normalize=True) if len(shapes) == 1 else \
            [_features(model, a[None], normalize=True)[0] for a in imgs]
        out.patches += feats
        labels += [float(r["label"]) for r in rr]
        out.groups += [r["reference"] for r in rr]
        out.kinds += [r["distortion"] for r in rr]
        out.domains += [r.get("domain") or "image" for r in rr]
        out.levels += [int(r.get("level") or 0) for r in rr]
    out.labels = np.asarray(labels, np.float64)
    log(f"features of {len(labels)} labelled images of {data_dir} ({time.monotonic() - t0:.0f} s)")
    return out


def series_features(model, series, *, log=print) -> list[tuple]:
    """``[(series, [features of each image, best first])]`` for :class:`OrderedSeries` (already normalised)."""
    out = []
    t0 = time.monotonic()
    for s in series:
        feats = [_features(model, np.asarray(img, np.float32)[None], normalize=False)[0] for img in s.images]
        out.append((s, feats))
    log(f"features of {sum(len(s.images) for s in series)} series images ({time.monotonic() - t0:.0f} s)")
    return out


def _calibration_params(card: dict | None):
    c = (card or {}).get("score_calibration")
    if isinstance(c, dict) and c.get("kind") in (4, 5) and isinstance(c.get("params"), list):
        return int(c["kind"]), [float(v) for v in c["params"]]
    return None, None


def _tf_calibration(kind, params):
    import tensorflow as tf

    if kind == 5:
        b1, b2, b3, b4, b5 = params
        return lambda x: b1 * (0.5 - tf.sigmoid(-b2 * (x - b3))) + b4 * x + b5
    if kind == 4:
        b1, b2, b3, b4 = params
        return lambda x: (b1 - b2) * tf.sigmoid((x - b3) / max(abs(b4), 1e-12)) + b2
    return lambda x: x


def head_scores(weights, patches, card: dict | None) -> np.ndarray:
    """Slice scores from per-image patch features with head ``weights`` (``[W1, b1, W2, b2]``),
    as the scorer gives them: each patch's raw output calibrated by the card's map and clipped to
    1-5, the mean over the patches (NaN for an image without patches)."""
    from tomoqc.models.tiqa import SCORE_RANGE, _calibration_from_card

    w1, b1, w2, b2 = weights
    cal = _calibration_from_card(card or {})
    out = np.full(len(patches), np.nan)
    for i, p in enumerate(patches):
        if len(p):
            raw = (np.maximum(p @ w1 + b1, 0.0) @ w2 + b2)[:, 0]
            s = cal(raw) if cal is not None else raw
            out[i] = float(np.clip(s, *SCORE_RANGE).mean())
    return out


def _pair_accuracy(weights, series_feats, card) -> dict:
    from tomoqc.train.series_refine import series_pair_accuracy

    kept = [(s, f) for s, f in series_feats if all(len(p) for p in f)]
    return series_pair_accuracy([s for s, _ in kept], [head_scores(weights, f, card).tolist() for _, f in kept])


def level_pairs(labelled: PatchFeatures, keep) -> list[tuple[int, int]]:
    """``(better, worse)`` index pairs among the images ``keep``: within each reference, domain
    and single distortion, every lower level against every higher one (the clean reference is
    level 0 of each of its distortions); mixtures are left out."""
    blocks: dict = {}
    clean: dict = {}
    for i in keep:
        key = (labelled.groups[i], labelled.domains[i])
        if labelled.kinds[i] == "none":
            clean.setdefault(key, []).append(i)
        elif labelled.kinds[i] != "mixed":
            blocks.setdefault(key + (labelled.kinds[i],), []).append(i)
    out = []
    for key, idx in blocks.items():
        idx = clean.get(key[:2], []) + idx
        for a in idx:
            for b in idx:
                if labelled.levels[a] < labelled.levels[b]:
                    out.append((a, b))
    return out


def _flat(patches):
    keep = [k for k, p in enumerate(patches) if len(p)]
    x = np.concatenate([patches[k] for k in keep]).astype(np.float32)
    seg = np.concatenate([np.full(len(patches[k]), j, np.int32) for j, k in enumerate(keep)])
    return x, seg, np.asarray(keep, np.int64)


def refit_score_head(
    model,
    labelled: PatchFeatures,
    series_feats,
    *,
    steps: int = 600,
    lr: float = 1e-3,
    margin: float = 0.1,
    series_weight: float = 1.0,
    anchor_weight: float = 0.01,
    level_weight: float = 0.0,
    image_weight: float = 1.0,
    val_references: int = 3,
    val_samples=None,
    eval_every: int = 25,
    calibration: dict | None = None,
    seed: int = 0,
    log=print,
) -> dict:
    """Refit the score head of ``model`` (a :class:`~tomoqc.models.tiqa.TiqaModel`); see the module text.

    ``calibration`` is the score map the scores go through (a card's ``score_calibration``
    entry); by default the model card's.

    Returns ``{"weights": [W1, b1, W2, b2] kept, "initial": the starting ones, "best": the kept
    validation row, "history": rows, "hyperparameters", "split"}``. The model is not changed.
    """
    import tensorflow as tf

    from tomoqc.metrics.stats import srocc
    from tomoqc.train.series_refine import VAL_SAMPLES

    for name, v in (("steps", steps), ("eval_every", eval_every)):
        if v < 1:
            raise OptionError(f"{name} must be at least 1, got {v}")
    if not (lr > 0 and margin >= 0 and series_weight >= 0 and anchor_weight >= 0 and image_weight >= 0):
        raise OptionError("lr must be > 0; margin, series_weight, anchor_weight and image_weight >= 0")
    keras_model = model.model
    init = head_weights(keras_model)
    card = model.card if calibration is None else {"score_calibration": calibration}
    cal = _tf_calibration(*_calibration_params(card))
    val_samples = VAL_SAMPLES if val_samples is None else tuple(val_samples)

    refs = sorted(set(labelled.groups))
    if len(refs) <= val_references:
        raise InputError(None, f"need more than {val_references} labelled references, got {len(refs)}")
    rng = np.random.default_rng(seed)
    val_refs = set(rng.choice(refs, val_references, replace=False).tolist()) if val_references else set()
    tr_i = [i for i, g in enumerate(labelled.groups) if g not in val_refs]
    va_i = [i for i, g in enumerate(labelled.groups) if g in val_refs]
    train_series = [(s, f) for s, f in series_feats if s.name not in val_samples and all(len(p) for p in f)
                    and len(f) >= 2]
    val_series = [(s, f) for s, f in series_feats if s.name in val_samples]

    xp, segp, keep = _flat([labelled.patches[i] for i in tr_i])
    yp = np.asarray(labelled.labels, np.float32)[tr_i][keep]
    images, better, worse, source = [], [], [], []
    for s, f in train_series:
        base = len(images)
        images += f
        for a in range(len(f)):
            for b in range(a + 1, len(f)):
                better.append(base + a)
                worse.append(base + b)
                source.append(s.source)
    if not better:
        raise InputError(None, "no training series with two or more scored images")
    xs, segs, _ = _flat(images)
    pos = {tr_i[int(k)]: j for j, k in enumerate(keep)}
    lv = level_pairs(labelled, list(pos)) if level_weight > 0 and labelled.levels else []
    t_lb = tf.constant(np.asarray([pos[a] for a, _ in lv], np.int32))
    t_lw = tf.constant(np.asarray([pos[b] for _, b in lv], np.int32))
    pw = _pair_weights(source, image_weight)

    tf.random.set_seed(seed)
    V = [tf.Variable(w) for w in init]
    V0 = [tf.constant(w) for w in init]
    size = [max(float(np.sum(w.astype(np.float64) ** 2)), 1e-12) for w in init]
    opt = tf.keras.optimizers.Adam(lr)
    t_xp, t_segp, t_yp = tf.constant(xp), tf.constant(segp), tf.constant(yp)
    t_xs, t_segs = tf.constant(xs), tf.constant(segs)
    t_b, t_w, t_pw = tf.constant(np.asarray(better, np.int32)), tf.constant(np.asarray(worse, np.int32)), \
        tf.constant(pw)

    def slice_scores(x, seg):
        raw = (tf.nn.relu(x @ V[0] + V[1]) @ V[2] + V[3])[:, 0]
        return tf.math.segment_mean(cal(raw), seg)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            sp = slice_scores(t_xp, t_segp)
            label_loss = tf.reduce_mean((sp - t_yp) ** 2)
            if lv:  # every lower level of a reference's distortion above every higher one
                label_loss += level_weight * tf.reduce_mean(
                    tf.nn.relu(margin - (tf.gather(sp, t_lb) - tf.gather(sp, t_lw))))
            s = slice_scores(t_xs, t_segs)
            rank_loss = tf.reduce_sum(t_pw * tf.nn.relu(margin - (tf.gather(s, t_b) - tf.gather(s, t_w))))
            anchor = tf.add_n([tf.reduce_sum((v - v0) ** 2) / n for v, v0, n in zip(V, V0, size)])
            loss = label_loss + series_weight * rank_loss + anchor_weight * anchor
        opt.apply_gradients(zip(tape.gradient(loss, V), V))
        return loss, label_loss, rank_loss, anchor

    def validate(weights) -> dict:
        row = {}
        if va_i:
            pred = head_scores(weights, [labelled.patches[i] for i in va_i], card)
            ok = np.isfinite(pred)
            row["val_label_srocc"] = float(srocc(pred[ok], labelled.labels[va_i][ok]))
        acc = _pair_accuracy(weights, val_series, card) if val_series else {}
        row.update({f"val_series_{k}": v for k, v in acc.items()})
        parts = [row[k] for k in ("val_label_srocc", "val_series_all") if k in row and np.isfinite(row[k])]
        row["val"] = float(np.mean(parts)) if parts else float("nan")
        return row

    t0 = time.monotonic()
    history = [{"step": 0, "loss": float("nan"), "label_loss": float("nan"), "rank_loss": float("nan"),
                "anchor": 0.0, **validate(init), "seconds": 0.0}]
    best_row, best_w = history[0], init
    log(f"score head refit: {len(yp)} labelled images ({len(val_refs)} references held out), "
        f"{len(train_series)} training series ({len(better)} pairs), {len(val_series)} held out; "
        f"start: {_fmt_row(history[0])}")
    for it in range(1, steps + 1):
        loss, ll, rl, an = step()
        if it % eval_every == 0 or it == steps:
            w = [v.numpy() for v in V]
            row = {"step": it, "loss": float(loss), "label_loss": float(ll), "rank_loss": float(rl),
                   "anchor": float(an), **validate(w), "seconds": round(time.monotonic() - t0, 1)}
            history.append(row)
            if row["val"] > best_row["val"]:
                best_row, best_w = row, w
            log(f"step {it}: {_fmt_row(row)}")
    return {
        "weights": best_w,
        "initial": init,
        "best": best_row,
        "history": history,
        "hyperparameters": {"steps": steps, "lr": lr, "margin": margin, "series_weight": series_weight,
                            "anchor_weight": anchor_weight, "level_weight": level_weight, "level_pairs": len(lv),
                            "image_weight": image_weight,
                            "eval_every": eval_every, "seed": seed,
                            "optimizer": "Adam, full batch", "features": "grid patches, one view, inference mode"},
        "split": {"val_references": sorted(val_refs), "val_samples": list(val_samples),
                  "train_images": len(yp), "train_series": len(train_series), "train_pairs": len(better),
                  "val_series": len(val_series)},
    }


def _pair_weights(source, image_weight: float) -> np.ndarray:
    """Weight of each training pair by its series' source: the ``"real"`` and the other
    (simulated) pairs weigh 1 in total each, the ``"image"`` pairs ``image_weight``; the
    weights sum to 1."""
    source = np.asarray(source, dtype=object)
    group = np.where(source == "image", "image", np.where(source == "real", "real", "simulated"))
    pw = np.zeros(len(source))
    for g, gw in (("real", 1.0), ("simulated", 1.0), ("image", float(image_weight))):
        sel = group == g
        if sel.any():
            pw[sel] = gw / sel.sum()
    return (pw / pw.sum()).astype(np.float32)


def image_ring_series(realdata, *, seed: int = 20261130, log=print) -> list:
    """Image-domain ring series (levels 0-5, :func:`tomoqc.distort.image.apply`) of the real
    reference slices of :data:`tomoqc.train.measured.TRAIN_SAMPLES`, as
    :class:`~tomoqc.train.series_refine.OrderedSeries` of source ``"image"`` (seeded)."""
    from tomoqc.train.measured import image_series, reference_slices
    from tomoqc.train.series_refine import OrderedSeries, _normalised

    rng = np.random.default_rng(seed + 99)
    out = []
    for name, img in reference_slices(Path(realdata), 0, seed):
        for kind, imgs in image_series(img, rng, kinds=("ring",)).items():
            out.append(OrderedSeries(name, kind, "image", [_normalised(a) for a in imgs]))
    log(f"{len(out)} image-domain ring series of real slices")
    return out


def _fmt_row(row: dict) -> str:
    keys = ("loss", "label_loss", "rank_loss", "val_label_srocc", "val_series_real", "val_series_simulated", "val")
    return ", ".join(f"{k} {row[k]:.4f}" for k in keys if k in row and isinstance(row[k], float))
