"""Segmentation training: loss values, training data, HTC2022 alignment, the CLI, resume."""

import csv
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
import pytest

from tomoqc.train.segdata import (
    SegItem,
    draw_batch,
    fov_mask,
    htc2022_files,
    htc2022_ground_truth,
    htc2022_items,
    htc2022_recon,
    to_classes,
)

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
if not REALDATA.is_dir():
    REALDATA = Path("/work/shared/realdata")
HAVE_HTC = (REALDATA / "htc2022").is_dir() and any((REALDATA / "htc2022").glob("*_full_recon_fbp_seg.mat"))


# --------------------------------------------------------------------------- loss


def _loss(prob, labels, weights, classes):
    from tomoqc.train.segment import segmentation_loss

    out = segmentation_loss(np.asarray(prob, np.float32), np.asarray(labels), np.asarray(weights, np.float32),
                            classes=classes)
    return [float(v) for v in out]


def test_binary_loss_values():
    g = np.zeros((1, 4, 4), np.uint8)
    g[0, :, :1] = 1  # 4 material pixels of 16
    w = np.ones((1, 4, 4), np.float32)
    # perfect prediction: cross-entropy and Dice vanish
    loss, ce, dice = _loss(g[..., None].astype(np.float32), g, w, 2)
    assert ce < 1e-5 and dice < 1e-5 and loss < 2e-5
    # p = 1/2 everywhere: CE = log 2; Dice = 1 - (2 * 0.5 * 4 + 1) / (0.5 * 16 + 4 + 1)
    loss, ce, dice = _loss(np.full((1, 4, 4, 1), 0.5), g, w, 2)
    assert ce == pytest.approx(math.log(2), rel=1e-5)
    assert dice == pytest.approx(1 - 5 / 13, rel=1e-5)
    assert loss == pytest.approx(ce + dice, rel=1e-6)
    # pixels of weight 0 do not count, whatever is predicted there
    w2 = w.copy()
    w2[0, 2:] = 0
    p = np.full((1, 4, 4, 1), 0.5, np.float32)
    a = _loss(p, g, w2, 2)
    p[0, 2:] = 0.99
    b = _loss(p, g, w2, 2)
    assert a == pytest.approx(b, rel=1e-6)


def test_multiclass_loss_values():
    g = np.array([[[0, 1, 2, 2]]], np.uint8)  # one pixel each of 0 and 1, two of 2
    w = np.ones(g.shape, np.float32)
    loss, ce, dice = _loss(np.full((1, 1, 4, 3), 1 / 3), g, w, 3)
    assert ce == pytest.approx(math.log(3), rel=1e-5)
    # class k with n_k pixels: 1 - (2 n_k / 3 + 1) / (4 / 3 + n_k + 1)
    per = [1 - (2 * n / 3 + 1) / (4 / 3 + n + 1) for n in (1, 1, 2)]
    assert dice == pytest.approx(np.mean(per), rel=1e-5)
    onehot = np.eye(3, dtype=np.float32)[g]
    loss, ce, dice = _loss(onehot, g, w, 3)
    assert ce < 1e-5 and dice < 1e-5


# --------------------------------------------------------------------------- data


def test_class_maps_and_field_of_view():
    from tomoqc.phantom import electrode_slice

    phases = np.array([[0, 1, 2]])
    assert to_classes(phases, 3).tolist() == [[0, 1, 2]]
    assert to_classes(phases, 2).tolist() == [[0, 1, 1]]
    img, lab = electrode_slice((64, 64), seed=3, fov=0.45, offset=0.2)
    m = fov_mask(img.shape, 0.45)
    assert np.all(img[~m] == 0)  # the phantom is blank exactly where the mask says "outside"
    assert np.all(img[m] > 0)  # offset 0.2: every pixel inside holds signal
    assert m.sum() == pytest.approx(math.pi * (0.45 * 64) ** 2, rel=0.03)
    assert fov_mask((8, 8), None) is None


