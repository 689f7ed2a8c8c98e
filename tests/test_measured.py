"""Measured terms (tomoqc.models.measured): how indicators bound the network's score."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tomoqc.errors import OptionError
from tomoqc.models.measured import INDICATORS, MeasuredTerms, absolute_feature, fit_measured_terms, fit_severity_line

TYPICAL = {"noise": 0.03, "blur": 1.0, "ring": 0.004, "streak": 0.1, "axis": 0.5, "wedge": 10.0, "spacing": 8.0}


POWER = {"noise": 2.0, "blur": 2.0, "ring": 2.0, "streak": 1.0}


def _terms(power=None, **w):
    weights = {k: 1.0 for k in INDICATORS}
    weights.update(w)
    return MeasuredTerms(weights, TYPICAL, severity={"noise": (1.0, 0.25)}, power=power)


def test_typical_indicators_keep_the_network_score():
    t = _terms()
    s = np.array([1.5, 2.0, 3.0, 4.0, 4.9])
    out = t.combine(s, {k: np.full(5, v) for k, v in TYPICAL.items()})
    np.testing.assert_allclose(out, s, atol=1e-9)


def test_formula():
    t = _terms(noise=2.0)
    ind = dict(TYPICAL, noise=0.09)
    q = (3.0 - 1) / 4
    z = np.log(q / (1 - q)) - 2.0 * np.log((0.03 + 0.09) / 0.06)
    assert float(t.combine(np.array([3.0]), {k: np.array([v]) for k, v in ind.items()})[0]) == pytest.approx(
        1 + 4 / (1 + np.exp(-z)))


def test_formula_with_powers():
    # amplitudes add in power: noise 0.09 on a typical 0.03 -> log((0.03^2 + 0.09^2) / (2 * 0.03^2)) = log 5
    t = _terms(power=POWER, noise=2.0)
    ind = dict(TYPICAL, noise=0.09)
    q = (3.0 - 1) / 4
    z = np.log(q / (1 - q)) - 2.0 * np.log(5.0)
    assert float(t.combine(np.array([3.0]), {k: np.array([v]) for k, v in ind.items()})[0]) == pytest.approx(
        1 + 4 / (1 + np.exp(-z)))
    # at the typical value every form gives 0; far above it the power doubles the slope
    assert absolute_feature(np.array([0.03]), 0.03, 2.0)[0] == pytest.approx(0.0, abs=1e-15)
    hi = absolute_feature(np.array([30.0, 300.0]), 0.03, 2.0)
    assert hi[1] - hi[0] == pytest.approx(2 * np.log(10.0), rel=1e-6)
    # a tiny typical value does not underflow
    assert np.isfinite(absolute_feature(np.array([1e-200]), 1e-200, 2.0)[0])


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(INDICATORS),
    base=st.floats(1e-5, 10.0),
    factor=st.floats(1.0001, 100.0),
    score=st.floats(1.0, 5.0),
    powered=st.booleans(),
)
def test_more_of_any_indicator_always_lowers_the_score(name, base, factor, score, powered):
    # strictly, at every level: no threshold below which an indicator does nothing. The
    # strictness is checked on the logit the terms subtract from; on the 1-5 scale a score
    # near either end can lose less than float64 resolves there (blur 1e-5 against 1.0001e-5
    # on a typical 1.0 moves the logit by 2e-14, the score at 5.0 by 1e-16), so there the
    # score must not rise, and must fall wherever the slope of 1 + 4 sigmoid(z) makes the
    # change at least 1e-12
    t = _terms(power=POWER if powered else None)
    lo = {k: np.array([TYPICAL[k]]) for k in INDICATORS}
    hi = dict(lo)
    lo[name] = np.array([base])
    hi[name] = np.array([base * factor])
    p_lo, p_hi = t.penalty(lo)[0], t.penalty(hi)[0]
    assert p_hi > p_lo
    a = t.combine(np.array([score]), lo)[0]
    b = t.combine(np.array([score]), hi)[0]
    assert b <= a
    q = min(max((score - 1) / 4, 1e-3), 1 - 1e-3)  # the network score's logit, clipped as the terms clip it
    sig = 1 / (1 + np.exp(-(np.log(q / (1 - q)) - p_lo)))
    if 4 * sig * (1 - sig) * (p_hi - p_lo) > 1e-12:
        assert b < a
    assert 1.0 < b < 5.0 and 1.0 < a < 5.0


def test_missing_indicator_counts_as_typical_and_missing_score_stays_missing():
    t = _terms()
    ind = {k: np.array([np.nan, TYPICAL[k]]) for k in INDICATORS}
    out = t.combine(np.array([3.0, np.nan]), ind)
    assert out[0] == pytest.approx(3.0) and np.isnan(out[1])


def test_severity_line_and_card_round_trip():
    t = _terms()
    x = np.array([np.exp(-4.0), np.exp(-2.0), np.exp(0.0), np.nan])
    np.testing.assert_allclose(t.severity("noise", x)[:3], [0.0, 0.5, 1.0])
    assert np.isnan(t.severity("noise", x)[3])
    card = {"measured_terms": t.to_card()}
    back = MeasuredTerms.from_card(card)
    assert back.weights == t.weights and back.typical == t.typical
    assert back.power == {k: 1.0 for k in INDICATORS}
    powered = MeasuredTerms.from_card({"measured_terms": _terms(power=POWER).to_card()})
    assert powered.power == {**{k: 1.0 for k in INDICATORS}, **POWER}
    assert back.severity_lines == {"noise": (1.0, 0.25)}
    assert MeasuredTerms.from_card({}) is None


def test_bad_terms_are_refused():
    with pytest.raises(OptionError):
        MeasuredTerms({"noise": 1.0}, TYPICAL, power={"noise": 0.5})
    with pytest.raises(OptionError):
        MeasuredTerms({"noise": 1.0}, TYPICAL, power={"colour": 2.0})
    with pytest.raises(OptionError):
        MeasuredTerms({"noise": -1.0}, TYPICAL)
    with pytest.raises(OptionError):
        MeasuredTerms({"noise": 1.0}, dict(TYPICAL, ring=0.0))
    with pytest.raises(OptionError):
        MeasuredTerms({"sharpness": 1.0}, TYPICAL)
    with pytest.raises(OptionError):
        MeasuredTerms({}, TYPICAL, severity={"noise": (0.0, -1.0)})


def test_fit_severity_line_recovers_a_known_line():
    x = np.exp(np.linspace(-5, -1, 20))
    level = 5 * (1.2 + 0.3 * np.log(x))
    u, v = fit_severity_line(x, level)
    assert u == pytest.approx(1.2) and v == pytest.approx(0.3)
    with pytest.raises(OptionError):
        fit_severity_line(x, -level)


def test_fit_orders_pairs_the_network_gets_wrong():
    # a network that cannot see noise (its score rises a little with it); pairs of rising noise
    rng = np.random.default_rng(0)
    n = 40
    noise = np.exp(rng.uniform(np.log(0.01), np.log(0.3), n))
    net = 3.5 + 0.2 * np.log(noise / 0.03) / 3 + rng.normal(0, 0.02, n)
    ind = {"noise": noise, "blur": np.ones(n), "ring": np.full(n, 0.004), "streak": np.full(n, 0.1)}
    pairs = np.array([(i, j) for i in range(n) for j in range(n) if noise[i] < noise[j] / 1.2])
    fit = fit_measured_terms(net, ind, pairs, typical=TYPICAL)
    assert fit["pair_accuracy_network"] < 0.2
    assert fit["pair_accuracy"] > 0.95
    assert fit["weights"]["noise"] > fit["weights"]["ring"]
    with pytest.raises(OptionError):
        fit_measured_terms(net, ind, np.zeros((0, 2)), typical=TYPICAL)


def test_labels_pull_the_weights_to_the_label_scale():
    # labels that fall with noise exactly as the combined score does for c_noise = 1.5
    rng = np.random.default_rng(1)
    n = 60
    noise = np.exp(rng.uniform(np.log(0.01), np.log(0.3), n))
    net = np.full(n, 4.0)
    ind = {"noise": noise, "blur": np.ones(n), "ring": np.full(n, 0.004), "streak": np.full(n, 0.1)}
    truth = MeasuredTerms({"noise": 1.5, "blur": 0.0, "ring": 0.0, "streak": 0.0}, TYPICAL).combine(net, ind)
    pairs = np.array([(0, 1)]) if noise[0] < noise[1] else np.array([(1, 0)])
    fit = fit_measured_terms(net, ind, pairs, typical=TYPICAL, labels=truth, label_weight=10.0, l2=0.0,
                             steps=4000)
    assert fit["weights"]["noise"] == pytest.approx(1.5, rel=0.05)
    assert fit["label_rmse"] < 0.02


def test_model_applies_the_measured_terms_unless_told_not_to(model_path):
    """A model card with measured terms: the slice score is the terms' combination of the
    network's score and the measured indicators, every severity is the measured one, and the
    disagreement joins the uncertainty; measured_terms=False and raw give the network alone."""
    from tomoqc.models.tiqa import DISAGREEMENT_SHARE, DISTORTIONS, FLAG_NOISE_CONFOUNDED, load_model
    from tomoqc.phantom import electrode_slice

    img = electrode_slice((224, 224), seed=3)[0]
    img = (img - img.min()) / np.ptp(img)
    rng = np.random.default_rng(0)
    stack = np.stack([img + rng.normal(0, s, img.shape) for s in (0.0, 0.05, 0.2)]).astype(np.float32)
    terms = MeasuredTerms({"noise": 2.0, "blur": 0.5, "ring": 0.5, "streak": 0.5}, TYPICAL,
                          severity={"noise": (1.0, 0.25), "blur": (0.2, 0.2), "ring": (1.5, 0.3),
                                    "streak": (0.6, 0.2)})
    from tomoqc.models.tiqa import TiqaModel

    plain = load_model(model_path)
    m = TiqaModel(plain.model, card={"measured_terms": terms.to_card()})
    a, b = plain.score_slices(stack, ring_center=(111.5, 111.5)), m.score_slices(stack, ring_center=(111.5, 111.5))
    np.testing.assert_allclose(a["score"], b["network_score"], rtol=1e-6)
    np.testing.assert_allclose(b["score"], terms.combine(a["score"], b["indicators"]), rtol=1e-5)
    assert b["indicators"]["noise"][2] > b["indicators"]["noise"][1] > b["indicators"]["noise"][0]
    for k in ("noise", "blur", "ring", "streak"):
        np.testing.assert_allclose(b["severity"][:, DISTORTIONS.index(k)], terms.severity(k, b["indicators"][k]),
                                   rtol=1e-5)
    gap = np.abs(b["score"] - a["score"])
    # the noise-free slice's noise reading is its structure (the low quantiles read almost
    # none): flagged, with that gap in full in its uncertainty; white noise reads alike both ways
    confounded = (b["flags"] & FLAG_NOISE_CONFOUNDED) != 0
    assert confounded.tolist() == [True, False, False], b["noise_confound_gap"]
    extra = np.where(confounded, b["noise_confound_gap"], 0.0)
    np.testing.assert_allclose(b["score_uncertainty"],
                               np.sqrt(a["score_uncertainty"] ** 2 + (DISAGREEMENT_SHARE * gap) ** 2 + extra**2),
                               rtol=1e-4)
    assert np.isnan(a["noise_confound_gap"]).all()  # no terms: no noise term to check
    assert np.isnan(a["severity"][:, DISTORTIONS.index("streak")]).all()  # the head has no streak output
    np.testing.assert_array_equal(m.score_slices(stack, measured_terms=False)["score"], a["score"])


def test_anchored_severity_line_reads_zero_at_the_anchor():
    x = np.exp(np.linspace(-5, -1, 20))
    level = 5 * 0.3 * (np.log(x) - np.log(0.01))
    u, v = fit_severity_line(x, level, anchor=0.01)
    assert v == pytest.approx(0.3) and u + v * np.log(0.01) == pytest.approx(0.0, abs=1e-12)


def test_relative_terms_enter_only_when_asked_and_never_raise_the_score():
    """The axis term is relative: left out of the absolute score, and with ``relative=True``
    flat below its resolution t (an error the estimate cannot resolve) and falling above it."""
    w = {k: 1.0 for k in INDICATORS}
    t = MeasuredTerms(w, dict(TYPICAL, axis=1.0), relative=("axis",))
    s = np.full(6, 3.0)
    x = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    ind = {k: np.full(6, v) for k, v in TYPICAL.items() if k != "axis"}
    ind["axis"] = x
    plain = t.combine(s, ind)
    np.testing.assert_allclose(plain, plain[0])  # absolute: the axis reading changes nothing
    rel = t.combine(s, ind, relative=True)
    np.testing.assert_allclose(rel[:3], plain[0])  # at or below the resolution: the absolute score
    assert np.all(np.diff(rel[2:]) < 0)  # above it, every px more lowers the score
    assert t.weighs("axis", relative=True) and not t.weighs("axis")
    with pytest.raises(OptionError):
        MeasuredTerms(w, TYPICAL, relative=("sharpness",))


@pytest.mark.parametrize("balance", ["pairs", "kinds"])
def test_pair_weights_split_real_and_simulated_halves_evenly(balance):
    from tomoqc.train.measured import pair_weights

    kinds = ["dose"] * 30 + ["ring"] * 10 + ["real_dose"] * 12 + ["real_stripes"] * 2
    w = pair_weights(kinds, balance=balance, real_weight=1.0)
    real = np.array([k.startswith("real_") for k in kinds])
    assert w.mean() == pytest.approx(1.0)
    assert w[real].sum() == pytest.approx(w[~real].sum())  # the two halves weigh the same
    by_kind = {k: w[np.array(kinds) == k].sum() for k in set(kinds)}
    if balance == "kinds":  # every kind of a half weighs the same in total
        assert by_kind["dose"] == pytest.approx(by_kind["ring"])
        assert by_kind["real_dose"] == pytest.approx(by_kind["real_stripes"])
    else:  # every pair of a half weighs the same
        assert len(set(np.round(w[~real], 12))) == 1 and len(set(np.round(w[real], 12))) == 1
        assert by_kind["dose"] == pytest.approx(3 * by_kind["ring"])


def test_pair_weights_real_weight_and_bad_balance():
    from tomoqc.train.measured import pair_weights

    kinds = ["dose"] * 4 + ["real_gain"] * 4
    w = pair_weights(kinds, balance="kinds", real_weight=3.0)
    assert w[4:].sum() == pytest.approx(3 * w[:4].sum())
    assert pair_weights(["dose", "blur"], balance="kinds").tolist() == [1.0, 1.0]  # no real half: still mean 1
    with pytest.raises(OptionError, match="balance"):
        pair_weights(kinds, balance="levels")


def test_an_onset_reading_holds_what_it_confounds():
    """Where the view spacing reads above its onset, the blur index counts at most its
    typical value, unless it reads beyond HOLD_LIMIT times that; below the onset it counts
    as read. The severity follows the same rule in the model; the card keeps the rule."""
    from tomoqc.models.measured import HOLD_LIMIT

    weights = {"blur": 1.5, "spacing": 1.0}
    t = MeasuredTerms(weights, TYPICAL, onset=("spacing",), holds={"spacing": ["blur"]})
    plain = MeasuredTerms(weights, TYPICAL, onset=("spacing",))
    tb, ts = TYPICAL["blur"], TYPICAL["spacing"]
    blur = np.array([2.2, 2.2, 0.5, HOLD_LIMIT * tb * 1.5, 2.2, np.nan])
    spacing = np.array([12.0, ts, 30.0, 30.0, np.nan, 30.0])
    held = t.held({"blur": blur, "spacing": spacing})
    np.testing.assert_array_equal(held["blur"][:5], [tb, 2.2, 0.5, HOLD_LIMIT * tb * 1.5, 2.2])
    assert np.isnan(held["blur"][5]) and held["spacing"] is spacing  # the others pass through
    assert blur[0] == 2.2  # the caller's array is not changed
    s = np.full(6, 3.0)
    ind = {"blur": blur, "spacing": spacing}
    got, without = t.combine(s, ind), plain.combine(s, ind)
    # held at its typical value the blur feature is 0: only the spacing term counts
    q = (3.0 - 1) / 4
    z = np.log(q / (1 - q)) - 1.0 * np.log1p((12.0 - ts) / ts)
    assert got[0] == pytest.approx(1 + 4 / (1 + np.exp(-z)))
    assert got[0] > without[0]
    np.testing.assert_allclose(got[1:5], without[1:5])
    back = MeasuredTerms.from_card({"measured_terms": t.to_card()})
    assert back.holds == {"spacing": ("blur",)}
    assert "holds" not in back.info and "holds" not in plain.to_card()
    # with_term keeps the rule, or replaces it when told
    assert t.with_term("spacing", 0.0).holds == {"spacing": ("blur",)}
    assert t.with_term("spacing", 0.0, holds=()).holds == {}
    with pytest.raises(OptionError):
        MeasuredTerms(weights, TYPICAL, onset=("spacing",), holds={"noise": ["blur"]})  # not an onset indicator
    with pytest.raises(OptionError):
        MeasuredTerms(weights, TYPICAL, onset=("spacing", "wedge"), holds={"spacing": ["wedge"]})
    with pytest.raises(OptionError):
        MeasuredTerms(weights, TYPICAL, onset=("spacing",), holds={"spacing": ["sharpness"]})


def test_scaling_multiplies_only_the_absolute_terms():
    """scaled(f) multiplies the logit penalty of the absolute terms by f and leaves the
    relative and onset terms, typical values and holds as they are: f = 0 gives back the
    network's score where no onset indicator reads; f = 1 changes nothing."""
    t = MeasuredTerms({"noise": 1.2, "blur": 0.7, "axis": 2.0, "spacing": 1.5}, TYPICAL, power=POWER,
                      relative=("axis",), onset=("spacing",), holds={"spacing": ["blur"]}, info={"fitted_on": "x"})
    rng = np.random.default_rng(3)
    s = rng.uniform(1.5, 4.8, 20)
    ind = {"noise": rng.uniform(0.0, 0.3, 20), "blur": rng.uniform(0.3, 6.0, 20), "axis": rng.uniform(0, 4, 20),
           "spacing": np.zeros(20)}
    np.testing.assert_allclose(t.scaled(0.0).combine(s, ind), s, atol=1e-9)
    np.testing.assert_allclose(t.scaled(1.0).combine(s, ind, relative=True), t.combine(s, ind, relative=True))
    half = t.scaled(0.5, info={"note": 1})
    np.testing.assert_allclose(half.penalty(ind), 0.5 * t.penalty(ind))
    assert half.weights["axis"] == 2.0 and half.weights["spacing"] == 1.5
    assert half.weights["noise"] == pytest.approx(0.6) and half.weights["blur"] == pytest.approx(0.35)
    assert half.holds == t.holds and half.typical == t.typical and half.power == t.power
    assert half.info == {"fitted_on": "x", "note": 1}
    # an onset reading still counts in full at f = 0
    ind["spacing"] = np.full(20, 16.0)
    z = np.log((s - 1) / (5 - s)) - 1.5 * np.log1p((16.0 - 8.0) / 8.0)
    np.testing.assert_allclose(t.scaled(0.0).combine(s, ind), 1 + 4 / (1 + np.exp(-z)))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(OptionError):
            t.scaled(bad)


