"""Training on a tiny generated set: the rank loss falls and ranking improves; resume and signals."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tomoqc.errors import InputError, OptionError


def test_rank_training_improves_ranking(tiny, small_tiqa, tmp_path):
    from tomoqc.train.rank import train_rank

    res = train_rank(tiny, tmp_path / "rank", init=small_tiqa, epochs=12, blocks_per_batch=3, crop=64, lr=1e-3,
                     margin=6.0, val_size=96, val_crops=1, recalibrate_batches=2, seed=1, progress=False,
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


def test_signal_saves_state_and_resume_finishes(tiny, small_tiqa, tmp_path):
    from tomoqc.train.rank import train_rank

    out = tmp_path / "run"
    kw = dict(init=small_tiqa, epochs=4, blocks_per_batch=3, crop=48, lr=1e-3, val_size=64, val_crops=1,
              recalibrate_batches=1, seed=2, progress=False, val_references=["r00001"])

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


def test_finetune_regresses_labels(tiny_labelled, small_tiqa, tmp_path):
    from tomoqc.train.finetune import train_finetune

    res = train_finetune(tiny_labelled, tmp_path / "ft", init=small_tiqa, epochs=6, batch_size=8, crop=64,
                         lr=1e-3, val_size=96, val_crops=1, recalibrate_batches=2, seed=3, progress=False,
                         val_references=["r00002"], patience=10)
    h = res["history"]
    # from a new network (no rank stage) a few epochs fit the training labels
    assert np.mean([r["mse"] for r in h[-2:]]) < 0.6 * h[1]["mse"]
    assert 0.0 <= h[-1]["val_severity_acc"] <= 1.0
    card = json.loads((tmp_path / "ft" / "model_card.json").read_text())
    assert card["stage"] == "finetune" and card["test_time_sampling"]["mode"] == "grid"
    # the optional rank, distortion-group and severity-margin terms run together from the
    # fine-tuned model and are recorded in the card
    r3 = train_finetune(tiny_labelled, tmp_path / "ft3", init=res["best"], epochs=1, batch_size=8, crop=64,
                        lr=1e-4, val_size=96, val_crops=1, recalibrate_batches=1, seed=3, progress=False,
                        val_references=["r00002"], rank_weight=0.5, group_weight=1.0, group_size=4,
                        severity_margin_weight=1.0, group_kinds=("noise", "ring", "ring"), rank_kinds=("ring",))
    assert np.isfinite(r3["history"][-1]["loss"])
    hp = json.loads((tmp_path / "ft3" / "model_card.json").read_text())["hyperparameters"]
    assert hp["rank_weight"] == 0.5
    assert hp["group_weight"] == 1.0 and hp["group_size"] == 4 and hp["severity_margin_weight"] == 1.0
    assert hp["group_kinds"] == ["noise", "ring", "ring"] and hp["rank_kinds"] == ["ring"]
    # unknown or empty kinds are refused before anything is written
    for bad in ({"group_kinds": ("ring", "streak")}, {"group_kinds": ()}, {"rank_kinds": ()}, {"rank_kinds": ("x",)}):
        with pytest.raises(OptionError):
            train_finetune(tiny_labelled, tmp_path / "bad", init=res["best"], epochs=1, batch_size=8, crop=64,
                           progress=False, val_references=["r00002"], **bad)
        assert not (tmp_path / "bad").exists()


def test_finetune_learns_only_from_the_given_references(tiny_labelled, small_tiqa, tmp_path, capsys):
    """``references=`` (a study's train split) keeps every other reference out of training and
    validation: their images are deleted here, so reading any of them would fail."""
    import csv
    import shutil

    from tomoqc.train.finetune import train_finetune

    data = tmp_path / "data"
    shutil.copytree(tiny_labelled, data)
    with open(data / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    refs = sorted({r["reference"] for r in rows})
    keep, gone = refs[:3], refs[3:]
    assert gone
    for r in rows:
        if r["reference"] in gone:
            (data / r["file"]).unlink(missing_ok=True)
    res = train_finetune(data, tmp_path / "ft", init=small_tiqa, epochs=1, batch_size=4, crop=64, lr=1e-4,
                         val_size=96, val_crops=1, recalibrate_batches=1, seed=3, progress=False,
                         references=keep, val_references=[keep[-1]])
    assert np.isfinite(res["history"][-1]["loss"])
    d = json.loads((tmp_path / "ft" / "model_card.json").read_text())["data"]
    assert d["references"] == keep and d["train_references"] == 2 and d["val_references"] == [keep[-1]]
    assert d["train_images"] == sum(r["reference"] in keep[:2] for r in rows)
    assert d["val_images"] == sum(r["reference"] == keep[-1] for r in rows)
    # a reference the manifest lacks, or a validation reference outside the chosen ones, is
    # refused before anything is written
    with pytest.raises(InputError, match="manifest"):
        train_finetune(data, tmp_path / "bad1", init=small_tiqa, epochs=1, progress=False, references=["nope"])
    with pytest.raises(OptionError, match="empty"):
        train_finetune(data, tmp_path / "bad1", init=small_tiqa, epochs=1, progress=False, references=[])
    with pytest.raises(OptionError, match="string"):
        train_finetune(data, tmp_path / "bad1", init=small_tiqa, epochs=1, progress=False, references=keep[0])
    with pytest.raises(OptionError, match=gone[0]):
        train_finetune(data, tmp_path / "bad2", init=small_tiqa, epochs=1, progress=False, references=keep,
                       val_references=[gone[0]])
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()
    # the command line passes them comma-separated, and names the manifest when one is unknown
    from tomoqc.cli import main

    capsys.readouterr()
    code = main(["train", "finetune", "--data", str(data), "--out", str(tmp_path / "bad3"), "--init", str(small_tiqa),
                 "--references", f"{keep[0]}, nope", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "manifest.csv" in err and "nope" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad3").exists()


def test_severity_margin_loss_matches_a_plain_loop():
    from tomoqc.train.finetune import severity_margin_loss

    rng = np.random.default_rng(0)
    p = rng.random((40, 3)).astype(np.float32)
    target = np.zeros((40, 3), np.float32)
    for i in range(40):
        kind = i % 5  # 0-2: one distortion, 3: clean, 4: a mixture of two
        if kind < 3:
            target[i, kind] = rng.integers(1, 6) / 5
        elif kind == 4:
            target[i, [0, 2]] = 0.4
    m = 0.1
    terms = []
    for pi, ti in zip(p, target):
        nz = np.flatnonzero(ti)
        if len(nz) == 1:
            others = [pi[j] for j in range(3) if j != nz[0]]
            terms.append(max(0.0, m - (pi[nz[0]] - max(others))))
    expected = np.mean(terms)
    assert float(severity_margin_loss(p, target, m)) == pytest.approx(expected, rel=1e-5)
    # the right distortion far ahead everywhere: no loss; no single-distortion row: 0
    good = np.where(target > 0, 0.9, 0.1).astype(np.float32)
    assert float(severity_margin_loss(good, target, m)) == 0.0
    assert float(severity_margin_loss(p[3:4], target[3:4], m)) == 0.0


def test_distortion_groups_are_one_type_from_distinct_references():
    from tomoqc.train.data import Sample
    from tomoqc.train.finetune import _draw_group, _group_pools

    samples = []
    for r in range(12):
        samples.append(Sample(f"r{r}.npy", f"r{r}", 5.0, np.zeros(3, np.float32), "none", 0, "image"))
        for d in ("noise", "blur", "ring"):
            for lv in range(1, 6):
                samples.append(Sample(f"r{r}_{d}{lv}.npy", f"r{r}", 5.0 - lv / 2, np.zeros(3, np.float32), d, lv,
                                      "image"))
    pools = _group_pools(samples)
    rng = np.random.default_rng(1)
    n_clean = 0
    for _ in range(200):
        g = _draw_group(pools, "ring", 8, rng)
        assert len(g) == 8 and {s.distortion for s in g} <= {"ring", "none"}
        ring_refs = [s.reference for s in g if s.distortion == "ring"]
        assert len(ring_refs) == len(set(ring_refs))  # 12 references: never one twice
        n_clean += sum(s.distortion == "none" for s in g)
    assert 0.10 < n_clean / 1600 < 0.24  # about 1 slot in 6
    # without clean references or without one of the types there are no groups
    assert _group_pools([s for s in samples if s.distortion != "none"]) == {}


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


def test_cli_train_rank_and_errors(tiny, small_tiqa, tmp_path, capsys):
    from tomoqc.cli import main

    out = tmp_path / "cli"
    code = main(["train", "rank", "--data", str(tiny), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--crop", "48", "--lr", "1e-3", "--init", str(small_tiqa), "--no-progress"])
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


def test_validation_srocc_by_distortion_type_and_balanced_score(tmp_path):
    """A predictor right on noise and blur and reversed on rings: SROCC +1, +1, -1 by type."""
    from tomoqc.train.data import ImageStore, Sample
    from tomoqc.train.finetune import evaluate_samples

    samples = []
    for i in range(24):
        img = np.zeros((32, 32), np.float32)
        img[:, i + 1 :] = 1.0  # the image's id is written in where the step is
        np.save(tmp_path / f"{i}.npy", img)
        dist = ["none", "noise", "blur", "ring"][i % 4]
        level = 0 if dist == "none" else 1 + (i // 4) % 5
        sev = np.zeros(3, np.float32)
        if dist != "none":
            sev[["noise", "blur", "ring"].index(dist)] = level / 5
        # references on top, distorted labels spread out and distinct
        label = 5.0 if dist == "none" else 4.5 - 0.1 * i
        samples.append(Sample(f"{i}.npy", f"r{i // 4}", label, sev, dist, level, "image"))
    labels = {i: s.label for i, s in enumerate(samples)}

    def predict(x):
        ids = np.rint(32 - x[..., 0].mean(axis=(1, 2)) * 32 - 1).astype(int)
        # rings: 10 - label puts every ring image above the references, in reverse order
        score = np.array([10 - labels[i] if samples[i].distortion == "ring" else labels[i] for i in ids], np.float32)
        sev = np.array([samples[i].severity for i in ids], np.float32)  # always the right type
        return score, sev

    ev = evaluate_samples(predict, samples, ImageStore(tmp_path), size=32, crops=1)
    assert ev["srocc_by_type"]["noise"] == pytest.approx(1.0)
    assert ev["srocc_by_type"]["blur"] == pytest.approx(1.0)
    assert ev["srocc_by_type"]["ring"] == pytest.approx(-1.0)
    assert ev["severity_acc"] == 1.0
    assert ev["balanced"] == pytest.approx((1 + 1 - 1 + 1) / 4)