def test_batches_keep_labels_on_their_pixels():
    rng = np.random.default_rng(0)
    img = rng.random((40, 50)).astype(np.float32)  # smaller than the crop in both directions
    item = SegItem(name="t", source="t", labels=(img > 0.5).astype(np.uint8), image=img)
    x, y, w = draw_batch({"t": [item]}, rng, batch_size=6, crop=64)
    assert x.shape == (6, 64, 64, 1) and y.shape == (6, 64, 64) and w.shape == (6, 64, 64)
    # through padding, crops, turns and flips every label stays with its pixel
    np.testing.assert_array_equal(y, (x[..., 0] > 0.5).astype(np.uint8))
    # only the original pixels count: 40 x 50 of each 64 x 64 crop
    np.testing.assert_array_equal(w.sum(axis=(1, 2)), np.full(6, 40 * 50))
    # same seed, same batch
    a = draw_batch({"t": [item]}, np.random.default_rng(5), batch_size=2, crop=32)
    b = draw_batch({"t": [item]}, np.random.default_rng(5), batch_size=2, crop=32)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_dataset_items_pair_distorted_slices_with_their_reference_labels(tiny):
    from tomoqc.dataset import read_manifest
    from tomoqc.train.segdata import dataset_items

    rows = read_manifest(tiny)
    train, val = dataset_items(tiny, classes=3, max_level=2, seed=0)
    ref_of = {r["file"]: r["reference"] for r in rows}
    tr_refs = {ref_of[it.name] for it in train}
    va_refs = {ref_of[it.name] for it in val}
    assert tr_refs and va_refs and not tr_refs & va_refs  # split by reference
    # every image of a reference up to level 2 (3 impairments x 2 levels + the reference)
    assert len(train) + len(val) == 7 * len(tr_refs | va_refs)
    for it in train + val:
        ref = ref_of[it.name]
        truth = np.load(tiny / "labels" / f"{ref}.npy")
        np.testing.assert_array_equal(it.labels, truth)
        img = it.load()
        assert img.shape == truth.shape and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    binary, _ = dataset_items(tiny, classes=2, max_level=0, seed=0)
    assert all(set(np.unique(it.labels)) <= {0, 1} for it in binary)


@pytest.mark.skipif(not HAVE_HTC, reason="no HTC2022 data in ../shared/realdata")
def test_htc2022_reconstruction_overlaps_the_organisers_segmentation():
    from skimage.filters import threshold_otsu

    files = htc2022_files(REALDATA)
    assert len(files) >= 5
    for disc, (sino, seg) in files.items():
        gt = htc2022_ground_truth(seg, bin=4).astype(bool)
        rec = htc2022_recon(sino, bin=4)
        assert rec.shape == gt.shape == (128, 128)
        b = rec > threshold_otsu(rec)
        iou = (b & gt).sum() / (b | gt).sum()
        assert iou > 0.9, (disc, iou)
        if disc != "solid_disc":  # a disc with holes is not symmetric: the raw row order does not fit
            raw = np.flipud(b)
            assert (raw & gt).sum() / (raw | gt).sum() < iou - 0.1, disc
    # degraded versions: same ground truth, different images
    items = htc2022_items(REALDATA, discs=["ta"], bin=4)["ta"]
    assert len(items) == 8 and all(it.labels is items[0].labels for it in items)
    full = items[0].image
    assert all(np.abs(it.image - full).mean() > 1e-3 for it in items[1:])


@pytest.mark.skipif(not HAVE_HTC, reason="no HTC2022 data in ../shared/realdata")
def test_htc2022_reconstruction_filter_trades_noise_for_nothing_else_at_zero_frequency():
    from tomoqc.metrics.nr import noise_index

    sino, seg = htc2022_files(REALDATA)["ta"]
    gt = htc2022_ground_truth(seg, bin=4).astype(bool)
    ramp = htc2022_recon(sino, bin=4, dose=1 / 16, rng=np.random.default_rng(0))
    hann = htc2022_recon(sino, bin=4, dose=1 / 16, rng=np.random.default_rng(0), filter="hann")
    # the same measured noise, filtered more softly: a quieter slice ...
    assert noise_index(hann) < 0.7 * noise_index(ramp)
    # ... with the same mean attenuation inside the disc (every filter passes zero frequency alike)
    inner = ndimage.binary_erosion(gt, iterations=3)
    assert hann[inner].mean() == pytest.approx(ramp[inner].mean(), rel=0.01)


# --------------------------------------------------------------------------- CLI


