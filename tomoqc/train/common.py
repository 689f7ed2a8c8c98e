"""Pieces shared by the training stages: checkpoints and resume, signals, logs, curves, model cards.

A training run writes into its output folder:

- ``state/``: the latest training state (weights, optimizer variables, epoch, RNG state,
  history), replaced atomically after every epoch, so an interrupted run resumes where the
  last complete epoch ended (``--resume``);
- ``log.csv``: one row per epoch;
- ``curves.png``: loss and validation SROCC per epoch;
- ``best.keras`` and ``last.keras``: the best model by validation SROCC and the last one;
- ``model_card.json``: data manifest hash, command, seed, versions, validation metrics and
  the SHA-256 of the weights.

SIGTERM and SIGUSR1 (what SLURM sends before a time limit or a pre-emption) make the run
save its state at the end of the current step and stop cleanly.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError

STATE_DIR = "state"


# --------------------------------------------------------------------------- atomic files


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_keras_atomic(model, path) -> None:
    """``model.save`` to a temporary ``.keras`` sibling, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- state


def _optimizer_arrays(optimizer) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in optimizer.variables]


def save_state(out_dir, *, model, optimizer, epoch: int, rng: np.random.Generator, extra: dict) -> Path:
    """Save the full training state to ``out_dir/state`` atomically.

    The state is written into a fresh temporary folder; the old state folder is then
    moved aside and the new one renamed into place, and ``state.json`` inside names the
    epoch. A crash at any moment leaves either the old or the new complete state
    (``load_state`` also accepts the moved-aside copy).
    """
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".state.", dir=out_dir))
    try:
        model.save(tmp / "model.keras")
        arrays = _optimizer_arrays(optimizer)
        np.savez(tmp / "optimizer.npz", *arrays)
        meta = {
            "epoch": int(epoch),
            "rng": rng.bit_generator.state,
            "n_optimizer_variables": len(arrays),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        (tmp / "state.json").write_text(json.dumps(meta, default=_json_default, indent=1))
        final = out_dir / STATE_DIR
        old = out_dir / (STATE_DIR + ".old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def has_state(out_dir) -> bool:
    out_dir = Path(out_dir)
    return any((out_dir / d / "state.json").is_file() for d in (STATE_DIR, STATE_DIR + ".old"))


def load_state(out_dir):
    """Load ``(keras_model, optimizer_arrays, meta)`` from ``out_dir/state``."""
    import keras

    out_dir = Path(out_dir)
    for d in (STATE_DIR, STATE_DIR + ".old"):
        sd = out_dir / d
        if (sd / "state.json").is_file() and (sd / "model.keras").is_file():
            break
    else:
        raise InputError(out_dir, "no saved training state to resume from (run without --resume)")
    try:
        meta = json.loads((sd / "state.json").read_text())
        model = keras.saving.load_model(sd / "model.keras", compile=False)
        with np.load(sd / "optimizer.npz") as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    except Exception as err:
        raise InputError(sd, f"cannot read the saved training state: {type(err).__name__}: {err}") from None
    return model, arrays, meta


class Start:
    """Where a training run starts: from its saved state (``resume``) or afresh.

    ``model`` and ``optimizer_arrays`` are the saved ones, or None on a fresh start (the
    caller builds its model); ``epoch``, ``history``, ``best`` and ``rng`` continue the saved
    run or start at 0, [], -inf and a generator seeded with ``seed``; ``meta`` is the saved
    ``state.json`` (empty on a fresh start) for what else a stage keeps there.
    """

    def __init__(self, out_dir, *, resume: bool, seed: int):
        if resume:  # load_state names the folder when there is nothing to resume
            self.model, self.optimizer_arrays, self.meta = load_state(out_dir)
            self.rng = restore_rng(self.meta["rng"])
        else:
            self.model, self.optimizer_arrays, self.meta = None, None, {}
            self.rng = np.random.default_rng(seed)
        self.epoch = int(self.meta.get("epoch", 0))
        self.history = list(self.meta.get("history", []))
        self.best = float(self.meta.get("best", -np.inf))


def build_optimizer(optimizer, variables, arrays=None, *, where=None) -> None:
    """Build ``optimizer`` for ``variables`` and, when resuming, load its saved ``arrays``
    (from :func:`load_state`) into it; ``where`` (the training folder) names a mismatch."""
    optimizer.build(variables)
    if arrays is None:
        return
    if len(arrays) != len(optimizer.variables):
        raise InputError(where, "saved optimizer state does not match the model")
    for v, a in zip(optimizer.variables, arrays):
        v.assign(a)


def restore_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- signals


class StopFlag:
    """Catches SIGTERM and SIGUSR1 while active; ``bool(flag)`` tells whether one arrived.

    Use as a context manager around the training loop; previous handlers are restored on
    exit. Outside the main thread (where handlers cannot be set) it does nothing.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.signum = None
        self._old = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        return False


# --------------------------------------------------------------------------- logs


class CsvLog:
    """Per-epoch CSV log; on resume, rows after the resumed epoch are dropped."""

    def __init__(self, path, fields, *, resume_epoch: int | None = None):
        self.path = Path(path)
        self.fields = list(fields)
        rows = []
        if resume_epoch is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r.get("epoch", 0)) <= resume_epoch]
        self._write(rows)

    def _write(self, rows) -> None:
        lines = []

        class _W:
            def write(self, s):
                lines.append(s)

        w = csv.DictWriter(_W(), fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        atomic_write_text(self.path, "".join(lines))

    def rows(self) -> list[dict]:
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n").writerow(
                {k: _fmt(row.get(k)) for k in self.fields}
            )


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def plot_curves(log_path, png_path, *, loss_key: str = "loss", metric_keys=("val_srocc",), title: str = "",
                metric_label: str = "SROCC (validation, inference mode)", ylim=(-1.05, 1.05)) -> Path:
    """Loss and validation metrics per epoch from a CSV log, as a PNG (``metric_label`` and
    ``ylim`` name and bound the metrics' axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ep = [int(r["epoch"]) for r in rows]

    def col(k):
        return [float(r[k]) if r.get(k) not in (None, "", "nan") else np.nan for r in rows]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ep, col(loss_key), "o-", label="training loss")
    if rows and "val_loss" in rows[0]:
        a1.plot(ep, col("val_loss"), "s--", label="validation loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a1.grid(alpha=0.3)
    for k in metric_keys:
        if rows and k in rows[0]:
            a2.plot(ep, col(k), "o-", label=k)
    a2.set_xlabel("epoch")
    a2.set_ylabel(metric_label)
    a2.set_ylim(*ylim)
    a2.axhline(0, color="k", lw=0.5)
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


# --------------------------------------------------------------------------- model card


def versions() -> dict:
    import keras
    import tensorflow as tf

    from tomoqc import __version__

    return {
        "tomoqc": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
    }


def write_model_card(path, card: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(card, indent=2, default=_json_default) + "\n")
    return path


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(int(seed))
