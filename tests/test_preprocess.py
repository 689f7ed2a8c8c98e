import numpy as np
import pytest

from tomoqc.errors import InputError
from tomoqc.preprocess import normalize_slice, normalize_slice_flagged, patch_validity


def test_linear_ramp_maps_percentiles_to_0_and_1():
    # a uniform ramp 0..1000: its 0.5th and 99.5th percentiles are 5 and 995
    a = np.linspace(0.0, 1000.0, 100001).reshape(1, -1)
    out = normalize_slice(a)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    mid = out[0, 50000]  # value 500 -> (500 - 5) / 990
    assert mid == pytest.approx(495.0 / 990.0, abs=1e-5)


def test_invariant_to_dtype_offset_and_scale():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(64, 80))
    a = normalize_slice(img)
    b = normalize_slice(img * 3000.0 + 12345.0)
    c = normalize_slice((img * 1000 + 30000).astype(np.uint16))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=2e-3)


def test_nan_safe():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, size=(50, 50))
    img[3, 4] = np.nan
    img[10, 10] = np.inf
    out = normalize_slice(img)
    assert np.isfinite(out).all()
    assert out[3, 4] == 0.0 and out[10, 10] == 0.0
    clean = img.copy()
    clean[3, 4] = clean[10, 10] = np.nan
    # the finite pixels are normalised as if the bad ones were not there
    ref = normalize_slice(np.where(np.isfinite(clean), clean, np.nanmedian(clean)))
    mask = np.isfinite(clean)
    assert np.abs(out[mask] - ref[mask]).max() < 0.02


def test_constant_and_empty_slices_flagged():
    out, flag = normalize_slice_flagged(np.full((8, 9), 7.0))
    assert flag and out.shape == (8, 9) and (out == 0).all()
    out, flag = normalize_slice_flagged(np.full((4, 4), np.nan))
    assert flag and (out == 0).all()
    _, flag = normalize_slice_flagged(np.eye(5))
    assert not flag


def test_bad_input():
    with pytest.raises(InputError):
        normalize_slice(np.zeros((2, 3, 4)))
    with pytest.raises(InputError):
        normalize_slice(np.array([["a", "b"]]))
    with pytest.raises(InputError):
        normalize_slice(np.zeros((3, 3)), low=50, high=10)


def test_patch_validity():
    rng = np.random.default_rng(2)
    texture = rng.uniform(0, 1, size=(64, 64)).astype(np.float32)
    assert patch_validity(texture)
    # three quarters outside the reconstructed disc (exact zeros)
    outside = texture.copy()
    outside[:, 16:] = 0.0
    assert not patch_validity(outside)
    # a quarter outside is still fine
    part = texture.copy()
    part[:, 48:] = 0.0
    assert patch_validity(part)
    # air: dark and nearly flat, with a little noise
    air = (0.05 + 0.01 * rng.normal(size=(64, 64))).astype(np.float32)
    assert not patch_validity(air)
    # a bright, flat patch without contrast
    assert not patch_validity(np.full((64, 64), 0.7, np.float32))
    # heavy noise on sample stays valid
    noisy = np.clip(texture + rng.normal(0, 1, size=texture.shape), 0, 1).astype(np.float32)
    assert patch_validity(noisy)
    assert not patch_validity(np.full((8, 8), np.nan))


def test_saturated_and_binary_patches_are_not_taken_for_the_outside():
    from tomoqc.preprocess import outside_values, patch_has_structure

    rng = np.random.default_rng(3)
    # an 8-bit export whose window clipped: 70 % of the patch saturated white, inside the sample
    sat = rng.uniform(0.2, 0.9, size=(64, 64)).astype(np.float32)
    sat[:, :45] = 1.0
    assert not patch_validity(sat)  # the patch-only rule takes the white for the outside ...
    assert patch_validity(sat, outside=(0.0,))  # ... the slice says the outside is black
    assert not patch_validity(np.where(sat == 1.0, 0.0, sat), outside=(0.0,))  # black is still the outside
    # a slice whose outer region is white: white is the outside there
    slice_ = np.ones((100, 120), np.float32)
    slice_[20:80, 20:100] = rng.uniform(0, 0.9, size=(60, 80))
    assert outside_values(slice_) == (0.0, 1.0)
    assert outside_values(np.pad(slice_[20:80, 20:100], 5)) == (0.0,)
    # the relaxed test: any structure, at most 90 % one extreme value
    binary = (rng.random((64, 64)) < 0.8).astype(np.float32)
    assert patch_has_structure(binary)
    mostly_black = np.zeros((64, 64), np.float32)
    mostly_black[:4, :4] = 1.0
    assert not patch_has_structure(mostly_black)


def test_float_offsets_and_tiny_objects():
    rng = np.random.default_rng(4)
    detail = rng.normal(size=(64, 64))
    # float64 slices with a huge offset keep their detail (not cast to float32 first)
    a = normalize_slice(detail)
    b = normalize_slice(detail + 1e8)
    np.testing.assert_allclose(a, b, atol=2e-3)
    # an object smaller than the clipped tails is not a constant slice
    img = np.zeros((100, 100), np.uint8)
    img[50, 50:55] = 255
    out, constant = normalize_slice_flagged(img)
    assert not constant and out.max() == 1.0


def test_tail_stretch_matches_the_analytic_quantiles():
    from scipy.stats import norm

    from tomoqc.preprocess import tail_stretch

    rng = np.random.default_rng(4)
    # uniform: (0.995 - 0.98) / (0.98 - 0.005); normal: from its quantile function
    assert tail_stretch(rng.uniform(size=(600, 600))) == pytest.approx(0.015 / 0.975, rel=0.05)
    z = norm.ppf([0.005, 0.98, 0.995])
    assert tail_stretch(rng.normal(size=(600, 600))) == pytest.approx((z[2] - z[1]) / (z[1] - z[0]), rel=0.03)
    # 1 % of the pixels at 10: the top half percent is that minority, the 98th percentile the
    # uniform bulk's 98/99 quantile
    a = rng.uniform(size=(600, 600))
    a.flat[rng.choice(a.size, a.size // 100, replace=False)] = 10.0
    hi, lo = 0.98 / 0.99, 0.005 / 0.99
    assert tail_stretch(a) == pytest.approx((10 - hi) / (hi - lo), rel=0.02)
    # gain and offset do not change it; non-finite pixels are left out
    b = 3.5 * a - 7.0
    b[:5] = np.nan
    assert tail_stretch(b) == pytest.approx(tail_stretch(a[5:]), rel=1e-9)
    assert np.isnan(tail_stretch(np.full((8, 8), np.nan))) and np.isnan(tail_stretch(np.ones((8, 8))))
    with pytest.raises(InputError):
        tail_stretch(np.zeros((2, 3, 4)))