CLI_ARGS = ["--phantoms", "16", "--classes", "2", "--width", "0.125", "--dropout", "0.1", "--epochs", "4",
            "--steps-per-epoch", "15", "--batch-size", "4", "--crop", "64", "--phantom-size", "64",
            "--max-level", "0", "--lr", "3e-3", "--seed", "1", "--full-res", "--class-weights", "1,1.5",
            "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from tomoqc.cli import main

    out = tmp_path_factory.mktemp("seg") / "run"
    code = main(["train", "segment", "--out", str(out), *CLI_ARGS])
    return code, out


def test_cli_learns_and_writes_the_documented_outputs(cli_run):
    code, out = cli_run
    assert code == 0
    for f in ("best.keras", "best.json", "model_card.json", "log.csv", "curves.png", "state/state.json"):
        assert (out / f).is_file(), f
    card = json.loads((out / "model_card.json").read_text())
    assert card == json.loads((out / "best.json").read_text())
    assert card["kind"] == "dlinknet" and card["n_classes"] == 1 and card["class_names"] == ["void", "material"]
    assert card["width"] == 0.125 and card["dropout"] == 0.1 and card["tile"] == 64 and card["seed"] == 1
    assert card["full_res"] is True and card["hyperparameters"]["class_weights"] == [1.0, 1.5]
    assert "--full-res" in card["command"] and "--class-weights 1,1.5" in card["command"]
    assert "normalize_slice" in card["normalisation"] and card["command"].startswith("tomoqc train segment")
    assert card["data"]["phantoms"]["n"] == 16 and "versions" in card
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    loss = [float(r["loss"]) for r in rows[1:]]
    assert loss[-1] < loss[0]
    f1 = [float(r["val_mean_f1"]) for r in rows]
    # a clean phantom is thresholdable: both classes well above what any constant map
    # (F1 0 for one class, mean <= 0.5) or the untrained network reaches
    best = card["metrics"]["all"]
    assert min(best["f1"]) > 0.6 and best["mean_f1"] > f1[0] + 0.15
    # the card's metrics are those of the epoch with the best validation mean IoU
    ious = [float(r["val_mean_iou"]) for r in rows[1:]]
    assert best["mean_iou"] == pytest.approx(max(ious), rel=1e-5)
    assert card["metrics"]["epoch"] == int(np.argmax(ious)) + 1

    import keras

    import tomoqc.models.dlinknet as dl  # registers the custom layer

    model = keras.models.load_model(out / "best.keras")
    p = dl.predict_any_size(model, np.random.default_rng(0).random((70, 45)))
    assert p.shape == (70, 45, 1) and np.all((p >= 0) & (p <= 1))


def test_cli_bad_data_gives_one_error_line(tmp_path, capsys):
    from tomoqc.cli import main

    out = tmp_path / "out"
    code = main(["train", "segment", "--out", str(out), "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("tomoqc: error:") and len(err.strip().splitlines()) == 1
    assert "missing" in err and not out.exists()
    # a dataset without phase labels (built from a real volume)
    d = tmp_path / "real"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((8, 8), np.float32))
    (d / "manifest.csv").write_text("reference,domain,distortion,level,file,label_file,params,seed\n"
                                    "r0,image,none,0,a.npy,,{},0\nr1,image,none,0,a.npy,,{},1\n")
    code = main(["train", "segment", "--out", str(out), "--data", str(d)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "phase labels" in err and "manifest.csv" in err
    assert not out.exists()
    code = main(["train", "segment", "--out", str(out), "--realdata", str(tmp_path), "--classes", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "--classes 2" in err
    code = main(["train", "segment", "--out", str(out)])
    assert code == 1 and "no training data" in capsys.readouterr().err
    for bad, why in (("1,2", "3 positive numbers"), ("1,x,1", "comma-separated numbers"), ("1,0,1", "positive")):
        code = main(["train", "segment", "--out", str(out), "--phantoms", "4", "--class-weights", bad])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and why in err
    assert not out.exists()


@pytest.mark.slow
def test_resume_after_interrupt_gives_the_same_weights(cli_run, tmp_path):
    """Interrupted by SIGUSR1 inside epoch 2 and resumed: the same final weights as the
    uninterrupted run of ``cli_run`` (same options and seed)."""
    import keras

    import tomoqc.models.dlinknet  # noqa: F401
    from tomoqc.cli import main

    code, ref = cli_run
    assert code == 0
    out = tmp_path / "run"

    def signal_in_epoch_two():
        state = out / "state" / "state.json"
        for _ in range(20000):
            try:
                done = json.loads(state.read_text())["epoch"] if state.exists() else 0
            except (OSError, ValueError):
                done = 0
            if done >= 1:  # epoch 1 saved; epoch 2's 15 steps take well over 0.2 s
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.005)

    t = threading.Thread(target=signal_in_epoch_two, daemon=True)
    t.start()
    assert main(["train", "segment", "--out", str(out), *CLI_ARGS]) == 0
    t.join()
    meta = json.loads((out / "state" / "state.json").read_text())
    assert meta["epoch"] == 1 and 0 < meta["step"] < 15  # stopped inside epoch 2
    assert main(["train", "segment", "--out", str(out), "--resume", *CLI_ARGS]) == 0
    a = keras.saving.load_model(ref / "state" / "model.keras", compile=False)
    b = keras.saving.load_model(out / "state" / "model.keras", compile=False)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=u.path)
    with open(out / "log.csv") as fh, open(ref / "log.csv") as fr:
        la, lb = list(csv.DictReader(fh)), list(csv.DictReader(fr))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_clean_share_is_the_share_of_unimpaired_draws():
    from tomoqc.errors import OptionError
    from tomoqc.train.segdata import random_impairment

    rng = np.random.default_rng(5)
    n = 3000
    assert all(random_impairment(rng, 3, 1.0) == {} for _ in range(200))
    assert all(random_impairment(rng, 3, 0.0) != {} for _ in range(200))
    assert all(random_impairment(rng, 0, 0.0) == {} for _ in range(50))  # level 0: nothing to add
    for share in (0.2, 0.6):
        clean = sum(random_impairment(rng, 3, share) == {} for _ in range(n))
        sd = math.sqrt(n * share * (1 - share))  # binomial
        assert abs(clean - n * share) < 4 * sd, (share, clean)
    for bad in (-0.1, 1.5):
        with pytest.raises(OptionError, match="clean share"):
            random_impairment(rng, 3, bad)


def test_fine_tuning_starts_from_the_given_weights(cli_run, tmp_path, capsys):
    """``--init``: the network, its width and skip come from the weights file; before the
    first step it is that network (the epoch-0 validation of the same seed's phantoms
    equals the one its own run recorded), and the card names where it started."""
    from tomoqc.cli import main
    from tomoqc.models.tiqa import file_sha256

    code, ref = cli_run
    assert code == 0
    start = json.loads((ref / "best.json").read_text())
    out = tmp_path / "ft"
    args = list(CLI_ARGS)
    args[args.index("--width") + 1] = "0.5"  # ignored: the weights file decides
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--steps-per-epoch") + 1] = "2"
    args.remove("--full-res")
    assert main(["train", "segment", "--out", str(out), "--init", str(ref / "best.keras"), "--clean-share", "0.6",
                 *args]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["width"] == 0.125 and card["full_res"] is True
    assert card["initialised_from"]["weights_sha256"] == file_sha256(ref / "best.keras")
    assert card["hyperparameters"]["init_weights_sha256"] == file_sha256(ref / "best.keras")
    assert card["hyperparameters"]["clean_share"] == 0.6 and "--clean-share 0.6" in card["command"]
    with open(out / "log.csv") as fh:
        first = next(csv.DictReader(fh))
    assert int(first["epoch"]) == 0
    assert float(first["val_mean_iou"]) == pytest.approx(start["metrics"]["all"]["mean_iou"], rel=1e-5)
    capsys.readouterr()
    # a network of other classes, or a share outside [0, 1]: one error line, nothing written
    bad = tmp_path / "bad"
    for extra, why in ((["--init", str(ref / "best.keras"), "--classes", "3"], "segments 2 classes"),
                       (["--clean-share", "1.5"], "clean share")):
        code = main(["train", "segment", "--out", str(bad), "--phantoms", "4", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and why in err, err
        assert not bad.exists()
