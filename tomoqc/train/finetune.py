"""Stage 2 of TIQA training: regress a 1-5 quality score and learn the distortion severities.

Starts from the rank-stage checkpoint (the network already orders images by quality) and
minimises the mean squared error between the predicted score and the image's label:
the human mean opinion score (column ``mos``) where one is given, else the generated
label of ``tomoqc label`` (column ``label``). The severity head learns, with a binary
cross-entropy, the known distortion levels: for each of noise, blur and ring the target
is level / 5 (0 when absent; mixtures give several). Early stopping watches the
validation SROCC between predicted score and label on held-out references, in inference
mode.

Defaults follow the TIQA report: Adam, learning rate 5e-5 decayed every 4 epochs,
dropout 0.5, 20 epochs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.train import common
from tomoqc.train.data import (
    DISTORTIONS,
    ImageStore,
    block_batch,
    choose_crop,
    chosen_references,
    finetune_samples,
    manifest_sha256,
    rank_blocks,
    read_manifest,
    sample_batch,
    split_references,
)
from tomoqc.train.rank import (
    _Progress,
    _spearman,
    evaluate_levels,
    make_predict,
    recalibrate_batchnorm,
    validation_batches,
)

FINETUNE_FIELDS = [
    "epoch", "steps", "loss", "mse", "severity_bce", "lr", "val_srocc", "val_plcc", "val_rmse",
    "val_level_srocc", "val_severity_acc", "val_balanced", "seconds",
]


def _plcc(a, b) -> float:
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _predict_both(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(x):
        out = model(x, training=False)
        return out["score"][:, 0], out["severity"]

    return f


def evaluate_samples(model_or_fn, samples, store, *, size: int = 224, crops: int = 2, seed: int = 0,
                     batch: int = 32) -> dict:
    """Inference-mode agreement of predicted score with labels, and severity accuracy.

    Each image is scored as the mean over ``crops`` seeded random crops of side ``size``.

    Returns
    -------
    dict
        ``srocc``, ``plcc``, ``rmse`` of score vs label; ``severity_acc``: share of
        single-distortion images at level >= 2 whose largest predicted severity is their
        distortion; ``srocc_by_type``: for each of noise, blur and ring, the SROCC over
        the images of that distortion and the clean references (as in the evaluation
        table); ``balanced``: the mean of those three SROCCs and of ``severity_acc``;
        ``pred`` and ``label`` arrays.
    """
    fn = model_or_fn if callable(model_or_fn) and not hasattr(model_or_fn, "layers") else _predict_both(model_or_fn)
    rng = np.random.default_rng(seed)
    xs = []
    for s in samples:
        img = store[s.file]
        c = min(size, *img.shape)
        for _ in range(crops):
            y, x = choose_crop(img, c, rng)
            xs.append(img[y : y + c, x : x + c])
    if not samples:
        return {"srocc": float("nan"), "plcc": float("nan"), "rmse": float("nan"), "severity_acc": float("nan"),
                "srocc_by_type": {d: float("nan") for d in DISTORTIONS}, "balanced": float("nan"),
                "pred": np.zeros(0), "label": np.zeros(0), "severity": np.zeros((0, 3))}
    x = np.stack(xs)[..., None].astype(np.float32)
    sc, sv = [], []
    for i in range(0, len(x), batch):
        a, b = fn(x[i : i + batch])
        sc.append(np.asarray(a))
        sv.append(np.asarray(b))
    sc = np.concatenate(sc).reshape(len(samples), crops).mean(axis=1)
    sv = np.concatenate(sv).reshape(len(samples), crops, len(DISTORTIONS)).mean(axis=1)
    lab = np.asarray([s.label for s in samples], float)
    hits = [
        int(np.argmax(sv[i]) == DISTORTIONS.index(s.distortion))
        for i, s in enumerate(samples)
        if s.distortion in DISTORTIONS and s.level >= 2
    ]
    by_type = {}
    for d in DISTORTIONS:
        idx = [i for i, s in enumerate(samples) if s.distortion in (d, "none")]
        by_type[d] = _spearman(sc[idx], lab[idx]) if len(idx) >= 3 else float("nan")
    sev_acc = float(np.mean(hits)) if hits else float("nan")
    return {
        "srocc": _spearman(sc, lab),
        "plcc": _plcc(sc, lab),
        "rmse": float(np.sqrt(np.mean((np.clip(sc, 1, 5) - lab) ** 2))),
        "severity_acc": sev_acc,
        "srocc_by_type": by_type,
        "balanced": float(np.mean([*by_type.values(), sev_acc])),
        "pred": sc,
        "label": lab,
        "severity": sv,
    }


def _calibrate_score_head(model, samples, store, crop: int, seed: int, n: int = 192):
    """Least-squares map raw score -> label over ``n`` training crops, folded into layer ``score``."""
    rng = np.random.default_rng(seed + 5)
    pick = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    x, y, _ = sample_batch([samples[i] for i in pick], store, crop, rng, augment=False)
    predict = make_predict(model)
    raw = np.concatenate([np.asarray(predict(x[i : i + 32])) for i in range(0, len(x), 32)])
    if np.std(raw) < 1e-8:
        return 1.0, 0.0
    a, c = np.polyfit(raw.astype(float), y.astype(float), 1)
    layer = model.get_layer("score")
    w, b = layer.get_weights()
    layer.set_weights([w * a, b * a + c])
    return float(a), float(c)


GROUP_KINDS = ("noise", "blur", "ring")


def severity_margin_loss(p, target, margin: float):
    """Hinge on the dominant distortion of single-distortion images.

    ``p`` and ``target`` are (n, 3) severities; rows whose target has exactly one
    non-zero entry count: ``max(0, margin - (p[true] - max(p[others])))``, averaged over
    those rows (0 when there are none).
    """
    import tensorflow as tf

    present = tf.cast(target > 0, p.dtype)
    single = tf.cast(tf.equal(tf.reduce_sum(present, axis=1), 1.0), p.dtype)
    p_true = tf.reduce_sum(p * present, axis=1)
    p_other = tf.reduce_max(p - 2.0 * present, axis=1)  # the true entry pushed below any other
    hinge = tf.nn.relu(margin - (p_true - p_other)) * single
    return tf.reduce_sum(hinge) / tf.maximum(tf.reduce_sum(single), 1.0)


def _group_pools(samples) -> dict:
    """Training images by distortion type (single distortions only) and the clean references."""
    pools: dict[str, list] = {k: [] for k in GROUP_KINDS}
    pools["none"] = []
    for s in samples:
        if s.distortion in pools:
            pools[s.distortion].append(s)
    if not pools["none"] or not all(pools[k] for k in GROUP_KINDS):
        return {}
    return pools


def _draw_group(pools: dict, kind: str, n: int, rng) -> list:
    """``n`` images of distortion ``kind`` from distinct references where possible; each slot
    is a clean reference with probability 1/6 (as in a set of references and five levels)."""
    pool = pools[kind]
    pick = rng.permutation(len(pool))
    out, seen = [], set()
    for i in pick:
        if pool[i].reference not in seen:
            seen.add(pool[i].reference)
            out.append(pool[i])
            if len(out) == n:
                break
    while len(out) < n:
        out.append(pool[int(rng.integers(len(pool)))])
    for j in range(n):
        if rng.random() < 1.0 / 6.0:
            out[j] = pools["none"][int(rng.integers(len(pools["none"])))]
    return out


def train_finetune(
    data_dir,
    out_dir,
    *,
    init=None,
    epochs: int = 20,
    batch_size: int = 16,
    crop: int = 224,
    lr: float = 5e-5,
    lr_decay: float = 0.5,
    decay_epochs: int = 4,
    severity_weight: float = 1.0,
    patience: int = 5,
    seed: int = 0,
    resume: bool = False,
    bn_momentum: float = 0.9,
    recalibrate_batches: int = 8,
    calibrate_head: bool = True,
    rank_weight: float = 0.0,
    rank_margin: float = 0.25,
    rank_block_count: int = 2,
    group_weight: float = 0.0,
    group_size: int = 8,
    group_kinds=GROUP_KINDS,
    rank_kinds=None,
    severity_margin_weight: float = 0.0,
    severity_margin: float = 0.1,
    select_on: str = "srocc",
    val_fraction: float = 0.15,
    val_references=None,
    references=None,
    val_size: int = 224,
    val_crops: int = 2,
    steps_per_epoch: int | None = None,
    time_limit_s: float | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Fine-tune a (rank-trained) TIQA network to regress labels and distortion severities.

    Parameters
    ----------
    data_dir : path
        Labelled dataset folder (``manifest.csv`` with a ``label`` and/or ``mos`` column).
    out_dir : path
        Output folder; same files as :func:`tomoqc.train.rank.train_rank`.
    init : path, optional
        The rank-stage model (``best.keras``); None starts from a new network.
    epochs, batch_size, crop : int
        Epochs (20 in the report), images per batch, training crop side.
    lr, lr_decay, decay_epochs : float, float, int
        Adam learning rate 5e-5 multiplied by ``lr_decay`` every ``decay_epochs`` epochs.
    severity_weight : float
        Weight of the severity loss relative to the score MSE.
    patience : int
        Stop after this many epochs without a better validation SROCC.
    calibrate_head : bool
        When starting from a rank model, whose score has an arbitrary scale, first map its
        raw score linearly onto the labels (least squares over training crops) and fold
        the map into the last dense layer: the order learnt in the rank stage is kept and
        the regression starts from a small error instead of destroying it with large
        initial gradients.
    rank_weight, rank_margin, rank_block_count : float, float, int
        With ``rank_weight > 0`` every step also draws ``rank_blocks`` rank blocks
        (reference and levels 1-5 of one distortion) and adds ``rank_weight`` times the
        hinge rank loss with margin ``rank_margin`` (in label units) on their scores: the
        regression keeps ordering levels on every kind of reference.
    group_weight, group_size : float, int
        With ``group_weight > 0`` every step also draws a *group* of ``group_size`` images
        of one distortion type (noise, blur and ring in turn; any domain and level, from
        different references where possible, a clean reference now and then) and adds
        ``group_weight`` times the share of the group's label variance its errors leave
        unexplained once their mean is removed,
        ``mean((e - mean(e))**2) / max(var(label), 0.02)`` with ``e = score - label``.
        The MSE alone lets a distortion whose labels span a narrow range (rings: about
        0.5 of the 1-5 scale) be ordered carelessly across references; this term weighs
        every type's ordering alike.
    severity_margin_weight, severity_margin : float, float
        With ``severity_margin_weight > 0``, for every image with a single distortion the
        severity of that distortion must exceed the largest other one by
        ``severity_margin`` (hinge), so that the dominant impairment is named correctly
        even at level 1.
    select_on : {"srocc", "balanced"}
        What early stopping and ``best.keras`` follow on the validation references:
        the SROCC of score vs label over all images, or ``balanced``, the mean of the
        SROCCs within noise, blur and ring (each with the clean references) and of the
        severity accuracy, so that no distortion type is traded for another.
    references : iterable of str, optional
        Learn only from these references of the manifest (all by default), for instance a
        study's train split; ``val_references`` must be among them. A reference not in the
        manifest is refused before anything is written.
    Other parameters as in :func:`tomoqc.train.rank.train_rank`.

    Returns
    -------
    dict
        ``best``/``last`` paths, ``history``, ``best_val_srocc``, ``interrupted``, ``card``.
    """
    import keras
    import tensorflow as tf

    from tomoqc.models.tiqa import build_tiqa, file_sha256, load_model, set_batchnorm_momentum

    if epochs < 1:
        raise OptionError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 2:
        raise OptionError(f"batch size must be >= 2, got {batch_size}")
    if select_on not in ("srocc", "balanced"):
        raise OptionError(f"select_on must be 'srocc' or 'balanced', got {select_on!r}")
    if group_weight > 0 and group_size < 2:
        raise OptionError(f"group size must be >= 2, got {group_size}")
    group_kinds = tuple(group_kinds)
    bad = [k for k in group_kinds + tuple(rank_kinds or ()) if k not in GROUP_KINDS]
    if bad or not group_kinds or (rank_kinds is not None and not tuple(rank_kinds)):
        raise OptionError(f"group and rank kinds must be non-empty lists of {', '.join(GROUP_KINDS)}, "
                          f"got {list(group_kinds)} and {rank_kinds}")
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    rows = read_manifest(data_dir)
    if not any(np.isfinite(float(r[k])) for r in rows for k in ("label", "mos") if r.get(k) not in (None, "")):
        raise InputError(data_dir / "manifest.csv", "no 'label' or 'mos' column with values; run `tomoqc label` first")
    refs = chosen_references(rows, references, data_dir)
    if val_references is not None:
        val_refs = sorted(set(val_references))
        have = set(refs)
        outside = [r for r in val_refs if r not in have]
        if outside:
            raise OptionError(f"validation references {', '.join(outside)} "
                              "are not among the references of the manifest to learn from")
        val_set = set(val_refs)
        train_refs = [r for r in refs if r not in val_set]
    else:
        train_refs, val_refs = split_references(refs, val_fraction=val_fraction, seed=seed)
    train = finetune_samples(rows, references=train_refs)
    val = finetune_samples(rows, references=val_refs)
    if len(train) < batch_size:
        raise InputError(data_dir, f"only {len(train)} labelled training images; need at least {batch_size}")
    if not val:
        raise InputError(data_dir, "no labelled image among the validation references")
    val_blocks = rank_blocks(rows, references=val_refs)
    train_blocks = rank_blocks(rows, references=train_refs)
    if rank_kinds is not None:
        train_blocks = [b for b in train_blocks if b.distortion in set(rank_kinds)]
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ImageStore(data_dir)
    n_batches = len(train) // batch_size
    if steps_per_epoch is not None:
        n_batches = min(n_batches, int(steps_per_epoch))

    common.set_seed(seed)
    start = common.Start(out_dir, resume=resume, seed=seed)
    model, opt_arrays, rng = start.model, start.optimizer_arrays, start.rng
    start_epoch, history, best = start.epoch, start.history, start.best
    since_best = int(start.meta.get("since_best", 0))
    if model is None:
        model = load_model(init).model if init is not None else build_tiqa(input_size=None, seed=seed)
    set_batchnorm_momentum(model, bn_momentum)

    train_vars = model.trainable_variables
    schedule = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, n_batches * decay_epochs), decay_rate=lr_decay, staircase=True
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    common.build_optimizer(optimizer, train_vars, opt_arrays, where=out_dir)

    if calibrate_head and init is not None and opt_arrays is None:
        a, c = _calibrate_score_head(model, train, store, crop, seed)
        prog_msg = f"score head calibrated onto the labels: label ~ {a:.4g} * raw + {c:.4g}"
    else:
        prog_msg = None

    sev_w = float(severity_weight)
    use_rank = rank_weight > 0 and len(train_blocks) >= rank_block_count
    if use_rank:
        from tomoqc.train.data import rank_pairs
        from tomoqc.train.rank import rank_loss

        rb, rw = rank_pairs(rank_block_count, train_blocks[0].levels)
        rb_t = tf.constant(rb + batch_size)
        rw_t = tf.constant(rw + batch_size)
    rank_w = float(rank_weight)
    rank_m = float(rank_margin)
    groups = _group_pools(train) if group_weight > 0 else {}
    use_group = bool(groups)
    group_w = float(group_weight)
    n_group = int(group_size) if use_group else 0
    sev_mw = float(severity_margin_weight)
    sev_m = float(severity_margin)
    g_lo = batch_size
    r_lo = batch_size + n_group

    @tf.function
    def train_step(x, y, sev, yg):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            score = out["score"][:, 0]
            mse = tf.reduce_mean(tf.square(score[:batch_size] - y))
            p = tf.clip_by_value(out["severity"][:batch_size], 1e-6, 1 - 1e-6)
            bce = -tf.reduce_mean(sev * tf.math.log(p) + (1 - sev) * tf.math.log(1 - p))
            loss = mse + sev_w * bce
            if sev_mw > 0:
                loss = loss + sev_mw * severity_margin_loss(p, sev, sev_m)
            if use_group:
                e = score[g_lo:r_lo] - yg
                e = e - tf.reduce_mean(e)
                var = tf.maximum(tf.math.reduce_variance(yg), 0.02)
                loss = loss + group_w * tf.reduce_mean(tf.square(e)) / var
            if use_rank:
                loss = loss + rank_w * rank_loss(score, rb_t + n_group, rw_t + n_group, rank_m)
        grads = tape.gradient(loss, train_vars)
        optimizer.apply_gradients(zip(grads, train_vars))
        return loss, mse, bce

    predict2 = _predict_both(model)
    predict1 = make_predict(model)
    val_x = validation_batches(val_blocks, store, size=val_size, crops=val_crops, seed=seed + 1) if val_blocks else []

    def calib_batches():
        crng = np.random.default_rng(seed + 2)
        for _ in range(recalibrate_batches):
            pick = crng.choice(len(train), size=batch_size, replace=False)
            yield sample_batch([train[i] for i in pick], store, crop, crng)[0]

    def validate() -> dict:
        ev = evaluate_samples(predict2, val, store, size=val_size, crops=val_crops, seed=seed + 3)
        lv = evaluate_levels(predict1, val_blocks, val_x) if val_blocks else {"val_srocc": float("nan")}
        return {"val_srocc": ev["srocc"], "val_plcc": ev["plcc"], "val_rmse": ev["rmse"],
                "val_level_srocc": lv["val_srocc"], "val_severity_acc": ev["severity_acc"],
                "val_balanced": ev["balanced"]}

    log = common.CsvLog(out_dir / "log.csv", FINETUNE_FIELDS, resume_epoch=start_epoch if resume else None)
    if start_epoch == 0 and not history:
        row = {"epoch": 0, "steps": 0, "loss": float("nan"), "lr": float(lr), **validate(), "seconds": 0.0}
        history.append(row)
        log.append(row)

    t_run = time.monotonic()
    epoch_times = []
    interrupted = False
    prog = _Progress(progress)
    with common.StopFlag() as stop, prog:
        if prog_msg:
            prog.note(prog_msg)
        for epoch in range(start_epoch + 1, epochs + 1):
            if since_best >= patience:
                prog.note(f"early stop: no better validation {'SROCC' if select_on == 'srocc' else 'balanced score'} "
                          f"for {patience} epochs")
                break
            if time_limit_s is not None and epoch_times:
                if time.monotonic() - t_run + np.mean(epoch_times) > time_limit_s:
                    break
            t0 = time.monotonic()
            order = rng.permutation(len(train))
            ls, ms, bs = [], [], []
            task = prog.start(f"finetune epoch {epoch}/{epochs}", n_batches)
            for k in range(n_batches):
                chosen = [train[i] for i in order[k * batch_size : (k + 1) * batch_size]]
                x, y, sv = sample_batch(chosen, store, crop, rng)
                yg = np.zeros(n_group, np.float32)
                if use_group:
                    kind = group_kinds[(epoch * n_batches + k) % len(group_kinds)]
                    members = _draw_group(groups, kind, n_group, rng)
                    xg, yg, _ = sample_batch(members, store, crop, rng)
                    x = np.concatenate([x, xg])
                if use_rank:
                    picks = rng.choice(len(train_blocks), size=rank_block_count, replace=False)
                    xr = block_batch([train_blocks[i] for i in picks], store, crop, rng)
                    x = np.concatenate([x, xr])
                loss, mse, bce = train_step(x, y, sv, yg)
                ls.append(float(loss))
                ms.append(float(mse))
                bs.append(float(bce))
                prog.advance(task, f"mse {np.mean(ms[-20:]):.3f}")
                if stop:
                    break
            if stop:
                interrupted = True
                common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch - 1, rng=rng,
                                  extra={"history": history, "best": best, "since_best": since_best,
                                         "stage": "finetune"})
                break
            if recalibrate_batches > 0:
                recalibrate_batchnorm(model, calib_batches())
            ev = validate()
            dt = time.monotonic() - t0
            epoch_times.append(dt)
            row = {"epoch": epoch, "steps": len(ls), "loss": float(np.mean(ls)), "mse": float(np.mean(ms)),
                   "severity_bce": float(np.mean(bs)), "lr": float(schedule(optimizer.iterations)), **ev,
                   "seconds": dt}
            history.append(row)
            log.append(row)
            prog.note(
                f"epoch {epoch}: mse {row['mse']:.4f}  val SROCC {ev['val_srocc']:.3f} PLCC {ev['val_plcc']:.3f} "
                f"RMSE {ev['val_rmse']:.3f} level-SROCC {ev['val_level_srocc']:.3f} "
                f"severity {ev['val_severity_acc']:.3f}  ({dt:.0f} s)"
            )
            common.save_keras_atomic(model, out_dir / "last.keras")
            key = "val_srocc" if select_on == "srocc" else "val_balanced"
            if np.isfinite(ev[key]) and ev[key] > best:
                best = ev[key]
                since_best = 0
                common.save_keras_atomic(model, out_dir / "best.keras")
            else:
                since_best += 1
            common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch, rng=rng,
                              extra={"history": history, "best": best, "since_best": since_best,
                                     "stage": "finetune"})

    if not (out_dir / "best.keras").exists():
        common.save_keras_atomic(model, out_dir / "best.keras")
    if not (out_dir / "last.keras").exists():
        common.save_keras_atomic(model, out_dir / "last.keras")
    common.plot_curves(out_dir / "log.csv", out_dir / "curves.png",
                       metric_keys=("val_srocc", "val_plcc", "val_level_srocc", "val_severity_acc"),
                       title="fine-tuning stage")
    best_path = out_dir / "best.keras"
    sha = file_sha256(best_path)
    sel = "val_srocc" if select_on == "srocc" else "val_balanced"
    best_row = max((h for h in history if np.isfinite(h.get(sel, np.nan))), key=lambda h: h[sel], default={})
    card = {
        "stage": "finetune",
        "model_id": f"tiqa-{sha[:12]}",
        "weights": best_path.name,
        "weights_sha256": sha,
        "init": None if init is None else str(init),
        "data": {"dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
                 "references": "all" if references is None else refs,
                 "train_references": len(train_refs), "val_references": val_refs,
                 "train_images": len(train), "val_images": len(val)},
        "command": command or common.command_line(),
        "seed": seed,
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "crop": crop, "lr": lr,
                            "lr_decay": lr_decay, "decay_epochs": decay_epochs,
                            "severity_weight": severity_weight, "patience": patience,
                            "rank_weight": rank_weight, "rank_margin": rank_margin, "rank_block_count": rank_block_count,
                            "group_weight": group_weight, "group_size": group_size,
                            "group_kinds": list(group_kinds), "rank_kinds": None if rank_kinds is None else list(rank_kinds),
                            "severity_margin_weight": severity_margin_weight, "severity_margin": severity_margin,
                            "select_on": select_on,
                            "bn_momentum": bn_momentum, "recalibrate_batches": recalibrate_batches,
                            "val_size": val_size, "val_crops": val_crops, "steps_per_epoch": n_batches},
        "validation": {"best": best_row, "history": history},
        "test_time_sampling": {"mode": "grid", "patch": 224,
                               "aggregate": "mean of the valid patches (field of view and non-air)"},
        "interrupted": interrupted,
        "versions": common.versions(),
    }
    common.write_model_card(out_dir / "model_card.json", card)
    return {"best": best_path, "last": out_dir / "last.keras", "history": history, "best_val_srocc": best,
            "interrupted": interrupted, "card": card}


