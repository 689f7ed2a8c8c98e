"""Stage 1 of TIQA training: learn to order images by distortion level (no labels needed).

The network sees mini-batches made of *blocks*: one reference with one distortion type at
every level, least distorted first. Every pair of images of a block whose levels differ
contributes the hinge rank loss

.. math:: \\max(0, m - (\\hat y_{better} - \\hat y_{worse}))

(Chen et al. 2009; RankIQA uses :math:`m = 10`, the TIQA report's code :math:`m = 6`).
As in RankIQA, all pairs of a batch are formed at once by a single gather over index
arrays fixed for the batch shape, so a batch of ``B`` blocks of ``L`` images gives
``B * L * (L - 1) / 2`` pairs for the price of ``B * L`` forward passes.

BatchNorm: batches of one highly correlated reference make the batch statistics seen in
training differ from the moving statistics used at inference, and a model that ranks
well in training mode can rank badly in inference mode. Here every batch mixes several
references and distortion types, the BatchNorm momentum suits short runs (0.9), and the
moving statistics are re-estimated over a few training batches before every validation
and before the model is saved ("recalibration"), so the saved model is consistent with
its final weights. Validation always runs in inference mode.

References
----------
X. Liu, J. van de Weijer and A. D. Bagdanov, "RankIQA: Learning from rankings for
no-reference image quality assessment", ICCV 2017, doi:10.1109/ICCV.2017.118.

W. Chen, T.-Y. Liu, Y. Lan, Z. Ma and H. Li, "Ranking measures and loss functions in
learning to rank", NeurIPS 2009.
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
    iterate_block_batches,
    manifest_sha256,
    rank_blocks,
    rank_pairs,
    read_manifest,
    split_references,
)

RANK_FIELDS = ["epoch", "steps", "loss", "lr", "val_srocc"] + [f"val_srocc_{d}" for d in DISTORTIONS] + [
    "seconds"
]


def rank_loss(scores, better, worse, margin: float = 6.0):
    """Mean pairwise hinge rank loss over fixed pair indices (one gather, no Python loop).

    Parameters
    ----------
    scores : tensor (n,)
        Predicted quality of the images of a batch (higher is better).
    better, worse : int arrays (p,)
        Indices of the better and worse image of every pair (see
        :func:`tomoqc.train.data.rank_pairs`).
    margin : float
        The margin ``m``.
    """
    import tensorflow as tf

    s = tf.reshape(scores, [-1])
    diff = tf.gather(s, better) - tf.gather(s, worse)
    return tf.reduce_mean(tf.nn.relu(margin - diff))


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a = np.asarray(a, float)
    b = np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def rank_step(model, variables, optimizer, better, worse, margin: float):
    """A compiled training step of the rank stage: :func:`rank_loss` of the ``score`` output
    over the fixed (better, worse) index pairs of a batch, one optimizer step on ``variables``;
    returns the loss. Shared by TIQA's and the RankIQA baseline's rank stages."""
    import tensorflow as tf

    better_t, worse_t, margin_f = tf.constant(better), tf.constant(worse), float(margin)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            s = model(x, training=True)["score"][:, 0]
            loss = rank_loss(s, better_t, worse_t, margin_f)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def make_predict(model):
    """Compiled inference-mode function returning the raw score of a batch."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(x):
        return model(x, training=False)["score"][:, 0]

    return f


