"""tomoqc.realdata against independent facts (no TensorFlow; fast)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from tomoqc import realdata as rd
from tomoqc.distort import physics
from tomoqc.errors import InputError, OptionError

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
N = 128


def _disc(n=N, r=40.0, value=1.0, cy=None, cx=None):
    yy, xx = np.mgrid[:n, :n]
    cy = (n - 1) / 2 if cy is None else cy
    cx = (n - 1) / 2 if cx is None else cx
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2, value, 0.0)


def _phantom(n=N):
    img = _disc(n, 45, 1.0, n / 2 + 3, n / 2 - 5)
    img += _disc(n, 10, 0.8, n / 2 - 15, n / 2 + 12)
    img -= _disc(n, 8, 0.6, n / 2 + 20, n / 2 - 10)
    return img


@pytest.fixture(scope="module")
def sino_scan():
    sc = physics.Scanner((N, N), n_angles=180)
    return sc, sc.project(_phantom())


@pytest.mark.parametrize("shift", [6.3, -4.75])
def test_find_center_recovers_known_shift(sino_scan, shift):
    sc, p = sino_scan
    ps = ndi.shift(p, (0, shift), order=3, mode="constant")
    c = rd.find_center(ps, sc.angles)
    assert abs(c - (sc.axis + shift)) < 0.5


def test_find_center_with_0_and_180_degrees():
    th = np.linspace(0, math.pi, 91)  # both ends, like the Savu scan
    sc = physics.Scanner((N, N), n_angles=91)
    sc.angles, sc._cos, sc._sin = th, np.cos(th), np.sin(th)
    p = ndi.shift(sc.project(_phantom()), (0, 3.4), order=3)
    assert abs(rd.find_center(p, th) - (sc.axis + 3.4)) < 0.5


def test_find_center_needs_180_degrees(sino_scan):
    sc, p = sino_scan
    with pytest.raises(OptionError):
        rd.find_center(p[:60], sc.angles[:60])


def test_fbp_reproduces_disc():
    sc = physics.Scanner((N, N), n_angles=180)
    img = _disc(N, 40, 0.7)
    p = sc.project(img)
    rec = rd.fbp(p, sc.angles, center=sc.axis, size=N)
    c = (N - 1) / 2
    yy, xx = np.mgrid[:N, :N]
    r = np.hypot(yy - c, xx - c)
    assert abs(np.median(rec[r < 30]) - 0.7) < 0.02
    assert abs(np.median(rec[(r > 45) & (r < 60)])) < 0.02
    # radius: area above half the value
    radius = math.sqrt((rec > 0.35).sum() / math.pi)
    assert abs(radius - 40) < 1.0
    # an off-centre axis and a finer output grid give the same disc
    ps = np.pad(p, ((0, 0), (10, 0)), mode="edge")
    rec2 = rd.fbp(ps, sc.angles, center=sc.axis + 10, size=2 * N, pixel=0.5)
    assert abs(math.sqrt((rec2 > 0.35).sum() / math.pi) * 0.5 - 40) < 1.0


def test_fbp_limited_and_nonuniform_angles_keep_scale():
    sc = physics.Scanner((N, N), n_angles=180)
    p = sc.project(_disc(N, 40, 0.7))
    keep = np.sort(np.random.default_rng(0).choice(180, 90, replace=False))
    rec = rd.fbp(p[keep], sc.angles[keep], center=sc.axis, size=N)
    assert abs(np.median(rec[54:74, 54:74]) - 0.7) < 0.05
    with pytest.raises(OptionError):
        rd.fbp(p, sc.angles[:10])


def test_thin_counts_mean_and_poisson_variance():
    rng = np.random.default_rng(1)
    lam = 400.0
    counts = rng.poisson(lam, size=200_000).astype(float) + 100.0  # dark level 100
    for f in (0.5, 0.125):
        t = rd.thin_counts(counts, f, 7, dark=100.0)
        assert abs(t.mean() - f * lam) < 0.01 * f * lam
        assert abs(t.var() - f * lam) < 0.03 * f * lam  # Poisson at the thinned level
    assert np.array_equal(rd.thin_counts(counts, 1.0, 0, dark=100.0), counts - 100.0)
    with pytest.raises(OptionError):
        rd.thin_counts(counts, 0.0, 0)


def test_add_dose_noise_variance():
    p = np.full((400, 500), 1.0)
    out = rd.add_dose_noise(p, 0.25, 10000.0, 3)
    expect = math.exp(1.0) / 10000.0 * 3.0
    assert abs(out.var() - expect) < 0.03 * expect
    assert np.array_equal(rd.add_dose_noise(p, 1.0, 10000.0, 3), p)


def test_subsample_and_limit_angles():
    th = np.arange(720) * math.pi / 720
    s = np.arange(720 * 3.0).reshape(720, 3)
    for k in (2, 4, 8):
        ss, tt = rd.subsample_angles(s, th, k)
        assert ss.shape[0] == tt.size == 720 // k
    sl, tl = rd.limit_angles(s, th, math.pi / 2)
    assert sl.shape[0] == tl.size == 360 and tl.max() < math.pi / 2
    with pytest.raises(OptionError):
        rd.subsample_angles(s, th, 0)


def test_detector_blur_keeps_row_mean_of_transmission(sino_scan):
    _, p = sino_scan
    p = p * 3.0 / N
    b = rd.detector_blur(p, 3.0)
    np.testing.assert_allclose(np.exp(-b).mean(axis=1), np.exp(-p).mean(axis=1), rtol=2e-3)
    assert np.abs(b - p).max() > 0.01
    assert np.array_equal(rd.detector_blur(p, 0), p)


def test_zingers_raise_the_transmission_of_their_share_of_readings_only():
    p = np.random.default_rng(0).uniform(0.2, 3.0, (400, 500))
    out = rd.zingers(p, 0.01, 7)
    hit = out != p
    # binomial: 2000 expected hits, sd 44.5
    assert abs(hit.sum() - 2000) < 5 * 44.5
    gain = np.exp(-out[hit]) - np.exp(-p[hit])  # what each hit added to the transmission
    assert gain.min() >= 0.5 - 1e-9 and gain.max() <= 1.5 + 1e-9
    assert np.array_equal(rd.zingers(p, 0.0, 7), p)
    with pytest.raises(OptionError):
        rd.zingers(p, 1.5, 7)


def _bumps(rows: int, n: int = 200, centre: float = 100.0) -> np.ndarray:
    """A sinogram whose every row is one Gaussian bump of transmission loss at ``centre``."""
    x = np.arange(n)
    return np.tile(0.8 * np.exp(-0.5 * ((x - centre) / 6.0) ** 2), (rows, 1))


def _centroids(p: np.ndarray) -> np.ndarray:
    x = np.arange(p.shape[1])
    return (p * x).sum(axis=1) / p.sum(axis=1)


def test_projection_jitter_moves_each_projection_by_a_normal_shift():
    p = _bumps(2000)
    moved = _centroids(rd.projection_jitter(p, 2.0, 3)) - _centroids(p)
    # the sample standard deviation of 2000 normal draws lies within 5 % of sigma (sd 1.6 %)
    assert abs(moved.std() - 2.0) < 0.1 and abs(moved.mean()) < 0.2
    assert np.array_equal(rd.projection_jitter(p, 0.0, 3), p)
    with pytest.raises(OptionError):
        rd.projection_jitter(p, -1.0, 3)


def test_sample_motion_moves_the_projections_after_the_slip_only():
    p = _bumps(100)
    out = rd.sample_motion(p, 3.0, start=0.4)
    np.testing.assert_array_equal(out[:40], p[:40])
    # a whole-pixel move of a bump far from the border is exact
    np.testing.assert_allclose(out[40:, 3:], p[40:, :-3], atol=1e-12)
    np.testing.assert_allclose(_centroids(out[40:]) - _centroids(p[40:]), 3.0, atol=1e-6)
    assert np.array_equal(rd.sample_motion(p, 0.0), p)
    with pytest.raises(OptionError):
        rd.sample_motion(p, 1.0, start=1.5)


def test_detector_lag_keeps_a_static_signal_and_decays_a_change_geometrically():
    static = np.tile(np.linspace(0.1, 2.0, 50), (30, 1))
    np.testing.assert_allclose(rd.detector_lag(static, 0.3), static, atol=1e-12)
    # one projection darker than the rest: its transmission loss decays by carry per projection
    t = np.ones((30, 4))
    t[10] = 0.5
    out = np.exp(-rd.detector_lag(-np.log(t), 0.3))
    loss = 1.0 - out[:, 0]
    np.testing.assert_allclose(loss[:10], 0.0, atol=1e-12)
    np.testing.assert_allclose(loss[10:15], 0.5 * 0.7 * 0.3 ** np.arange(5), rtol=1e-9)
    assert np.array_equal(rd.detector_lag(static, 0.0), static)
    with pytest.raises(OptionError):
        rd.detector_lag(static, 1.0)


def test_beam_hardening_is_the_two_energy_mean_and_cups_a_uniform_disc():
    p = np.tile(np.linspace(0.0, 6.0, 61), (3, 1))
    k = 0.5
    out = rd.beam_hardening(p, k)
    # the transmission is the mean of the two parts of the spectrum, exactly
    np.testing.assert_allclose(np.exp(-out), 0.5 * (np.exp(-(1 + k) * p) + np.exp(-(1 - k) * p)), rtol=1e-12)
    # below the line integral for any path, and p - k^2 p^2 / 2 to second order for short ones
    assert np.all(out[:, 1:] < p[:, 1:]) and np.all(out[:, 0] == 0)
    short = np.array([[1e-3, 2e-3]])
    np.testing.assert_allclose(rd.beam_hardening(short, k), short - k ** 2 * short ** 2 / 2, rtol=1e-5)
    assert np.isfinite(rd.beam_hardening(np.full((2, 2), 800.0), 0.9)).all()  # long paths stay finite
    assert np.array_equal(rd.beam_hardening(p, 0.0), p)
    with pytest.raises(OptionError):
        rd.beam_hardening(p, 1.0)
    # a uniform disc scanned through a hardened beam reconstructs darker at its centre (cupping)
    n = 96
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disc = (np.hypot(yy, xx) < 36).astype(float)
    from tomoqc.distort.physics import scanner

    sc = scanner((n, n), 144)
    sino = sc.project(disc) * (3.0 / n)  # a diameter of the disc attenuates by about exp(-2.25)
    hard = sc.reconstruct(rd.beam_hardening(sino, 0.6))
    flat = sc.reconstruct(sino)
    centre, rim = np.hypot(yy, xx) < 8, (np.hypot(yy, xx) > 26) & (np.hypot(yy, xx) < 32)
    assert hard[centre].mean() < 0.97 * hard[rim].mean()
    assert abs(flat[centre].mean() - flat[rim].mean()) < 0.02 * flat[rim].mean()


def test_remove_stripes(sino_scan):
    _, p = sino_scan
    p = p / N  # a path of N pixels of value 1 attenuates by exp(-1)
    striped = rd.gain_mismatch(p, 10.0, 5, kind="full")  # 6 % of columns, up to 10 % gain
    cols = np.abs((striped - p).mean(axis=0)) > 0

    def dev(s):  # column-mean deviation from the clean sinogram, on the striped columns
        return np.abs(s.mean(axis=0) - p.mean(axis=0))[cols].mean()

    cleaned = rd.remove_stripes(striped, 1)
    # on this small detector (183 columns) neighbouring sorted columns differ by about
    # a stripe's amplitude, which bounds what the median can restore: about 5x here
    assert dev(cleaned) < dev(striped) / 4
    # a stripe-free sinogram is nearly unchanged
    same = rd.remove_stripes(p, 3)
    assert np.abs(same - p).mean() < 0.005 * np.abs(p).mean()
    assert np.array_equal(rd.remove_stripes(p, 0), p)


def test_stripe_window_is_a_share_of_the_detector():
    # the odd window nearest 2 % of the columns, at least 3: 3.2 -> 3, 11.2 -> 11, 7.3 -> 7
    assert rd.stripe_window(160) == 1
    assert rd.stripe_window(560) == 5
    assert rd.stripe_window(365) == 3
    assert rd.stripe_window(20) == 1  # never below a 3-column window
    # the window grows with the detector, never shrinks
    halves = [rd.stripe_window(n) for n in range(1, 4000, 7)]
    assert halves == sorted(halves)
    with pytest.raises(OptionError):
        rd.stripe_window(0)


def test_gain_mismatch_levels_nested(sino_scan):
    _, p = sino_scan
    p = p * 3.0 / N
    d1 = rd.gain_mismatch(p, 1.0, 11) - p
    d3 = rd.gain_mismatch(p, 3.0, 11) - p
    cols = np.abs(d1).max(axis=0) > 0
    assert cols.any() and np.array_equal(cols, np.abs(d3).max(axis=0) > 0)
    assert np.abs(d3).sum() > 2.5 * np.abs(d1).sum()
    with pytest.raises(OptionError):
        rd.gain_mismatch(p, 1.0, 0, kind="bogus")


def test_gain_mismatch_deepens_a_detectors_own_stripes(sino_scan):
    _, p = sino_scan
    p = p * 3.0 / N
    # a measured detector: every column already off by up to 3 % (its own stripes), more than
    # the defects of level 1 (up to 1 %): random signs would cancel some (seed 0-5: one of the
    # six series falls somewhere)
    own = np.random.default_rng(4).uniform(-0.03, 0.03, p.shape[1])
    measured = p + own[None, :]

    def rms(s):
        return float(np.sqrt(np.mean(rd.own_stripes(s) ** 2)))

    for seed in range(6):
        levels = [rms(rd.gain_mismatch(measured, lv, seed, deepen=True)) for lv in (0.0, 1.0, 2.0, 3.0)]
        # every defect adds to its column's own stripe: the stripes grow with the level
        assert all(b > a for a, b in zip(levels, levels[1:])), levels
        d = rd.gain_mismatch(measured, 2.0, seed, deepen=True) - measured
        cols = np.abs(d).max(axis=0) > 1e-9  # the defect columns (elsewhere only rounding)
        assert 0 < cols.sum() < p.shape[1] // 4
        # each defect has the sign of its column's own stripe (a column at its window's
        # median, own stripe exactly 0, may get either)
        base = rd.own_stripes(measured)[cols]
        assert np.all(np.sign(d.mean(axis=0)[cols])[base != 0] == np.sign(base[base != 0]))


def test_reproject_runs_and_scales():
    img = _disc(64, 20.0)
    rec = rd.reproject(img * 100.0 + 5.0)  # scaled to [0, 1] by its percentiles
    assert rec.shape == (64, 64) and rec.dtype == np.float32
    assert abs(float(np.median(rec[26:38, 26:38])) - 1.0) < 0.05
    assert abs(float(np.median(rec[:8, :8]))) < 0.05


def test_read_errors(tmp_path):
    with pytest.raises(InputError):
        rd.read_savu(tmp_path / "missing")
    with pytest.raises(InputError):
        rd.read_htc2022(tmp_path / "missing.mat")


@pytest.mark.skipif(not (REALDATA / "htc2022").is_dir(), reason="no ../shared/realdata")
def test_htc2022_rebinned_disc_is_round():
    sino, th, c = rd.htc2022_parallel(REALDATA / "htc2022" / "htc2022_solid_disc_full.mat", n_angles=180,
                                      n_det=280, pixel=2 * 0.2 / (553.74 / 410.66))
    assert sino.shape == (180, 280) and abs(th[-1] - math.pi * 179 / 180) < 1e-9
    rec = rd.fbp(sino, th, center=c, size=256)
    mask = rec > 0.5 * np.percentile(rec, 99)
    lab, n = ndi.label(mask)
    disc = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    yy, xx = np.nonzero(disc)
    cy, cx = yy.mean(), xx.mean()
    edge = disc & ~ndi.binary_erosion(disc)
    ey, ex = np.nonzero(edge)
    r = np.hypot(ey - cy, ex - cx)
    assert r.mean() > 60  # a disc of ~70 mm at 0.3 mm pixels
    assert r.std() / r.mean() < 0.03  # round
    # the opposite sign of the fan angle would double the edges: the disc is uniform
    assert np.std(rec[disc & ndi.binary_erosion(disc, iterations=8)]) < 0.15 * np.median(rec[disc])


@pytest.mark.skipif(not (REALDATA / "savu_24737").is_dir(), reason="no ../shared/realdata")
def test_read_savu_real():
    d = rd.read_savu(REALDATA / "savu_24737")
    assert d["counts"].shape == (91, 135, 160)
    assert abs(math.degrees(d["angles"][-1] - d["angles"][0]) - 180) < 0.01
    c = rd.find_center(rd.savu_sinogram(d, 100), d["angles"])
    assert 80 < c < 90
