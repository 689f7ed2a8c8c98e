"""The ring measure (tomoqc.metrics.rings) and the ring term of the slice score (tomoqc.models.tiqa)."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.rings import BIN, ring_index, ring_profile


def _radius(shape, center=None):
    h, w = shape
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else center
    yy, xx = np.indices(shape, dtype=np.float64)
    return np.hypot(yy - cy, xx - cx)


def _rings(shape, amplitude, radii, *, center=None, background=0.5):
    """Rings of width 2 px (|r - R| < 1) at integer radii, alternating sign, on a flat background."""
    r = _radius(shape, center)
    img = np.full(shape, background)
    for k, rad in enumerate(radii):
        img[np.abs(r - rad) < 1.0] += amplitude * (-1) ** k
    return img


def _texture(shape, seed, sigma=3.0):
    t = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return 0.5 + 0.15 * t / t.std()


# rings at unrelated radii, as detector defects put them (evenly spaced rings repeat along the
# radius like the layers of a wound sample, and read as one: test_layered_samples_have_no_ring_index),
# far enough from the axis that every sector cell holds pixels
RADII = [40, 53, 59, 72, 85, 90, 99, 112, 120]


def test_flat_rings_give_the_analytic_rms_amplitude():
    """Each ring covers 4 half-pixel bins exactly; in them every sector's residual is +-A, elsewhere 0,
    so the index is A * sqrt(ring bins / measured bins)."""
    shape, amp = (256, 256), 0.04
    prof = ring_profile(_rings(shape, amp, RADII), normalize=False)
    sel = prof.radius >= prof.min_radius
    in_ring = np.zeros(prof.radius.size, bool)
    for rad in RADII:
        in_ring |= np.abs(prof.radius - rad) < 1.0
    expected = amp * np.sqrt(in_ring[sel].sum() / sel.sum())
    assert prof.index == pytest.approx(expected, rel=1e-6)
    # the profile puts the power at the ring radii, with each ring's sign
    np.testing.assert_allclose(prof.power[in_ring & sel], amp**2, rtol=1e-9)
    np.testing.assert_allclose(prof.power[~in_ring & sel], 0.0, atol=1e-12)
    signs = [np.sign(prof.amplitude[np.argmin(np.abs(prof.radius - (rad + BIN / 2)))]) for rad in RADII]
    assert signs == [(-1) ** k for k in range(len(RADII))]


def test_texture_and_noise_are_not_rings():
    """Structure and noise differ from sector to sector: their coherent power averages out.
    A textured, noisy slice reads far below the same slice with rings; the index grows with
    the ring amplitude; and rings much stronger than the texture read as they do alone."""
    shape = (256, 256)
    for seed in range(3):
        noisy = _texture(shape, seed) + np.random.default_rng(100 + seed).normal(0, 0.05, shape)
        clean = ring_index(noisy, normalize=False)
        by_amp = [ring_index(noisy + _rings(shape, a, RADII, background=0.0), normalize=False)
                  for a in (0.01, 0.02, 0.04, 0.08, 0.3)]
        assert np.all(np.diff(by_amp) > 0), by_amp
        assert clean < 0.5 * by_amp[2]  # rings a quarter of the texture sd read at least twice as high
        alone = ring_index(_rings(shape, 0.3, RADII), normalize=False)
        # (the running median follows the texture's radial trend only roughly, hence the tolerance)
        assert by_amp[-1] == pytest.approx(alone, rel=0.25)


def test_invariances_intensity_units_and_quarter_turns():
    img = _texture((200, 200), 7) + _rings((200, 200), 0.02, RADII[:6], background=0.0)
    base = ring_index(img)
    assert base > 0
    # a gain and an offset (other reconstruction units) change nothing once normalised
    assert ring_index(3.5 * img - 120.0) == pytest.approx(base, rel=1e-4)  # float32 normalisation
    # a quarter turn about the centre maps the 32 sectors onto each other
    assert ring_index(np.rot90(img)) == pytest.approx(base, rel=0.02)


def test_the_axis_matters():
    shape, center = (256, 256), (110.0, 140.0)
    img = _texture(shape, 3) + _rings(shape, 0.04, [20, 33, 39, 52, 65, 70, 79, 92, 100], center=center,
                                        background=0.0)
    at_axis = ring_index(img, center=center, normalize=False)
    assert ring_index(img, normalize=False) < 0.3 * at_axis


def test_nan_pixels_are_left_out_and_small_or_bad_slices():
    img = _texture((160, 160), 1) + _rings((160, 160), 0.04, [30, 43, 49, 62, 70], background=0.0)
    full = ring_index(img, normalize=False)
    holed = img.copy()
    holed[np.random.default_rng(0).random(img.shape) < 0.02] = np.nan
    assert ring_index(holed, normalize=False) == pytest.approx(full, rel=0.1)
    assert np.isnan(ring_index(np.full((160, 160), np.nan)))
    assert np.isnan(ring_index(np.random.default_rng(0).random((16, 16))))  # no radius >= 12 px fits
    with pytest.raises(InputError, match="2-D"):
        ring_index(np.zeros((4, 64, 64)))
    with pytest.raises(InputError, match="numeric"):
        ring_index(np.zeros((64, 64), dtype="U1"))
    with pytest.raises(OptionError):
        ring_index(img, sectors=2)
    with pytest.raises(OptionError):
        ring_index(img, window=0)


def test_ring_term_soft_minimum_and_fit():
    from tomoqc.models.tiqa import RingTerm, fit_ring_term

    term = RingTerm(1.0, -0.5, softness=10.0)
    # -ln(exp(-k s) + exp(-k g)) / k; the index is floored at 1e-3, so g = 1 + 0.5 ln(1000) = 4.45
    g_floor = 1.0 + 0.5 * np.log(1000.0)
    assert term.combine(4.0, 1e-6)[()] == pytest.approx(-np.log(np.exp(-40.0) + np.exp(-10 * g_floor)) / 10)
    g = float(term.limit(0.01))
    assert g == pytest.approx(1.0 - 0.5 * np.log(0.01))
    assert term.combine(g, 0.01)[()] == pytest.approx(g - np.log(2) / 10)
    assert term.combine(5.0, 0.5)[()] == pytest.approx(float(term.limit(0.5)), abs=1e-3)
    assert np.isnan(term.combine(np.nan, 0.01)[()])
    assert term.combine(3.0, np.nan)[()] == 3.0  # an unmeasurable slice keeps the network's score
    # the fit recovers a known law
    idx = np.geomspace(0.005, 0.1, 40)
    rec = fit_ring_term(idx, 2.0 - 0.6 * np.log(idx))
    assert rec["a"] == pytest.approx(2.0) and rec["b"] == pytest.approx(-0.6) and rec["srocc"] == pytest.approx(1.0)
    assert rec["severity"] is None
    # with levels, the severity map: level / 5 = c0 + c1 ln(index) on the ring images and the clean ones (level 0)
    levels = np.repeat([1, 2, 3, 4, 5], 8)
    ring_idx = np.exp((levels / 5 - 1.5) / 0.25)  # exactly on the line c0 = 1.5, c1 = 0.25
    clean_idx = np.full(6, np.exp(-1.5 / 0.25))
    rec = fit_ring_term(ring_idx, 5 - 0.5 * levels, levels, clean_indices=clean_idx)
    assert rec["severity"] == pytest.approx([1.5, 0.25]) and rec["n_clean"] == 6
    term = RingTerm(rec["a"], rec["b"], severity=rec["severity"])
    np.testing.assert_allclose(term.severity(ring_idx), levels / 5, atol=1e-9)
    assert term.severity(1.0)[()] == 1.0 and term.severity(1e-9)[()] == 0.0  # clipped to [0, 1]
    assert np.isnan(term.severity(np.nan)[()]) and np.isnan(RingTerm(1.0, -1.0).severity(0.1)[()])
    with pytest.raises(OptionError, match="negative"):
        fit_ring_term(idx, 2.0 + 0.6 * np.log(idx))
    with pytest.raises(OptionError, match="positive"):
        fit_ring_term(ring_idx, 5 - 0.5 * levels, 6 - levels)
    with pytest.raises(OptionError, match="at least 10"):
        fit_ring_term(idx[:5], np.ones(5))


def test_model_applies_the_ring_term_to_slice_scores_unless_raw():
    from tomoqc.models.tiqa import RingTerm, TiqaModel, build_tiqa

    km = build_tiqa(input_size=None, seed=0, backbone="small-cnn")
    card = {"ring_term": {"a": 1.0, "b": -1.0, "softness": 10.0, "severity": [1.0, 0.2]}}
    plain, ringed = TiqaModel(km, batch_size=4), TiqaModel(km, batch_size=4, card=card)
    assert isinstance(ringed.ring_term, RingTerm) and plain.ring_term is None
    clean = _texture((224, 224), 5)
    stack = np.stack([clean, clean + _rings((224, 224), 0.08, RADII[:8], background=0.0)])
    a, b = plain.score_slices(stack), ringed.score_slices(stack)
    np.testing.assert_allclose(a["ring_index"], b["ring_index"], rtol=1e-6)
    assert b["ring_index"][1] > 5 * b["ring_index"][0]
    np.testing.assert_allclose(b["score"], np.clip(ringed.ring_term.combine(a["score"], a["ring_index"]), 1, 5),
                               rtol=1e-5)
    np.testing.assert_array_equal(a["patch_score"], b["patch_score"])  # the patch map stays the network's
    # the ring severity is the measured one; noise and blur stay the head's
    np.testing.assert_allclose(b["severity"][:, 2], ringed.ring_term.severity(a["ring_index"]), rtol=1e-5)
    np.testing.assert_array_equal(a["severity"][:, :2], b["severity"][:, :2])
    # ring_term=False: the network alone, as a model without the term
    off = ringed.score_slices(stack, measured_terms=False)
    np.testing.assert_array_equal(off["score"], a["score"])
    np.testing.assert_array_equal(off["severity"], a["severity"])
    with pytest.raises(OptionError, match="ring_center"):
        ringed.score_slices(stack, ring_center=(1.0,))
    raw_a, raw_b = plain.score_slices(stack, raw=True), ringed.score_slices(stack, raw=True)
    np.testing.assert_array_equal(raw_a["score"], raw_b["score"])
    np.testing.assert_array_equal(raw_a["severity"], raw_b["severity"])


def _arc(shape, amplitude, radii, fraction, start=0.3):
    """Rings over the angular range [start, start + fraction * 2 pi) only (a partial ring, as a stripe
    in part of the projections draws)."""
    h, w = shape
    yy, xx = np.indices(shape, dtype=np.float64)
    ang = np.mod(np.arctan2(yy - (h - 1) / 2, xx - (w - 1) / 2) - start, 2 * np.pi)
    return _rings(shape, amplitude, radii, background=0.0) * (ang < fraction * 2 * np.pi)


def test_partial_rings_are_seen_and_rise_with_amplitude():
    """Pairs of sectors 2 and 3 apart: an arc over n of K sectors keeps (2n - 5) / 2K of the full ring's
    power (90 degrees: 0.17, index ratio 0.41; 180 degrees: 0.42, ratio 0.65), where all pairs kept f**2."""
    shape = (256, 256)
    noisy = _texture(shape, 1) + np.random.default_rng(101).normal(0, 0.05, shape)
    clean = ring_index(noisy, normalize=False, pairs="local")
    full = ring_index(noisy + _arc(shape, 0.06, RADII, 1.0), normalize=False, pairs="local")
    for frac in (0.25, 0.5):
        by_amp = [ring_index(noisy + _arc(shape, a, RADII, frac), normalize=False, pairs="local")
                  for a in (0.03, 0.06, 0.12, 0.24)]
        assert np.all(np.diff(by_amp) > 0), (frac, by_amp)
        assert by_amp[1] > 3 * clean and by_amp[1] > 0.25 * full, (frac, by_amp, clean, full)
        # "both" (the larger of local and all pairs) sees the arc too, rising with amplitude
        both = [ring_index(noisy + _arc(shape, a, RADII, frac), normalize=False, pairs="both")
                for a in (0.03, 0.06, 0.12, 0.24)]
        assert np.all(np.diff(both) > 0) and both[1] > 1.8 * ring_index(noisy, normalize=False, pairs="both"), both
        assert all(b >= lo for b, lo in zip(both, by_amp))
        # without noise the arc reads close to the analytic share of the full ring
        flat = ring_index(0.5 + _arc(shape, 0.06, RADII, frac), normalize=False, pairs="local")
        alone = ring_index(_rings(shape, 0.06, RADII), normalize=False, pairs="local")
        n = frac * 32
        assert flat == pytest.approx(alone * np.sqrt((2 * n - 5) / 64), rel=0.15), (frac, flat, alone)
    # the earlier definition (all pairs) is kept as an option; it sees a quarter arc far less
    q_all = ring_index(noisy + _arc(shape, 0.06, RADII, 0.25), normalize=False, pairs="all")
    q_local = ring_index(noisy + _arc(shape, 0.06, RADII, 0.25), normalize=False)
    full_all = ring_index(noisy + _arc(shape, 0.06, RADII, 1.0), normalize=False, pairs="all")
    assert q_local / full > q_all / full_all


def test_full_rings_rise_strictly_with_amplitude_with_noise():
    shape = (200, 200)
    for seed in range(2):
        noisy = _texture(shape, seed) + np.random.default_rng(50 + seed).normal(0, 0.08, shape)
        by_amp = [ring_index(noisy + _rings(shape, a, RADII[:7], background=0.0))
                  for a in (0.02, 0.03, 0.045, 0.07, 0.1, 0.15)]
        assert np.all(np.diff(by_amp) > 0), by_amp


def test_auto_axis_finds_an_off_centre_axis_of_strong_rings():
    """Experimental search (find_ring_center): rings 47 px off the centre of a textured, noisy 256 px slice."""
    from tomoqc.metrics.rings import find_ring_center

    shape, true = (256, 256), (127.5 + 25, 127.5 - 40)
    img = (_texture(shape, 2) + np.random.default_rng(102).normal(0, 0.05, shape)
           + _rings(shape, 0.08, range(20, 161, 10), center=true, background=0.0))
    c = find_ring_center(img)
    assert np.hypot(c[0] - true[0], c[1] - true[1]) <= 2.0, c
    auto = ring_profile(img, center="auto", normalize=False)
    assert auto.center == c
    assert auto.index == pytest.approx(ring_index(img, center=true, normalize=False), rel=0.2)
    assert ring_index(img, normalize=False) < 0.3 * auto.index  # about the slice centre
    with pytest.raises(OptionError, match="outside"):
        ring_index(img, center=(-3.0, 10.0))


def _electrode_with_rings(amplitude, seed, offset=(25.0, -40.0), side=256):
    from tomoqc.phantom import electrode_slice

    img = electrode_slice((side, side), seed=seed)[0].astype(np.float64)
    rng = np.random.default_rng(1000 + seed)
    img = img + rng.normal(0, 0.03, img.shape)
    true = ((side - 1) / 2 + offset[0], (side - 1) / 2 + offset[1])
    r = _radius(img.shape, true)
    for rad, sign in zip(rng.uniform(12, 0.7 * side, 25), rng.choice([-1, 1], 25)):
        img += amplitude * sign * np.exp(-0.5 * ((r - rad) / 0.8) ** 2)
    return img, true


def test_auto_axis_finds_off_centre_rings_on_a_textured_phantom():
    """Random thin rings (sd 0.8 px) 47 px off the centre of a noisy electrode phantom."""
    from tomoqc.metrics.rings import find_ring_center

    for seed in (0, 1):
        img, true = _electrode_with_rings(0.08, seed)
        c = find_ring_center(img)
        assert np.hypot(c[0] - true[0], c[1] - true[1]) <= 2.0, (seed, c, true)


def test_auto_axis_without_rings_is_not_accepted():
    from tomoqc.metrics.rings import find_ring_center, resolve_ring_center

    img, _ = _electrode_with_rings(0.0, 3)
    centre = (127.5, 127.5)
    c = find_ring_center(img)
    at_c = ring_index(img, center=c, normalize=False)
    at_centre = ring_index(img, center=centre, normalize=False)
    assert at_c < 1.5 * at_centre + 0.003 or resolve_ring_center(img)[1] == "slice centre"



def test_both_is_the_larger_of_local_and_all_pairs():
    shape = (256, 256)
    noisy = _texture(shape, 2) + np.random.default_rng(6).normal(0, 0.05, shape)
    for img in (noisy, noisy + _rings(shape, 0.05, RADII, background=0.0), noisy + _arc(shape, 0.08, RADII, 0.3)):
        got = {p: ring_index(img, normalize=False, pairs=p) for p in ("local", "all", "both")}
        assert got["both"] == pytest.approx(max(got["local"], got["all"]))
    assert ring_index(noisy, normalize=False) == ring_index(noisy, normalize=False, pairs="local")


# --- layered samples (a wound cell's jelly roll) -----------------------------------------------

def _layers(shape, period, *, center=None, amplitude=0.15, seed=0):
    """A layered cylinder: concentric layers every ``period`` px (a cosine profile) with texture and noise."""
    r = _radius(shape, center)
    noise = np.random.default_rng(seed).normal(0, 0.03, shape)
    return _texture(shape, seed) + amplitude * np.cos(2 * np.pi * r / period) + noise


def test_layered_samples_have_no_ring_index():
    """Layers every p px repeat along the radius: the residual is in step with itself one and two
    periods on (the autocorrelation of a cosine is the cosine, 1 at p and 2p), so the slice reads as
    a layered sample whose ring index is NaN; the period is the layers' own."""
    from tomoqc.metrics.rings import LAYERED_LIMIT

    for period in (7.0, 11.0):
        prof = ring_profile(_layers((256, 256), period), normalize=False)
        assert prof.layered and prof.layering > 0.8 and np.isnan(prof.index), (period, prof.layering)
        assert prof.layer_period == pytest.approx(period, abs=1.0)
        assert np.isnan(ring_index(_layers((256, 256), period), normalize=False))
    # rings at unrelated radii, on texture and noise, are no layers, however strong
    shape = (256, 256)
    noisy = _texture(shape, 0) + np.random.default_rng(100).normal(0, 0.05, shape)
    for amp in (0.04, 0.3):
        prof = ring_profile(noisy + _rings(shape, amp, RADII, background=0.0), normalize=False)
        assert prof.layering < LAYERED_LIMIT and np.isfinite(prof.index)
    # nor are the report's rings (tomoqc.distort.image.ring_artifact: alternating signs at random
    # steps of 4-14 px), even on a smooth background where nothing else is there
    from tomoqc.distort.image import ring_artifact

    smooth = ndimage.gaussian_filter(np.random.default_rng(5).random(shape), 20)
    smooth = 0.3 + 0.4 * (smooth - smooth.min()) / np.ptp(smooth)
    for seed in range(10):
        prof = ring_profile(ring_artifact(smooth, 0.2, rng=seed), normalize=False)
        assert prof.layering < LAYERED_LIMIT and prof.index > 0.01, (seed, prof.layering, prof.index)
    # nor is a strongly blurred slice, whose residual is smooth along the radius without repeating
    blurred = ndimage.gaussian_filter(_texture(shape, 1), 12)
    assert ring_profile(blurred, normalize=False).layering < LAYERED_LIMIT


