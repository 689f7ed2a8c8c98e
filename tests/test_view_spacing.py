"""The view-spacing indicator (tomoqc.metrics.nr.view_spacing) and its onset term in the score.

Facts used: the Fourier slice theorem (filtered back-projection from k directions puts the
slice's spectrum on k lines through the origin, so where the lines are apart each frequency
ring's power over direction is a comb of period 180 / k degrees, whatever the sample and
wherever the first view lies); a complete scan puts power in every direction; the onset
term's form c log(1 + max(x - t, 0) / t) from tomoqc.models.measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tomoqc.errors import OptionError
from tomoqc.metrics.nr import missing_wedge, view_spacing
from tomoqc.models.measured import ONSET, MeasuredTerms
from tomoqc.train.onset_terms import HOLDS, ONSET_DEGREES, VIEWS, fit_onset_order_weight, htc_sparse_series, sparse_view_scans

DATA = Path(__file__).parent / "data" / "real"


@pytest.fixture(scope="module")
def texture_scans(disc_texture):
    return sparse_view_scans(disc_texture(sigma=1.5), (36, 18, 12, 9, 6, 4), start=17.0)


def test_reads_the_spacing_of_the_views(texture_scans):
    ref, scans = texture_scans
    assert view_spacing(ref) == 0.0
    for k, rec in zip((36, 18, 12, 9, 6, 4), scans):
        assert view_spacing(rec) == pytest.approx(180.0 / k), k


@pytest.mark.parametrize("start", [0.0, 33.0, 71.5])
def test_direction_does_not_matter(start, disc_texture):
    _, scans = sparse_view_scans(disc_texture(seed=3, sigma=1.5), (12, 5), start=start)
    assert view_spacing(scans[0]) == pytest.approx(15.0)
    assert view_spacing(scans[1]) == pytest.approx(36.0)


def test_gain_offset_and_noise(texture_scans, disc_texture):
    """Affine maps do not change the spectrum's shape; noise enters only through the views
    (here: added to the sinogram), so the comb stays."""
    from tomoqc.distort import physics

    _, scans = texture_scans
    rec = scans[2]  # 12 views
    assert view_spacing(5.0 * rec + 1e3) == pytest.approx(15.0)
    img = disc_texture(seed=4, sigma=1.5)
    sc = physics.scanner(img.shape)
    p = sc.project(img)
    p = p + np.random.default_rng(1).normal(scale=0.02 * p.std(), size=p.shape)
    keep = np.zeros(len(sc.angles), bool)
    keep[np.round(np.arange(10) * len(sc.angles) / 10).astype(int)] = True
    noisy = sc.reconstruct(np.where(keep[:, None], p, 0.0))
    assert view_spacing(noisy) == pytest.approx(18.0)
    assert view_spacing(sc.reconstruct(p)) == 0.0  # the complete noisy scan


def test_complete_real_slices_read_zero():
    names = sorted(p.name for p in DATA.glob("*.npy"))
    assert names
    for name in names:
        assert view_spacing(np.load(DATA / name)) in (0.0,), name


def test_anisotropic_and_grid_aligned_samples_read_zero():
    """A strongly elongated texture has a smooth angular profile; a square lattice of blobs
    puts its power at the grid's own 4 directions, but only at its reciprocal lattice's
    radii, not as spokes through every ring: neither is a sparse scan."""
    rng = np.random.default_rng(2)
    t = ndimage.gaussian_filter(rng.normal(size=(256, 256)), (1.0, 8.0))
    assert view_spacing(t + rng.normal(size=t.shape) * 0.05 * t.std()) == 0.0
    yy, xx = np.mgrid[:256, :256]
    lattice = np.cos(2 * np.pi * yy / 8.0) * np.cos(2 * np.pi * xx / 8.0)
    assert view_spacing(lattice + rng.normal(size=lattice.shape) * 0.3) == 0.0


def test_the_wedge_and_the_spacing_tell_each_other_apart(texture_scans, disc_texture):
    """Sparse views leave regular gaps, not one wedge; a limited arc leaves one wedge, not a comb."""
    from tomoqc.train.onset_terms import limited_angle_scans

    _, scans = texture_scans
    assert missing_wedge(scans[1]) <= 2.0  # 18 views
    _, (arc,) = limited_angle_scans(disc_texture(seed=5, sigma=1.5), (90.0,))
    assert view_spacing(arc) == 0.0


def test_unreadable_slices_and_bad_options(disc_texture):
    assert np.isnan(view_spacing(np.ones((128, 128))))
    assert np.isnan(view_spacing(np.zeros((40, 40))))
    for bad in ({"band": (0.3, 0.2)}, {"band": (0.0, 0.4)}, {"strength": 1.0}, {"fewest": 1}, {"floor": 2.0}):
        with pytest.raises(OptionError):
            view_spacing(np.zeros((128, 128)), **bad)
    with pytest.raises(OptionError):
        sparse_view_scans(disc_texture(n=64, sigma=1.5), (1,))


def test_order_fit_finds_the_least_weight_that_orders():
    """Series whose scores rise again past the onset: the fit's weight orders them, and no
    larger weight orders them better."""
    t = 8.0
    x = np.array([0.0, 10.0, 15.0, 20.0, 30.0, 45.0] * 4)
    series = np.repeat(np.arange(4), 6)
    level = np.tile(np.arange(6), 4)
    score = np.tile([4.0, 1.5, 1.4, 1.35, 1.4, 1.46], 4)
    fit = fit_onset_order_weight(score, x, series, level, t=t)
    assert fit["pair_accuracy_before"] < 1.0 and fit["pair_accuracy_after"] == 1.0
    assert fit["hinge_after"] < fit["hinge_before"]
    z = MeasuredTerms({"spacing": fit["weight"]}, {"spacing": t}, onset=("spacing",)).combine(score, {"spacing": x})
    assert np.all(np.diff(z.reshape(4, 6), axis=1) < 0)
    # the mean hinge max(0, 0.25 - (z_a - z_b)) over each series' ordered pairs, computed here
    # from the logits: below the fitted weight it is larger, above it no smaller
    def hinge(c):
        s = MeasuredTerms({"spacing": c}, {"spacing": t}, onset=("spacing",)).combine(score, {"spacing": x})
        q = (s - 1.0) / 4.0
        zz = np.log(q / (1.0 - q)).reshape(4, 6)
        gaps = [zz[i, a] - zz[i, b] for i in range(4) for a in range(6) for b in range(a + 1, 6)]
        return float(np.mean(np.maximum(0.0, 0.25 - np.array(gaps))))

    assert hinge(fit["weight"]) == pytest.approx(fit["hinge_after"], abs=1e-9)
    assert hinge(0.5 * fit["weight"]) > hinge(fit["weight"]) + 1e-3
    assert hinge(2.0 * fit["weight"]) >= hinge(fit["weight"]) - 1e-3
    with pytest.raises(OptionError):
        fit_onset_order_weight(score[:2], x[:2], series[:2], level[:2], t=t)


def test_bundled_model_orders_sparse_views():
    """The bundled card carries the spacing term: past the onset the score of a phantom falls
    as the views get fewer, and a complete scan's term is exactly 0."""
    from tomoqc.models.tiqa import FLAG_OOD, load_model
    from tomoqc.phantom import electrode_slice

    model = load_model(None)
    t = model.measured_terms
    assert t.weighs("spacing") and "spacing" in t.onset and "spacing" in ONSET
    assert t.typical["spacing"] == ONSET_DEGREES["spacing"]
    assert t.holds == {k: tuple(v) for k, v in HOLDS.items()} == {"spacing": ("blur",)}
    img, _ = electrode_slice((256, 256), seed=[99, 2], randomize=True)
    ref, scans = sparse_view_scans(np.clip(img, 0, None), (12, 6, 4), start=25.0)
    res = model.score_slices(np.stack([ref, *scans]), tta=1, ood=True, measure=True)
    assert list(np.round(res["indicators"]["spacing"], 3)) == [0.0, 15.0, 30.0, 45.0]
    s = res["score"]
    assert s[0] > s[1] > s[2] > s[3]
    assert t.weights["spacing"] * t.feature("spacing", res["indicators"]["spacing"][:1])[0] == 0.0
    # past the onset the blur reading (widened by the streak fans) counts at most as typical,
    # in the score and in the measured blur severity
    from tomoqc.models.measured import HOLD_LIMIT
    from tomoqc.models.tiqa import DISTORTIONS

    tb = t.typical["blur"]
    blur = res["indicators"]["blur"]
    sev = res["severity"][:, DISTORTIONS.index("blur")]
    held = [i for i in (1, 2, 3) if blur[i] <= HOLD_LIMIT * tb]
    assert held
    for i in held:
        assert sev[i] == pytest.approx(float(t.severity("blur", np.array([min(float(blur[i]), tb)]))[0]), abs=1e-6)
    # 4 views are as few as the term was fitted on: not beyond its experience
    assert t.info["spacing_fit"]["max_reading"] >= 45.0 and not res["flags"][3] & FLAG_OOD
    assert len(VIEWS) == 5 and list(VIEWS) == sorted(VIEWS, reverse=True)


REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def test_real_sparse_series_of_the_fit(tmp_path):
    """The fit's measured series: a disc missing from the folder is one clear error naming
    its file; where the real data is there, the fit discs are none of those with ground truth
    (where the term is checked), and a fit disc from every 90th of the 720 views of its full
    turn (8 views; opposite views coincide, so 4 directions over the half turn) reads 45
    degrees, complete 0."""
    from tomoqc.errors import InputError
    from tomoqc.train.onset_terms import HTC_FIT_DISCS
    from tomoqc.train.segdata import htc2022_files

    with pytest.raises(InputError, match="htc2022_01a_full.mat"):
        next(htc_sparse_series(tmp_path, discs=("01a",)))
    if not (REALDATA / "htc2022").is_dir():
        pytest.skip("no ../shared/realdata")
    assert not set(HTC_FIT_DISCS) & set(htc2022_files(REALDATA))
    got = [(lv, k, view_spacing(rec)) for _, lv, k, rec in htc_sparse_series(REALDATA, discs=("05b",), strides=(1, 90))]
    assert got == [(0, 1, 0.0), (1, 90, pytest.approx(45.0, abs=0.5))]
