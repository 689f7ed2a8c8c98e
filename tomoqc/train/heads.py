"""Refit the severity head of a trained TIQA network on frozen features.

The score and severity heads sit side by side on the pooled backbone features
(:func:`tomoqc.models.tiqa.build_tiqa`). Fine-tuning trains both together with the
backbone, so the severity head is tied to whatever the score needed last. This stage keeps
the backbone and the score head fixed (scores do not change at all) and fits the severity
head alone:

1. every labelled image of a dataset gives ``crops`` random crops (the same crop choice
   and flips/rotations as fine-tuning, :func:`tomoqc.train.data.sample_batch`), whose
   backbone features are computed once, in inference mode;
2. the head (its dense layer, dropout and sigmoid output, started from the current
   weights) is trained with the fine-tuning stage's binary cross-entropy on the severity
   targets (level / 5 of each distortion present, :func:`tomoqc.train.data.row_severity`),
   each distortion type weighing alike (a type's single-distortion images get the same
   total weight as any other's);
3. the epoch kept is the one whose held-out references name the distortion of
   single-distortion images at level >= 2 right most often (as
   :func:`tomoqc.train.finetune.evaluate_dataset` counts), measured as the model reports
   it: crops of an image averaged, then taken
   from the median severity of the held-out clean references
   (``clip((s - b) / (1 - b), 0, 1)``, :class:`tomoqc.models.tiqa.TiqaModel`).

Features take one backbone pass per crop, and the head trains in seconds per epoch, so
the stage costs a few minutes on a CPU where a full fine-tuning epoch takes one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tomoqc.errors import OptionError
from tomoqc.train import common
from tomoqc.train.data import DISTORTIONS, ImageStore, finetune_samples, read_manifest, sample_batch, split_references

__all__ = ["refit_severity_head", "severity_accuracy"]

HEAD_LAYERS = ("severity_dense", "severity")


def severity_accuracy(sev, distortion, *, baseline=None) -> float:
    """Share of single-distortion images whose largest severity (from ``baseline``) is theirs.

    Parameters
    ----------
    sev : (n, 3) array
        Raw severities (noise, blur, ring).
    distortion : sequence of str
        Each image's distortion; only ``noise``, ``blur`` and ``ring`` rows count.
    baseline : (3,) array, optional
        Clean-image severities to measure from (zeros by default).
    """
    from tomoqc.models.tiqa import from_baseline

    sev = np.asarray(sev, np.float64)
    b = np.zeros(len(DISTORTIONS)) if baseline is None else np.asarray(baseline, np.float64)
    rel = from_baseline(sev, b)
    single = np.array([d in DISTORTIONS for d in distortion])
    if not single.any():
        return float("nan")
    truth = np.array([DISTORTIONS.index(d) for d, s in zip(distortion, single) if s])
    return float(np.mean(np.argmax(rel[single], axis=1) == truth))


def _features(feat_model, samples, store, *, crops: int, size: int, seed: int, batch: int = 32):
    rng = np.random.default_rng(seed)
    order = [s for s in samples for _ in range(crops)]
    out = None
    for i in range(0, len(order), batch):
        x, _, _ = sample_batch(order[i : i + batch], store, size, rng, augment=True)
        f = np.asarray(feat_model(x, training=False), np.float32)
        if out is None:
            out = np.empty((len(order), f.shape[1]), np.float32)
        out[i : i + len(f)] = f
    return out


def refit_severity_head(
    model_path,
    data_dir,
    out_path,
    *,
    crops: int = 2,
    size: int = 224,
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    target_power: float = 1.0,
    seed: int = 0,
    cache=None,
    log=None,
) -> dict:
    """Fit the severity head of ``model_path`` on ``data_dir`` and save the model to ``out_path``.

    Parameters
    ----------
    model_path : path
        A TIQA ``.keras`` file (its score head and backbone stay as they are).
    data_dir : path
        A labelled dataset (``manifest.csv``, as for fine-tuning).
    out_path : path
        Where the model with the new severity head goes (written atomically).
    crops : int
        Random crops per image whose features are computed.
    epochs, lr, batch_size
        Adam on the binary cross-entropy over the features.
    val_fraction : float
        Share of references held out to pick the epoch.
    target_power : float
        Targets are ``(level / 5) ** target_power``: 1 is the fine-tuning stage's target;
        below 1 a light impairment's target moves away from 0 (0.5: level 1 -> 0.45), which
        makes it easier to name while the severity still grows with level.
    cache : path, optional
        An ``.npz`` file keeping the computed features; reused when it was made from the
        same model file, dataset manifest, crops, size and seed.
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    dict
        ``hyperparameters``, ``history`` (per epoch: loss, val accuracy per type and overall)
        and ``best``, for a model card.
    """
    import keras

    from tomoqc.models.tiqa import file_sha256
    from tomoqc.train.data import manifest_sha256

    if crops < 1 or epochs < 1 or batch_size < 1:
        raise OptionError("crops, epochs and batch_size must be >= 1")
    if not target_power > 0:
        raise OptionError(f"target_power must be > 0, got {target_power}")
    if not 0.0 < val_fraction < 1.0:
        raise OptionError(f"val_fraction must be in (0, 1), got {val_fraction}")
    say = log or (lambda msg: None)
    common.set_seed(seed)
    km = keras.saving.load_model(str(model_path), compile=False)
    try:
        dense, out = (km.get_layer(n) for n in HEAD_LAYERS)
    except ValueError:
        raise OptionError(f"{model_path}: not a TIQA model with layers {', '.join(HEAD_LAYERS)}") from None
    feat_model = keras.Model(km.inputs, dense.input)

    rows = read_manifest(data_dir)
    samples = finetune_samples(rows)
    train_refs, val_refs = split_references({s.reference for s in samples}, val_fraction=val_fraction, seed=seed)
    val_set = set(val_refs)
    tr = [s for s in samples if s.reference not in val_set]
    va = [s for s in samples if s.reference in val_set]
    store = ImageStore(data_dir)
    key = np.array(f"{file_sha256(model_path)} {manifest_sha256(data_dir)} {crops} {size} {seed} {val_fraction}")
    x_tr = x_va = None
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as z:
            if str(z["key"]) == str(key):
                x_tr, x_va = z["train"], z["val"]
                say(f"features from {cache}")
    if x_tr is None:
        t0 = time.time()
        x_tr = _features(feat_model, tr, store, crops=crops, size=size, seed=seed)
        x_va = _features(feat_model, va, store, crops=crops, size=size, seed=seed + 1)
        say(f"features of {len(tr)} + {len(va)} images x {crops} crops in {time.time() - t0:.0f} s")
        if cache is not None:
            tmp = Path(cache).with_name(Path(cache).name + ".partial.npz")
            np.savez(tmp, key=key, train=x_tr, val=x_va)
            tmp.replace(cache)
    y_tr = np.repeat(np.stack([s.severity for s in tr]) ** float(target_power), crops, axis=0)
    # each distortion type's single-distortion images weigh alike (references and mixtures weigh 1)
    kinds = np.array([s.distortion for s in tr])
    w = np.ones(len(tr), np.float32)
    counts = {d: int(np.sum(kinds == d)) for d in DISTORTIONS}
    mean_count = np.mean([c for c in counts.values() if c]) if any(counts.values()) else 1.0
    for d, c in counts.items():
        if c:
            w[kinds == d] = mean_count / c
    w_tr = np.repeat(w, crops)

    # the head alone, started from the model's weights
    inp = keras.Input((x_tr.shape[1],))
    h = keras.layers.Dense(dense.units, activation="relu", name="severity_dense")(inp)
    h = keras.layers.Dropout(km.get_layer("severity_dropout").rate, seed=seed)(h)
    o = keras.layers.Dense(out.units, activation="sigmoid", name="severity")(h)
    head = keras.Model(inp, o)
    head.get_layer("severity_dense").set_weights(dense.get_weights())
    head.get_layer("severity").set_weights(out.get_weights())
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")

    # counted as tomoqc.train.finetune.evaluate_dataset counts: single distortions at level >= 2
    va_kind = [s.distortion if s.level >= 2 or s.distortion == "none" else "-" for s in va]
    clean = np.array([k == "none" for k in va_kind])

    def evaluate() -> dict:
        sev = np.asarray(head.predict(x_va, batch_size=1024, verbose=0), np.float64)
        sev = sev.reshape(len(va), crops, -1).mean(axis=1)
        b = np.median(sev[clean], axis=0) if clean.any() else np.zeros(len(DISTORTIONS))
        rec = {"val_severity_acc": severity_accuracy(sev, va_kind, baseline=b)}
        for d in DISTORTIONS:
            idx = [i for i, k in enumerate(va_kind) if k == d]
            rec[f"val_severity_acc_{d}"] = severity_accuracy(sev[idx], [d] * len(idx), baseline=b) if idx else None
        return rec

    history = [{"epoch": 0, "loss": None, **evaluate()}]
    best = dict(history[0])
    best_weights = head.get_weights()
    say("epoch 0: val severity right " + f"{best['val_severity_acc']:.3f}")
    for ep in range(1, epochs + 1):
        res = head.fit(x_tr, y_tr, sample_weight=w_tr, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        rec = {"epoch": ep, "loss": float(res.history["loss"][-1]), **evaluate()}
        history.append(rec)
        if rec["val_severity_acc"] > best["val_severity_acc"]:
            best, best_weights = dict(rec), head.get_weights()
        say(f"epoch {ep}: loss {rec['loss']:.4f} val severity right {rec['val_severity_acc']:.3f} "
            + " ".join(f"{d} {rec[f'val_severity_acc_{d}']:.2f}" for d in DISTORTIONS
                       if rec[f"val_severity_acc_{d}"] is not None))
    head.set_weights(best_weights)
    dense.set_weights(head.get_layer("severity_dense").get_weights())
    out.set_weights(head.get_layer("severity").get_weights())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    common.save_keras_atomic(km, out_path)
    return {
        "hyperparameters": {"crops": crops, "size": size, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                            "val_fraction": val_fraction, "target_power": target_power, "seed": seed,
                            "type_balanced": True,
                            "select_on": "val_severity_acc", "frozen": "backbone and score head"},
        "data": {"images": len(samples), "train_references": len(train_refs), "val_references": len(val_refs)},
        "history": history,
        "best": best,
    }
