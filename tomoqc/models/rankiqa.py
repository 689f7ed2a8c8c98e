"""The RankIQA baseline: a VGG16 Siamese ranker fine-tuned to quality labels.

RankIQA [1]_ trains a VGG16 [2]_ to order images of one reference by distortion level with a
pairwise hinge loss on score differences, then fine-tunes it to regress quality labels with
a mean squared error. The TIQA report compares its EfficientNet-B0 network with it (its
Table 2). This module builds that baseline on tomoqc's own data pipeline, so that the two
networks see exactly the same blocks, crops, labels and reference split:

- rank stage: batches of whole rank blocks (one reference, one distortion, levels 0-5, one
  shared crop position) from :func:`tomoqc.train.data.rank_blocks` and
  :func:`tomoqc.train.data.iterate_block_batches`; every pair of a block counts once in
  :func:`tomoqc.train.rank.rank_loss` through the fixed indices of
  :func:`tomoqc.train.data.rank_pairs` (the Siamese branches share their weights, so one
  forward pass of the batch serves all pairs, as in RankIQA's efficient back-propagation);
- fine-tune stage: random crops of every labelled training image
  (:func:`tomoqc.train.data.finetune_samples`, :func:`tomoqc.train.data.sample_batch`),
  mean squared error to the manifest's label. The score layer is first mapped to the label
  scale by a least-squares fit over training crops, as TIQA's fine-tuning does.

Differences from the paper, forced by where tomoqc runs: no ImageNet weights (nothing is
downloaded; the convolutions start from a seeded He initialisation, suited to ReLU
networks trained from scratch), Adam instead of SGD, small crops, and a small dense head
(global average pooling, one hidden layer with dropout, one linear ``score``) in place of
the two 4096-unit fully connected layers. Grey images are scaled from [0, 1] to [-1, 1]
and replicated to three channels inside the model, so that the width-1 backbone is
``keras.applications.VGG16`` itself (14,714,688 parameters). Widths below 1 build the
same 13-convolution, 5-pooling layout with every channel count scaled (quick runs, tests).

Training resolution: 64-pixel crops (:data:`DEFAULT_SIZE`). VGG16's cost grows with the
crop area. Measured on the 2-core CPU this project runs on with
``benchmarks/rankiqa_speed.py`` (second of two epochs, so tracing is excluded; a rank step
is 4 blocks = 24 crops forward and backward, a fine-tune step 16 crops): width 1.0 makes
0.73 rank steps/s (17 crops/s) and 1.0 fine-tune steps/s at 64 px, but only 0.34 and 0.51
at 96 px; width 1/16 makes 28 and 46 steps/s at 64 px. At 64 px a width-1 VGG16 gets about
500 steps in a quarter of an hour, and 80 rank steps already order the levels of the
training blocks (within-block SROCC 0.47 -> 0.98 on an 8-reference phantom set); 96 px
would halve the number of steps. Five 2x2 poolings leave a 2 x 2 map at 64 px for the
global average. Larger crops remain a parameter (``size``).

At test time (:meth:`RankIQA.predict`) every image is normalised like tomoqc normalises
slices (:func:`tomoqc.preprocess.normalize_slice`), cut into the grid of training-size
crops that covers it (:func:`tomoqc.models.tiqa.patch_grid`), crops without sample are
skipped as TIQA skips them (:func:`tomoqc.preprocess.patch_validity`, else
:func:`tomoqc.preprocess.patch_has_structure`), and the image's score is the mean over
the kept crops (RankIQA averages 30 random crops; the grid is deterministic).

References
----------
.. [1] X. Liu, J. van de Weijer and A. D. Bagdanov, "RankIQA: Learning from rankings for
   no-reference image quality assessment", ICCV 2017, arXiv:1707.08347.
.. [2] K. Simonyan and A. Zisserman, "Very deep convolutional networks for large-scale
   image recognition", ICLR 2015, arXiv:1409.1556.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = [
    "VGG16_LAYOUT",
    "DEFAULT_SIZE",
    "DEFAULT_WIDTH",
    "vgg16_channels",
    "build_rankiqa",
    "train_rankiqa",
    "RankIQA",
    "load_rankiqa",
]

#: VGG16's feature extractor (configuration "D"): output channels of each 3x3 convolution,
#: "M" for a 2x2 max pooling.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

#: Side of the training crops (see the module docstring for the measurement behind it).
DEFAULT_SIZE = 64
#: Channel multiplier of the backbone (1.0 is VGG16).
DEFAULT_WIDTH = 1.0
#: Hinge margin of the rank stage (the value tomoqc's TIQA rank stage uses).
DEFAULT_MARGIN = 6.0
_PREDICT_BATCH = 32


def vgg16_channels(width: float = 1.0) -> list[int]:
    """Output channels of the 13 convolutions of VGG16 scaled by ``width`` (at least 1 each)."""
    if not 0.0 < float(width) <= 1.0:
        raise OptionError(f"width must be in (0, 1], got {width}")
    return [max(1, int(round(c * float(width)))) for c in VGG16_LAYOUT if c != "M"]


def _vgg16_backbone(side, width: float):
    """The VGG16 convolutional layout as a nested Keras model named ``vgg16``."""
    import keras
    from keras import layers

    if width == 1.0:
        return keras.applications.VGG16(weights=None, include_top=False, input_shape=(side, side, 3))
    chans = iter(vgg16_channels(width))
    inp = keras.Input(shape=(side, side, 3))
    x = inp
    block, conv = 1, 1
    for item in VGG16_LAYOUT:
        if item == "M":
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
            block, conv = block + 1, 1
        else:
            x = layers.Conv2D(next(chans), 3, padding="same", activation="relu", name=f"block{block}_conv{conv}")(x)
            conv += 1
    return keras.Model(inp, x, name="vgg16")


def build_rankiqa(
    *,
    input_size: int | None = None,
    width: float = DEFAULT_WIDTH,
    dense_units: int | None = None,
    dropout: float = 0.5,
    seed: int | None = None,
):
    """Build the RankIQA network (Keras 3).

    Parameters
    ----------
    input_size : int or None
        Side of the square input crops; None accepts any size of at least 32 pixels (the
        network is fully convolutional up to the global pooling).
    width : float in (0, 1]
        Channel multiplier. 1.0 uses ``keras.applications.VGG16(weights=None,
        include_top=False)``; smaller widths build the same layout with scaled channels.
    dense_units : int, optional
        Hidden units of the head (default ``max(32, round(256 * width))``).
    dropout : float
        Dropout rate of the head.
    seed : int or None
        Seed of every initialiser and of the dropout; None leaves Keras' defaults.

    Returns
    -------
    keras.Model
        Input ``patch`` (n, s, s, 1) with values in [0, 1]; output a dict with ``score``
        (n, 1), higher meaning better quality. The backbone is the nested model ``vgg16``.
    """
    import keras
    from keras import layers

    if input_size is not None and int(input_size) < 32:
        raise OptionError(f"input_size must be at least 32 pixels (five 2x2 poolings), got {input_size}")
    width = float(width)
    vgg16_channels(width)  # validates the width
    if not 0.0 <= float(dropout) < 1.0:
        raise OptionError(f"dropout must be in [0, 1), got {dropout}")
    units = max(32, int(round(256 * width))) if dense_units is None else int(dense_units)
    if units < 1:
        raise OptionError(f"dense_units must be >= 1, got {dense_units}")

    side = None if input_size is None else int(input_size)
    inp = keras.Input(shape=(side, side, 1), name="patch")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_signed_range")(inp)
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    backbone = _vgg16_backbone(side, width)
    if seed is not None:
        k = 0
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.Conv2D):
                kernel, bias = layer.get_weights()
                init = keras.initializers.HeUniform(seed=int(seed) + 101 + k)
                layer.set_weights([np.asarray(init(kernel.shape)), np.zeros_like(bias)])
                k += 1
    feat = layers.GlobalAveragePooling2D(name="pool")(backbone(x))

    def init(k):
        return keras.initializers.GlorotUniform(seed=None if seed is None else int(seed) + k)

    h = layers.Dense(units, activation="relu", kernel_initializer=init(1), name="score_dense")(feat)
    h = layers.Dropout(float(dropout), seed=seed, name="score_dropout")(h)
    score = layers.Dense(1, kernel_initializer=init(2), name="score")(h)
    return keras.Model(inp, {"score": score}, name="rankiqa")


# --------------------------------------------------------------------------- training


def _batches(make_epoch):
    """Endless batches: epochs of ``make_epoch()`` one after another."""
    while True:
        empty = True
        for b in make_epoch():
            empty = False
            yield b
        if empty:
            return


def _level_srocc(predict, blocks, store, size: int, seed: int) -> float:
    """Mean within-block SROCC of -score vs level, one fixed crop per block (inference mode)."""
    from tomoqc.train.rank import evaluate_levels, validation_batches

    if not blocks:
        return float("nan")
    val_x = validation_batches(blocks, store, size=size, crops=1, seed=seed)
    return evaluate_levels(predict, blocks, val_x)["val_srocc"]


def train_rankiqa(
    data_dir,
    out_path,
    *,
    size: int = DEFAULT_SIZE,
    width: float = DEFAULT_WIDTH,
    rank_epochs: int = 10,
    finetune_epochs: int = 10,
    steps_per_epoch: int | None = None,
    references=None,
    seed: int = 0,
    progress: bool = True,
    blocks_per_batch: int = 4,
    batch_size: int = 16,
    margin: float = DEFAULT_MARGIN,
    lr: float = 1e-4,
    finetune_lr: float = 5e-5,
    dropout: float = 0.5,
    check_blocks: int = 24,
    on_step=None,
) -> dict:
    """Train the RankIQA baseline: rank stage, then fine-tuning to the labels.

    Parameters
    ----------
    data_dir : path
        Dataset folder with ``manifest.csv`` (``tomoqc dataset build``); the fine-tune
        stage needs its ``label`` (or ``mos``) column (``tomoqc label``).
    out_path : path
        The ``.keras`` file to write; the model card goes next to it as ``.json``. Both
        are written through temporary files and renamed at the end.
    size : int
        Side of the training crops (at least 32; images must be at least this large).
    width : float in (0, 1]
        Backbone channel multiplier (1.0: VGG16).
    rank_epochs, finetune_epochs : int
        Epochs of each stage (0 skips a stage).
    steps_per_epoch : int, optional
        Batches per epoch in both stages; batches are drawn from passes over the data one
        after another, so an epoch may cover less or more than one pass. Default: one pass
        (``blocks // blocks_per_batch`` rank batches, ``images // batch_size`` fine-tune
        batches).
    references : iterable of str, optional
        Train only on these reference ids (the study's training split); default all.
    seed : int
        Seed of the weights, the crops, the augmentation and the batch order.
    progress : bool
        Show progress bars and a line per epoch.
    on_step : callable, optional
        Called with no argument after every training step of either stage (a caller's own
        progress display: there are ``rank_epochs * steps + finetune_epochs * steps`` of
        them with ``steps_per_epoch``).
    blocks_per_batch : int
        Rank blocks per rank batch (each block holds levels 0-5: six crops).
    batch_size : int
        Crops per fine-tune batch.
    margin : float
        Hinge margin of :func:`tomoqc.train.rank.rank_loss`.
    lr, finetune_lr : float
        Adam learning rates of the two stages.
    dropout : float
        Dropout rate of the head.
    check_blocks : int
        Training blocks (at most) on which the within-block level SROCC is measured
        before and after the rank stage, for the card (0 skips it).

    Returns
    -------
    dict
        ``path`` (the .keras file), ``card_path``, ``card`` (the model card: parameters,
        data, per-epoch losses, timing, steps per second).

    Raises
    ------
    InputError
        The dataset is missing or unreadable, lacks complete rank blocks or labels for the
        requested stages, or does not list every one of ``references``.
    OptionError
        A bad parameter.
    """
    import keras
    import tensorflow as tf

    from tomoqc.train import common
    from tomoqc.train.data import (
        ImageStore,
        chosen_references,
        finetune_samples,
        iterate_block_batches,
        manifest_sha256,
        rank_blocks,
        rank_pairs,
        read_manifest,
        sample_batch,
    )
    from tomoqc.train.finetune import _calibrate_score_head
    from tomoqc.train.rank import _Progress, make_predict
    from tomoqc.train.rank import rank_step as rank_step_fn

    size = int(size)
    if size < 32:
        raise OptionError(f"size must be at least 32 pixels, got {size}")
    for name, v in (("rank_epochs", rank_epochs), ("finetune_epochs", finetune_epochs)):
        if int(v) < 0:
            raise OptionError(f"{name} must be >= 0, got {v}")
    if steps_per_epoch is not None and int(steps_per_epoch) < 1:
        raise OptionError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if int(blocks_per_batch) < 1 or int(batch_size) < 1:
        raise OptionError("blocks_per_batch and batch_size must be >= 1")
    if margin <= 0:
        raise OptionError(f"margin must be positive, got {margin}")
    out_path = Path(out_path)
    if out_path.suffix != ".keras":
        raise OptionError(f"the output must be a .keras file, got {out_path}")

    t_start = time.monotonic()
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    refs = chosen_references(rows, references, data_dir)
    store = ImageStore(data_dir)
    blocks = rank_blocks(rows, references=refs)
    samples = finetune_samples(rows, references=refs)
    if rank_epochs and len(blocks) < blocks_per_batch:
        raise InputError(
            data_dir,
            f"only {len(blocks)} complete rank blocks (reference + levels 1-5 of one distortion) among the "
            f"training references; the rank stage needs at least {blocks_per_batch}",
        )
    if finetune_epochs and len(samples) < batch_size:
        raise InputError(
            data_dir / "manifest.csv",
            f"{len(samples)} labelled images among the training references (column label or mos); the fine-tune "
            f"stage needs at least {batch_size} (label the dataset with `tomoqc label`)",
        )

    common.set_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_rankiqa(input_size=None, width=width, dropout=dropout, seed=seed)
    prog = _Progress(progress)
    history: list[dict] = []
    timing: dict[str, float] = {}
    checks: dict[str, float] = {}
    n_check = min(len(blocks), max(0, int(check_blocks)))
    check = [blocks[i] for i in sorted(np.random.default_rng(seed + 3).permutation(len(blocks))[:n_check])]
    predict = make_predict(model)
    if check:
        checks["level_srocc_before_rank"] = _level_srocc(predict, check, store, size, seed + 4)

    def run_stage(name, epochs, n_steps, batches, step_fn):
        t0 = time.monotonic()
        steps = 0
        with prog:
            for epoch in range(1, epochs + 1):
                task = prog.start(f"{name} epoch {epoch}/{epochs}", n_steps)
                losses = []
                for _ in range(n_steps):
                    losses.append(float(step_fn(*next(batches))))
                    prog.advance(task, f"loss {np.mean(losses[-20:]):.4f}")
                    if on_step is not None:
                        on_step()
                steps += len(losses)
                row = {"stage": name, "epoch": epoch, "steps": len(losses), "loss": float(np.mean(losses)),
                       "seconds": round(time.monotonic() - t0, 3)}
                history.append(row)
                if progress:
                    prog.note(f"{name} epoch {epoch}: loss {row['loss']:.4f} ({row['seconds']:.0f} s)")
        dt = time.monotonic() - t0
        timing[f"{name}_seconds"] = round(dt, 3)
        timing[f"{name}_steps"] = steps
        timing[f"{name}_steps_per_second"] = round(steps / dt, 4) if dt > 0 else float("nan")

    # ---- rank stage
    n_rank = 0
    if rank_epochs:
        n_rank = int(steps_per_epoch) if steps_per_epoch else max(1, len(blocks) // blocks_per_batch)
        better, worse = rank_pairs(blocks_per_batch, blocks[0].levels)
        rank_vars = model.trainable_variables
        rank_opt = keras.optimizers.Adam(learning_rate=lr)
        rank_opt.build(rank_vars)
        rank_step = rank_step_fn(model, rank_vars, rank_opt, better, worse, margin)

        rank_batches = (
            (x,) for x in _batches(lambda: iterate_block_batches(
                blocks, store, blocks_per_batch=blocks_per_batch, size=size, rng=rng))
        )
        run_stage("rank", int(rank_epochs), n_rank, rank_batches, rank_step)
        if check:
            checks["level_srocc_after_rank"] = _level_srocc(predict, check, store, size, seed + 4)

    # ---- fine-tune stage
    n_ft = 0
    score_map = None
    if finetune_epochs:
        n_ft = int(steps_per_epoch) if steps_per_epoch else max(1, len(samples) // batch_size)
        a, c = _calibrate_score_head(model, samples, store, size, seed)
        score_map = {"slope": a, "intercept": c}
        ft_vars = model.trainable_variables
        ft_opt = keras.optimizers.Adam(learning_rate=finetune_lr)
        ft_opt.build(ft_vars)

        @tf.function
        def ft_step(x, y):
            with tf.GradientTape() as tape:
                s = model(x, training=True)["score"][:, 0]
                loss = tf.reduce_mean(tf.square(s - y))
            ft_opt.apply_gradients(zip(tape.gradient(loss, ft_vars), ft_vars))
            return loss

        def ft_epoch():
            order = rng.permutation(len(samples))
            for i in range(0, len(order) - batch_size + 1, batch_size):
                x, y, _ = sample_batch([samples[j] for j in order[i : i + batch_size]], store, size, rng)
                yield x, y

        run_stage("finetune", int(finetune_epochs), n_ft, _batches(ft_epoch), ft_step)
        if check:
            checks["level_srocc_after_finetune"] = _level_srocc(predict, check, store, size, seed + 4)

    # ---- save: weights and card through temporary names, renamed at the end
    timing["total_seconds"] = round(time.monotonic() - t_start, 3)
    card = {
        "rank_epochs": int(rank_epochs),
        "finetune_epochs": int(finetune_epochs),
        "seed": int(seed),
        "hyperparameters": {
            "size": size, "width": float(width), "rank_epochs": int(rank_epochs),
            "finetune_epochs": int(finetune_epochs), "steps_per_epoch": steps_per_epoch,
            "rank_steps_per_epoch": n_rank, "finetune_steps_per_epoch": n_ft,
            "blocks_per_batch": int(blocks_per_batch), "batch_size": int(batch_size), "margin": float(margin),
            "lr": float(lr), "finetune_lr": float(finetune_lr), "dropout": float(dropout),
            "optimizer": "Adam", "seed": int(seed),
        },
        "command": common.command_line(),
        "data": {"dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
                 "references": refs, "rank_blocks": len(blocks), "labelled_images": len(samples)},
        "score_map_before_finetune": score_map,
        "training_checks": checks,
        "history": history,
        "timing": timing,
    }
    wrapped = RankIQA.from_model(model, size, card=card)
    card_path = wrapped.save(out_path)
    return {"path": out_path, "card_path": card_path, "card": wrapped.card}


# --------------------------------------------------------------------------- inference


class RankIQA:
    """A RankIQA network that scores whole 2-D images of any size.

    Parameters
    ----------
    keras_model : keras.Model
        A model from :func:`build_rankiqa` (or loaded from its ``.keras`` file).
    size : int
        Side of the crops the model was trained on; images are scored on a grid of them.
    path : path, optional
        The file the model came from.
    card : dict, optional
        Its model card.
    max_crops : int, optional
        Score at most this many crops of an image (evenly spaced over its kept crops);
        None scores all.
    """

    def __init__(self, keras_model, size: int, *, path=None, card=None, max_crops: int | None = 256):
        if int(size) < 32:
            raise OptionError(f"size must be at least 32 pixels, got {size}")
        if max_crops is not None and int(max_crops) < 1:
            raise OptionError(f"max_crops must be >= 1, got {max_crops}")
        self.model = keras_model
        self.size = int(size)
        self.path = None if path is None else Path(path)
        self.card = dict(card or {})
        self.max_crops = None if max_crops is None else int(max_crops)
        self._fn = None

    @classmethod
    def from_model(cls, model, size: int, **kw) -> RankIQA:
        """Wrap an in-memory Keras model trained on ``size`` crops."""
        return cls(model, size, **kw)

    def __repr__(self) -> str:
        return f"RankIQA(size={self.size}, path={str(self.path) if self.path else None!r})"

    def save(self, path) -> Path:
        """Write the network to ``path`` (``.keras``) and its card next to it (``.json``).

        The card gets the crop size, width, parameter counts and the weights' SHA-256 on top
        of what :attr:`card` already holds. Both files are written under temporary names
        and renamed. Returns the card's path.
        """
        from tomoqc.models.tiqa import file_sha256
        from tomoqc.train import common

        path = Path(path)
        if path.suffix != ".keras":
            raise OptionError(f"a RankIQA model is saved as a .keras file, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        common.save_keras_atomic(self.model, path)
        sha = file_sha256(path)
        chans = [int(l.filters) for l in self.model.get_layer("vgg16").layers if hasattr(l, "filters")]
        card = {
            "model": "rankiqa",
            "model_id": f"rankiqa-{sha[:12]}",
            "weights": path.name,
            "weights_sha256": sha,
            "size": self.size,
            "width": self.card.get("hyperparameters", {}).get("width", chans[0] / 64.0),
            "channels": chans,
            "input": "grey [0, 1] scaled to [-1, 1] and replicated to 3 channels",
            "parameters": {"backbone": int(self.model.get_layer("vgg16").count_params()),
                           "total": int(self.model.count_params())},
            **{k: v for k, v in self.card.items() if k not in ("model_id", "weights", "weights_sha256", "size")},
            "test_time_sampling": {"mode": "grid", "patch": self.size, "max_crops": self.max_crops,
                                   "aggregate": "mean over the crops with sample "
                                                "(patch_validity, else patch_has_structure)"},
        }
        card.setdefault("versions", common.versions())
        card_path = path.with_suffix(".json")
        common.write_model_card(card_path, card)
        self.card, self.path = card, path
        return card_path

    def _scores(self, crops: np.ndarray) -> np.ndarray:
        """Raw scores of normalised crops (n, s, s), in fixed-size batches (one trace)."""
        if self._fn is None:
            from tomoqc.train.rank import make_predict

            self._fn = make_predict(self.model)
        out = []
        for i in range(0, len(crops), _PREDICT_BATCH):
            chunk = crops[i : i + _PREDICT_BATCH]
            m = len(chunk)
            if m < _PREDICT_BATCH:
                chunk = np.concatenate([chunk, np.zeros((_PREDICT_BATCH - m,) + chunk.shape[1:], np.float32)])
            out.append(np.asarray(self._fn(np.ascontiguousarray(chunk)[..., None]))[:m])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def crops(self, image) -> np.ndarray:
        """The normalised crops of one image that are scored, (m, size, size); m may be 0.

        The image is normalised (:func:`tomoqc.preprocess.normalize_slice`), padded by
        reflection to at least ``size`` on each side, and cut into the grid of
        :func:`tomoqc.models.tiqa.patch_grid`; crops that pass
        :func:`tomoqc.preprocess.patch_validity` are kept, or, when none does, those with
        :func:`tomoqc.preprocess.patch_has_structure`. A constant image gives none.
        """
        from tomoqc.models.tiqa import extract_patches, patch_grid
        from tomoqc.preprocess import normalize_slice_flagged, outside_values, patch_has_structure, patch_validity

        img, constant = normalize_slice_flagged(image)
        if constant:
            return np.zeros((0, self.size, self.size), np.float32)
        outside = outside_values(img)
        h, w = img.shape
        if h < self.size or w < self.size:
            img = np.pad(img, ((0, max(0, self.size - h)), (0, max(0, self.size - w))), mode="symmetric")
        _, _, starts = patch_grid(img.shape, self.size)
        pats = extract_patches(img, starts, self.size)
        keep = [k for k in range(len(pats)) if patch_validity(pats[k], outside=outside)]
        if not keep:
            keep = [k for k in range(len(pats)) if patch_has_structure(pats[k])]
        if self.max_crops is not None and len(keep) > self.max_crops:
            keep = [keep[i] for i in np.linspace(0, len(keep) - 1, self.max_crops).round().astype(int)]
        return pats[keep]

    def predict(self, images) -> np.ndarray:
        """One score per image (higher is better; the label scale after fine-tuning).

        Parameters
        ----------
        images : sequence of 2-D arrays, or an array (n, H, W) or (H, W)
            Images of any size, dtype and intensity scale.

        Returns
        -------
        ndarray of float32, shape (n,)
            The mean score over each image's kept crops (:meth:`crops`); NaN for an image
            with no crop to score (constant, or without structure).
        """
        if isinstance(images, np.ndarray):
            images = [images] if images.ndim == 2 else list(images)
        images = list(images)
        per_image, owners = [], []
        for i, im in enumerate(images):
            a = np.asarray(im)
            if a.ndim != 2:
                raise InputError(None, f"image {i}: expected a 2-D array, got shape {a.shape}")
            c = self.crops(a)
            per_image.append(c)
            owners.append(np.full(len(c), i))
        out = np.full(len(images), np.nan, np.float32)
        if not images or not any(len(c) for c in per_image):
            return out
        scores = self._scores(np.concatenate(per_image))
        owners_a = np.concatenate(owners)
        for i in range(len(images)):
            sel = owners_a == i
            if sel.any():
                out[i] = scores[sel].mean()
        return out


def load_rankiqa(path, *, max_crops: int | None = 256) -> RankIQA:
    """Load a RankIQA model written by :func:`train_rankiqa`.

    The crop size comes from the model card next to the file (``.json``).

    Raises
    ------
    InputError
        The file or its card is missing or unreadable, or it is not a RankIQA network.
    """
    import json

    p = Path(path)
    if not p.exists():
        raise InputError(p, "RankIQA model file not found")
    if p.is_dir():
        raise InputError(p, "expected a .keras model file, got a folder")
    if not zipfile.is_zipfile(p):
        raise InputError(p, "not a Keras model file (.keras archive); the file is corrupt or of another type")
    card_path = p.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text())
        size = int(card["size"])
    except FileNotFoundError:
        raise InputError(card_path, "model card of the RankIQA model not found") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(card_path, f"unreadable model card (needs 'size'): {type(err).__name__}: {err}") from None
    import keras

    try:
        km = keras.saving.load_model(os.fspath(p), compile=False)
    except Exception as err:  # a broken archive raises many different types
        raise InputError(p, f"cannot load the model: {type(err).__name__}: {err}".splitlines()[0][:300]) from None
    if not isinstance(km.output, dict) or "score" not in km.output:
        raise InputError(p, "not a RankIQA model: expected an output 'score'")
    try:
        km.get_layer("vgg16")
    except ValueError:
        raise InputError(p, "not a RankIQA model: no 'vgg16' backbone") from None
    return RankIQA(km, size, path=p, card=card, max_crops=max_crops)
