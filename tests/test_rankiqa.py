"""The RankIQA baseline: VGG16 layout, scoring of any image, rank learning, round trip, errors."""

import json

import numpy as np
import pytest

from tomoqc.errors import InputError

TINY = 1 / 16  # 4 to 32 channels: fast enough for tests
SIZE = 64

# VGG16 (Simonyan & Zisserman 2015, configuration D): 3x3 convolutions per block
VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def conv_parameters(channels, cin=3):
    """Sum of (3*3*c_in + 1) * c_out over a chain of 3x3 convolutions with bias."""
    total = 0
    for cout in channels:
        total += (3 * 3 * cin + 1) * cout
        cin = cout
    return total


def vgg16_chain(width=1.0):
    return [max(1, round(c * width)) for c, n in VGG16_BLOCKS for _ in range(n)]


def structured(shape, seed=0):
    """A smooth random field plus edges: structure everywhere, no constant region."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.sin(xx / 5.0) + np.cos(yy / 7.0) + 0.3 * rng.normal(size=shape)
    img += (xx > shape[1] // 2) * 1.5
    return img


def test_vgg16_parameter_count():
    import keras

    from tomoqc.models.rankiqa import build_rankiqa

    assert conv_parameters(vgg16_chain()) == 14_714_688  # the published count, include_top=False
    full = build_rankiqa(width=1.0, seed=0).get_layer("vgg16")
    assert full.count_params() == conv_parameters(vgg16_chain())
    tiny = build_rankiqa(width=TINY, seed=0).get_layer("vgg16")
    convs = [layer for layer in tiny.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in tiny.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(convs) == 13 and len(pools) == 5
    assert [c.filters for c in convs] == vgg16_chain(TINY)
    assert tiny.count_params() == conv_parameters(vgg16_chain(TINY))


def test_any_image_size_and_dtype_gives_one_finite_score():
    from tomoqc.models.rankiqa import RankIQA, build_rankiqa

    r = RankIQA.from_model(build_rankiqa(width=TINY, seed=1), SIZE)
    shapes = [(40, 50), (64, 64), (97, 203), (300, 130)]
    imgs = [structured(s, i) for i, s in enumerate(shapes)]
    imgs[1] = (255 * (imgs[1] - imgs[1].min()) / np.ptp(imgs[1])).astype(np.uint8)
    imgs[2] = (1000 * imgs[2] + 3000).astype(np.uint16)
    imgs[3] = imgs[3].astype(np.float64)
    s = r.predict(imgs)
    assert s.shape == (4,) and np.isfinite(s).all()
    # normalisation: an affine change of intensity does not change the score
    a = structured((120, 90), 9).astype(np.float32)
    s2 = r.predict([a, 50.0 * a - 7.0])
    assert s2[0] == pytest.approx(s2[1], rel=1e-4, abs=1e-5)
    # a single 2-D array is one image; a constant image has nothing to score
    assert r.predict(a).shape == (1,)
    assert np.isnan(r.predict([np.full((80, 80), 3.0)])[0])


def _level_srocc(r, blocks, store_dir):
    """Mean over blocks of the SROCC between -score and level, whole images scored."""
    from scipy.stats import spearmanr

    vals = []
    for b in blocks:
        imgs = [np.load(store_dir / f) for f in b.files]
        vals.append(spearmanr(-r.predict(imgs), b.levels).statistic)
    return float(np.mean(vals))


def test_rank_stage_learns_to_order_levels(tiny, tmp_path):
    from tomoqc.models.rankiqa import RankIQA, build_rankiqa, load_rankiqa, train_rankiqa
    from tomoqc.train.data import rank_blocks, read_manifest, split_references

    rows = read_manifest(tiny)
    train_refs, _ = split_references({r["reference"] for r in rows}, val_fraction=0.2, seed=0)
    out = tmp_path / "r.keras"
    res = train_rankiqa(tiny, out, size=SIZE, width=TINY, rank_epochs=12, finetune_epochs=0, steps_per_epoch=5,
                        references=train_refs, seed=0, progress=False, blocks_per_batch=3, lr=1e-3)
    card = json.loads(res["card_path"].read_text())
    assert card["data"]["references"] == sorted(train_refs)
    assert card["size"] == SIZE and card["seed"] == 0 and len(card["weights_sha256"]) == 64
    blocks = rank_blocks(rows, references=train_refs)
    before = _level_srocc(RankIQA.from_model(build_rankiqa(width=TINY, seed=0), SIZE), blocks, tiny)
    after = _level_srocc(load_rankiqa(out), blocks, tiny)
    assert after > before + 0.2, (before, after)
    assert after > 0.5, (before, after)


def test_save_load_round_trip_and_finetune(tiny_labelled, tmp_path):
    from tomoqc.models.rankiqa import RankIQA, build_rankiqa, load_rankiqa, train_rankiqa
    from tomoqc.train.data import read_manifest

    imgs = [structured((100, 77), 3), structured((64, 200), 4).astype(np.float32)]
    r = RankIQA.from_model(build_rankiqa(width=TINY, seed=5), SIZE)
    r.save(tmp_path / "m.keras")
    back = load_rankiqa(tmp_path / "m.keras")
    assert back.size == SIZE
    np.testing.assert_array_equal(r.predict(imgs), back.predict(imgs))
    # the crop size lives in the card: a model file without its card is refused, naming the card
    (tmp_path / "alone.keras").write_bytes((tmp_path / "m.keras").read_bytes())
    with pytest.raises(InputError, match="alone.json"):
        load_rankiqa(tmp_path / "alone.keras")

    # rank, then fine-tune: the scores regress the labels better than the labels' mean does
    calls = []
    res = train_rankiqa(tiny_labelled, tmp_path / "ft.keras", size=SIZE, width=TINY, rank_epochs=12,
                        finetune_epochs=6, steps_per_epoch=5, seed=0, progress=False, blocks_per_batch=3,
                        batch_size=12, lr=1e-3, finetune_lr=3e-4, on_step=lambda: calls.append(1))
    assert [h["stage"] for h in res["card"]["history"]] == ["rank"] * 12 + ["finetune"] * 6
    assert len(calls) == (12 + 6) * 5  # one call per training step, for a caller's progress bar
    rows = read_manifest(tiny_labelled)
    lab = np.array([float(row["label"]) for row in rows])
    pred = load_rankiqa(res["path"]).predict([np.load(tiny_labelled / row["file"]) for row in rows])
    assert np.sqrt(np.mean((pred - lab) ** 2)) < 0.8 * lab.std()


def test_errors_name_the_file(tmp_path, tiny):
    from tomoqc.models.rankiqa import load_rankiqa, train_rankiqa

    missing = tmp_path / "nothing.keras"
    with pytest.raises(InputError, match="nothing.keras"):
        load_rankiqa(missing)
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(InputError, match="junk.keras"):
        load_rankiqa(junk)
    with pytest.raises(InputError, match="no_such_data"):
        train_rankiqa(tmp_path / "no_such_data", tmp_path / "x.keras", width=TINY, progress=False)
    with pytest.raises(InputError, match="manifest.csv"):
        train_rankiqa(tiny, tmp_path / "x.keras", width=TINY, references=["zzz"], progress=False)
    with pytest.raises(InputError, match="1 of the 2 given references.*zzz"):
        train_rankiqa(tiny, tmp_path / "x.keras", width=TINY, references=["zzz", "r00000"], progress=False)
    # the tiny set has no labels: the fine-tune stage says so, naming the manifest
    with pytest.raises(InputError, match="manifest.csv.*labelled"):
        train_rankiqa(tiny, tmp_path / "x.keras", width=TINY, rank_epochs=0, finetune_epochs=1, progress=False)
    assert not (tmp_path / "x.keras").exists()