# --------------------------------------------------------------------------- evaluation


def evaluate_dataset(model, data_dir, *, mode: str | None = None, progress: bool = False) -> dict:
    """Evaluate a TIQA model on a labelled dataset, as the TIQA report's Table 2 does.

    Every image is scored whole (:meth:`tomoqc.models.tiqa.TiqaModel.score_slices`, the
    model's default test-time sampling unless ``mode`` is given).

    Parameters
    ----------
    model : TiqaModel
    data_dir : path
        Dataset folder with ``manifest.csv``; a ``label`` column enables the label metrics.
    mode : str, optional
        Test-time sampling (``grid``, ``resize_crop``, ``random``).

    Returns
    -------
    dict
        ``table``: one dict per (domain, distortion) group and ``ALL`` rows, with ``n``,
        ``srocc`` and ``plcc`` of predicted score vs label, ``level_srocc`` (mean over
        references of the SROCC of score vs distortion level, reference included, single
        distortions only), ``severity_acc`` (share of single-distortion images at level
        >= 2 whose largest predicted severity names their distortion); ``per_image``:
        rows with the prediction.
    """
    from tomoqc.preprocess import normalize_slice  # noqa: F401  (documented dependency)

    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    by_ref: dict[str, list[dict]] = {}
    for r in rows:
        by_ref.setdefault(r["reference"], []).append(r)
    per_image = []
    prog = _Progress(progress)
    with prog:
        task = prog.start("evaluate", len(by_ref))
        for ref, rr in by_ref.items():
            imgs = []
            for r in rr:
                path = data_dir / r["file"]
                try:
                    imgs.append(np.load(path, allow_pickle=False).astype(np.float32))
                except (OSError, ValueError) as err:
                    raise InputError(path, f"cannot read image: {err}") from None
            shapes = {a.shape for a in imgs}
            results = []
            if len(shapes) == 1:
                res = model.score_slices(np.stack(imgs), mode=mode, tta=1, ood=False)
                results = [(res["score"][i], res["severity"][i]) for i in range(len(imgs))]
            else:
                for a in imgs:
                    res = model.score_slices(a, mode=mode, tta=1, ood=False)
                    results.append((res["score"][0], res["severity"][0]))
            for r, (s, v) in zip(rr, results):
                lab = r.get("label")
                per_image.append({
                    "reference": ref, "domain": r.get("domain") or "image", "distortion": r["distortion"],
                    "level": int(r["level"]), "file": r["file"], "pred": float(s),
                    "label": float(lab) if lab not in (None, "") else float("nan"),
                    "severity": [float(x) for x in v],
                })
            prog.advance(task)

    from tomoqc.models.tiqa import DISTORTIONS as MODEL_DISTORTIONS

    # the impairments the model reports a severity for (the network's three, and streak when
    # the model measures it), in the order of its severity vector
    width = max((len(p["severity"]) for p in per_image), default=len(DISTORTIONS))
    names = tuple(MODEL_DISTORTIONS[:width])

    def named(sev, d):
        """Whether the largest finite severity is ``d``'s."""
        sev = np.asarray(sev, float)
        i = names.index(d)
        return bool(np.isfinite(sev[i]) and sev[i] >= np.nanmax(sev))

    def group_stats(items, dist_filter, domain):
        items = [p for p in items if np.isfinite(p["pred"])]
        lab = np.array([p["label"] for p in items], float)
        pred = np.array([p["pred"] for p in items], float)
        ok = np.isfinite(lab)
        out = {"domain": domain, "distortion": dist_filter, "n": int(len(items))}
        out["srocc"] = _spearman(pred[ok], lab[ok]) if ok.sum() > 2 else float("nan")
        out["plcc"] = _plcc(pred[ok], lab[ok]) if ok.sum() > 2 else float("nan")
        # within-reference ordering by level (single distortions, reference image included)
        lv = []
        dists = names if dist_filter == "ALL" else (dist_filter,)
        for d in dists:
            if d not in names:
                continue
            for ref in {p["reference"] for p in items}:
                grp = [p for p in per_image if p["reference"] == ref and p["domain"] in _domains(domain)
                       and (p["distortion"] == d or p["level"] == 0)]
                for dom in _domains(domain):
                    g = [p for p in grp if p["domain"] == dom and np.isfinite(p["pred"])]
                    if len({p["level"] for p in g}) >= 3:
                        lv.append(_spearman([p["pred"] for p in g], [-p["level"] for p in g]))
        out["level_srocc"] = float(np.mean(lv)) if lv else float("nan")
        hits = [int(named(p["severity"], p["distortion"])) for p in items
                if p["distortion"] in names and p["level"] >= 2 and np.isfinite(p["severity"]).any()]
        out["severity_acc"] = float(np.mean(hits)) if hits else float("nan")
        return out

    domains = sorted({p["domain"] for p in per_image})
    table = []
    for dom in domains + ["ALL"]:
        in_dom = [p for p in per_image if dom == "ALL" or p["domain"] == dom]
        for d in list(names) + ["mixed", "ALL"]:
            items = [p for p in in_dom if d == "ALL" or p["distortion"] == d or (p["level"] == 0 and d != "mixed")]
            if d == "mixed":
                items = [p for p in in_dom if p["distortion"] == "mixed" or p["level"] == 0]
            if not any(p["distortion"] == d for p in items) and d != "ALL":
                continue
            table.append(group_stats(items, d, dom))
    return {"table": table, "per_image": per_image, "mode": mode or getattr(model, "sampling", "grid"),
            "model_id": getattr(model, "model_id", None)}


def _domains(domain: str):
    return ("image", "physics") if domain == "ALL" else (domain,)


def format_table(table) -> str:
    """Plain-text table of :func:`evaluate_dataset` results."""
    head = f"{'domain':<8} {'distortion':<10} {'n':>5} {'SROCC':>7} {'PLCC':>7} {'level SROCC':>12} {'severity':>9}"
    lines = [head, "-" * len(head)]
    for r in table:
        def f(v):
            return "    -" if not np.isfinite(v) else f"{v:.3f}"
        lines.append(f"{r['domain']:<8} {r['distortion']:<10} {r['n']:>5} {f(r['srocc']):>7} {f(r['plcc']):>7} "
                     f"{f(r['level_srocc']):>12} {f(r['severity_acc']):>9}")
    return "\n".join(lines)
