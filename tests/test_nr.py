"""No-reference physical measures (tomoqc.metrics.nr): noise and undersampling streaks."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.nr import blur_index, contrast, noise_index, noise_sigma, sample_mask, streak_index


def _steps(n=256):
    img = np.zeros((n, n))
    img[:, n // 3 :] = 1.0
    img[n // 2 :, 2 * n // 3 :] = 0.5
    return img


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_noise_sigma_recovers_white_noise(sigma):
    rng = np.random.default_rng(1)
    img = _steps() + rng.normal(0, sigma, (256, 256))
    assert noise_sigma(img) == pytest.approx(sigma, rel=0.06)


def test_noise_index_is_sigma_over_contrast_and_invariant_to_gain_and_offset():
    rng = np.random.default_rng(2)
    img = _steps() + rng.normal(0, 0.05, (256, 256))
    v = noise_index(img)
    # contrast of the noise-free steps is 1 (1st to 99th percentile of 0 / 0.5 / 1)
    assert v == pytest.approx(0.05, rel=0.1)
    assert noise_index(img * 37.0 + 1000.0) == pytest.approx(v, rel=1e-6)


def test_noise_index_rises_with_noise():
    rng = np.random.default_rng(3)
    base = _steps()
    vals = [noise_index(base + rng.normal(0, s, base.shape)) for s in (0.0, 0.01, 0.02, 0.04, 0.08, 0.16)]
    assert vals[0] == 0.0
    assert all(b > a for a, b in zip(vals, vals[1:]))


def test_constant_field_of_view_is_left_out():
    rng = np.random.default_rng(4)
    n = 256
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(yy, xx) < 100
    img = np.where(inside, _steps() + rng.normal(0, 0.05, (n, n)), -3.0)
    m = sample_mask(img)
    assert m[inside].mean() > 0.99 and not m[np.hypot(yy, xx) > 104].any()
    # the constant outside does not dilute the noise estimate
    assert noise_sigma(img) == pytest.approx(0.05, rel=0.08)
    assert np.isnan(noise_index(np.full((64, 64), 2.0)))
    assert np.isnan(contrast(np.full((64, 64), 2.0)))


def test_streak_index_rises_as_projections_are_removed():
    from tomoqc.distort import physics
    from tomoqc.phantom import electrode_slice

    img = electrode_slice((128, 128), seed=5)[0]
    img = (img - img.min()) / np.ptp(img)
    full = physics.scanner(img.shape).n_angles
    vals = [
        streak_index(physics.simulate_scan(img, n_angles=int(full * f), flux=2e4, rng=0))
        for f in (1.0, 1 / 2, 1 / 4, 1 / 8)
    ]
    assert all(b > a for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] > 3 * vals[0]


def test_streak_index_of_isotropic_images_is_small():
    rng = np.random.default_rng(6)
    white = rng.normal(size=(256, 256))
    assert streak_index(white) < 0.05
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(rng.normal(size=(256, 256)), 2.0) + 0.01 * white
    assert streak_index(blurred) < 0.1


def test_bad_input():
    with pytest.raises(InputError):
        noise_index(np.zeros((4, 4, 4)))
    with pytest.raises(InputError):
        streak_index(np.zeros((64, 64), complex))
    with pytest.raises(OptionError):
        streak_index(np.zeros((64, 64)), band=(0.4, 0.2))
    assert np.isnan(streak_index(np.zeros((16, 16))))


def test_correlated_noise_is_seen_at_coarser_levels():
    from tomoqc.metrics.nr import noise_levels

    rng = np.random.default_rng(7)
    white = rng.normal(0, 0.05, (128, 128))
    # the same noise on a grid twice as fine (each value repeated 2 x 2): the finest band reads 0
    coarse = np.kron(white, np.ones((2, 2)))
    lv = noise_levels(_steps(256) + coarse)
    # white-equivalent: white noise whose 2 x 2 means have sd 0.05 has sd 0.1
    assert lv[0] < 0.005 and lv[1] == pytest.approx(0.1, rel=0.12)
    assert noise_sigma(_steps(256) + coarse) > 0.04
    np.testing.assert_allclose(noise_levels(_steps(256) + rng.normal(0, 0.05, (256, 256))), 0.05, rtol=0.12)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_both_noise_estimators_read_white_noise_at_every_level(sigma):
    from tomoqc.metrics.nr import NOISE_ESTIMATORS, noise_indices, noise_levels

    img = _steps() + np.random.default_rng(3).normal(0, sigma, (256, 256))
    for e in NOISE_ESTIMATORS:
        np.testing.assert_allclose(noise_levels(img, estimator=e), sigma, rtol=0.06, err_msg=e)
    both = noise_indices(img)
    assert set(both) == set(NOISE_ESTIMATORS)
    assert both["low_quantiles"] == pytest.approx(both["median"], rel=0.06)
    assert both["median"] == noise_index(img)  # the terms' reading is the median's


def test_low_quantiles_read_the_noise_where_dense_fine_particles_fill_the_band(dense_particles):
    """Discs 5 px across covering about 45 % of the slice put edges into most 2 x 2 block
    coefficients of the coarser Haar level: the median reads them as noise (more than ten
    times the true sigma), the mean of the 0.10-0.40 quantiles still reads the flat blocks."""
    from tomoqc.metrics.nr import noise_levels

    sigma = 0.02
    img = dense_particles() + np.random.default_rng(4).normal(0, sigma, (256, 256))
    med = noise_levels(img, estimator="median")
    low = noise_levels(img, estimator="low_quantiles")
    assert med[1] > 10 * sigma
    assert low[1] < 3 * sigma
    assert low[0] == pytest.approx(sigma, rel=0.3)
    assert noise_index(img, estimator="low_quantiles") < noise_index(img) / 3


def test_unknown_noise_estimator_is_refused():
    from tomoqc.metrics.nr import noise_levels

    with pytest.raises(OptionError, match="unknown noise estimator 'mean'"):
        noise_levels(_steps(), estimator="mean")
    with pytest.raises(OptionError, match="unknown noise estimator"):
        noise_index(_steps(), estimator="mad")


def test_blur_index_rises_with_blur_and_not_with_noise_or_fewer_projections():
    from tomoqc.distort import physics
    from tomoqc.metrics.nr import blur_index
    from tomoqc.phantom import electrode_slice

    img = electrode_slice((128, 128), seed=8)[0]
    img = (img - img.min()) / np.ptp(img)
    blurred = [blur_index(physics.simulate_scan(img, flux=2e4, psf_sigma=s, rng=0)) for s in (0.0, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(blurred, blurred[1:])), blurred
    noisy = [blur_index(physics.simulate_scan(img, flux=f, rng=0)) for f in (1e5, 2e4, 5e3, 1e3)]
    # noise is taken off and only strong edge crests count: it does not read as sharpness
    assert max(noisy) < 1.15 * min(noisy) and max(noisy) < 0.9 * blurred[2], (noisy, blurred)
    # nor do undersampling streaks, down to 1/16 of the projections (their dense crests are
    # finer than any edge and left out; the earlier whole-slice index halved at 1/16)
    n_full = int(np.ceil(np.pi / 2 * 128))  # the scan's default: Nyquist sampling of the slice
    sparse = [blur_index(physics.simulate_scan(img, flux=1e5, n_angles=n_full // k, rng=0)) for k in (1, 4, 16)]
    assert min(sparse) > 0.9 * sparse[0], sparse


def test_blur_index_leaves_out_texture_finer_than_an_edge():
    """Fine texture beside a blurred step does not read as sharpness: its crests' energy
    ratio exceeds what any blurred step gives, (s2 / s1)**2, and they are left out."""
    from scipy import ndimage

    from tomoqc.metrics.nr import blur_index

    rng = np.random.default_rng(1)
    step = np.zeros((256, 256))
    step[:, 128:] = 1.0
    step = ndimage.gaussian_filter(step, 2.0)
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (256, 256)), 0.7)
    img = step.copy()
    img[:, 16:100] += tex[:, 16:100] / tex.std()
    img += rng.normal(0, 0.01, img.shape)
    assert blur_index(img) == pytest.approx(2.0, rel=0.1)
    # with every crest counted, the texture reads as a sharp edge
    assert blur_index(img, fine=np.inf) < 0.5


@pytest.mark.parametrize("b", [1.0, 2.0, 4.0])
def test_blur_index_is_the_gaussian_width_of_a_blurred_step(b):
    """On a step edge blurred by a Gaussian of width b the crest energy ratio gives b back."""
    from scipy import ndimage

    from tomoqc.metrics.nr import blur_index

    rng = np.random.default_rng(9)
    step = ndimage.gaussian_filter(_steps(256), b) + rng.normal(0, 0.01, (256, 256))
    assert blur_index(step) == pytest.approx(b, rel=0.1)
    assert blur_index(step * 5 + 7) == pytest.approx(blur_index(step), rel=1e-6)
    # a sharp sampled step reads well under a pixel: only the pixel grid's own spread
    assert blur_index(_steps(256) + rng.normal(0, 0.01, (256, 256))) < 0.6


def test_blur_index_of_an_8_bit_export_with_plateaus_inside_the_sample():
    """Quantising a smooth slice leaves constant 5 x 5 patches inside the sample, which
    sample_mask leaves out; the blur index looks for edges in the sample with those holes
    filled, so a coarse export reads the float slice's blur (it read nothing at all before)."""
    a = np.load(Path(__file__).parent / "data" / "real" / "htc2022_ta_fbp256.npy").astype(np.float64)
    b = ndimage.gaussian_filter(a, 2.0)
    lo, hi = np.percentile(b, [0.5, 99.5])
    q = np.round(np.clip((b - lo) / (hi - lo), 0, 1) * 31)
    m = sample_mask(q)
    assert ndimage.binary_fill_holes(m).sum() > m.sum() + 0.05 * m.size  # holes inside the sample
    assert blur_index(b) == pytest.approx(2.0, abs=0.2)  # the blur applied (the slice itself is sharp)
    assert blur_index(q) == pytest.approx(blur_index(b), rel=0.1)