def test_term_strength_table_trades_pairs_against_labels():
    """Series whose network score rises with the impairment (wrong) while the noise index
    rises faster: their pairs are all wrong without the terms and all right with strong ones.
    Labelled images whose network score is the label itself and whose noise index is
    unrelated to it: SROCC 1 without the terms, lower with them."""
    from tomoqc.train.measured import PAIR_SETS, pair_set, term_strength_table

    terms = MeasuredTerms({"noise": 1.0}, TYPICAL, power=POWER)
    rows = []
    for ref, kind in (("phantom#0", "dose"), ("wood#0", "img_noise"), ("htc:01c", "real_dose"), ("savu:80", "real_center")):
        for lv in range(4):
            rows.append({"reference": ref, "kind": kind, "level": lv, "network": 3.0 + 0.1 * lv,
                         "noise": 0.03 * 4.0**lv, "label": np.nan})
    rng = np.random.default_rng(0)
    for i, lab in enumerate(np.linspace(1.5, 4.8, 12)):
        rows.append({"reference": f"lab/r{i}", "kind": "lab_mixed", "level": 1, "network": lab,
                     "noise": float(rng.uniform(0.01, 0.3)), "label": lab})
    assert [pair_set(r) for r in rows[:16:4]] == [PAIR_SETS[2], PAIR_SETS[1], PAIR_SETS[0], PAIR_SETS[0]]
    assert pair_set(rows[-1]) is None
    table = term_strength_table(terms, rows, [0.0, 3.0])
    none, strong = table
    for name in PAIR_SETS:
        assert none[name] == 0.0 and strong[name] == 1.0
    assert none["pairs_by_kind"] == {"dose": 0.0, "img_noise": 0.0, "real_dose": 0.0}  # no rotation-axis series
    assert none["label_srocc"] == pytest.approx(1.0) and strong["label_srocc"] < 0.9
    with pytest.raises(OptionError):
        term_strength_table(terms, rows, [-1.0])


