"""Two-point correlation S2(r): analytic values on structures whose S2 is known exactly."""

import numpy as np
import pytest

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.morphology import two_point_correlation


def _direct(mask, axis, max_r, periodic):
    """S2 by counting pairs in plain Python loops (the definition, independent of the FFT)."""
    a = np.asarray(mask, bool)
    if axis == 0:
        a = a.T
    m, n = a.shape
    out = []
    for r in range(max_r + 1):
        hits = pairs = 0
        for row in a:
            for i in range(n):
                j = i + r
                if j >= n:
                    if not periodic:
                        continue
                    j -= n
                pairs += 1
                hits += bool(row[i] and row[j])
        out.append(hits / pairs)
    return np.array(out)


@pytest.mark.parametrize("axis", [0, 1])
def test_checkerboard_of_unit_cells(axis):
    board = (np.add.outer(np.arange(32), np.arange(48)) % 2).astype(bool)
    s2 = two_point_correlation(board, axis=axis, periodic=True, max_r=15)
    r = np.arange(16)
    np.testing.assert_allclose(s2, np.where(r % 2 == 0, 0.5, 0.0), atol=1e-12)


def test_checkerboard_non_periodic_counts_only_inside_pairs():
    # without periodicity only pairs inside the image count: at odd r never both in the
    # phase; at even r both are exactly when the first is, about half the inside pairs
    board = (np.add.outer(np.arange(8), np.arange(9)) % 2).astype(bool)
    s2 = two_point_correlation(board, axis=1, max_r=8)
    np.testing.assert_allclose(s2, _direct(board, 1, 8, False), atol=1e-12)
    assert np.all(s2[1::2] == 0)
    assert np.all(s2[0::2] > 0.4)


def test_independent_pixels():
    rng = np.random.default_rng(5)
    p = 0.3
    mask = rng.random((400, 400)) < p
    for axis in (0, 1):
        s2 = two_point_correlation(mask, axis=axis, max_r=20)
        assert s2[0] == pytest.approx(mask.mean(), abs=1e-12)
        # each S2(r > 0) is a mean of about 400 * 400 products of independent Bernoulli(p) pairs
        n_pairs = 400 * (400 - 20)
        sd = np.sqrt(p**2 * (1 - p**2) / n_pairs) * 2  # neighbouring pairs share a pixel: be generous
        assert np.all(np.abs(s2[1:] - p**2) < 5 * sd)
        assert s2[0] == pytest.approx(p, abs=0.01)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_matches_pair_counting(axis, periodic):
    rng = np.random.default_rng(1)
    mask = rng.random((7, 11)) < 0.45
    n = mask.shape[axis]
    max_r = n - 1
    got = two_point_correlation(mask, axis=axis, max_r=max_r, periodic=periodic)
    np.testing.assert_allclose(got, _direct(mask, axis, max_r, periodic), atol=1e-12)


def test_zero_separation_is_the_volume_fraction_and_axes_differ_for_stripes():
    stripes = np.zeros((64, 64), bool)
    stripes[:, ::4] = True  # vertical lines one pixel wide every 4 px: a quarter of the pixels
    sx = two_point_correlation(stripes, axis=1, periodic=True)
    sy = two_point_correlation(stripes, axis=0, periodic=True)
    assert sx[0] == sy[0] == pytest.approx(0.25)
    np.testing.assert_allclose(sy, 0.25)  # along a line the phase never ends
    np.testing.assert_allclose(sx, np.where(np.arange(sx.size) % 4 == 0, 0.25, 0.0), atol=1e-12)
    assert sx.shape == (33,)  # default max_r: half the length


def test_integer_masks_and_empty_phase():
    ones = np.ones((5, 6), np.uint8)
    np.testing.assert_allclose(two_point_correlation(ones, axis=1, max_r=5), 1.0)
    np.testing.assert_allclose(two_point_correlation(np.zeros((5, 6), int), axis=0), 0.0)


@pytest.mark.parametrize(
    "mask, kwargs, err",
    [
        (np.zeros(10, bool), {"axis": 0}, InputError),
        (np.zeros((2, 3, 4), bool), {"axis": 0}, InputError),
        (np.zeros((0, 4), bool), {"axis": 1}, InputError),
        (np.full((4, 4), 2), {"axis": 1}, InputError),
        (np.full((4, 4), 0.5), {"axis": 1}, InputError),
        (np.array([["a", "b"]]), {"axis": 1}, InputError),
        (np.zeros((4, 4), bool), {"axis": 2}, OptionError),
        (np.zeros((4, 4), bool), {"axis": 1, "max_r": -1}, OptionError),
        (np.zeros((4, 4), bool), {"axis": 1, "max_r": 4}, OptionError),
        (np.zeros((4, 4), bool), {"axis": 1, "max_r": 1.5}, OptionError),
    ],
)
def test_bad_input(mask, kwargs, err):
    with pytest.raises(err):
        two_point_correlation(mask, **kwargs)


@pytest.mark.parametrize("axis", [0, 1])
def test_within_a_region_counts_only_pairs_inside_it(axis):
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:64, :64]
    region = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 28**2  # a field-of-view disc
    # a checkerboard inside the disc; anything at all outside it
    board = ((yy + xx) % 2).astype(bool)
    a = np.where(region, board, rng.random((64, 64)) < 0.9)
    b = np.where(region, board, False)
    s2a = two_point_correlation(a, axis=axis, max_r=10, within=region)
    s2b = two_point_correlation(b, axis=axis, max_r=10, within=region)
    np.testing.assert_allclose(s2a, s2b, atol=1e-12)  # pixels outside the region do not matter
    # odd separations: never both on the board's phase; r = 0: the phase's share of the disc
    assert np.all(s2a[1::2] < 1e-12)
    assert s2a[0] == pytest.approx(board[region].mean(), abs=1e-12)
    # even separations: a pair of the disc is in the phase exactly when its first point is
    for r in (2, 4, 8):
        if axis == 1:
            both = region[:, :-r] & region[:, r:]
            want = board[:, :-r][both].mean()
        else:
            both = region[:-r] & region[r:]
            want = board[:-r][both].mean()
        assert s2a[r] == pytest.approx(want, abs=1e-12)
    # the whole image as the region is the plain estimate
    full = np.ones((64, 64), bool)
    np.testing.assert_allclose(two_point_correlation(a, axis=axis, max_r=10, within=full),
                               two_point_correlation(a, axis=axis, max_r=10), atol=1e-12)
