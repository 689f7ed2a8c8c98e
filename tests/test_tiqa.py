import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tomoqc.errors import InputError, OptionError
from tomoqc.models import tiqa
from tomoqc.models.tiqa import (
    FLAG_CONSTANT,
    FLAG_NO_VALID_PATCH,
    FLAG_OOD,
    FLAG_PADDED,
    OOD_UNCERTAINTY,
    PADDED_OOD_SHARE,
    PATCH,
    build_tiqa,
    load_model,
    padded_share,
    patch_grid,
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiqa") / "random.keras"
    build_tiqa(seed=3, backbone="small-cnn").save(path)
    (path.with_suffix(".json")).write_text(json.dumps({"model_id": "random-test-model"}))
    return path


@pytest.fixture(scope="module")
def model(model_file):
    return load_model(model_file, batch_size=8)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 1200), w=st.integers(1, 1200))
def test_grid_covers_every_pixel(h, w):
    py, px, starts = patch_grid((h, w))
    assert py == max(1, -(-h // PATCH)) and px == max(1, -(-w // PATCH))
    assert starts.shape == (py * px, 2)
    cover = np.zeros((max(h, PATCH), max(w, PATCH)), bool)
    for y, x in starts:
        assert 0 <= y and 0 <= x
        assert y + PATCH <= max(h, PATCH) and x + PATCH <= max(w, PATCH)
        cover[y : y + PATCH, x : x + PATCH] = True
    assert cover[:h, :w].all()


def test_model_outputs_and_size(model):
    km = build_tiqa(input_size=None, seed=0)
    out = km(np.zeros((2, 96, 96, 1), np.float32), training=False)
    assert tuple(out["score"].shape) == (2, 1)
    assert tuple(out["severity"].shape) == (2, 3)
    sev = np.asarray(out["severity"])
    assert (sev > 0).all() and (sev < 1).all()
    assert model.model_id == "random-test-model"
    assert len(model.sha256) == 64


def test_small_cnn_backbone_has_the_tiqa_interface():
    """The small backbone keeps the input, the heads and the ``pool`` layer of the TIQA
    network, at a small fraction of EfficientNet-B0's 4 M parameters."""
    km = build_tiqa(input_size=None, seed=0, backbone="small-cnn")
    out = km(np.zeros((3, 80, 112, 1), np.float32), training=False)
    assert tuple(out["score"].shape) == (3, 1) and tuple(out["severity"].shape) == (3, 3)
    assert km.get_layer("pool").output.shape[-1] == 128
    assert km.count_params() < 250_000
    with pytest.raises(OptionError, match="backbone"):
        build_tiqa(backbone="resnet")
    with pytest.raises(OptionError, match="EfficientNet-B0"):
        build_tiqa(backbone="small-cnn", backbone_weights=__file__)


def test_predict_independent_of_batch_padding(model):
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(11, PATCH, PATCH)).astype(np.float32)
    s_all, v_all = model.predict_patches(p, raw=True)
    s3, v3 = model.predict_patches(p[:3], raw=True)
    np.testing.assert_allclose(s3, s_all[:3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v3, v_all[:3], rtol=1e-4, atol=1e-5)
    s_clip, _ = model.predict_patches(p)
    assert ((s_clip >= 1) & (s_clip <= 5)).all()
    with pytest.raises(InputError):
        model.predict_patches(np.full((1, PATCH, PATCH), np.nan, np.float32))


def _disc_slice(n=620, radius=240, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    inside = (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 <= radius**2
    texture = 1000 + 400 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 50 * rng.normal(size=(n, n))
    img = np.where(inside, texture, 0.0).astype(np.float32)  # zeros outside the field of view
    return img, inside


def test_grid_excludes_patches_outside_the_field_of_view(model):
    img, inside = _disc_slice()
    res = model.score_slices(img[None], raw=True)
    py, px, starts = patch_grid(img.shape)
    ps = res["patch_score"][0]
    assert ps.shape == (py, px) == (3, 3)
    for k, (y, x) in enumerate(starts):
        frac_out = 1.0 - inside[y : y + PATCH, x : x + PATCH].mean()
        assert frac_out < 0.4 or frac_out > 0.6  # the geometry leaves no borderline patch
        assert np.isnan(ps.flat[k]) == (frac_out > 0.5)
    assert np.isnan(ps[0, 0]) and np.isnan(ps[2, 2]) and np.isfinite(ps[1, 1])
    # the slice score is the mean of the scored patches only
    assert res["score"][0] == pytest.approx(np.nanmean(ps), rel=1e-5)
    assert res["valid_fraction"][0] == pytest.approx(np.isfinite(ps).mean())
    q = model.score_slices(img, raw=True, quantile=0.0)
    assert q["score"][0] == pytest.approx(np.nanmin(ps), rel=1e-5)


def test_air_constant_and_small_slices(model):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:300, :600]
    sample = 1000 + 400 * np.sin(xx / 5.0) * np.cos(yy / 9.0) + 40 * rng.normal(size=(300, 600))
    air = 50 + 5 * rng.normal(size=(300, 600))  # dark, only noise
    img = np.where(xx < 300, sample, air).astype(np.float32)
    const = np.full((300, 600), 5.0, np.float32)
    res = model.score_slices(np.stack([img, const]))
    ps = res["patch_score"]
    # columns start at x = 0, 188, 376: the last holds only air, the middle is half sample
    assert np.isfinite(ps[0, :, 0]).all() and np.isfinite(ps[0, :, 1]).all()
    assert np.isnan(ps[0, :, 2]).all()
    assert np.isfinite(res["score"][0]) and not res["flags"][0] & FLAG_NO_VALID_PATCH
    assert np.isnan(res["score"][1])
    assert res["flags"][1] & FLAG_CONSTANT and res["flags"][1] & FLAG_NO_VALID_PATCH
    assert np.isnan(ps[1]).all() and np.isnan(res["severity"][1]).all()
    small = rng.uniform(0, 1, size=(100, 150)).astype(np.float32)
    r = model.score_slices(small)
    assert r["flags"][0] & FLAG_PADDED
    assert r["patch_score"].shape == (1, 1, 1) and np.isfinite(r["score"][0])


def test_padded_share_is_the_area_the_slice_leaves_empty():
    assert padded_share((PATCH, PATCH)) == 0.0 and padded_share((900, 700)) == 0.0
    assert padded_share((PATCH // 2, 5 * PATCH)) == pytest.approx(0.5)
    assert padded_share((PATCH // 2, PATCH // 2)) == pytest.approx(0.75)
    assert padded_share((3, 10, PATCH)) == pytest.approx(1 - 10 / PATCH)  # the last two axes


def test_a_slice_much_smaller_than_a_patch_is_out_of_distribution(model):
    # the network never saw a reflection-padded patch: where padding fills more than
    # PADDED_OOD_SHARE of it the score is flagged and its uncertainty carries the
    # out-of-distribution share; a slice of one patch, or one padded a little, is not flagged
    rng = np.random.default_rng(3)
    big = rng.uniform(0, 1, size=(PATCH, PATCH)).astype(np.float32)
    small = big[:150, :200].copy()  # 40 % padding
    near = big[: PATCH - 14].copy()  # 6 % padding
    assert padded_share(small.shape) > PADDED_OOD_SHARE > padded_share(near.shape) > 0
    whole = model.score_slices(big[None], ood=True)
    part = model.score_slices(small[None], ood=True)
    almost = model.score_slices(near[None], ood=True)
    assert not whole["flags"][0] & FLAG_PADDED and not whole["flags"][0] & FLAG_OOD
    assert almost["flags"][0] & FLAG_PADDED and not almost["flags"][0] & FLAG_OOD
    assert part["flags"][0] & FLAG_PADDED and part["flags"][0] & FLAG_OOD
    assert np.isfinite(part["score"][0]) and part["score_uncertainty"][0] >= OOD_UNCERTAINTY
    assert almost["score_uncertainty"][0] < OOD_UNCERTAINTY
    quiet = model.score_slices(small[None], ood=False)
    assert quiet["flags"][0] & FLAG_PADDED and not quiet["flags"][0] & FLAG_OOD
    assert quiet["score"][0] == part["score"][0]  # the flag changes the trust, not the score


def test_other_sampling_modes(model):
    img, _ = _disc_slice(400, 190, seed=2)
    a = model.score_slices(img, mode="random", n_crops=6, seed=5, raw=True)
    b = model.score_slices(img, mode="random", n_crops=6, seed=5, raw=True)
    assert a["score"][0] == b["score"][0] and np.isfinite(a["score"][0])
    c = model.score_slices(img, mode="resize_crop", raw=True)
    assert np.isfinite(c["score"][0]) and c["patch_score"].shape == (1, 1, 1)
    assert tiqa.resize_crop(np.zeros((300, 600), np.float32)).shape == (PATCH, PATCH)
    with pytest.raises(OptionError):
        model.score_slices(img, mode="bogus")
    with pytest.raises(OptionError):
        model.score_slices(img, quantile=1.5)


def test_load_errors(tmp_path, model_file):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(InputError, match="corrupt"):
        load_model(junk)
    badzip = tmp_path / "badzip.keras"
    with zipfile.ZipFile(badzip, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(InputError):
        load_model(badzip)
    # a truncated copy of a real model file
    cut = tmp_path / "cut.keras"
    cut.write_bytes(model_file.read_bytes()[: 200000])
    with pytest.raises(InputError):
        load_model(cut)
    with pytest.raises(InputError):
        load_model(tmp_path)
    with pytest.raises(InputError):
        build_tiqa(backbone_weights=tmp_path / "nope.h5")


def test_severities_are_measured_from_the_card_baseline(model_file, model, tmp_path):
    import shutil

    from tomoqc.models.tiqa import severity_baseline

    rng = np.random.default_rng(5)
    patches = rng.random((6, 224, 224)).astype(np.float32)
    raw_s, raw_v = model.predict_patches(patches, raw=True)
    s0, v0 = model.predict_patches(patches)
    np.testing.assert_array_equal(v0, raw_v)  # no baseline in this card: nothing changes
    # the same weights with a baseline in the card
    b = {"noise": 0.2, "blur": 0.5, "ring": 0.0}
    p = tmp_path / "with_base.keras"
    shutil.copyfile(model_file, p)
    p.with_suffix(".json").write_text(json.dumps({"model_id": "x", "severity_baseline": b}))
    m2 = load_model(p, batch_size=8)
    s2, v2 = m2.predict_patches(patches)
    np.testing.assert_allclose(s2, s0, atol=1e-6)  # the score is untouched
    base = np.array([0.2, 0.5, 0.0], np.float32)
    np.testing.assert_allclose(v2, np.clip((raw_v - base) / (1 - base), 0, 1), atol=1e-6)
    assert (v2 >= 0).all() and (v2 <= 1).all()
    # a baseline outside [0, 1) is ignored rather than dividing by zero
    p.with_suffix(".json").write_text(json.dumps({"severity_baseline": {"noise": 1.0, "blur": -0.1}}))
    np.testing.assert_array_equal(load_model(p).severity_baseline, np.zeros(3, np.float32))
    # the baseline of a set of images is the median of their raw slice severities
    imgs = [rng.random((240, 240)).astype(np.float32) for _ in range(5)] + [rng.random((300, 260)).astype(np.float32)]
    got = severity_baseline(m2, imgs)
    each = np.stack([m2.score_slices(a, raw=True)["severity"][0, :3] for a in imgs])
    assert got["n"] == 6
    np.testing.assert_allclose([got[k] for k in ("noise", "blur", "ring")], np.median(each, axis=0), atol=1e-5)


def test_binary_saturated_8bit_slices_get_a_score(model):
    """An 8-bit slice where more than half the pixels hold the maximum gets a finite score."""
    img, inside = _disc_slice(300, 140, seed=4)
    yy, xx = np.mgrid[:300, :300]
    # saturated export: the sample clipped to white over 60 % of the slice, black outside
    sat = np.clip(img / 700.0, 0, 1)
    sat[(np.abs(yy - 150) < 120) & (np.abs(xx - 150) < 120)] = 1.0
    sat = (sat * 255).astype(np.uint8)
    assert (sat == 255).mean() > 0.5
    # binary (segmented) slice: foreground 255 over 70 %, background 0, the border foreground too
    binary = np.where((np.sin(xx / 9.0) * np.cos(yy / 13.0)) > -0.45, 255, 0).astype(np.uint8)
    assert (binary == 255).mean() > 0.5
    res = model.score_slices(np.stack([sat, binary]), tta=1)
    assert np.isfinite(res["score"]).all() and np.isfinite(res["score_uncertainty"]).all()
    assert not (res["flags"] & FLAG_NO_VALID_PATCH).any()
    assert res["flags"][1] & tiqa.FLAG_RELAXED  # its white outer region is taken for the outside
    # float slices with any offset score like the original
    ramp = img.astype(np.float64)
    a = model.score_slices(ramp, tta=1, raw=True)["score"][0]
    b = model.score_slices(ramp + 1e7, tta=1, raw=True)["score"][0]
    assert a == pytest.approx(b, abs=2e-3)


def test_score_uncertainty_views_and_ood(model):
    from tomoqc.models.trust import FeatureDistance

    img, _ = _disc_slice(400, 190, seed=6)
    one = model.score_slices(img, tta=1, raw=True)
    two = model.score_slices(img, tta=2, raw=True)
    assert one["views"] == 1 and two["views"] == 2
    # one view: the uncertainty is the standard error over the patches alone
    ps = one["patch_score"][0][np.isfinite(one["patch_score"][0])]
    assert one["score_uncertainty"][0] == pytest.approx(np.std(ps, ddof=1) / np.sqrt(ps.size), rel=1e-4)
    assert two["score_uncertainty"][0] > 0 and np.isfinite(two["score"][0])
    with pytest.raises(OptionError):
        model.score_slices(img, tta=3)
    # the views: 8 distinct symmetries of a square patch
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    views = {tiqa._view(x, k).tobytes() for k in range(8)}
    assert len(views) == 8
    # out of distribution: a raw-score range the slice misses, then feature statistics it is far from
    raw = float(one["raw_score"][0])
    m2 = tiqa.TiqaModel(model.model, card={"trust": {"raw_score_range": [raw + 10, raw + 20]}}, tta_views=1)
    r2 = m2.score_slices(img)
    assert r2["flags"][0] & tiqa.FLAG_OOD
    assert r2["score_uncertainty"][0] >= tiqa.OOD_UNCERTAINTY
    feats = model.score_slices(img, tta=1, features=True, ood=False)["features"][0]
    d = feats.shape[1]
    fd = FeatureDistance(feats.mean(0) + 100.0, np.eye(2, d), [1.0, 1.0], 1.0, 1.5)
    m3 = tiqa.TiqaModel(model.model, card={"trust": {"features": fd.to_card()}}, tta_views=1)
    r3 = m3.score_slices(img)
    assert r3["flags"][0] & tiqa.FLAG_OOD and r3["ood_distance"][0] > 1
    assert r3["score_uncertainty"][0] >= tiqa.OOD_UNCERTAINTY
    assert not model.score_slices(img, tta=1)["flags"][0] & tiqa.FLAG_OOD  # no statistics: no test


def test_the_model_card_sets_the_patch_side(tmp_path):
    """A card's ``test_time_sampling.patch`` decides the grid the slice is cut into, in the
    model and in the quality zarr the pipeline writes."""
    import tifffile

    from tomoqc.pipeline import score

    path = tmp_path / "p96.keras"
    build_tiqa(input_size=None, seed=4, backbone="small-cnn").save(path)
    card = {"model_id": "p96", "test_time_sampling": {"mode": "grid", "patch": 96}}
    path.with_suffix(".json").write_text(json.dumps(card))
    m = load_model(path, batch_size=4, tta_views=1)
    assert m.patch == 96
    rng = np.random.default_rng(0)
    img = (0.5 + 0.1 * rng.standard_normal((150, 230))).astype(np.float32)
    out = m.score_slices(img, measured_terms=False, ood=False)
    py, px, starts = patch_grid(img.shape, 96)
    assert (py, px) == (2, 3) and out["patch_score"].shape == (1, py, px)
    # the last patch of the grid, cut out independently, scores as in the map
    y0, x0 = starts[-1]
    assert (y0, x0) == (150 - 96, 230 - 96)
    from tomoqc.preprocess import normalize_slice

    alone = m.predict_patches(normalize_slice(img)[None, y0 : y0 + 96, x0 : x0 + 96])[0][0]
    assert out["patch_score"][0, -1, -1] == pytest.approx(alone, abs=1e-4)
    # the pipeline lays its patch map out on the same grid
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.stack([img, img[::-1]]))
    ds = score(vol, model=path, out=tmp_path / "q", workers=0, progress=False, measured_terms=False)
    assert ds.attrs["patch_size"] == 96 and ds["patch_score"].shape == (2, py, px)
    assert list(ds["patch_x0"].values) == sorted({int(s[1]) for s in starts})
    np.testing.assert_allclose(ds["patch_score"].values[0], out["patch_score"][0], atol=1e-4)
    # a card with a patch side that is no side
    for bad in (0, 16.5, "224", True):
        path.with_suffix(".json").write_text(json.dumps({"test_time_sampling": {"patch": bad}}))
        with pytest.raises(InputError, match="test_time_sampling.patch"):
            load_model(path)


def test_a_dense_minority_setting_the_range_is_out_of_distribution(model):
    # a few dense discs hold the top percent of the slice: its intensity range is theirs and
    # the rest is compressed, which no training image was; the flag leaves the score as it is
    from tomoqc.preprocess import tail_stretch

    rng = np.random.default_rng(8)
    base = rng.normal(1.0, 0.1, size=(PATCH, PATCH)).astype(np.float32)
    dense = base.copy()
    yy, xx = np.mgrid[:PATCH, :PATCH]
    for cy, cx in ((60, 60), (150, 90), (100, 170)):
        dense[np.hypot(yy - cy, xx - cx) <= 7] = 20.0  # 3 x 149 px: 0.9 % of the slice
    assert tail_stretch(base) < tiqa.TAIL_STRETCH_LIMIT < tail_stretch(dense)
    plain = model.score_slices(np.stack([base, dense]), ood=False)
    got = model.score_slices(np.stack([base, dense]), ood=True)
    assert not got["flags"][0] & FLAG_OOD and got["flags"][1] & FLAG_OOD
    assert got["score_uncertainty"][1] >= OOD_UNCERTAINTY > got["score_uncertainty"][0]
    np.testing.assert_array_equal(got["score"], plain["score"])