def test_series_pairs_start_each_labelled_series_at_its_clean_image():
    from tomoqc.train.measured import series_groups, series_pairs

    rows = [{"reference": "lab/r0", "kind": "lab_none", "level": 0},
            *({"reference": "lab/r0", "kind": k, "level": lv} for k in ("lab_noise", "lab_ring") for lv in (1, 2, 3)),
            {"reference": "lab/r0", "kind": "lab_mixed", "level": 2},
            *({"reference": "wood#0", "kind": "blur", "level": lv} for lv in range(5))]
    groups = series_groups(rows)
    assert groups == {("lab/r0", "lab_noise"): [0, 1, 2, 3], ("lab/r0", "lab_ring"): [0, 4, 5, 6],
                      ("wood#0", "blur"): [8, 9, 10, 11, 12]}
    pairs = series_pairs(rows)
    assert len(pairs) == 6 + 6 + 10  # n (n - 1) / 2 per series
    assert all(rows[a]["level"] < rows[b]["level"] for a, b in pairs)
    assert (0, 3) in pairs and (0, 7) not in pairs and (1, 4) not in pairs


def test_noise_confound_gap_is_zero_when_the_readings_agree_and_lifts_when_the_low_one_is_lower():
    terms = MeasuredTerms({"noise": 2.0, "blur": 0.5}, TYPICAL)
    score = np.array([4.0, 4.0, 4.0, np.nan])
    ind = {"noise": np.array([0.2, 0.2, 0.2, 0.2]), "blur": np.full(4, 1.0)}
    gap = terms.noise_confound_gap(score, ind, np.array([0.2, 0.05, np.nan, 0.05]))
    assert gap[0] == pytest.approx(0.0, abs=1e-12) and gap[1] > 0
    assert np.isnan(gap[2]) and np.isnan(gap[3])  # no low reading, no score: no gap
    # without a noise weight the reading cannot matter
    assert MeasuredTerms({"blur": 0.5}, TYPICAL).noise_confound_gap(score[:2], {k: v[:2] for k, v in ind.items()},
                                                                   np.array([0.2, 0.05]))[1] == pytest.approx(0.0)


