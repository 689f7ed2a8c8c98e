"""Helpers of scripts/train_default_model.py that build the bundled model's extra references."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ellipse_references_are_seeded_smooth_bodies_in_air(tmp_path):
    mod = _script()
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert mod.ellipse_volume(a, n=6, size=128, seed=3) == 6
    mod.ellipse_volume(b, n=6, size=128, seed=3)
    va, vb = np.load(a), np.load(b)
    assert va.shape == (6, 128, 128) and va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)  # same seed, same slices
    mod.ellipse_volume(b, n=6, size=128, seed=4)
    assert not np.array_equal(va, np.load(b))
    assert va.min() >= 0 and va.max() <= 1
    for img in va:
        # air in the corners, a brighter body in the middle
        corners = np.concatenate([img[:8, :8].ravel(), img[:8, -8:].ravel(), img[-8:, :8].ravel(), img[-8:, -8:].ravel()])
        assert corners.mean() < 0.1 and img[48:80, 48:80].mean() > corners.mean() + 0.15
        # smooth: neighbouring pixels differ far less than the contrast between body and air
        assert np.abs(np.diff(img, axis=1)).mean() < 0.02


def test_merged_manifest_lists_every_image_with_prefixed_references(tmp_path):
    import csv

    mod = _script()
    for name, refs in (("one", ["r0", "r1"]), ("two", ["r0"])):
        d = tmp_path / name
        (d / "img").mkdir(parents=True)
        with open(d / "manifest.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["reference", "file", "label"])
            for r in refs:
                np.save(d / "img" / f"{r}.npy", np.zeros((4, 4), np.float32))
                w.writerow([r, f"img/{r}.npy", "5.0"])
    out = tmp_path / "merged"
    mod.merge_datasets(out, [("", tmp_path / "one"), ("x_", tmp_path / "two")])
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["reference"] for r in rows] == ["r0", "r1", "x_r0"]
    assert all((out / r["file"]).resolve().is_file() for r in rows)


def test_every_set_is_labelled_on_the_training_anchors(tmp_path):
    import csv
    import json

    from tomoqc.distort.image import apply
    from tomoqc.phantom import electrode_slice

    mod = _script()

    def make(root, seed, levels):
        root.mkdir()
        ref = electrode_slice((64, 64), seed=seed)[0]
        rows = [("r0", "none", 0, "r0.npy")]
        np.save(root / "r0.npy", ref)
        for lv in levels:
            np.save(root / f"n{lv}.npy", apply(ref, "noise", lv, rng=np.random.default_rng(lv)))
            rows.append(("r0", "noise", lv, f"n{lv}.npy"))
        with open(root / "manifest.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["reference", "domain", "distortion", "level", "file", "label_file", "params", "seed"])
            w.writerows([(r, "image", d, lv, f, "", "{}", seed) for r, d, lv, f in rows])

    train, other = tmp_path / "train", tmp_path / "other"
    make(train, 1, [1, 2, 3, 4, 5])
    make(other, 2, [1, 2])  # alone, its worst image (level 2) would map to 1
    anchors, shared = mod.label_sets(train, [other], intensity="reference")
    assert shared == ["train", "other"]
    s_train = json.loads((train / "labels.json").read_text())
    s_other = json.loads((other / "labels.json").read_text())
    assert s_train["intensity"] == s_other["intensity"] == "reference"
    for n, a in s_other["anchors"].items():
        assert a["worst"] == anchors[n] == s_train["anchors"][n]["worst"]
    labels = [float(r["label"]) for r in csv.DictReader(open(other / "manifest.csv"))]
    assert min(labels) > 1.5  # level 2 noise is not the worst of the training phantoms
    # a set labelled earlier on its own anchors is kept, and not listed as sharing them
    own = tmp_path / "own"
    make(own, 3, [1, 2])
    from tomoqc.labels import project_dataset

    project_dataset(own, intensity="reference", progress=False)
    assert mod.label_sets(train, [other, own], intensity="reference")[1] == ["train", "other"]
    # a training set labelled in other units is refused, not silently mixed
    import pytest

    with pytest.raises(SystemExit, match="intensities"):
        mod.label_sets(train, [other], intensity="absolute")


TINY = ["--references", "3", "--eval-references", "2", "--size", "224", "--sample-crops", "1",
        "--rank-epochs", "1", "--rank-steps", "2", "--finetune-epochs", "1", "--finetune-steps", "2",
        "--refine-epochs", "1", "--refine-steps", "2", "--seed", "5", "--eval-seed", "6",
        "--ellipse-references", "2", "--severity-head-epochs", "2", "--measured-terms", "none",
        "--series-refine-epochs", "0", "--score-head-steps", "0"]


def _train_and_install(mod, work, install):
    """The documented command on a tiny budget; returns its model card and the installed weights."""
    import json

    assert mod.main(["--work", str(work), "--install", str(install), *TINY]) == 0
    return json.loads((install / "tiqa_default.json").read_text()), install / "tiqa_default.keras"


@pytest.mark.slow  # ~6 min on 2 cores (every stage traces an EfficientNet); the stages are tested in test_train.py
def test_one_command_trains_evaluates_and_installs(tmp_path):
    """The documented command end to end, on a tiny budget: data, labels, rank, finetune,
    refine, evaluation and a model card whose hash is the installed file's."""
    import hashlib

    card, weights = _train_and_install(_script(), tmp_path / "w", tmp_path / "first")
    assert card["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["model_id"] == "tiqa-default-" + card["weights_sha256"][:12]
    assert card["command"].startswith("python scripts/train_default_model.py --work")
    assert card["data"]["train"]["references"] == 3 and card["data"]["evaluation"]["seed"] == 6
    rows = {(r["domain"], r["distortion"]) for r in card["evaluation"]["table"]}
    assert {(d, t) for d in ("image", "physics") for t in ("noise", "blur", "ring")} <= rows
    for stage in ("rank", "finetune", "refine"):
        assert card["training"][stage]["hyperparameters"]["steps_per_epoch"] == 2
    assert card["training"]["refine_from"] is None
    assert card["data"]["train_ellipses"]["references"] == 2


@pytest.mark.slow  # the whole command twice
def test_a_refine_of_the_installed_model_keeps_the_lineage(tmp_path):
    """A refine of the installed model records what it was refined from (the data and the finished
    stages of the work folder are reused; the severity-head stage is redone because it started
    from another model)."""
    import json
    import shutil

    mod = _script()
    work = tmp_path / "w"
    card, weights = _train_and_install(mod, work, tmp_path / "first")
    shutil.rmtree(work / "refine")
    second = tmp_path / "second"
    assert mod.main(["--work", str(work), "--refine-from", str(weights), "--install", str(second), *TINY]) == 0
    card2 = json.loads((second / "tiqa_default.json").read_text())
    parent = card2["training"]["refine_from"]
    assert parent["sha256"] == card["weights_sha256"] and parent["model_id"] == card["model_id"]
    assert parent["command"] == card["command"]
    assert parent["refine"]["hyperparameters"] == card["training"]["refine"]["hyperparameters"]
    assert parent["refine_from"] is None  # the first model was trained from scratch
    # stages that ran before the refine are the parent's
    assert card2["training"]["rank"] == card["training"]["rank"]
    assert card2["weights_sha256"] != card["weights_sha256"]
    head = card2["training"]["severity_head"]
    assert head["init_sha256"] != card["training"]["severity_head"]["init_sha256"]
    assert card2["score_calibration"]["n"] > 10
