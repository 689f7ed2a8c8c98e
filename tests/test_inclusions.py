"""Dense inclusions (metal particles and the like) found, filled, and kept out of the score.

Facts used: an inclusion far denser than the sample is structure, not an impairment, so the
score of a real slice must not move when a few are drawn into it; a sparse sample in air and
the arcs that strong rings leave about the axis are not inclusions; the fill replaces the
inclusions only, with the slice's own values.
"""

from pathlib import Path

import numpy as np
import pytest

from tomoqc.errors import InputError
from tomoqc.inclusions import (
    AXIS_CLEARANCE_PX,
    BULK_HIGH,
    BULK_LOW,
    DENSE_RANGES,
    dense_inclusion_mask,
    fill_inclusions,
    remove_dense_inclusions,
)

REAL = Path(__file__).parent / "data" / "real"


def _real(name):
    return np.load(REAL / f"{name}.npy")


def _discs(img, centres, radius, level):
    """``img`` with discs of ``radius`` at ``lo + level * (hi - lo)`` (0.5/99.5 percentiles), drawn with
    their partial-volume edge (4 x 4 subpixels) and a 0.7 px Gaussian; returns (image, cover)."""
    from scipy import ndimage

    x = np.asarray(img, np.float64)
    lo, hi = np.percentile(x, [0.5, 99.5])
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]].astype(np.float64)
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    cover = np.zeros(x.shape)
    for cy, cx in centres:
        disc = sum((np.hypot(yy + dy - cy, xx + dx - cx) <= radius).astype(float) for dy in sub for dx in sub)
        cover = np.maximum(cover, disc / sub.size ** 2)
    cover = ndimage.gaussian_filter(cover, 0.7)
    return x * (1 - cover) + (lo + level * (hi - lo)) * cover, cover


def _off_axis_centres(shape, count, seed):
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    while len(out) < count:
        c = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        if np.hypot(c[0] - (h - 1) / 2, c[1] - (w - 1) / 2) > AXIS_CLEARANCE_PX + 8 and all(
                np.hypot(c[0] - o[0], c[1] - o[1]) > 14 for o in out):
            out.append(c)
    return out


@pytest.mark.parametrize("name", ["htc2022_ta_fbp256", "battery_cellvol_im076_crop320"])
@pytest.mark.parametrize("radius,level", [(2, 3.0), (3, 10.0), (5, 30.0)])
def test_discs_drawn_into_real_slices_are_found_whole(name, radius, level):
    img = _real(name)
    drawn, cover = _discs(img, _off_axis_centres(img.shape, 6, seed=radius), radius, level)
    mask = dense_inclusion_mask(drawn)
    from scipy import ndimage

    assert mask[cover > 0.5].all(), "every pixel mostly inside a disc is part of the mask"
    near = ndimage.distance_transform_edt(cover < 0.01)
    assert near[mask].max() <= 4, "the mask keeps to the discs and their edge"


@pytest.mark.parametrize("name", ["htc2022_ta_fbp256", "battery_cellvol_im076_crop320", "battery_xct_im1_crop128",
                                  "savu24737_row104_fbp160"])
def test_clean_real_slices_have_no_inclusion(name):
    img = _real(name)
    assert not dense_inclusion_mask(img).any()
    out, share = remove_dense_inclusions(img)
    assert out is img and share == 0.0


def test_strong_rings_are_not_inclusions():
    """Scanned with the strongest ring level, a phantom's reconstruction holds bright arcs and a
    dot about the axis far above its bulk; they are the impairment, not inclusions."""
    from tomoqc.distort import physics
    from tomoqc.phantom import electrode_slice

    for seed in (3, 19):
        img = electrode_slice((256, 256), seed=seed)[0]
        ringed = physics.apply(img, "ring", 5, rng=seed)
        x = np.asarray(ringed, np.float64)
        lo, hi = np.percentile(x, [BULK_LOW, BULK_HIGH])
        assert dense_inclusion_mask(ringed).sum() == 0, (seed, int((x > hi + DENSE_RANGES * (hi - lo)).sum()))