def test_fit_to_labels_recovers_a_known_combination_and_keeps_the_onset_terms():
    """Labels made by the LabelFit form from known parameters are fitted back exactly; the
    onset and relative weights and the holds stay the card's."""
    from tomoqc.models.measured import LabelFit, fit_to_labels

    card = MeasuredTerms({"noise": 1.0, "blur": 1.0, "ring": 1.0, "streak": 1.0, "axis": 2.0, "spacing": 1.5},
                         TYPICAL, power=POWER, relative=("axis",), onset=("spacing",), holds={"spacing": ["blur"]})
    rng = np.random.default_rng(5)
    n = 300
    s = rng.uniform(1.5, 4.8, n)
    ind = {"noise": rng.uniform(0.0, 0.2, n), "blur": rng.uniform(0.3, 4.0, n), "ring": rng.uniform(0, 0.02, n),
           "streak": rng.uniform(0, 0.4, n), "axis": rng.uniform(0, 4, n),
           "spacing": np.where(rng.random(n) < 0.2, rng.uniform(8, 30, n), 0.0)}
    truth = LabelFit(MeasuredTerms({"noise": 0.3, "blur": 0.1, "ring": 0.05, "streak": 0.6, "axis": 2.0,
                                    "spacing": 1.5}, TYPICAL, power=POWER, relative=("axis",), onset=("spacing",),
                                   holds={"spacing": ["blur"]}), 0.4, 0.8, rmse=0.0, images=n)
    labels = truth.combine(s, ind)
    labels[::7] = np.nan  # unlabelled images are left out
    fit = fit_to_labels(card, s, ind, labels)
    assert fit.images == n - len(labels[::7])
    assert fit.offset == pytest.approx(0.4, abs=1e-4) and fit.slope == pytest.approx(0.8, abs=1e-4)
    for k, w in {"noise": 0.3, "blur": 0.1, "ring": 0.05, "streak": 0.6}.items():
        assert fit.terms.weights[k] == pytest.approx(w, abs=1e-3), k
    assert fit.terms.weights["axis"] == 2.0 and fit.terms.weights["spacing"] == 1.5
    assert fit.terms.holds == card.holds and fit.rmse < 1e-5
    np.testing.assert_allclose(fit.combine(s, ind), truth.combine(s, ind), atol=1e-4)


