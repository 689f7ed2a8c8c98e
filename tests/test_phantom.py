"""Electrode phantoms: labels, phase fractions, particle sizes, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tomoqc.errors import OptionError
from tomoqc.phantom import (
    ACTIVE,
    CBD,
    PORE,
    electrode_slice,
    electrode_volume,
    microstructure,
    random_params,
    render,
)


def test_slice_types_and_phase_codes():
    img, lab = electrode_slice((96, 128), seed=4)
    assert img.shape == lab.shape == (96, 128)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {PORE, CBD, ACTIVE}
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


def test_phase_attenuation_ordering():
    # pores darker than CBD darker than active material (medians per phase, away from edges)
    img, lab = electrode_slice((256, 256), seed=2, psf_sigma=0.0, particle_contrast=0.0)
    med = [np.median(img[lab == k]) for k in (PORE, CBD, ACTIVE)]
    assert med[0] < med[1] < med[2]
    # without PSF, noise or per-particle variation every pore/CBD pixel is exactly its mu
    assert np.allclose(img[lab == PORE], 0.06) and np.allclose(img[lab == CBD], 0.32)


@pytest.mark.parametrize(
    "active,cbd",
    [(0.30, 0.05), (0.45, 0.12), (0.55, 0.20)],
)
def test_volume_fractions_2d(active, cbd):
    ms = microstructure((384, 384), seed=7, active_fraction=active, cbd_fraction=cbd, radius=10)
    frac = np.bincount(ms.labels.ravel(), minlength=3) / ms.labels.size
    assert abs(frac[ACTIVE] - active) < 0.01
    assert abs(frac[CBD] - cbd) < 0.005
    # CBD lives outside the particle envelopes only
    assert not np.any((ms.labels == CBD) & (ms.particle_ids > 0))


def test_volume_fractions_3d():
    ms = microstructure((48, 80, 80), seed=1, active_fraction=0.4, cbd_fraction=0.1, radius=7)
    frac = np.bincount(ms.labels.ravel(), minlength=3) / ms.labels.size
    assert abs(frac[ACTIVE] - 0.4) < 0.015
    assert abs(frac[CBD] - 0.1) < 0.005


@pytest.mark.parametrize("sigma", [0.15, 0.35])
def test_particle_size_distribution_is_lognormal(sigma):
    """Placed particle radii follow the requested lognormal law (median, log-sd)."""
    ms = microstructure((768, 768), seed=11, radius=9.0, radius_sigma=sigma, active_fraction=0.45)
    r = ms.radii
    assert r.size > 300
    # median of a lognormal = exp(mu); standard error of the log-median ~ 1.25 sigma / sqrt(n)
    se = 1.25 * sigma / np.sqrt(r.size)
    assert abs(np.log(np.median(r)) - np.log(9.0)) < 4 * se + 0.01
    assert abs(np.log(r).std() / sigma - 1.0) < 0.12


def test_particle_envelopes_match_their_radii():
    """The area owned by each interior particle is pi r^2 (up to the allowed overlap)."""
    ms = microstructure((400, 400), seed=5, radius=12.0, radius_sigma=0.2, aspect=1.0,
                        max_overlap=0.0)
    areas = np.bincount(ms.particle_ids.ravel(), minlength=len(ms.radii) + 1)[1:]
    inside = np.all((ms.centers > ms.radii[:, None] + 1) & (ms.centers < 399 - ms.radii[:, None] - 1), axis=1)
    assert inside.sum() > 50
    r_eq = np.sqrt(areas[inside] / np.pi)
    assert np.median(r_eq / ms.radii[inside]) == pytest.approx(1.0, abs=0.04)


def test_internal_porosity_and_cracks_are_pores_inside_particles():
    ms = microstructure((256, 256), seed=3, internal_porosity=0.1, crack_prob=1.0, radius=14)
    env = ms.particle_ids > 0
    holes = env & (ms.labels == PORE)
    frac_holes = holes.sum() / env.sum()
    # Boolean-model porosity 0.1 plus cracks: more than 5 %, far from all
    assert 0.05 < frac_holes < 0.3


def test_same_seed_same_phantom_other_seed_differs():
    a = electrode_slice((128, 128), seed=9, randomize=True)
    b = electrode_slice((128, 128), seed=9, randomize=True)
    c = electrode_slice((128, 128), seed=10, randomize=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_volume_shape_and_determinism():
    v1, l1 = electrode_volume((24, 48, 56), seed=2, radius=6)
    v2, l2 = electrode_volume((24, 48, 56), seed=2, radius=6)
    assert v1.shape == l1.shape == (24, 48, 56) and v1.dtype == np.float32
    assert np.array_equal(v1, v2) and np.array_equal(l1, l2)


def test_field_of_view_disc_is_zero_outside():
    img, _ = electrode_slice((101, 101), seed=1, fov=0.45, offset=0.05)
    yy, xx = np.mgrid[:101, :101]
    r = np.hypot(yy - 50, xx - 50)
    assert np.all(img[r > 0.45 * 101 + 0.5] == 0)
    assert img[r < 30].min() >= 0.05 - 1e-6


def test_offset_and_scale_are_affine():
    ms = microstructure((64, 64), seed=0)
    base = render(ms, seed=1, clip=False)
    moved = render(ms, seed=1, clip=False, offset=0.1, scale=0.5)
    assert np.allclose(moved, 0.1 + 0.5 * base, atol=1e-6)


def test_random_params_ranges_and_use():
    for s in range(20):
        p = random_params((256, 256), seed=s)
        assert 0 <= p["mu_pore"] < p["mu_cbd"] < p["mu_active"] <= 0.98
        assert 0.3 <= p["active_fraction"] <= 0.6
        assert p["radius"] >= 2.5
    img, lab = electrode_slice((96, 96), seed=0, **random_params((96, 96), seed=3))
    assert img.shape == (96, 96)


@pytest.mark.parametrize(
    "kwargs",
    [{"active_fraction": 1.2}, {"active_fraction": 0.7, "cbd_fraction": 0.4}, {"bogus": 1},
     {"radius": -1.0}, {"aspect": 0.5}],
)
def test_bad_parameters_raise_option_error(kwargs):
    with pytest.raises(OptionError):
        electrode_slice((64, 64), **kwargs)


def test_bad_shape_raises():
    with pytest.raises(OptionError):
        electrode_slice((4, 64))
    with pytest.raises(OptionError):
        electrode_volume((64, 64))


def test_measured_particle_sizes_from_the_label_map_are_lognormal():
    """Equivalent radii measured from the rendered particle map follow the requested law."""
    sigma, median = 0.3, 8.0
    ms = microstructure((640, 640), seed=21, radius=median, radius_sigma=sigma, aspect=1.0,
                        max_overlap=0.0, active_fraction=0.35)
    ids = ms.particle_ids
    # measure: pixel area owned by each particle id, dropping particles cut by the border
    areas = np.bincount(ids.ravel())[1:]
    border = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
    keep = np.ones(areas.size, bool)
    keep[border[border > 0] - 1] = False
    keep &= areas > 0
    r_eq = np.sqrt(areas[keep] / np.pi)
    assert r_eq.size > 200
    lr = np.log(r_eq)
    se = 1.25 * sigma / np.sqrt(r_eq.size)
    assert abs(np.median(lr) - np.log(median)) < 4 * se + 0.03
    assert lr.std() == pytest.approx(sigma, rel=0.15)
