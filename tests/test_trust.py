"""Out-of-distribution tests: the feature distance, the domain classifier, their card entries, and
the bundled model's verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tomoqc.models.trust import (DomainClassifier, FeatureDistance, fit_domain_classifier, fit_feature_distance,
                                 raw_range_from_card)

ROOT = Path(__file__).resolve().parents[1]
REAL_DIRS = [ROOT / "tests" / "data" / "real", ROOT.parent / "shared" / "realdata"]


def test_fit_distance_and_card_round_trip():
    rng = np.random.default_rng(0)
    d, k = 40, 8
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:k]
    x = (rng.normal(size=(600, k)) * np.linspace(3, 0.5, k)) @ basis + 0.05 * rng.normal(size=(600, d))
    groups = np.repeat(np.arange(200), 3)
    fd, summary = fit_feature_distance(x, groups, n_components=k, quantile=0.99, seed=1)
    assert summary["n_holdout_slices"] == 60 and summary["n_fit_slices"] == 140
    inside = fd.distance(x)
    assert 0.6 < np.median(inside) < 1.3  # about 1 for in-distribution rows
    far = x[:20] + 2.0 * rng.normal(size=(20, d))  # off the principal subspace
    assert (fd.distance(far) > fd.threshold).all()
    assert fd.slice_distance(far[:3]) > fd.threshold
    assert np.isnan(fd.slice_distance(np.zeros((0, d))))
    back = FeatureDistance.from_card(json.loads(json.dumps(fd.to_card())))
    np.testing.assert_allclose(back.distance(far), fd.distance(far), rtol=2e-2)
    assert back.threshold == fd.threshold
    assert FeatureDistance.from_card({"dim": 3}) is None and FeatureDistance.from_card(None) is None


def test_fit_domain_classifier_and_card_round_trip():
    rng = np.random.default_rng(0)
    d = 30
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)

    def slices(n, label, source, shift):
        x = rng.normal(size=(n * 4, d)) + shift * direction + 5.0  # offset: the fit standardises
        return x, np.full(n * 4, label), np.repeat(np.arange(n), 4), np.full(n * 4, source, dtype=object)

    parts = [slices(20, 0, f"tomo{k}", -1.5) for k in range(3)] + [slices(10, 1, f"photo{k}", 1.5) for k in range(4)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    g = np.concatenate([p[2] + 1000 * k for k, p in enumerate(parts)])
    s = np.concatenate([p[3] for p in parts])
    dc, summary = fit_domain_classifier(x, y, g, s, l2=1e-2, max_flagged=0.01)
    assert 0.5 <= dc.threshold < 0.99
    assert summary["oof_tomography_flagged"] <= 0.05 and summary["oof_not_tomography_detected"] > 0.8
    assert set(summary["oof_by_source"]) == {f"tomo{k}" for k in range(3)} | {f"photo{k}" for k in range(4)}
    far = rng.normal(size=(6, d)) + 3.0 * direction + 5.0
    near = rng.normal(size=(6, d)) - 3.0 * direction + 5.0
    assert dc.slice_probability(far) > dc.threshold and dc.is_out(far)
    assert dc.slice_probability(near) < dc.threshold and not dc.is_out(near)
    assert np.isnan(dc.slice_probability(np.zeros((0, d)))) and not dc.is_out(np.zeros((0, d)))
    back = DomainClassifier.from_card(json.loads(json.dumps(dc.to_card())))
    np.testing.assert_allclose(back.patch_probability(far), dc.patch_probability(far), rtol=1e-5, atol=1e-6)
    assert back.threshold == dc.threshold
    assert DomainClassifier.from_card({"dim": 3}) is None and DomainClassifier.from_card(None) is None
    with pytest.raises(Exception):
        dc.patch_probability(np.zeros((2, d + 1)))


def test_raw_range_from_card():
    assert raw_range_from_card({}) is None
    assert raw_range_from_card({"score_calibration": {"range": [-1, 6]}}) == (-1.0, 6.0)
    card = {"score_calibration": {"range": [-1, 6]}, "trust": {"raw_score_range": [-2, 7]}}
    assert raw_range_from_card(card) == (-2.0, 7.0)
    assert raw_range_from_card({"trust": {"raw_score_range": [3, 1]}}) is None


# ----------------------------------------------------------------------------- the bundled model


def _real_slices():
    """A few small real reconstructions: tests/data/real when the lead's copy is there, else
    ../shared/realdata."""
    for d in REAL_DIRS:
        if d.is_dir() and d.name == "real" and any(d.glob("*.npy")):
            return [(p.name, np.load(p)) for p in sorted(d.glob("*.npy"))[:4]]
    d = REAL_DIRS[1]
    if not d.is_dir():
        return []
    import tifffile

    out = []
    if (d / "psi_shell" / "shellX.npy").is_file():
        out.append(("psi_shell/shellX", np.load(d / "psi_shell" / "shellX.npy")))
    if (d / "battery_xct" / "im_1.tif").is_file():
        out.append(("battery_xct/im_1", tifffile.imread(d / "battery_xct" / "im_1.tif")))
    bone = d / "qim3d" / "bone_128x128x128.tif"
    if bone.is_file():
        out.append(("qim3d/bone[64]", tifffile.imread(bone)[64]))
    if (d / "imars3d" / "expected_slice_300.npy").is_file():
        out.append(("imars3d/300", np.load(d / "imars3d" / "expected_slice_300.npy")))
    return out


@pytest.fixture(scope="module")
def bundled():
    from tomoqc.models.tiqa import default_weights_path, load_model

    if not default_weights_path().is_file():
        pytest.skip("the bundled model is not installed")
    m = load_model(None)
    if m.trust is None:
        pytest.skip("the bundled model card has no trust statistics (scripts/fit_trust.py)")
    return m


def _domain(model):
    """The card's domain classifier (test (c)), or None."""
    from tomoqc.models.trust import CARD_KEY

    return DomainClassifier.from_card((model.card.get(CARD_KEY) or {}).get("domain"))