def predict_raw(predict, x: np.ndarray, batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        out.append(np.asarray(predict(x[i : i + batch])))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def validation_batches(blocks, store, *, size: int, crops: int, seed: int):
    """Fixed validation crops: for each block, ``crops`` crop positions shared by its images."""
    rng = np.random.default_rng(seed)
    xs = []
    for b in blocks:
        ref = store[b.files[0]]
        h, w = ref.shape
        s = min(size, h, w)
        positions = [choose_crop(ref, s, rng) for _ in range(crops)]
        imgs = [store[f] for f in b.files]
        xs.append(np.stack([[img[y : y + s, x : x + s] for img in imgs] for (y, x) in positions]))
    return xs  # list of (crops, L, s, s)


def evaluate_levels(predict, blocks, val_x) -> dict:
    """Inference-mode SROCC of predicted score vs distortion level within each block.

    The score of an image is the mean over its crops; SROCC is taken within each block
    (one reference, one distortion, all levels) against ``-level`` and averaged per
    distortion type and over all blocks.
    """
    per = {d: [] for d in DISTORTIONS}
    for b, x in zip(blocks, val_x):
        c, L, s, _ = x.shape
        sc = predict_raw(predict, x.reshape(c * L, s, s, 1)).reshape(c, L).mean(axis=0)
        per[b.distortion].append(_spearman(sc, -np.asarray(b.levels, float)))
    res = {f"val_srocc_{d}": (float(np.mean(v)) if v else float("nan")) for d, v in per.items()}
    allv = [x for v in per.values() for x in v]
    res["val_srocc"] = float(np.mean(allv)) if allv else float("nan")
    return res


def recalibrate_batchnorm(model, batches) -> int:
    """Re-estimate the moving mean/variance of every BatchNorm layer from ``batches``.

    Runs the batches forward in training mode (no weight update) with the momentum of each
    layer set so that the moving statistics become the running average of the batch
    statistics over the given batches; the momenta are restored afterwards.

    Returns the number of batches used.
    """
    import keras

    bns = []
    stack = [model]
    while stack:
        m = stack.pop()
        for layer in getattr(m, "layers", []):
            if isinstance(layer, keras.layers.BatchNormalization):
                bns.append(layer)
            elif hasattr(layer, "layers"):
                stack.append(layer)
    if not bns:
        return 0
    old = [b.momentum for b in bns]

    n = 0
    try:
        for k, x in enumerate(batches):
            # the first batch replaces the statistics, later ones are averaged in
            for b in bns:
                b.momentum = k / (k + 1.0)
            model(x, training=True)  # eager: the momentum is read at call time
            n += 1
    finally:
        for b, m in zip(bns, old):
            b.momentum = m
    return n


def train_rank(
    data_dir,
    out_dir,
    *,
    epochs: int = 30,
    blocks_per_batch: int = 4,
    crop: int = 224,
    margin: float = 6.0,
    lr: float = 3e-5,
    lr_decay: float = 0.9,
    seed: int = 0,
    resume: bool = False,
    init=None,
    backbone_weights=None,
    bn_momentum: float = 0.9,
    recalibrate_batches: int = 8,
    val_fraction: float = 0.15,
    val_references=None,
    val_size: int = 224,
    val_crops: int = 2,
    steps_per_epoch: int | None = None,
    time_limit_s: float | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train the TIQA network to rank images by distortion level.

    Parameters
    ----------
    data_dir : path
        Dataset folder with ``manifest.csv`` (levels are enough; labels are not needed).
    out_dir : path
        Output folder (created): ``state/``, ``log.csv``, ``curves.png``, ``best.keras``,
        ``last.keras``, ``model_card.json``.
    epochs : int
        Passes over the training blocks (30 as in the TIQA report).
    blocks_per_batch : int
        Blocks per mini-batch (each block = 6 images: reference and levels 1-5).
    crop : int
        Side of the training crops (the network is fully convolutional; validation uses
        ``val_size``).
    margin : float
        Hinge margin ``m``.
    lr, lr_decay : float
        Adam learning rate (3e-5 in the report) and its decay factor per epoch.
    seed : int
        Seed of the split, the crops, the shuffling and the initial weights.
    resume : bool
        Continue from ``out_dir/state``.
    init : path, optional
        A ``.keras`` TIQA model to start from instead of a new one.
    backbone_weights : path, optional
        Local EfficientNet-B0 weights for a new model.
    bn_momentum : float
        BatchNorm momentum during training.
    recalibrate_batches : int
        Training batches used to re-estimate BatchNorm statistics before each validation
        (0 to skip).
    val_fraction : float
        Share of references held out for validation (ignored with ``val_references``).
    val_size, val_crops : int
        Size and number of validation crops per image.
    steps_per_epoch : int, optional
        Cap on batches per epoch.
    time_limit_s : float, optional
        Stop (after saving) when the next epoch would exceed this wall time.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``best``/``last`` paths, ``history`` (list of per-epoch dicts), ``best_val_srocc``,
        ``interrupted`` (True when stopped by SIGTERM/SIGUSR1).
    """
    import keras

    from tomoqc.models.tiqa import build_tiqa, file_sha256, set_batchnorm_momentum

    if epochs < 1:
        raise OptionError(f"epochs must be >= 1, got {epochs}")
    if margin <= 0:
        raise OptionError(f"margin must be positive, got {margin}")
    if crop < 32:
        raise OptionError(f"crop must be at least 32 pixels, got {crop}")
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    rows = read_manifest(data_dir)
    refs = sorted({r["reference"] for r in rows})
    if val_references is not None:
        val_refs = sorted(set(val_references))
        train_refs = [r for r in refs if r not in set(val_refs)]
    else:
        train_refs, val_refs = split_references(refs, val_fraction=val_fraction, seed=seed)
    train_blocks = rank_blocks(rows, references=train_refs)
    val_blocks = rank_blocks(rows, references=val_refs)
    if len(train_blocks) < blocks_per_batch:
        raise InputError(
            data_dir,
            f"only {len(train_blocks)} complete rank blocks (reference + levels 1-5 of one distortion) "
            f"for training; need at least {blocks_per_batch}",
        )
    if not val_blocks:
        raise InputError(data_dir, "no complete rank block among the validation references")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ImageStore(data_dir)
    levels = train_blocks[0].levels
    better, worse = rank_pairs(blocks_per_batch, levels)
    n_batches = len(train_blocks) // blocks_per_batch
    if steps_per_epoch is not None:
        n_batches = min(n_batches, int(steps_per_epoch))

    common.set_seed(seed)
    start = common.Start(out_dir, resume=resume, seed=seed)
    model, opt_arrays, rng = start.model, start.optimizer_arrays, start.rng
    start_epoch, history, best = start.epoch, start.history, start.best
    if model is None:
        if init is not None:
            from tomoqc.models.tiqa import load_model

            model = load_model(init).model
        else:
            model = build_tiqa(backbone_weights=backbone_weights, input_size=None, seed=seed)
    set_batchnorm_momentum(model, bn_momentum)

    train_vars = [v for v in model.trainable_variables if not v.path.startswith("severity")]
    schedule = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, n_batches), decay_rate=lr_decay, staircase=True
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    common.build_optimizer(optimizer, train_vars, opt_arrays, where=out_dir)

    train_step = rank_step(model, train_vars, optimizer, better, worse, margin)

    predict = make_predict(model)
    val_x = validation_batches(val_blocks, store, size=val_size, crops=val_crops, seed=seed + 1)

    def calib_batches():
        crng = np.random.default_rng(seed + 2)
        picks = crng.permutation(len(train_blocks))
        for i in range(recalibrate_batches):
            sel = [train_blocks[picks[(i * blocks_per_batch + j) % len(picks)]] for j in range(blocks_per_batch)]
            yield block_batch(sel, store, crop, crng)

    log = common.CsvLog(out_dir / "log.csv", RANK_FIELDS, resume_epoch=start_epoch if resume else None)
    if start_epoch == 0 and not history:
        ev = evaluate_levels(predict, val_blocks, val_x)
        row = {"epoch": 0, "steps": 0, "loss": float("nan"), "lr": float(lr), **ev, "seconds": 0.0}
        history.append(row)
        log.append(row)

    t_run = time.monotonic()
    interrupted = False
    epoch_times = []
    prog = _Progress(progress)
    with common.StopFlag() as stop, prog:
        for epoch in range(start_epoch + 1, epochs + 1):
            if time_limit_s is not None and epoch_times:
                if time.monotonic() - t_run + np.mean(epoch_times) > time_limit_s:
                    break
            t0 = time.monotonic()
            losses = []
            task = prog.start(f"rank epoch {epoch}/{epochs}", n_batches)
            for k, x in enumerate(
                iterate_block_batches(train_blocks, store, blocks_per_batch=blocks_per_batch, size=crop, rng=rng)
            ):
                if k >= n_batches:
                    break
                losses.append(float(train_step(x)))
                prog.advance(task, f"loss {np.mean(losses[-20:]):.3f}")
                if stop:
                    break
            if stop:
                interrupted = True
                common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch - 1, rng=rng,
                                  extra={"history": history, "best": best, "stage": "rank"})
                break
            if recalibrate_batches > 0:
                recalibrate_batchnorm(model, calib_batches())
            ev = evaluate_levels(predict, val_blocks, val_x)
            dt = time.monotonic() - t0
            epoch_times.append(dt)
            cur_lr = float(schedule(optimizer.iterations))
            row = {"epoch": epoch, "steps": len(losses), "loss": float(np.mean(losses)), "lr": cur_lr, **ev,
                   "seconds": dt}
            history.append(row)
            log.append(row)
            prog.note(
                f"epoch {epoch}: loss {row['loss']:.4f}  val SROCC {ev['val_srocc']:.3f} "
                + " ".join(f"{d} {ev[f'val_srocc_{d}']:.3f}" for d in DISTORTIONS)
                + f"  ({dt:.0f} s)"
            )
            common.save_keras_atomic(model, out_dir / "last.keras")
            if np.isfinite(ev["val_srocc"]) and ev["val_srocc"] > best:
                best = ev["val_srocc"]
                common.save_keras_atomic(model, out_dir / "best.keras")
            common.save_state(out_dir, model=model, optimizer=optimizer, epoch=epoch, rng=rng,
                              extra={"history": history, "best": best, "stage": "rank"})

    if not (out_dir / "best.keras").exists() and not interrupted:
        common.save_keras_atomic(model, out_dir / "best.keras")
    if not (out_dir / "last.keras").exists():
        common.save_keras_atomic(model, out_dir / "last.keras")
    common.plot_curves(out_dir / "log.csv", out_dir / "curves.png",
                       metric_keys=["val_srocc"] + [f"val_srocc_{d}" for d in DISTORTIONS],
                       title=f"rank stage (margin {margin:g})")
    best_path = out_dir / "best.keras"
    card = {
        "stage": "rank",
        "model_id": f"tiqa-rank-{file_sha256(best_path)[:12]}",
        "weights": best_path.name,
        "weights_sha256": file_sha256(best_path),
        "data": {"dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
                 "train_references": len(train_refs), "val_references": val_refs,
                 "train_blocks": len(train_blocks), "val_blocks": len(val_blocks)},
        "command": command or common.command_line(),
        "seed": seed,
        "hyperparameters": {"epochs": epochs, "blocks_per_batch": blocks_per_batch, "crop": crop,
                            "margin": margin, "lr": lr, "lr_decay_per_epoch": lr_decay,
                            "bn_momentum": bn_momentum, "recalibrate_batches": recalibrate_batches,
                            "val_size": val_size, "val_crops": val_crops, "steps_per_epoch": n_batches},
        "validation": {"best_val_srocc": best, "history": history},
        "test_time_sampling": {"mode": "grid", "patch": 224},
        "interrupted": interrupted,
        "versions": common.versions(),
    }
    common.write_model_card(out_dir / "model_card.json", card)
    return {"best": best_path, "last": out_dir / "last.keras", "history": history, "best_val_srocc": best,
            "interrupted": interrupted, "card": card}


class _Progress:
    """A rich progress bar that degrades to nothing when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False

    def start(self, desc, total):
        if self._p is None:
            return None
        return self._p.add_task(desc, total=total, info="")

    def advance(self, task, info=""):
        if self._p is not None and task is not None:
            self._p.update(task, advance=1, info=info)

    def note(self, text):
        if self._p is not None:
            self._p.console.print(text)
        else:
            print(text, flush=True)
