"""The monotone map from raw network scores to the label scale, and how a model applies it."""

import numpy as np
import pytest

from tomoqc.errors import InputError
from tomoqc.metrics.stats import logistic4, srocc
from tomoqc.models.tiqa import TiqaModel, _calibration_from_card, build_tiqa, calibration_from_scores


def test_recovers_a_known_logistic_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    raw = rng.uniform(-2, 6, 400)
    labels = logistic4(raw, 5.0, 1.0, 2.0, 0.8) + rng.normal(0, 0.02, raw.size)
    cal = calibration_from_scores(raw, labels)
    assert cal["kind"] in (4, 5) and cal["n"] == 400
    assert cal["range"] == [pytest.approx(raw.min()), pytest.approx(raw.max())]
    f = _calibration_from_card({"score_calibration": cal})
    # the mapped scores follow the labels linearly; the raw ones do not
    assert cal["plcc_after"] > 0.99 > cal["plcc_before"]
    assert np.max(np.abs(f(raw) - logistic4(raw, 5.0, 1.0, 2.0, 0.8))) < 0.05
    # strictly increasing over the fitted range widened by half its span (rankings there are
    # unchanged), and never falling beyond it (a logistic saturates far out)
    lo, hi = raw.min(), raw.max()
    t = np.linspace(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), 5001)
    assert np.all(np.diff(f(t)) > 0)
    assert np.all(np.diff(f(np.linspace(-50, 50, 5001))) >= 0)
    assert srocc(f(raw), labels) == pytest.approx(srocc(raw, labels))


def test_falling_relation_gives_no_map_and_too_few_points_fail():
    raw = np.linspace(0, 1, 50)
    cal = calibration_from_scores(raw, 5 - 4 * raw)  # labels fall as the raw score rises
    assert cal["kind"] is None and cal["params"] is None
    assert _calibration_from_card({"score_calibration": cal}) is None
    with pytest.raises(InputError):
        calibration_from_scores([1, 2, 3], [1, 2, 3])
    with pytest.raises(InputError):
        calibration_from_scores(np.ones(20), np.arange(20))


def test_model_applies_the_card_map_to_patch_scores_unless_raw():
    km = build_tiqa(input_size=None, seed=0, backbone="small-cnn")
    params = [4.0, 1.0, 0.0, 0.5]  # logistic4 from 1 to 4 around 0
    plain = TiqaModel(km, batch_size=4)
    calibrated = TiqaModel(km, batch_size=4, card={"score_calibration": {"kind": 4, "params": params}})
    x = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    raw, _ = plain.predict_patches(x, raw=True)
    raw2, _ = calibrated.predict_patches(x, raw=True)
    np.testing.assert_array_equal(raw, raw2)
    out, _ = calibrated.predict_patches(x)
    np.testing.assert_allclose(out, np.clip(logistic4(raw, *params), 1, 5), rtol=1e-5)
    # a card without a usable map changes nothing
    assert TiqaModel(km, card={"score_calibration": {"kind": 4, "params": [1, 2]}}).calibration is None