def _gray(name):
    from skimage import color, data

    a = np.asarray(getattr(data, name)())
    if a.ndim == 3:
        a = (color.rgb2gray(a[..., :3]) * 255).round().astype(np.uint8)
    return a


#: photographs the domain classifier never saw (scripts/fit_trust.py HELDOUT_PHOTOS), and
#: camera, which it did
HELDOUT = ("moon", "text", "page", "immunohistochemistry")


@pytest.fixture(scope="module")
def verdicts(bundled):
    """score_slices of a few real reconstructions, photographs and pure noise, once per module:
    name -> (score, uncertainty, flags, ood distance, domain probability or NaN, features)."""
    real = _real_slices()
    if not real:
        pytest.skip("no real reconstructions (tests/data/real or ../shared/realdata)")
    rng = np.random.default_rng(0)
    noise = [("uniform noise", rng.random((300, 300)).astype(np.float32)),
             ("gaussian noise", rng.normal(size=(300, 300)).astype(np.float32))]
    dc = _domain(bundled)
    # the photographs only matter to test (c): not scored without it (keeps the module fast)
    photos = [(n, _gray(n)) for n in ("camera",) + HELDOUT] if dc is not None else []
    got = {}
    for name, img in real + photos + noise:
        r = bundled.score_slices(img, features=True, measure=False)
        f = r["features"][0]
        p = dc.slice_probability(f) if dc is not None and len(f) and f.shape[-1] == dc.dim else float("nan")
        got[name] = (float(r["score"][0]), float(r["score_uncertainty"][0]), int(r["flags"][0]),
                     float(r["ood_distance"][0]), p)
    return {"real": [n for n, _ in real], "shapes": {n: np.shape(img) for n, img in real}, "photos": [n for n, _ in photos], "noise": [n for n, _ in noise],
            "got": got, "domain": dc}


def test_noise_is_flagged_real_slices_are_not(verdicts):
    from tomoqc.models.tiqa import FLAG_OOD, PADDED_OOD_SHARE, padded_share

    got = verdicts["got"]
    small = {n for n in verdicts["real"] if padded_share(verdicts["shapes"][n]) > PADDED_OOD_SHARE}
    real_u = [got[n][1] for n in verdicts["real"] if n not in small]
    for name in verdicts["real"]:
        # the trust statistics pass every real slice; one much smaller than a patch is still
        # flagged, for its padding (tests/test_tiqa.py)
        assert np.isfinite(got[name][0]) and got[name][3] <= 1.0, (name, got[name])
        assert bool(got[name][2] & FLAG_OOD) == (name in small), (name, got[name])
    assert real_u, "no real slice of a full patch"
    for name in verdicts["noise"]:
        assert got[name][2] & FLAG_OOD, (name, got[name])
        assert got[name][1] > max(real_u), (name, got[name], real_u)


def test_domain_classifier_separates_photographs(verdicts):
    """Test (c) on the features alone: held-out photographs above the card's threshold, real
    reconstructions (whose sources were fitted, except tests/data/real's savu slice) well below."""
    dc = verdicts["domain"]
    if dc is None:
        pytest.skip("the model card has no domain classifier (scripts/fit_trust.py)")
    got = verdicts["got"]
    for name in verdicts["photos"]:
        assert got[name][4] > dc.threshold, (name, got[name][4], dc.threshold)
    for name in verdicts["real"]:
        assert got[name][4] < dc.threshold, (name, got[name][4], dc.threshold)


def test_photographs_are_flagged_with_larger_uncertainty(bundled, verdicts):
    """The wired behaviour: score_slices flags photographs (test (c)) and inflates their
    uncertainty above any real reconstruction's."""
    from tomoqc.models.tiqa import FLAG_OOD

    if verdicts["domain"] is None:
        pytest.skip("the model card has no domain classifier (scripts/fit_trust.py)")
    if getattr(bundled, "domain", None) is None:
        pytest.skip("tomoqc.models.tiqa does not apply trust.domain yet (TiqaModel.domain; see trust.DomainClassifier)")
    got = verdicts["got"]
    real_u = [got[n][1] for n in verdicts["real"]]
    for name in verdicts["photos"]:
        assert got[name][2] & FLAG_OOD, (name, got[name])
        assert got[name][1] > max(real_u), (name, got[name], real_u)