def test_a_sparse_sample_in_air_is_not_an_inclusion():
    """Air with noise and a few small bright fragments of sample: the fragments are far above the
    bulk (the air) but they are the sample, so nothing is filled."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 0.01, (256, 256))
    yy, xx = np.mgrid[:256, :256]
    for cy, cx in ((60, 70), (90, 180), (180, 60), (200, 200), (150, 120)):
        img[np.hypot(yy - cy, xx - cx) <= 3] = 1.0
    assert not dense_inclusion_mask(img).any()


def test_an_inclusion_at_the_axis_is_left_unless_the_axis_is_elsewhere():
    img = _real("htc2022_ta_fbp256")
    drawn, cover = _discs(img, [(127.5, 127.5)], 3, 10.0)
    assert not dense_inclusion_mask(drawn).any()
    moved = dense_inclusion_mask(drawn, center=(60.0, 60.0))
    assert moved[cover > 0.5].all()


def test_fill_changes_only_the_mask_with_the_slices_own_values():
    img = _real("battery_cellvol_im076_crop320")  # uint8
    drawn, cover = _discs(img, _off_axis_centres(img.shape, 5, seed=1), 3, 10.0)
    drawn = np.clip(np.round(drawn), 0, 255).astype(np.uint8)
    before = drawn.copy()
    mask = dense_inclusion_mask(drawn)
    out = fill_inclusions(drawn, mask)
    assert np.array_equal(drawn, before), "the input is untouched"
    assert out.dtype == drawn.dtype
    assert np.array_equal(out[~mask], drawn[~mask])
    assert set(np.unique(out[mask])) <= set(np.unique(drawn[~mask])), "filled from the slice's own pixels"
    assert not dense_inclusion_mask(out).any()
    # the fill keeps the sample's texture: its spread is that of the slice, not a flat patch
    assert np.std(out[mask].astype(float)) > 0.3 * np.std(drawn[~mask].astype(float))


def test_bad_input_is_refused():
    with pytest.raises(InputError):
        dense_inclusion_mask(np.zeros((4, 4, 4)))
    with pytest.raises(InputError):
        fill_inclusions(np.zeros((8, 8)), np.zeros((8, 9), bool))
    assert not dense_inclusion_mask(np.full((32, 32), np.nan)).any()


@pytest.fixture(scope="module")
def bundled():
    from tomoqc.models.tiqa import load_model

    return load_model(None)


def test_the_score_does_not_move_for_dense_inclusions(bundled):
    """On the Li-ion cell's windings ten dense particles raised the score by more than a point
    before they were filled (``benchmarks/bright_inclusions.py``)."""
    img = _real("battery_cellvol_im076_crop320")
    drawn, cover = _discs(img, _off_axis_centres(img.shape, 10, seed=4), 3, 30.0)
    clean = bundled.score_slices(img[None], tta=1)
    filled = bundled.score_slices(drawn[None], tta=1)
    kept = bundled.score_slices(drawn[None], tta=1, fill_inclusions=False)
    assert clean["inclusion_fraction"][0] == 0.0
    share = float(filled["inclusion_fraction"][0])
    assert 0.8 * np.mean(cover > 0.5) <= share <= 2.5 * np.mean(cover > 0.05)
    assert abs(float(filled["score"][0]) - float(clean["score"][0])) < 0.1
    assert kept["inclusion_fraction"][0] == 0.0
    assert abs(float(kept["score"][0]) - float(clean["score"][0])) > 0.3, "without the fill they move it"


def test_tomoqc_score_writes_the_filled_share(tmp_path):
    from typer.testing import CliRunner

    import tifffile
    import xarray as xr

    from tomoqc.cli import app

    img = _real("htc2022_ta_fbp256")
    drawn, _ = _discs(img, _off_axis_centres(img.shape, 6, seed=2), 3, 10.0)
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.stack([img, drawn]).astype(np.float32))
    runner = CliRunner()
    for extra, out in (([], "filled"), (["--keep-inclusions"], "kept")):
        r = runner.invoke(app, ["score", str(vol), "--out", str(tmp_path / out), "--cluster", "none", "--quiet",
                                *extra])
        assert r.exit_code == 0, r.output
        ds = xr.open_zarr(tmp_path / out / "vol.tif.quality.zarr")
        frac = ds["inclusion_fraction"].values
        assert frac[0] == 0.0
        assert (frac[1] > 0.0) == (out == "filled")
        assert ds.attrs["fill_inclusions"] == (out == "filled")


def test_compare_carries_the_filled_share_and_keeps_them_when_told():
    import tomoqc

    img = _real("htc2022_ta_fbp256").astype(np.float32)
    drawn, _ = _discs(img, _off_axis_centres(img.shape, 6, seed=2), 3, 10.0)
    for fill in (True, False):
        ds = tomoqc.compare([drawn.astype(np.float32), img], labels=["particles", "clean"], workers=0,
                            progress=False, fill_inclusions=fill, tta=1)
        frac = ds["inclusion_fraction"]
        assert float(frac.sel(variant="clean").values[0]) == 0.0
        assert (float(frac.sel(variant="particles").values[0]) > 0.0) == fill
