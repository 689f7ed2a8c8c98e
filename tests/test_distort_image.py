"""Image-domain distortions (TIQA report Table S1) against analytic facts."""

from __future__ import annotations

import numpy as np
import pytest

from tomoqc import distort
from tomoqc.distort import image
from tomoqc.errors import InputError, OptionError


def test_table_s1_constants():
    # the report's Table S1, verbatim for noise and blur; rings keep the report's table
    # for comparison and double from level to level (module doc)
    assert image.NOISE_VARIANCE == (0.001, 0.006, 0.022, 0.088, 1.00)
    assert image.BLUR_SIGMA == (1.2, 2.5, 6.5, 15.2, 33.2)
    assert image.REPORT_RING_COEFF == (0.1, 0.13, 0.15, 0.18, 0.2)
    assert image.RING_COEFF == (0.05, 0.1, 0.2, 0.4, 0.8)
    assert distort.DISTORTIONS == ("noise", "blur", "ring") and distort.LEVELS == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_noise_variance_on_flat_mid_grey(level):
    # mid-grey 0.5: clipping at 0 and 1 lies >= 3.3 sigma away for these levels
    flat = np.full((512, 512), 0.5, np.float32)
    out = image.apply(flat, "noise", level, rng=level)
    var = image.NOISE_VARIANCE[level - 1]
    # sampling error of a variance estimate: sqrt(2 / n) relative = 0.28 %
    assert out.var() == pytest.approx(var, rel=0.02)
    assert out.mean() == pytest.approx(0.5, abs=4 * np.sqrt(var / out.size))


def test_noise_unclipped_variance_and_clipped_range():
    flat = np.full((512, 512), 0.5, np.float32)
    raw = image.gaussian_noise(flat, 1.0, rng=0, clip=False)
    assert raw.var() == pytest.approx(1.0, rel=0.02)
    clipped = image.apply(flat, "noise", 5, rng=0)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    # X ~ N(0.5, 1) clipped to [0, 1]: P(X <= 0) = Phi(-0.5) = 0.3085 lands exactly on 0
    assert np.mean(clipped == 0.0) == pytest.approx(0.3085, abs=0.005)
    assert clipped.mean() == pytest.approx(0.5, abs=0.005)  # symmetric about 0.5


