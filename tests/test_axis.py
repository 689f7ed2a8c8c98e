"""Rotation-axis error by refocusing (tomoqc.metrics.axis) against reconstructions with a known axis error."""

import numpy as np
import pytest

from tomoqc import realdata as rd
from tomoqc.errors import OptionError
from tomoqc.metrics.axis import axis_error, volume_axis_error


def _parallel_sinogram(img, n_angles):
    """Line integrals of ``img`` over [0, pi) by rotating and summing columns (independent of tomoqc)."""
    from scipy import ndimage as ndi

    th = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    rows = [ndi.rotate(img, -np.degrees(t), reshape=False, order=1).sum(axis=0) for t in th]
    return np.asarray(rows), th


@pytest.fixture(scope="module")
def phantom_sinogram():
    from tomoqc.phantom import electrode_slice

    n = 128
    img = electrode_slice((n, n), seed=5)[0].astype(np.float64)
    yy, xx = np.mgrid[:n, :n]
    img[np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) > n / 2 - 3] = 0.0  # inside the scanned disc
    sino, th = _parallel_sinogram(img, 200)
    return sino, th, (n - 1) / 2.0


@pytest.mark.parametrize("offset", [0.0, 3.0, -5.0])
def test_axis_error_finds_a_known_offset(phantom_sinogram, offset):
    sino, th, c = phantom_sinogram
    rec = rd.fbp(sino, th, center=c + offset, size=sino.shape[1])
    est = axis_error(rec)
    assert est.found
    assert abs(est.px - abs(offset)) <= 1.0


def test_axis_error_is_the_same_on_an_8bit_export(phantom_sinogram):
    sino, th, c = phantom_sinogram
    rec = rd.fbp(sino, th, center=c + 4.0, size=sino.shape[1])
    lo, hi = np.percentile(rec, [0.5, 99.5])
    u8 = np.rint(np.clip((rec - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert abs(axis_error(u8).px - 4.0) <= 1.0


def test_axis_error_is_blind_to_gain_and_offset(phantom_sinogram):
    sino, th, c = phantom_sinogram
    rec = rd.fbp(sino, th, center=c + 3.0, size=sino.shape[1])
    a, b = axis_error(rec), axis_error(7.0 * rec - 2.0)
    assert a.px == pytest.approx(b.px, abs=1e-6)


def test_volume_axis_error_is_the_median_of_its_slices(phantom_sinogram):
    sino, th, c = phantom_sinogram
    recs = [rd.fbp(sino, th, center=c + o, size=sino.shape[1]) for o in (2.0, 4.0, 6.0)]
    singles = sorted(axis_error(r).px for r in recs)
    assert volume_axis_error(recs) == pytest.approx(singles[1])


def test_axis_error_of_degenerate_slices():
    assert np.isnan(axis_error(np.zeros((64, 64))).px)  # constant
    assert np.isnan(axis_error(np.ones((16, 16))).px)  # too small
    with pytest.raises(OptionError):
        axis_error(np.zeros((4, 64, 64)))
    with pytest.raises(OptionError):
        volume_axis_error([np.zeros((64, 64))], max_slices=0)
