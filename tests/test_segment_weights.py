"""The bundled D-LinkNet weights: card matches file, and they segment what they were made for."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import tomoqc.models.dlinknet as dl  # noqa: E402  (registers the custom layer)
from tomoqc.metrics.seg import f1_per_class, iou_per_class  # noqa: E402
from tomoqc.phantom import electrode_slice  # noqa: E402
from tomoqc.preprocess import normalize_slice  # noqa: E402

WEIGHTS = Path(dl.__file__).resolve().parent / "weights"
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
if not REALDATA.is_dir():
    REALDATA = Path("/work/shared/realdata")


def _bundled(kind):
    path = WEIGHTS / f"dlinknet_{kind}.keras"
    if not path.is_file():
        pytest.skip(f"no bundled {path.name}")
    card = json.loads(path.with_suffix(".json").read_text())
    return path, card


@pytest.mark.parametrize("kind", ["phases", "binary"])
def test_card_describes_the_weights(kind):
    path, card = _bundled(kind)
    assert path.stat().st_size < 25e6
    assert card["weights"] == path.name
    assert card["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = keras.models.load_model(path)  # no custom_objects needed
    assert model.output_shape[-1] == card["n_classes"] == (3 if kind == "phases" else 1)
    assert len(card["class_names"]) == (3 if kind == "phases" else 2)
    assert card["kind"] == "dlinknet" and card["width"] < 1 and "width_note" in card
    assert len(card["metrics"]["test"]["all"]["f1"]) == len(card["class_names"])


def test_phase_weights_segment_clean_phantoms():
    path, _ = _bundled("phases")
    model = keras.models.load_model(path)
    f1 = []
    for seed in (101, 102):  # phantoms of the library's default look, never seen in training
        img, lab = electrode_slice((200, 230), seed=seed)
        prob = dl.predict_any_size(model, normalize_slice(img))
        f1.append(f1_per_class(prob.argmax(-1), lab, 3))
    f1 = np.mean(f1, axis=0)
    # every phase at the floor the segmentation issue sets for clean unseen phantoms (F1 0.95),
    # the thin carbon-binder film included; a map of one class would score 0 on the other two
    assert min(f1) >= 0.95, f1


def test_binary_weights_segment_the_held_out_htc_disc():
    path, card = _bundled("binary")
    disc = card["data"]["htc2022"]["val_disc"]
    from tomoqc.train.segdata import htc2022_files, htc2022_ground_truth, htc2022_recon

    try:
        sino, seg = htc2022_files(REALDATA)[disc]
    except Exception:
        pytest.skip("no HTC2022 data")
    model = keras.models.load_model(path)
    gt = htc2022_ground_truth(seg)
    rec = htc2022_recon(sino, angles=4)  # a degraded version: 90 of 360 projections
    prob = dl.predict_any_size(model, normalize_slice(rec))
    iou = iou_per_class((prob[..., 0] >= 0.5).astype(np.uint8), gt, 2)
    assert iou[1] > 0.9 and iou[0] > 0.8, iou