def test_absolute_design_rebuilds_the_cards_penalty():
    """The design a refit works on: its features times the absolute weights plus the onset
    penalty is the card's own (absolute) penalty, holds applied; the relative term is left out
    and a missing indicator counts as typical (feature 0)."""
    card = MeasuredTerms({"noise": 0.7, "blur": 0.4, "ring": 0.2, "streak": 0.9, "axis": 2.0, "spacing": 1.5},
                         TYPICAL, power=POWER, relative=("axis",), onset=("wedge", "spacing"),
                         holds={"spacing": ["blur"]})
    rng = np.random.default_rng(8)
    n = 50
    ind = {"noise": rng.uniform(0.0, 0.2, n), "blur": rng.uniform(0.3, 4.0, n), "streak": rng.uniform(0, 0.4, n),
           "axis": rng.uniform(0, 4, n), "spacing": np.where(rng.random(n) < 0.3, rng.uniform(8, 30, n), 0.0)}
    names, features, fixed = card.absolute_design(ind, n)
    assert names == ["noise", "blur", "ring", "streak"] and features.shape == (n, 4) and fixed.shape == (n,)
    np.testing.assert_array_equal(features[:, 2], 0.0)  # no ring reading: typical
    weights = np.array([card.weights[k] for k in names])
    np.testing.assert_allclose(features @ weights + fixed, card.penalty(ind), rtol=1e-12, atol=1e-12)
    assert np.any(fixed > 0) and np.any(fixed == 0)  # the onset term counts only above its onset


def test_label_fit_with_no_offset_and_unit_slope_is_the_cards_combination():
    from tomoqc.models.measured import LabelFit, fit_to_labels

    t = _terms(power=POWER)
    rng = np.random.default_rng(6)
    s = rng.uniform(1.5, 4.8, 30)
    ind = {"noise": rng.uniform(0.0, 0.3, 30), "blur": rng.uniform(0.3, 6.0, 30)}
    np.testing.assert_allclose(LabelFit(t, 0.0, 1.0, rmse=0.0, images=30).combine(s, ind), t.combine(s, ind))
    with pytest.raises(OptionError):
        LabelFit(t, 0.0, 0.0, rmse=0.0, images=30)
    with pytest.raises(OptionError, match="labelled images"):
        fit_to_labels(t, s, ind, np.r_[np.full(3, 3.0), np.full(27, np.nan)])
