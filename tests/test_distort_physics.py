"""Sinogram-domain distortions against the physics of a parallel-beam scan."""

from __future__ import annotations

import numpy as np
import pytest

from tomoqc import distort
from tomoqc.distort import physics
from tomoqc.errors import InputError, OptionError
from tomoqc.phantom import electrode_slice


def _disk(n=96, radius=0.4, value=0.5):
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    return np.where(r <= radius * n, value, 0.0).astype(np.float32), r


def _psnr(ref, img):
    mse = np.mean((np.asarray(ref, np.float64) - img) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(1.0 / mse)


def test_projection_of_disk_is_chord_length():
    # line integral of a uniform disk of radius R at offset s: 2 sqrt(R^2 - s^2) * value
    img, _ = _disk(128, 0.35, 1.0)
    sc = physics.Scanner(img.shape, n_angles=12)
    sino = sc.project(img)
    s = np.arange(sc.n_det) - sc.axis
    R = 0.35 * 128
    chord = 2 * np.sqrt(np.clip(R**2 - s**2, 0, None))
    inner = np.abs(s) < 0.8 * R
    # a pixel-driven projector aliases bin by bin at some angles (45 degrees); averaged
    # over 5 detector bins it follows the chord closely at every angle
    box = np.ones(5) / 5
    for row in sino:
        got = np.convolve(row, box, "same")[inner]
        assert np.allclose(got, np.convolve(chord, box, "same")[inner], rtol=0.03)
    assert np.allclose(sino[0][inner], chord[inner], rtol=0.02)  # 0 degrees: no aliasing
    # mass conservation: every projection integrates to the image sum
    assert np.allclose(sino.sum(1), img.sum(), rtol=1e-9)


def test_fbp_of_uniform_disk_recovers_attenuation():
    img, r = _disk(128, 0.4, 0.5)
    rec = physics.reference(img)
    inner = r < 0.4 * 128 - 6
    assert abs(rec[inner].mean() - 0.5) < 0.01
    assert np.abs(rec[inner] - 0.5).max() < 0.025  # within 5 % away from the edge
    outside = r > 0.4 * 128 + 6
    assert np.abs(rec[outside]).mean() < 0.01


@pytest.mark.parametrize("flux", [500.0, 5000.0])
def test_counting_noise_variance_scales_as_inverse_flux(flux):
    """var(p_hat) = 1 / (I0 exp(-p)) for Poisson counts (first-order error propagation)."""
    img, _ = _disk(64, 0.45, 0.6)
    _, clean = physics.simulate_scan(img, return_sinogram=True)
    _, noisy = physics.simulate_scan(img, flux=flux, rng=1, return_sinogram=True)
    err = noisy - clean
    predicted = np.exp(clean) / flux  # variance per detector bin
    # normalised squared errors have mean 1 if the variance is right
    z2 = err**2 / predicted
    assert z2.mean() == pytest.approx(1.0, rel=0.05)
    assert err.mean() == pytest.approx(0.0, abs=5 * np.sqrt(predicted.mean() / err.size) + 1e-3)


def test_defective_detector_column_gives_ring_at_its_distance_from_axis():
    img, r = _disk(128, 0.45, 0.5)
    sc = physics.scanner(img.shape)
    offset = 30
    defects = physics.stripe_gains(sc.n_det)  # no defects yet
    col = int(round(sc.axis)) + offset
    defects["full"][col] = 0.05
    ref = physics.reference(img)
    rec = physics.simulate_scan(img, defects=defects)
    diff = np.abs(rec - ref)
    # radial profile of the error: its peak lies at the column's distance from the axis
    dist = col - sc.axis
    bins = np.round(r).astype(int)
    prof = np.bincount(bins.ravel(), diff.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    assert abs(int(np.argmax(prof[:60])) - dist) <= 1
    # and the ring is round: on that circle the error is much larger than elsewhere
    on = np.abs(r - dist) < 1
    assert diff[on].mean() > 5 * diff[(np.abs(r - dist) > 4) & (r < 50)].mean()


def test_partial_stripe_depends_on_intensity():
    # a partial stripe acts only where transmission is low: no ring through a thin object
    thin, _ = _disk(96, 0.4, 0.02)
    thick, _ = _disk(96, 0.4, 1.0)
    sc = physics.scanner(thin.shape)
    d = physics.stripe_gains(sc.n_det)
    col = int(round(sc.axis)) + 20
    d["partial"][col] = 0.05
    d["threshold"][col] = 0.5
    e_thin = np.abs(physics.simulate_scan(thin, defects=d) - physics.reference(thin)).max()
    e_thick = np.abs(physics.simulate_scan(thick, defects=d) - physics.reference(thick)).max()
    assert e_thin < 1e-3 < e_thick


def test_psf_blur_acts_like_detector_blur():
    img, _ = _disk(96, 0.3, 0.5)
    ref = physics.reference(img)
    soft = physics.simulate_scan(img, psf_sigma=2.5)
    # edge gets softer: total variation drops, and the centre keeps its value
    tv = lambda a: np.abs(np.diff(a, axis=1)).sum()  # noqa: E731
    assert tv(soft) < 0.8 * tv(ref)
    assert abs(soft[48, 48] - ref[48, 48]) < 0.02


def test_angular_undersampling_adds_error():
    img, _ = electrode_slice((96, 96), seed=0)
    ref, (full, sparse) = physics.apply_many(img, [{"noise": 0}, {"noise": 0}], rng=0)
    ref2, (few,) = physics.apply_many(img, [{"noise": 0}], rng=0, n_angles=30)
    assert np.array_equal(ref, ref2)
    assert np.allclose(full, ref)  # nothing applied
    assert _psnr(ref, few) < _psnr(ref, full) - 10


def test_psnr_falls_strictly_with_level_over_20_phantoms():
    n, size = 20, 64
    specs = [{k: lv} for k in distort.DISTORTIONS for lv in distort.LEVELS]
    psnr = {k: np.zeros((n, 5)) for k in distort.DISTORTIONS}
    for i, ss in enumerate(np.random.SeedSequence(2024).spawn(n)):
        s_ph, s_d = ss.spawn(2)
        img, _ = electrode_slice((size, size), seed=s_ph, randomize=True)
        ref, dist = physics.apply_many(img, specs, rng=s_d)
        for spec, d in zip(specs, dist):
            ((k, lv),) = spec.items()
            psnr[k][i, lv - 1] = _psnr(ref, d)
    for k, table in psnr.items():
        means = table.mean(0)
        assert np.all(np.diff(means) < 0), (k, means)


def test_same_seed_identical_physics_output():
    img, _ = electrode_slice((64, 64), seed=3)
    specs = [{"noise": 2}, {"ring": 4}, {"blur": 1, "noise": 3, "ring": 2}]
    a = physics.apply_many(img, specs, rng=11)
    b = physics.apply_many(img, specs, rng=11)
    c = physics.apply_many(img, specs, rng=12)
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1][0], c[1][0])


