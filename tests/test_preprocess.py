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