def test_a_layered_sample_off_the_slice_centre_is_not_read_as_rings():
    """The axis search finds the layers' centre; about it they would read as strong rings, about
    the slice centre as none at all: either is a layered sample's false reading, so the search
    keeps its centre and the index there is NaN."""
    from tomoqc.metrics.rings import resolve_ring_center

    shape, true = (256, 256), (127.5 + 12, 127.5 - 9)
    img = _layers(shape, 9.0, center=true)
    centre, source = resolve_ring_center(img)
    assert source == "found" and np.hypot(centre[0] - true[0], centre[1] - true[1]) <= 2.0
    assert np.isnan(ring_index(img, center=centre, normalize=False))


REAL = Path(__file__).parent / "data" / "real"


def test_a_real_wound_cell_is_a_layered_sample_and_real_rings_are_not():
    """Real data (tests/data/real/README.md): a lab CT crop of a cylindrical Li-ion cell's jelly
    roll about its centre has no ring index, and keeps none whatever axis the search settles on;
    the Savu row's real detector rings are measured."""
    from tomoqc.metrics.rings import LAYERED_LIMIT, resolve_ring_center
    from tomoqc.preprocess import normalize_slice_flagged

    cell = normalize_slice_flagged(np.load(REAL / "battery_cellvol_im076_crop320.npy"), clip=False)[0]
    prof = ring_profile(cell, normalize=False)
    assert prof.layered and np.isnan(prof.index)
    centre, _ = resolve_ring_center(cell)
    assert np.isnan(ring_index(cell, center=centre, normalize=False))
    savu = normalize_slice_flagged(np.load(REAL / "savu24737_row104_fbp160.npy"), clip=False)[0]
    prof = ring_profile(savu, normalize=False)
    assert prof.layering < LAYERED_LIMIT and prof.index > 0.005  # clean phantoms read below 0.011
