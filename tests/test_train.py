"""Training on a tiny generated set: the rank loss falls and ranking improves; resume and signals."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tomoqc.errors import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tomoqc.dataset import build_dataset

    d = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset(d, references=6, domain="image", size=96, seed=11, mixtures=False, workers=1, progress=False)
    return d


@pytest.fixture(scope="module")
def tiny_labelled(tiny, tmp_path_factory):
    """The tiny set with a label column: a simple decreasing function of the level."""
    d = tmp_path_factory.mktemp("lab") / "data"
    import shutil

    shutil.copytree(tiny, d)
    with open(d / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = f"{5.0 - 0.8 * int(r['level']):.3f}"
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


def test_rank_training_improves_ranking(tiny, tmp_path):
    from tomoqc.train.rank import train_rank

    res = train_rank(tiny, tmp_path / "rank", epochs=12, blocks_per_batch=3, crop=64, lr=1e-3, margin=6.0,
                     val_size=96, val_crops=1, recalibrate_batches=2, seed=1, progress=False,
                     val_references=["r00000"])
    h = res["history"]
    assert [r["epoch"] for r in h] == list(range(13))
    first, last = h[1]["loss"], np.mean([r["loss"] for r in h[-3:]])
    assert last < 0.9 * first, (first, last)
    assert res["best_val_srocc"] > h[0]["val_srocc"] + 0.1
    assert res["best_val_srocc"] > 0.5
    out = tmp_path / "rank"
    for f in ("best.keras", "last.keras", "log.csv", "curves.png", "model_card.json"):
        assert (out / f).is_file(), f
    card = json.loads((out / "model_card.json").read_text())
    assert len(card["weights_sha256"]) == 64 and len(card["data"]["manifest_sha256"]) == 64
    with open(out / "log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 13


def test_signal_saves_state_and_resume_finishes(tiny, tmp_path):
    from tomoqc.train.rank import train_rank

    out = tmp_path / "run"
    kw = dict(epochs=4, blocks_per_batch=3, crop=48, lr=1e-3, val_size=64, val_crops=1, recalibrate_batches=1,
              seed=2, progress=False, val_references=["r00001"])

    def send_when_first_epoch_saved():
        for _ in range(1200):
            if (out / "state" / "state.json").exists():
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    t = threading.Thread(target=send_when_first_epoch_saved, daemon=True)
    t.start()
    r1 = train_rank(tiny, out, **kw)
    t.join()
    assert r1["interrupted"]
    meta = json.loads((out / "state" / "state.json").read_text())
    assert 1 <= meta["epoch"] < 4
    r2 = train_rank(tiny, out, resume=True, **kw)
    assert not r2["interrupted"]
    assert [row["epoch"] for row in r2["history"]] == [0, 1, 2, 3, 4]
    with open(out / "log.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3, 4]
    with pytest.raises(InputError):
        train_rank(tiny, tmp_path / "nothing", resume=True, **kw)


def test_finetune_regresses_labels(tiny_labelled, tmp_path):
    from tomoqc.train.finetune import train_finetune

    res = train_finetune(tiny_labelled, tmp_path / "ft", epochs=6, batch_size=8, crop=64, lr=1e-3,
                         val_size=96, val_crops=1, recalibrate_batches=2, seed=3, progress=False,
                         val_references=["r00002"], patience=10)
    h = res["history"]
    # from a new network (no rank stage) a few epochs fit the training labels
    assert np.mean([r["mse"] for r in h[-2:]]) < 0.6 * h[1]["mse"]
    assert 0.0 <= h[-1]["val_severity_acc"] <= 1.0
    card = json.loads((tmp_path / "ft" / "model_card.json").read_text())
    assert card["stage"] == "finetune" and card["test_time_sampling"]["mode"] == "grid"
    # the optional rank term runs from the fine-tuned model and is recorded in the card
    r2 = train_finetune(tiny_labelled, tmp_path / "ft2", init=res["best"], epochs=1, batch_size=8, crop=64,
                        lr=1e-4, val_size=96, val_crops=1, recalibrate_batches=1, seed=3, progress=False,
                        val_references=["r00002"], rank_weight=0.5)
    assert np.isfinite(r2["history"][-1]["loss"])
    card2 = json.loads((tmp_path / "ft2" / "model_card.json").read_text())
    assert card2["hyperparameters"]["rank_weight"] == 0.5


def test_bad_data(tmp_path):
    from tomoqc.train.finetune import train_finetune
    from tomoqc.train.rank import train_rank

    with pytest.raises(InputError):
        train_rank(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.csv").write_text("reference,file\nr,a.npy\n")
    with pytest.raises(InputError):
        train_rank(tmp_path / "d", tmp_path / "o")
    with pytest.raises(InputError):
        train_finetune(tmp_path / "d", tmp_path / "o")


def test_cli_train_rank_and_errors(tiny, tmp_path, capsys):
    from tomoqc.cli import main

    out = tmp_path / "cli"
    code = main(["train", "rank", "--data", str(tiny), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--crop", "48", "--lr", "1e-3", "--no-progress"])
    assert code == 0
    for f in ("best.keras", "log.csv", "curves.png", "model_card.json"):
        assert (out / f).is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["command"].startswith("tomoqc train rank") and card["seed"] == 0
    capsys.readouterr()
    code = main(["train", "finetune", "--data", str(tiny), "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("tomoqc: error:") and "label" in err and len(err.strip().splitlines()) == 1
    code = main(["train", "rank", "--data", str(tiny), "--out", str(tmp_path / "empty"), "--resume"])
    assert code == 1
