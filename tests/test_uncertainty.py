"""Entropy, its Monte-Carlo decomposition and the calibration error against analytic values."""

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.uncertainty import (
    as_class_probabilities,
    entropy_bits,
    expected_calibration_error,
    predictive_decomposition,
    reliability_table,
)


@pytest.mark.parametrize("c", [2, 3, 4, 7, 16])
def test_uniform_distribution_has_log2_c_bits(c):
    p = np.full((5, 3, c), 1.0 / c)
    np.testing.assert_allclose(entropy_bits(p), math.log2(c), rtol=1e-12)


def test_one_hot_has_zero_entropy_and_zero_log_zero_is_zero():
    p = np.eye(4)[[0, 3, 2, 1, 1]]
    h = entropy_bits(p)
    assert h.shape == (5,)
    assert np.all(h == 0)
    assert np.all(np.isfinite(h))


def test_binary_half_is_one_bit_and_binary_matches_two_classes():
    assert float(entropy_bits([0.5], binary=True)) == pytest.approx(1.0, abs=1e-12)
    q = np.array([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    # the binary entropy function h(q) = -q log2 q - (1 - q) log2 (1 - q)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.nan_to_num(-q * np.log2(q)) + np.nan_to_num(-(1 - q) * np.log2(1 - q))
    np.testing.assert_allclose(entropy_bits(q[:, None], binary=True), expected, atol=1e-12)
    np.testing.assert_allclose(entropy_bits(np.stack([1 - q, q], -1)), expected, atol=1e-12)


def test_entropy_on_other_axis_and_float32_kept():
    p = np.zeros((3, 2, 2), np.float32)
    p[:, 0, 0] = [0.5, 0.25, 0.25]
    p[0, 1, 1] = 1.0
    h = entropy_bits(p, axis=0)
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, [[1.5, 0.0], [0.0, 0.0]], atol=1e-6)


def test_as_class_probabilities_puts_background_first():
    q = np.array([[[0.2]], [[0.7]]])  # (2, 1, 1), class axis 1
    full = as_class_probabilities(q, True, axis=1)
    assert full.shape == (2, 2, 1)
    np.testing.assert_allclose(full[:, :, 0], [[0.8, 0.2], [0.3, 0.7]])
    same = as_class_probabilities(np.array([[0.3, 0.7]]), False)
    np.testing.assert_array_equal(same, [[0.3, 0.7]])


def test_mutual_information_zero_when_samples_agree():
    rng = np.random.default_rng(0)
    one = rng.dirichlet(np.ones(3), size=(4, 5))  # (4, 5, 3)
    samples = np.repeat(one[None], 6, axis=0)
    d = predictive_decomposition(samples)
    np.testing.assert_allclose(d["epistemic"], 0, atol=1e-12)
    np.testing.assert_allclose(d["total"], entropy_bits(one), atol=1e-12)
    np.testing.assert_allclose(d["aleatoric"], d["total"], atol=1e-12)
    np.testing.assert_allclose(d["mean"], one, atol=1e-12)


def test_two_opposite_one_hot_samples_carry_one_bit_of_mutual_information():
    d = predictive_decomposition(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert float(d["total"]) == pytest.approx(1.0)
    assert float(d["aleatoric"]) == pytest.approx(0.0)
    assert float(d["epistemic"]) == pytest.approx(1.0)
    # binary maps: foreground 0 and 1 in two samples, sample axis last, class axis first
    b = predictive_decomposition(np.array([[0.0, 1.0]]), axis=1, class_axis=0, binary=True)
    assert float(b["epistemic"]) == pytest.approx(1.0)


def test_decomposition_of_k_disagreeing_one_hot_samples_is_log2_k():
    # k samples, each certain of a different class out of C: total log2 k, aleatoric 0
    for k in (2, 3, 4):
        s = np.eye(5)[:k]  # (k, 5)
        d = predictive_decomposition(s)
        assert float(d["epistemic"]) == pytest.approx(math.log2(k))
        assert float(d["aleatoric"]) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    raw=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 5)),
                   elements=st.floats(0.0, 1.0)),
)
def test_total_at_least_aleatoric(raw):
    # any non-negative weights normalised to distributions (rows of zeros become uniform)
    w = raw + 1e-12
    p = w / w.sum(axis=-1, keepdims=True)
    d = predictive_decomposition(p)
    assert np.all(d["total"] >= d["aleatoric"] - 1e-9)
    assert np.all(d["epistemic"] >= 0)
    np.testing.assert_allclose(d["epistemic"], np.maximum(d["total"] - d["aleatoric"], 0), atol=1e-12)
    assert np.all(d["total"] <= math.log2(p.shape[-1]) + 1e-9)


def test_ece_zero_for_a_calibrated_construction():
    # groups of 20 predictions claiming confidence c, of which exactly 20 c are right
    probs, labels = [], []
    for c in (0.55, 0.6, 0.75, 0.8, 0.95, 1.0):
        n_right = round(20 * c)
        probs.append(np.tile([c, 1 - c], (20, 1)))
        labels.append([0] * n_right + [1] * (20 - n_right))
    ece = expected_calibration_error(np.concatenate(probs), np.concatenate(labels))
    assert ece == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_constant_over_confident_predictor():
    # always 95 % sure of the foreground, right on 70 of 100 pixels: ECE = 0.95 - 0.70
    q = np.full((10, 10, 1), 0.95)
    truth = np.zeros((10, 10), int)
    truth.flat[:70] = 1
    assert expected_calibration_error(q, truth, binary=True) == pytest.approx(0.25)
    t = reliability_table(q, truth, binary=True, n_bins=10)
    assert t["count"].sum() == 100 and t["count"][9] == 100  # 0.95 lies in (0.9, 1.0]
    assert t["accuracy"][9] == pytest.approx(0.7)
    assert np.isnan(t["accuracy"][0])


def test_ece_weights_bins_by_count():
    # 30 predictions at 0.9 right 60 % (gap 0.3), 10 at 0.6 right 60 % (gap 0): 30/40 * 0.3
    p = np.concatenate([np.tile([0.1, 0.9], (30, 1)), np.tile([0.6, 0.4], (10, 1))])
    y = np.concatenate([[1] * 18 + [0] * 12, [0] * 6 + [1] * 4])
    assert expected_calibration_error(p, y) == pytest.approx(0.75 * 0.3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="one channel"):
        entropy_bits(np.full((3, 2), 0.5), binary=True)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        entropy_bits([1.5, -0.5])
    with pytest.raises(InputError, match="NaN"):
        entropy_bits([np.nan, 1.0])
    with pytest.raises(InputError, match="dtype"):
        entropy_bits(np.array([0.5 + 0j, 0.5]))
    with pytest.raises(InputError, match="labels have shape"):
        expected_calibration_error(np.full((4, 2), 0.5), [0, 1])
    with pytest.raises(InputError, match="0..1"):
        expected_calibration_error(np.full((2, 2), 0.5), [0, 2])
    with pytest.raises(OptionError, match="n_bins"):
        expected_calibration_error(np.full((2, 2), 0.5), [0, 1], n_bins=0)
    with pytest.raises(OptionError, match="differ"):
        predictive_decomposition(np.full((2, 2), 0.5), axis=1, class_axis=-1)


def test_module_does_not_import_tensorflow():
    code = "import sys, tomoqc.metrics.uncertainty; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
