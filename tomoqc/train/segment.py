"""Training of the D-LinkNet segmentation network (``tomoqc train segment``).

The network (:func:`tomoqc.models.dlinknet.build_dlinknet`) learns from random crops of
labelled slices (:mod:`tomoqc.train.segdata`: a phantom dataset folder, phantoms drawn on
the fly, the HTC2022 discs), flipped and turned at random. Two heads:

* ``classes=2``: binary, one sigmoid channel (material against void); loss binary
  cross-entropy plus soft Dice of the material class;
* ``classes=3``: the electrode phases (0 pore, 1 carbon-binder, 2 active material),
  softmax; loss categorical cross-entropy plus the soft Dice averaged over the classes.

Soft Dice of a class with predicted probabilities ``p`` and one-hot truth ``g`` over the
batch's valid pixels: ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` with smoothing
``s = 1`` (Milletari et al. 2016). Adam at ``lr`` (1e-4), multiplied by ``lr_decay`` every
``decay_epochs`` epochs. After every epoch the model is evaluated in inference mode on
held-out slices, whole: per-class F1 (Dice) and IoU (:mod:`tomoqc.metrics.seg`) over all
their valid pixels, per source and together; ``best.keras`` follows the mean IoU.

Outputs in ``out_dir``: ``best.keras`` and its card ``best.json`` (the same JSON as
``model_card.json``), ``state/`` (resume), ``log.csv``, ``curves.png``.

Interruption and resume: SIGTERM or SIGUSR1 stop the run after the current step; the
state then saved holds the step within the epoch, the NumPy generator that draws the
batches and the dropout layers' random states, so ``resume=True`` continues exactly where
the run stopped: an interrupted and resumed run ends with the same weights as one that
ran through (on the same machine and TensorFlow build).

The model card (JSON) holds ``kind`` ("dlinknet"), ``n_classes`` (the network's output
channels: 1 binary, 3 phases), ``classes`` (2 or 3), ``class_names``, ``width``,
``dropout``, ``normalisation``, ``tile`` (the training crop), ``multiple`` (32),
``seed``, ``command``, ``data``, ``metrics`` (validation F1 and IoU per class of the best
epoch, overall and per source), ``hyperparameters``, ``weights``, ``weights_sha256``,
``model_id``, ``interrupted`` and ``versions``.

References
----------
F. Milletari, N. Navab and S.-A. Ahmadi, "V-Net: Fully convolutional neural networks for
volumetric medical image segmentation", 3DV 2016, doi:10.1109/3DV.2016.79 (soft Dice).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.train import common
from tomoqc.train.segdata import (
    CLASS_NAMES,
    CLEAN_SHARE,
    HTC2022_GT_DISCS,
    check_clean_share,
    dataset_items,
    draw_batch,
    htc2022_items,
    phantom_items,
)

__all__ = [
    "train_segment",
    "segmentation_loss",
    "evaluate_items",
    "NORMALISATION",
    "SEGMENT_FIELDS",
]

NORMALISATION = "tomoqc.preprocess.normalize_slice (0.5-99.5 percentiles to [0, 1])"
DEFAULT_VAL_DISC = HTC2022_GT_DISCS[-1]

_OPTION_KEYS = ("classes", "width", "dropout", "crop", "batch_size", "steps_per_epoch", "seed", "data", "phantoms",
                "realdata", "phantom_size", "physics_fraction", "max_level", "htc_bin", "val_disc", "lr",
                "lr_decay", "decay_epochs", "dice_weight", "full_res", "class_weights", "clean_share",
                "init_weights_sha256")


def _fields(classes: int) -> list[str]:
    names = [n.replace(" ", "_") for n in CLASS_NAMES[classes]]
    return (["epoch", "steps", "loss", "ce", "dice", "lr", "val_mean_f1", "val_mean_iou"]
            + [f"val_f1_{n}" for n in names] + [f"val_iou_{n}" for n in names] + ["seconds"])


#: Columns of ``log.csv`` for the three-phase head (the binary head has ``void`` and
#: ``material`` in place of the phase names).
SEGMENT_FIELDS = _fields(3)


# --------------------------------------------------------------------------- loss


def segmentation_loss(prob, labels, weights, *, classes: int, smooth: float = 1.0, dice_weight: float = 1.0):
    """Cross-entropy plus soft Dice over the valid pixels of a batch.

    Parameters
    ----------
    prob : tensor (B, H, W, K)
        The network's probabilities: K = 1 sigmoid (``classes=2``) or K = ``classes``
        softmax.
    labels : tensor (B, H, W), integer
        Class labels.
    weights : tensor (B, H, W)
        1 for pixels that count, 0 for the others.
    classes : {2, 3}
    smooth : float
        Dice smoothing ``s``.
    dice_weight : float
        Weight of the Dice term.

    Returns
    -------
    loss, ce, dice : scalar tensors
        ``loss = ce + dice_weight * dice``. ``ce`` is the mean cross-entropy over the
        valid pixels; ``dice`` is ``1 - (2 sum(w p g) + s) / (sum(w p) + sum(w g) + s)``
        for the material class (binary) or its mean over the classes.
    """
    import tensorflow as tf

    eps = 1e-7
    w = tf.cast(weights, tf.float32)
    n = tf.maximum(tf.reduce_sum(w), 1.0)
    p = tf.clip_by_value(tf.cast(prob, tf.float32), eps, 1.0 - eps)
    if classes == 2:
        g = tf.cast(labels, tf.float32)
        p1 = p[..., 0]
        ce = -tf.reduce_sum(w * (g * tf.math.log(p1) + (1.0 - g) * tf.math.log(1.0 - p1))) / n
        inter = tf.reduce_sum(w * p1 * g)
        den = tf.reduce_sum(w * p1) + tf.reduce_sum(w * g)
        dice = 1.0 - (2.0 * inter + smooth) / (den + smooth)
    else:
        g = tf.one_hot(tf.cast(labels, tf.int32), classes, dtype=tf.float32)
        wk = w[..., None]
        ce = -tf.reduce_sum(wk * g * tf.math.log(p)) / n
        inter = tf.reduce_sum(wk * p * g, axis=(0, 1, 2))
        den = tf.reduce_sum(wk * p, axis=(0, 1, 2)) + tf.reduce_sum(wk * g, axis=(0, 1, 2))
        dice = tf.reduce_mean(1.0 - (2.0 * inter + smooth) / (den + smooth))
    return ce + dice_weight * dice, ce, dice


# --------------------------------------------------------------------------- evaluation


def _predictor(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(x):
        return model(x, training=False)

    return f


def _to_labels(prob: np.ndarray, classes: int) -> np.ndarray:
    if classes == 2:
        return (prob[..., 0] >= 0.5).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


def evaluate_items(model_or_fn, items, *, classes: int) -> dict:
    """Inference-mode F1 and IoU per class of a model on whole labelled slices.

    Each slice is reflect-padded to a multiple of 32, predicted and cropped back
    (:func:`tomoqc.models.dlinknet.pad_to_multiple`); the binary head's probability is
    thresholded at 0.5, the phase head's arg-max taken. Scores pool all valid pixels of
    the items of a source (:func:`tomoqc.metrics.seg.segmentation_scores`).

    Returns
    -------
    dict
        ``{"all": scores, "by_source": {source: scores}}``, scores as
        :func:`tomoqc.metrics.seg.segmentation_scores` plus ``n_images``.
    """
    from tomoqc.metrics.seg import segmentation_scores
    from tomoqc.models.dlinknet import MULTIPLE, crop_back, pad_to_multiple

    fn = _predictor(model_or_fn) if hasattr(model_or_fn, "layers") else model_or_fn
    preds: dict[str, list] = {}
    truths: dict[str, list] = {}
    for it in items:
        img = it.load()
        padded, pads = pad_to_multiple(img[None, :, :, None], MULTIPLE)
        prob = crop_back(np.asarray(fn(padded)), pads)[0]
        lab = _to_labels(prob, classes)
        keep = np.ones(lab.shape, bool) if it.valid is None else it.valid
        preds.setdefault(it.source, []).append(lab[keep])
        truths.setdefault(it.source, []).append(it.labels[keep])
    out: dict = {"by_source": {}}
    for src in preds:
        sc = segmentation_scores(np.concatenate(preds[src]), np.concatenate(truths[src]), classes)
        sc.pop("confusion", None)
        out["by_source"][src] = {**sc, "n_images": len(preds[src])}
    if preds:
        sc = segmentation_scores(np.concatenate([a for v in preds.values() for a in v]),
                                 np.concatenate([a for v in truths.values() for a in v]), classes)
        sc.pop("confusion", None)
        out["all"] = {**sc, "n_images": sum(len(v) for v in preds.values())}
    return out


def _row_metrics(ev: dict, classes: int) -> dict:
    a = ev.get("all", {})
    row = {"val_mean_f1": a.get("mean_f1", float("nan")), "val_mean_iou": a.get("mean_iou", float("nan"))}
    for i, n in enumerate(CLASS_NAMES[classes]):
        key = n.replace(" ", "_")
        row[f"val_f1_{key}"] = a["f1"][i] if "f1" in a else float("nan")
        row[f"val_iou_{key}"] = a["iou"][i] if "iou" in a else float("nan")
    return row


# --------------------------------------------------------------------------- random states


def _dropout_states(model) -> dict:
    """Random-generator states of the layers that have one (dropout), by layer name.

    Keras does not save them with a model; a resumed run needs them to draw the same
    dropout masks.
    """
    out = {}
    for layer in model.layers:
        gen = getattr(layer, "seed_generator", None)
        if gen is not None and getattr(gen, "state", None) is not None:
            out[layer.name] = np.asarray(gen.state.numpy()).tolist()
    return out


def _restore_dropout_states(model, states: dict) -> None:
    for layer in model.layers:
        gen = getattr(layer, "seed_generator", None)
        if gen is not None and layer.name in states:
            gen.state.assign(np.asarray(states[layer.name], dtype=gen.state.dtype))


# --------------------------------------------------------------------------- sources


def _load_sources(*, data, phantoms, realdata, classes, phantom_size, physics_fraction, max_level, htc_bin,
                  val_disc, seed, note, clean_share=CLEAN_SHARE):
    train: dict[str, list] = {}
    val: list = []
    info: dict = {}
    if data is not None:
        from tomoqc.train.data import manifest_sha256

        tr, va = dataset_items(data, classes=classes, max_level=max_level, seed=seed)
        if not tr or not va:
            raise InputError(data, f"too few labelled images at level <= {max_level} "
                             f"({len(tr)} for training, {len(va)} for validation)")
        train["dataset"] = tr
        val += va
        info["dataset"] = {"dir": str(data), "manifest_sha256": manifest_sha256(data), "train_images": len(tr),
                           "val_images": len(va), "max_level": max_level}
    if phantoms:
        t0 = time.monotonic()
        train["phantoms"] = phantom_items(phantoms, size=phantom_size, classes=classes, seed=seed,
                                          physics_fraction=physics_fraction, max_level=max_level)
        n_val = max(4, phantoms // 8)
        # validation phantoms are impaired once, as often as training draws are
        va = phantom_items(n_val, size=phantom_size, classes=classes, seed=seed + 7919,
                           physics_fraction=physics_fraction, max_level=max_level, fixed=True,
                           clean_share=clean_share)
        val += va
        info["phantoms"] = {"n": phantoms, "size": phantom_size, "physics_fraction": physics_fraction,
                            "max_level": max_level, "train_images": len(train["phantoms"]), "val_images": len(va),
                            "val_seed": seed + 7919}
        note(f"phantoms: {len(train['phantoms'])} training and {len(va)} validation images "
             f"({time.monotonic() - t0:.0f} s)")
    if realdata is not None:
        t0 = time.monotonic()
        discs = htc2022_items(realdata, bin=htc_bin, seed=seed)
        if val_disc not in discs:
            raise OptionError(f"validation disc {val_disc!r} is not among the HTC2022 discs with ground truth "
                              f"({', '.join(discs)})")
        if len(discs) < 2:
            raise InputError(realdata, "need at least two HTC2022 discs with ground truth (one held out)")
        train["htc2022"] = [it for d, items in discs.items() if d != val_disc for it in items]
        val += discs[val_disc]
        info["htc2022"] = {"dir": str(realdata), "train_discs": [d for d in discs if d != val_disc],
                           "val_disc": val_disc, "variants": [it.name.split(" ", 1)[1] for it in discs[val_disc]],
                           "bin": htc_bin, "train_images": len(train["htc2022"]), "val_images": len(discs[val_disc])}
        note(f"HTC2022: {len(train['htc2022'])} training images, disc {val_disc} held out "
             f"({time.monotonic() - t0:.0f} s)")
    return train, val, info


# --------------------------------------------------------------------------- training


def train_segment(
    out_dir,
    *,
    data=None,
    phantoms: int = 0,
    realdata=None,
    classes: int = 3,
    width: float = 0.25,
    dropout: float = 0.1,
    epochs: int = 20,
    batch_size: int = 8,
    crop: int = 256,
    steps_per_epoch: int = 100,
    lr: float = 1e-4,
    lr_decay: float = 0.5,
    decay_epochs: int = 10,
    dice_weight: float = 1.0,
    class_weights=None,
    full_res: bool = False,
    seed: int = 0,
    resume: bool = False,
    phantom_size: int = 256,
    physics_fraction: float = 0.25,
    max_level: int = 3,
    htc_bin: int = 1,
    val_disc: str = DEFAULT_VAL_DISC,
    time_limit_s: float | None = None,
    progress: bool = True,
    command: str | None = None,
    clean_share: float = CLEAN_SHARE,
    init_weights=None,
) -> dict:
    """Train a D-LinkNet to segment slices; write weights, logs, curves and a model card.

    Parameters
    ----------
    out_dir : path
        Output folder (created).
    data : path, optional
        A phantom dataset folder (``tomoqc dataset build --source phantom``).
    phantoms : int
        Number of random phantoms to draw (0: none); a further ``max(4, phantoms // 8)``
        are drawn for validation.
    realdata : path, optional
        The real-data folder holding ``htc2022/`` (binary head only); disc ``val_disc`` is
        held out for validation.
    classes : {2, 3}
        2: binary head (material vs void); 3: electrode phases.
    width, dropout, full_res : float, float, bool
        Of :func:`tomoqc.models.dlinknet.build_dlinknet` (``full_res``: the
        full-resolution skip that thin phases need).
    epochs, batch_size, crop, steps_per_epoch : int
        Epochs, crops per step, crop side (a multiple of 32), steps per epoch.
    lr, lr_decay, decay_epochs, dice_weight : float, float, int, float
        Adam learning rate, multiplied by ``lr_decay`` every ``decay_epochs`` epochs; the
        weight of the Dice term.
    class_weights : sequence of float, optional
        One weight per class (``classes`` values): every pixel's weight in the loss is
        multiplied by its class's, which raises the cost of missing a rare or thin phase
        (the carbon-binder domain). None: all 1.
    seed : int
        Seeds the weights, the phantoms, the split and every random draw.
    resume : bool
        Continue from ``out_dir/state`` (the other options must be the same).
    phantom_size, physics_fraction, max_level : int, float, int
        Phantom side; share with a scan-simulated impairment; the strongest impairment
        level used (dataset images above it are left out; levels 4-5 wipe out structure
        that no segmentation could recover, e.g. blur of sigma 15 and 33 px).
    htc_bin : int
        HTC2022 reconstructions on ``512 / htc_bin`` pixels.
    val_disc : str
        The HTC2022 disc held out.
    time_limit_s : float, optional
        Do not start an epoch that would end after this many seconds (the state is kept;
        ``resume`` continues).
    progress : bool
        Progress bars.
    command : str, optional
        The command line recorded in the card.
    clean_share : float
        Share of the phantom draws left unimpaired (the others get one or two image-domain
        impairments up to ``max_level``); the validation phantoms are impaired as often.
    init_weights : path, optional
        A D-LinkNet weights file (with its card) to start from instead of random weights:
        fine-tuning. Its width, dropout, full-resolution skip and classes are used (the
        ``width``, ``dropout`` and ``full_res`` given here are ignored); its SHA-256 is
        recorded in the card and checked on ``resume``.

    Returns
    -------
    dict
        ``best`` (path), ``history`` (rows of ``log.csv``), ``best_val_mean_iou``,
        ``interrupted``, ``card``.
    """
    import keras
    import tensorflow as tf

    from tomoqc.models.dlinknet import MULTIPLE, build_dlinknet
    from tomoqc.models.tiqa import file_sha256
    from tomoqc.train.rank import _Progress

    if classes not in (2, 3):
        raise OptionError(f"classes must be 2 (binary) or 3 (phases), got {classes}")
    if epochs < 1 or batch_size < 1 or steps_per_epoch < 1:
        raise OptionError(f"epochs, batch size and steps per epoch must be >= 1, got {epochs}, {batch_size}, "
                          f"{steps_per_epoch}")
    if crop < MULTIPLE or crop % MULTIPLE:
        raise OptionError(f"crop must be a positive multiple of {MULTIPLE}, got {crop}")
    if phantoms < 0:
        raise OptionError(f"phantoms must be >= 0, got {phantoms}")
    if data is None and not phantoms and realdata is None:
        raise OptionError("no training data: give a dataset folder (--data), phantoms (--phantoms N) "
                          "or the real-data folder (--realdata)")
    if realdata is not None and classes != 2:
        raise OptionError("the HTC2022 ground truth is binary (disc vs holes): use --classes 2 with --realdata")
    if not 0 <= max_level <= 5:
        raise OptionError(f"max level must be in 0..5, got {max_level}")
    if class_weights is not None:
        class_weights = [float(c) for c in class_weights]
        if len(class_weights) != classes or not all(math.isfinite(c) and c > 0 for c in class_weights):
            raise OptionError(f"class weights must be {classes} positive numbers, got {class_weights}")
    check_clean_share(clean_share)  # before the phantoms are drawn
    init = None
    if init_weights is not None:
        from tomoqc.models.segmenter import load_segment_model

        init = load_segment_model(init_weights)
        init_classes = 2 if init.n_classes == 1 else init.n_classes
        if init_classes != classes:
            raise InputError(init_weights, f"the network segments {init_classes} classes, this training {classes}")
        width = float(init.card.get("width", width))
        dropout = float(init.card.get("dropout", dropout))
        full_res = bool(init.card.get("full_res", full_res))
    out_dir = Path(out_dir)
    options = {"classes": classes, "width": float(width), "dropout": float(dropout), "crop": crop,
               "batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "seed": seed,
               "data": None if data is None else str(data), "phantoms": int(phantoms),
               "realdata": None if realdata is None else str(realdata), "phantom_size": phantom_size,
               "physics_fraction": float(physics_fraction), "max_level": max_level, "htc_bin": htc_bin,
               "val_disc": val_disc if realdata is not None else None, "lr": float(lr),
               "lr_decay": float(lr_decay), "decay_epochs": decay_epochs, "dice_weight": float(dice_weight),
               "full_res": bool(full_res), "class_weights": class_weights, "clean_share": float(clean_share),
               "init_weights_sha256": None if init is None else init.sha256}

    meta = None
    if resume:
        if not common.has_state(out_dir):
            raise InputError(out_dir, "no saved training state to resume from (run without --resume)")
        model, opt_arrays, meta = common.load_state(out_dir)
        saved = meta.get("options", {})
        # states saved before an option existed ran with its default
        saved = {"clean_share": CLEAN_SHARE, "init_weights_sha256": None} | saved
        diff = [k for k in _OPTION_KEYS if saved.get(k) != options.get(k)]
        if diff:
            raise InputError(out_dir, "the saved state comes from a run with other options ("
                             + ", ".join(f"{k}: {saved.get(k)!r} then, {options.get(k)!r} now" for k in diff)
                             + "); repeat them or use a new --out")

    prog = _Progress(progress)
    with prog:  # bad data fail here, before anything is written
        train, val, data_info = _load_sources(
            data=data, phantoms=phantoms, realdata=realdata, classes=classes, phantom_size=phantom_size,
            physics_fraction=physics_fraction, max_level=max_level, htc_bin=htc_bin, val_disc=val_disc,
            seed=seed, note=prog.note, clean_share=clean_share)
    out_dir.mkdir(parents=True, exist_ok=True)

    common.set_seed(seed)
    if meta is not None:
        start_epoch = int(meta["epoch"])
        start_step = int(meta.get("step", 0))
        history = list(meta.get("history", []))
        best = float(meta.get("best", -math.inf))
        partial = dict(meta.get("partial", {}))
        rng = common.restore_rng(meta["rng"])
        _restore_dropout_states(model, meta.get("dropout_states", {}))
    else:
        opt_arrays = None
        start_epoch, start_step, history, best, partial = 0, 0, [], -math.inf, {}
        rng = np.random.default_rng(seed)
        if init is not None:
            model = init.model
        else:
            model = build_dlinknet(1 if classes == 2 else classes, width=width, dropout=dropout, seed=seed,
                                   full_res=full_res)

    train_vars = model.trainable_variables
    schedule = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, steps_per_epoch * decay_epochs), decay_rate=lr_decay, staircase=True)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    common.build_optimizer(optimizer, train_vars, opt_arrays, where=out_dir)

    pixel_weight_of_class = tf.constant(class_weights or [1.0] * classes, tf.float32)

    @tf.function
    def train_step(x, y, w):
        if class_weights is not None:
            w = tf.cast(w, tf.float32) * tf.gather(pixel_weight_of_class, tf.cast(y, tf.int32))
        with tf.GradientTape() as tape:
            prob = model(x, training=True)
            loss, ce, dice = segmentation_loss(prob, y, w, classes=classes, dice_weight=dice_weight)
        grads = tape.gradient(loss, train_vars)
        optimizer.apply_gradients(zip(grads, train_vars))
        return loss, ce, dice

    predict = _predictor(model)
    fields = _fields(classes)
    log = common.CsvLog(out_dir / "log.csv", fields, resume_epoch=start_epoch if meta is not None else None)
    best_eval = meta.get("best_eval") if meta is not None else None
    if not history:
        ev = evaluate_items(predict, val, classes=classes)
        row = {"epoch": 0, "steps": 0, "loss": float("nan"), "lr": float(lr), **_row_metrics(ev, classes),
               "seconds": 0.0}
        history.append(row)
        log.append(row)

    def save(epoch_done: int, step: int, part: dict) -> None:
        common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch_done, rng=rng,
                          extra={"step": step, "partial": part, "history": history, "best": best,
                                 "best_eval": best_eval, "options": options,
                                 "dropout_states": _dropout_states(model), "stage": "segment"})

    interrupted = False
    stopped_for_time = False
    t_run = time.monotonic()
    epoch_times: list[float] = []
    with common.StopFlag() as stop, prog:
        for epoch in range(start_epoch + 1, epochs + 1):
            if time_limit_s is not None and epoch_times and \
                    time.monotonic() - t_run + float(np.mean(epoch_times)) > time_limit_s:
                stopped_for_time = True
                prog.note(f"time limit: not starting epoch {epoch}; state kept for --resume")
                break
            t0 = time.monotonic()
            first = start_step if epoch == start_epoch + 1 else 0
            ls = list(partial.get("loss", [])) if first else []
            cs = list(partial.get("ce", [])) if first else []
            ds = list(partial.get("dice", [])) if first else []
            task = prog.start(f"segment epoch {epoch}/{epochs}", steps_per_epoch)
            for _ in range(first):
                prog.advance(task)
            step = first
            while step < steps_per_epoch:
                x, y, w = draw_batch(train, rng, batch_size=batch_size, crop=crop, max_level=max_level,
                                     clean_share=clean_share)
                loss, ce, dice = train_step(x, y, w)
                ls.append(float(loss))
                cs.append(float(ce))
                ds.append(float(dice))
                step += 1
                prog.advance(task, f"loss {np.mean(ls[-20:]):.3f}")
                if stop and step < steps_per_epoch:
                    break
            if stop and step < steps_per_epoch:
                interrupted = True
                save(epoch - 1, step, {"loss": ls, "ce": cs, "dice": ds})
                prog.note(f"stopped by a signal at step {step}/{steps_per_epoch} of epoch {epoch}; state saved")
                break
            ev = evaluate_items(predict, val, classes=classes)
            dt = time.monotonic() - t0
            epoch_times.append(dt)
            row = {"epoch": epoch, "steps": len(ls), "loss": float(np.mean(ls)), "ce": float(np.mean(cs)),
                   "dice": float(np.mean(ds)), "lr": float(schedule(optimizer.iterations - 1)),
                   **_row_metrics(ev, classes), "seconds": dt}
            history.append(row)
            log.append(row)
            prog.note(f"epoch {epoch}: loss {row['loss']:.4f}  val mean F1 {row['val_mean_f1']:.3f} "
                      f"IoU {row['val_mean_iou']:.3f}  ({dt:.0f} s)")
            if np.isfinite(row["val_mean_iou"]) and row["val_mean_iou"] > best:
                best = row["val_mean_iou"]
                best_eval = {"epoch": epoch, **ev}
                common.save_keras_atomic(model, out_dir / "best.keras")
            save(epoch, 0, {})
            if stop:
                interrupted = True
                prog.note(f"stopped by a signal after epoch {epoch}; state saved")
                break

    if not (out_dir / "best.keras").exists():
        common.save_keras_atomic(model, out_dir / "best.keras")
    common.plot_curves(out_dir / "log.csv", out_dir / "curves.png", metric_keys=("val_mean_f1", "val_mean_iou"),
                       metric_label="F1 / IoU (validation, inference mode)", ylim=(0.0, 1.02),
                       title=f"D-LinkNet segmentation ({'binary' if classes == 2 else 'phases'})")
    best_path = out_dir / "best.keras"
    sha = file_sha256(best_path)
    card = {
        "kind": "dlinknet",
        "model_id": f"dlinknet-{sha[:12]}",
        "weights": best_path.name,
        "weights_sha256": sha,
        "n_classes": 1 if classes == 2 else classes,
        "classes": classes,
        "class_names": list(CLASS_NAMES[classes]),
        "output": "sigmoid probability of 'material'" if classes == 2 else "softmax probabilities of the classes",
        "width": float(width),
        "dropout": float(dropout),
        "full_res": bool(full_res),
        "normalisation": NORMALISATION,
        "tile": crop,
        "multiple": MULTIPLE,
        "seed": seed,
        "command": command or common.command_line(),
        "data": data_info,
        "metrics": {"selected_on": "validation mean IoU", **(best_eval or {})},
        "hyperparameters": {k: options[k] for k in _OPTION_KEYS if k not in ("data", "realdata")}
        | {"epochs": epochs, "time_limit_s": time_limit_s},
        **({} if init is None else {"initialised_from": {"model_id": init.card.get("model_id"),
                                                         "weights_sha256": init.sha256,
                                                         "command": init.card.get("command")}}),
        "history": history,
        "interrupted": interrupted,
        "stopped_for_time": stopped_for_time,
        "versions": common.versions(),
    }
    common.write_model_card(out_dir / "model_card.json", card)
    common.write_model_card(best_path.with_suffix(".json"), card)
    return {"best": best_path, "history": history, "best_val_mean_iou": best, "interrupted": interrupted,
            "card": card}