@pytest.mark.parametrize("sigma,period", [(1.2, 8), (2.5, 16), (6.5, 64)])
def test_blur_attenuates_sinusoid_by_gaussian_transfer_function(sigma, period):
    n = 256
    x = np.arange(n)
    f = 1.0 / period
    img = (0.5 + 0.3 * np.sin(2 * np.pi * f * x))[None, :].repeat(n, 0).astype(np.float32)
    expected = np.exp(-2 * np.pi**2 * sigma**2 * f**2)
    out = image.gaussian_blur(img, sigma, mode="wrap")
    amp = np.abs(np.fft.rfft(out[n // 2] - out[n // 2].mean()))[n // period] * 2 / n
    assert amp / 0.3 == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_blur_levels_use_table_sigma_away_from_borders():
    # level 1 through apply(): nearest-mode borders, so measure in the middle only
    n, period = 256, 16
    x = np.arange(n)
    img = (0.5 + 0.3 * np.cos(2 * np.pi * x / period))[None, :].repeat(n, 0).astype(np.float32)
    out = image.apply(img, "blur", 1)
    centre = out[n // 2, 64:192]
    ratio = (centre.max() - centre.min()) / 0.6
    assert ratio == pytest.approx(np.exp(-2 * np.pi**2 * 1.2**2 / period**2), rel=2e-3)


def test_ring_offsets_radially_symmetric_and_alternating():
    flat = np.full((201, 201), 0.5, np.float32)
    out = image.apply(flat, "ring", 3, rng=1)
    gain = out / flat
    yy, xx = np.mgrid[:201, :201]
    r = np.hypot(yy - 100, xx - 100)
    c = image.RING_COEFF[2]
    # every pixel is multiplied by 1, 1 + c or 1 - c
    assert np.all(np.isclose(gain, 1) | np.isclose(gain, 1 + c) | np.isclose(gain, 1 - c))
    # radially symmetric: the gain depends on the radius only
    for rad in np.unique(np.round(r, 6))[::7]:
        g = gain[np.isclose(r, rad)]
        assert np.ptp(g) < 1e-6
    # both signs occur, and ring widths are ~2 px: the disturbed band at a ring has width 2
    assert np.any(np.isclose(gain, 1 + c)) and np.any(np.isclose(gain, 1 - c))
    prof = gain[100, 100:]
    runs = np.diff(np.flatnonzero(np.diff(np.r_[False, ~np.isclose(prof, 1), False].astype(int))))[::2]
    assert runs.size >= 3 and np.all((runs >= 1) & (runs <= 3))


def test_ring_offsets_proportional_to_intensity():
    rng = np.random.default_rng(0)
    # bright enough pixels times 1 + 0.8 would clip at 1: stay below 1 / 1.8
    img = rng.uniform(0.1, 0.55, (128, 160)).astype(np.float32)
    a = image.apply(img, "ring", 5, rng=7)
    b = image.apply(0.5 * img, "ring", 5, rng=7)
    # the offset (out - in) scales with the pixel value
    assert np.allclose(b - 0.5 * img, 0.5 * (a - img), atol=1e-6)
    assert np.abs(a - img).max() == pytest.approx(0.8 * img[np.abs(a - img) > 0].max(), rel=0.05)


def test_ring_centre_is_configurable():
    flat = np.full((120, 120), 0.5, np.float32)
    out = image.apply(flat, "ring", 2, rng=3, center=(30.0, 90.0))
    # concentric about (30, 90): the four rays from that point see the same profile
    right, down = out[30, 90:], out[30:, 90]
    left, up = out[30, 90::-1], out[30::-1, 90]
    n = min(right.size, down.size, left.size, up.size)
    assert not np.allclose(right[:n], 0.5)
    assert np.array_equal(right[:n], down[:n])
    assert np.array_equal(right[:n], left[:n]) and np.array_equal(right[:n], up[:n])
    # and not about the image centre
    default = image.apply(flat, "ring", 2, rng=3)
    assert not np.array_equal(default, out)


def test_level_zero_is_identity_and_copy():
    img = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    for k in distort.DISTORTIONS:
        out = image.apply(img, k, 0)
        assert np.array_equal(out, img) and out is not img


def test_same_rng_same_output():
    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    for k in ("noise", "ring"):
        assert np.array_equal(image.apply(img, k, 3, rng=5), image.apply(img, k, 3, rng=5))
        assert not np.array_equal(image.apply(img, k, 3, rng=5), image.apply(img, k, 3, rng=6))


def test_mixture_applies_each_component():
    img = np.full((64, 64), 0.5, np.float32)
    mix = distort.apply_mixture(img, {"noise": 1, "blur": 2}, rng=0)
    # blur of a flat image is the identity, so the result is noise of level 1 only
    assert mix.var() == pytest.approx(0.001, rel=0.1)
    with pytest.raises(OptionError):
        distort.apply_mixture(img, {"smear": 1})
    with pytest.raises(OptionError):
        distort.apply_mixture(img, {})


@pytest.mark.parametrize(
    "bad,exc",
    [
        (np.zeros((4, 4, 4)), InputError),
        (np.zeros((0, 4)), InputError),
        (np.array([[np.nan, 0.0], [0.0, 0.0]]), InputError),
        (np.array([["a", "b"]]), InputError),
    ],
)
def test_bad_images_raise(bad, exc):
    with pytest.raises(exc):
        image.apply(bad, "noise", 1)


def test_bad_options_raise():
    img = np.zeros((8, 8), np.float32)
    for d, lv in [("smear", 1), ("noise", 6), ("noise", -1), ("noise", 1.5)]:
        with pytest.raises(OptionError):
            image.apply(img, d, lv)
    with pytest.raises(OptionError):
        distort.apply(img, "noise", 1, domain="fourier")


def test_psnr_falls_strictly_with_level_over_20_phantoms():
    from tomoqc.phantom import electrode_slice

    n = 20
    psnr = {k: np.zeros((n, 5)) for k in distort.DISTORTIONS}
    for i, ss in enumerate(np.random.SeedSequence(7).spawn(n)):
        s_ph, s_d = ss.spawn(2)
        img, _ = electrode_slice((64, 64), seed=s_ph, randomize=True)
        rng = np.random.default_rng(s_d)
        for k in distort.DISTORTIONS:
            for lv in distort.LEVELS:
                out = image.apply(img, k, lv, rng=rng)
                mse = np.mean((out.astype(np.float64) - img) ** 2)
                psnr[k][i, lv - 1] = 10 * np.log10(1.0 / mse)
    for k, table in psnr.items():
        assert np.all(np.diff(table.mean(0)) < 0), (k, table.mean(0))


def test_psnr_falls_strictly_with_level_over_20_phantoms():
    from tomoqc.phantom import electrode_slice

    n = 20
    psnr = {k: np.zeros((n, 5)) for k in distort.DISTORTIONS}
    for i, ss in enumerate(np.random.SeedSequence(99).spawn(n)):
        s_ph, s_d = ss.spawn(2)
        img, _ = electrode_slice((64, 64), seed=s_ph, randomize=True)
        rng = np.random.default_rng(s_d)
        for k in distort.DISTORTIONS:
            for lv in distort.LEVELS:
                out = image.apply(img, k, lv, rng=rng)
                psnr[k][i, lv - 1] = 10 * np.log10(1.0 / np.mean((out - img.astype(np.float64)) ** 2))
    for k, table in psnr.items():
        assert np.all(np.diff(table.mean(0)) < 0), (k, table.mean(0))
