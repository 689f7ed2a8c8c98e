"""Refitting the severity head on frozen features: scores unchanged, head trained, choices recorded."""

import numpy as np
import pytest

from tomoqc.errors import OptionError
from tomoqc.train.heads import refit_severity_head, severity_accuracy


def test_severity_accuracy_hand_example():
    sev = np.array([
        [0.9, 0.1, 0.1],   # noise, named noise
        [0.3, 0.2, 0.5],   # ring, named ring
        [0.1, 0.5, 0.2],   # ring, named blur: wrong
        [0.1, 0.6, 0.0],   # a mixture: not counted
    ])
    kinds = ["noise", "ring", "ring", "mixed"]
    assert severity_accuracy(sev, kinds) == pytest.approx(2 / 3)
    # measured from a baseline where clean images read blur 0.5: (0.5-0.5)/0.5 = 0 for the
    # third image, whose ring (0.2 from 0) now wins
    assert severity_accuracy(sev, kinds, baseline=[0.0, 0.5, 0.0]) == pytest.approx(1.0)
    assert np.isnan(severity_accuracy(sev[3:], kinds[3:]))


@pytest.fixture(scope="module")
def setup(tiny_labelled, tmp_path_factory):
    import keras

    from tomoqc.models.tiqa import build_tiqa

    root = tmp_path_factory.mktemp("heads")
    model = root / "m.keras"
    keras.utils.set_random_seed(0)
    build_tiqa(input_size=None, seed=0, backbone="small-cnn").save(model)
    return tiny_labelled, model, root


def test_refit_trains_the_severity_head_and_leaves_scores_alone(setup):
    import keras

    d, model, root = setup
    out = root / "refit.keras"
    lines = []
    rec = refit_severity_head(model, d, out, crops=1, size=64, epochs=4, lr=1e-2, batch_size=16,
                              val_fraction=0.4, seed=1, cache=root / "f.npz", log=lines.append)
    before = keras.saving.load_model(str(model), compile=False)
    after = keras.saving.load_model(str(out), compile=False)
    x = np.random.default_rng(0).random((3, 64, 64, 1)).astype(np.float32)
    a, b = before(x, training=False), after(x, training=False)
    # backbone and score head untouched: identical scores
    np.testing.assert_array_equal(np.asarray(a["score"]), np.asarray(b["score"]))
    h = rec["history"]
    # the head saved is the kept epoch's: the original one only if no epoch beat it
    w0 = before.get_layer("severity").get_weights()[0]
    w1 = after.get_layer("severity").get_weights()[0]
    assert np.array_equal(w0, w1) == (rec["best"]["epoch"] == 0)
    assert [r["epoch"] for r in h] == [0, 1, 2, 3, 4]
    assert h[-1]["loss"] < h[1]["loss"]
    # the kept epoch is the best on held-out references
    assert rec["best"]["val_severity_acc"] == max(r["val_severity_acc"] for r in h)
    assert rec["hyperparameters"]["target_power"] == 1.0 and rec["data"]["val_references"] == 2
    assert any("crops in" in s for s in lines)
    # same model, data and settings: features come from the cache
    lines.clear()
    rec2 = refit_severity_head(model, d, root / "refit2.keras", crops=1, size=64, epochs=1, lr=1e-2,
                               batch_size=16, val_fraction=0.4, seed=1, cache=root / "f.npz", log=lines.append)
    assert any("features from" in s for s in lines)
    assert rec2["history"][0] == h[0]


def test_refit_bad_options(setup, tmp_path):
    import keras

    d, model, _ = setup
    with pytest.raises(OptionError):
        refit_severity_head(model, d, tmp_path / "x.keras", epochs=0)
    with pytest.raises(OptionError):
        refit_severity_head(model, d, tmp_path / "x.keras", target_power=0)
    other = tmp_path / "other.keras"
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(1)(inp)).save(other)
    with pytest.raises(OptionError, match="not a TIQA model"):
        refit_severity_head(other, d, tmp_path / "x.keras", size=64)
    assert not (tmp_path / "x.keras").exists()
