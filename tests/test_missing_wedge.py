"""The missing-wedge indicator (tomoqc.metrics.nr.missing_wedge) and its term in the score.

Facts used: the Fourier slice theorem (a view at angle theta fills the line through the
origin of the slice's spectrum at theta, so views over an arc of A degrees leave 180 - A
degrees of directions empty, noise included; the reading may fall short by a few degrees,
since the window and the Fourier grid blur the wedge's edges, never exceed it by more than
a bin or two); the onset term's form
c log(1 + max(x - t, 0) / t) from the module doc; label projection gives the reference 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tomoqc.errors import OptionError
from tomoqc.metrics.nr import missing_wedge
from tomoqc.models.measured import INDICATORS, ONSET, MeasuredTerms
from tomoqc.train.onset_terms import ARCS, fit_onset_weight, limited_angle_scans, projected_labels

DATA = Path(__file__).parent / "data" / "real"


@pytest.fixture(scope="module")
def texture_scans(disc_texture):
    return limited_angle_scans(disc_texture(), (150.0, 120.0, 90.0, 60.0), start=0.0)


def _close_to(reading, missing):
    return missing - 6.0 <= reading <= missing + 2.0


def test_reads_the_missing_arc(texture_scans):
    ref, scans = texture_scans
    assert missing_wedge(ref) == 0.0
    for arc, rec in zip((150.0, 120.0, 90.0, 60.0), scans):
        assert _close_to(missing_wedge(rec), 180.0 - arc), arc


@pytest.mark.parametrize("start", [17.0, 73.0, 140.0])
def test_wedge_direction_does_not_matter(start, disc_texture):
    ref, (rec,) = limited_angle_scans(disc_texture(seed=1), (120.0,), start=start)
    assert _close_to(missing_wedge(rec), 60.0)


def test_gain_offset_and_noise(texture_scans, disc_texture):
    """Affine maps change nothing; counting noise enters only through the measured views, so the
    wedge stays empty and reads the same."""
    _, scans = texture_scans
    rec = scans[1]
    assert missing_wedge(7.0 * rec - 3.0) == pytest.approx(missing_wedge(rec), abs=1.0)
    # a raw export in counts (a large offset beside the contrast), and an offset a million
    # times the contrast: the offset must not count as power
    counts = np.round(30000.0 + 2000.0 * rec).astype(np.uint16)
    assert _close_to(missing_wedge(counts), 60.0)
    assert _close_to(missing_wedge(1e-3 * rec.astype(np.float64) + 1e3), 60.0)
    from tomoqc.distort import physics

    img = disc_texture(seed=2)
    sc = physics.scanner(img.shape)
    k = physics.ATTENUATION / max(img.shape)
    rng = np.random.default_rng(3)
    p = sc.project(img) * k
    noisy = -np.log(np.maximum(rng.poisson(2000 * np.exp(-p)), 1) / 2000)
    keep = np.degrees(sc.angles) < 100.0
    rec_noisy = sc.reconstruct(np.where(keep[:, None], noisy, 0.0)) / k
    assert _close_to(missing_wedge(rec_noisy), 80.0)
    assert missing_wedge(sc.reconstruct(noisy) / k) == 0.0  # the complete noisy scan


@pytest.mark.parametrize("elongation", [2.0, 4.0, 8.0, 30.0])
def test_anisotropic_samples_read_no_wedge(elongation):
    """A texture elongated along x has dark directions at low frequencies, but they fade in
    smoothly and its noise fills them at high frequencies: not a wedge (a noise level of
    1/100 of the texture's spread, far quieter than most scans)."""
    rng = np.random.default_rng(7)
    t = ndimage.gaussian_filter(rng.normal(size=(512, 512)), (1.0, elongation))
    t = (t - t.mean()) / t.std()
    assert missing_wedge(t + rng.normal(size=t.shape) / 100.0) == 0.0


def test_eight_bit_export_keeps_the_wedge(texture_scans):
    """Rounding to 8 bits adds white noise, which partly fills the wedge at high frequencies."""
    _, scans = texture_scans
    rec = scans[2]
    lo, hi = np.percentile(rec, [0.1, 99.9])
    u8 = np.clip(np.round((rec - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    assert _close_to(missing_wedge(u8), 90.0)


def test_sparse_views_read_no_wedge(disc_texture):
    """12 views over the half turn leave regular 15-degree gaps: not a wedge."""
    from tomoqc.distort import physics

    img = disc_texture(seed=4)
    rec = physics.simulate_scan(img, n_angles=12)
    assert missing_wedge(rec) <= 2.0


def test_real_slices():
    """Complete real reconstructions read 0; the HTC2022 disc re-projected over 90 degrees reads
    about the 90 missing."""
    for name in ("htc2022_ta_fbp256.npy", "savu24737_row104_fbp160.npy", "battery_xct_im1_crop128.npy"):
        assert missing_wedge(np.load(DATA / name)) == 0.0, name
    real = np.load(DATA / "htc2022_ta_fbp256.npy").astype(np.float64)
    lo, hi = np.percentile(real, [0.5, 99.5])
    _, (rec,) = limited_angle_scans(np.clip((real - lo) / (hi - lo), 0, 1), (90.0,), start=30.0)
    assert _close_to(missing_wedge(rec), 90.0)


def test_undefined_and_bad_options():
    assert np.isnan(missing_wedge(np.ones((128, 128))))
    assert np.isnan(missing_wedge(np.random.default_rng(0).normal(size=(40, 40))))
    img = np.random.default_rng(0).normal(size=(128, 128))
    for bad in ({"band": (0.2, 0.1)}, {"band": (0.0, 0.1)}, {"close": 4}, {"depth": 0.0}, {"floor": 2.0},
                {"bins": 10}):
        with pytest.raises(OptionError):
            missing_wedge(img, **bad)


def test_onset_term_form():
    t, c = 10.0, 0.8
    terms = MeasuredTerms({"wedge": c}, {"wedge": t}, onset=("wedge",))
    s = np.full(6, 3.7)
    x = np.array([0.0, 5.0, 10.0, 20.0, 60.0, 120.0])
    out = terms.combine(s, {"wedge": x})
    assert np.allclose(out[:3], 3.7)  # up to the onset nothing changes
    assert np.all(np.diff(out[2:]) < 0)  # then the score falls strictly
    q = (3.7 - 1) / 4
    z = np.log(q / (1 - q)) - c * np.log(1 + (60.0 - t) / t)
    assert out[4] == pytest.approx(1 + 4 / (1 + np.exp(-z)), rel=1e-12)
    back = MeasuredTerms.from_card({"measured_terms": terms.to_card()})
    assert back.onset == ("wedge",) and np.allclose(back.combine(s, {"wedge": x}), out)
    assert "wedge" in INDICATORS and set(ONSET) <= set(INDICATORS)
    with pytest.raises(OptionError):
        MeasuredTerms({"axis": 1.0}, {"axis": 1.0}, relative=("axis",), onset=("axis",))
    # a card without the onset list reads the wedge as an absolute term of weight 0: no change
    plain = MeasuredTerms({"noise": 1.0}, {"noise": 0.03})
    assert np.allclose(plain.combine(s, {"noise": np.full(6, 0.03), "wedge": x}), 3.7)
    # adding the term to those terms, or taking it off again, changes only the wedge's part
    added = plain.with_term("wedge", c, t, onset=True, info={"wedge_fit": {"seed": 1}})
    assert added.onset == ("wedge",) and added.info["wedge_fit"] == {"seed": 1}
    assert np.allclose(added.combine(s, {"noise": np.full(6, 0.03), "wedge": x}), out)
    assert np.allclose(added.with_term("wedge", 0.0).combine(s, {"wedge": x}), 3.7)


def test_fit_recovers_a_known_weight():
    rng = np.random.default_rng(5)
    s0 = rng.uniform(2.5, 4.5, 60)
    x = rng.uniform(0, 120, 60)
    truth = MeasuredTerms({"wedge": 1.3}, {"wedge": 10.0}, onset=("wedge",)).combine(s0, {"wedge": x})
    fit = fit_onset_weight(s0, x, truth, t=10.0)
    assert fit["weight"] == pytest.approx(1.3, abs=1e-3)
    assert fit["rmse_after"] < 1e-3 < fit["rmse_before"]


def test_scans_and_labels(disc_texture):
    img = disc_texture(n=192, seed=6)
    ref, scans = limited_angle_scans(img, (180.0, 90.0))
    assert np.allclose(scans[0], ref)  # the whole half turn is the complete scan
    card = json.loads((Path(__file__).parents[1] / "tomoqc/models/weights/tiqa_default.json").read_text())
    lab = projected_labels(ref, np.stack([ref, scans[1]]), card)
    assert lab[0] == pytest.approx(5.0) and 1.0 <= lab[1] < 5.0
    with pytest.raises(OptionError):
        limited_angle_scans(img, (0.0,))
    assert len(ARCS) == 5 and list(ARCS) == sorted(ARCS, reverse=True)


def test_bundled_model_lowers_limited_angle_scores():
    """The bundled card carries the wedge term: the score of a limited-angle scan of a phantom
    falls with the arc, a wedge wider than the fit's is flagged, and a complete scan's score
    is the same with and without the term."""
    from tomoqc.models.tiqa import load_model
    from tomoqc.phantom import electrode_slice

    model = load_model(None)
    assert model.measured_terms.weighs("wedge") and "wedge" in model.measured_terms.onset
    img, _ = electrode_slice((256, 256), seed=[99, 1], randomize=True)
    ref, scans = limited_angle_scans(np.clip(img, 0, None), (150.0, 90.0, 30.0), start=40.0)
    res = model.score_slices(np.stack([ref, *scans]), tta=1, ood=True, measure=True)
    s = res["score"]
    assert s[0] > s[1] > s[2] > s[3]
    # a 150-degree wedge is wider than any the term was fitted on (arcs down to 60): flagged
    from tomoqc.models.tiqa import FLAG_OOD

    top = model.measured_terms.info["wedge_fit"]["max_reading"]
    assert res["indicators"]["wedge"][3] > top and res["flags"][3] & FLAG_OOD
    assert res["indicators"]["wedge"][2] < top and not res["flags"][2] & FLAG_OOD
    # the complete scan reads no wedge, so the term adds exactly nothing to its score
    t = model.measured_terms
    assert res["indicators"]["wedge"][0] == 0.0
    assert t.weights["wedge"] * t.feature("wedge", res["indicators"]["wedge"][:1])[0] == 0.0
    assert t.weights["wedge"] * t.feature("wedge", res["indicators"]["wedge"][2:])[0] > 0.5