def test_apply_level_zero_is_reference_and_domain_dispatch():
    img, _ = electrode_slice((48, 48), seed=1)
    ref = physics.reference(img)
    assert np.array_equal(physics.apply(img, "ring", 0, rng=0), ref)
    assert np.array_equal(distort.reference(img, domain="physics"), ref)
    out = distort.apply(img, "noise", 2, domain="physics", rng=5)
    assert np.array_equal(out, physics.apply(img, "noise", 2, rng=5))
    mix = distort.apply_mixture(img, {"noise": 1, "blur": 1}, domain="physics", rng=0)
    assert mix.shape == img.shape and mix.dtype == np.float32


def test_bad_inputs():
    with pytest.raises(InputError):
        physics.apply(np.zeros((4, 4, 4)), "noise", 1)
    with pytest.raises(InputError):
        physics.apply(np.full((8, 8), np.inf), "noise", 1)
    with pytest.raises(OptionError):
        physics.apply(np.zeros((8, 8)), "smear", 1)
    with pytest.raises(OptionError):
        physics.apply(np.zeros((8, 8)), "noise", 7)
    with pytest.raises(OptionError):
        physics.simulate_scan(np.zeros((8, 8)), flux=-1.0)


def test_streak_levels_scan_fewer_projections_and_fall_in_quality():
    img = electrode_slice((96, 96), seed=2)[0]
    img = (img - img.min()) / np.ptp(img)
    full = physics.scanner(img.shape).n_angles
    counts = [physics.streak_angles(img.shape, lv) for lv in range(1, 6)]
    assert physics.streak_angles(img.shape, 0) is None
    assert all(a > b for a, b in zip(counts, counts[1:])) and counts[0] == round(full / 3)
    ref, outs = physics.apply_many(img, [{"streak": lv} for lv in range(1, 6)], rng=0)
    assert np.array_equal(ref, physics.reference(img))
    values = [_psnr(ref, o) for o in outs]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert np.array_equal(outs[2], physics.apply(img, "streak", 3, rng=0))
    assert physics.level_params("streak", 2) == {"angle_fraction": physics.STREAK_FRACTION[1]}
