"""Refining on series of known order (tomoqc.train.series_refine)."""

import numpy as np
import pytest

from tomoqc.train.series_refine import (OrderedSeries, cached_training_series, read_series, refine_on_series,
                                        series_block_batch, series_pair_accuracy, write_series)


def _series(name, source, n, shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    imgs = [np.clip(base + rng.normal(0, 0.04 * k, shape), 0, 1).astype(np.float32) for k in range(n)]
    return OrderedSeries(name, "noise", source, imgs)


def test_block_batch_pairs_every_ordered_pair_of_a_block_on_one_shared_crop():
    blocks = [_series("a", "real", 5, seed=1), _series("b", "simulated", 2, seed=2), _series("c", "real", 3, seed=3)]
    rng = np.random.default_rng(0)
    x, better, worse = series_block_batch(blocks, 64, 4, rng, augment=False)
    sizes = [4, 2, 3]  # min(length, len(series))
    assert x.shape == (sum(sizes), 64, 64, 1)
    assert len(better) == sum(n * (n - 1) // 2 for n in sizes)
    starts = np.cumsum([0] + sizes)
    for b, w in zip(better, worse):
        k = np.searchsorted(starts, b, side="right") - 1
        assert starts[k] <= b < w < starts[k + 1]  # same block, better first
    # each block's crops come from one position of its own images, in the series' order
    for k, s in enumerate(blocks):
        crops = x[starts[k] : starts[k + 1], ..., 0]
        found = []
        for c in crops:
            hits = [i for i, img in enumerate(s.images)
                    for y in range(img.shape[0] - 63) for xx in range(img.shape[1] - 63)
                    if np.array_equal(img[y : y + 64, xx : xx + 64], c)][:1]
            assert hits, "crop not cut from the series"
            found.append(hits[0])
        assert found == sorted(found) and len(set(found)) == len(found)


def test_pair_accuracy_counts_ordered_pairs_and_ties_half():
    s = [_series("a", "real", 3), _series("b", "simulated", 3)]
    # real: (3,2,1) all 3 pairs right; simulated: (1,1,2): tie 0.5, wrong, wrong -> 0.5/3
    acc = series_pair_accuracy(s, [[3, 2, 1], [1, 1, 2]])
    assert acc["real"] == pytest.approx(1.0)
    assert acc["simulated"] == pytest.approx(0.5 / 3)
    assert acc["all"] == pytest.approx((1.0 + 0.5 / 3) / 2)


def test_pair_accuracy_weighs_the_image_domain_source_alike():
    # one series per source: real all right, simulated all wrong, image one of three right
    s = [_series("a", "real", 3), _series("b", "simulated", 3), _series("c", "image", 3)]
    acc = series_pair_accuracy(s, [[3, 2, 1], [1, 2, 3], [1, 3, 2]])
    assert acc["image"] == pytest.approx(1 / 3)
    assert acc["all"] == pytest.approx((1.0 + 0.0 + 1 / 3) / 3)


def test_series_cache_round_trips_and_spares_the_rebuild(tmp_path):
    series = [_series("dose/x", "real", 3, seed=1), _series("phantom#0", "simulated", 2, shape=(40, 56), seed=2)]
    cache = tmp_path / "c" / "series.npz"
    write_series(cache, series)
    assert not list(cache.parent.glob("*.part*"))
    back = read_series(cache)
    assert [(s.name, s.kind, s.source, len(s.images)) for s in back] == \
        [(s.name, s.kind, s.source, len(s.images)) for s in series]
    for a, b in zip(series, back):
        for x, y in zip(a.images, b.images):
            np.testing.assert_array_equal(x, y)
    # with the cache there, the real-data folder is not read (here it does not exist)
    again = cached_training_series(tmp_path / "no-such-folder", cache, log=lambda m: None)
    assert [s.name for s in again] == ["dose/x", "phantom#0"]


def test_a_damaged_series_cache_is_named(tmp_path):
    from tomoqc.errors import InputError

    bad = tmp_path / "series.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match="series.npz"):
        read_series(bad)


def test_refine_runs_checkpoints_and_resumes(tmp_path):
    import json

    import keras

    from tomoqc.models.tiqa import build_tiqa, load_model

    model_path = tmp_path / "parent.keras"
    keras.utils.set_random_seed(0)
    build_tiqa(input_size=None, seed=0, backbone="small-cnn").save(model_path)

    series = [_series(f"r{i}", "real", 4, seed=i) for i in range(3)] + \
             [_series(f"s{i}", "simulated", 4, seed=10 + i) for i in range(3)] + \
             [_series(f"i{i}", "image", 4, seed=20 + i) for i in range(2)]
    out = tmp_path / "refine"
    kw = dict(steps_per_epoch=2, blocks_per_batch=2, length=3, crop=64, val_samples=("r0", "s0", "i0"),
              val_size=64, val_crops=1, seed=0, log=lambda m: None)
    rec = refine_on_series(model_path, series, out, epochs=1, **kw)
    assert rec["series"] == {"train": 5, "val": 3, "val_samples": ["r0", "s0", "i0"],
                             "by_source": {"image": {"noise": 1}, "real": {"noise": 2}, "simulated": {"noise": 2}}}
    assert [h["epoch"] for h in rec["history"]] == [0, 1]
    # the held-out image-domain series is validated and weighs a third of the accuracy
    for h in rec["history"]:
        parts = [h["val_real"], h["val_simulated"], h["val_image"]]
        assert np.isfinite(parts).all() and h["val_accuracy"] == pytest.approx(np.mean(parts))
    rec2 = refine_on_series(model_path, series, out, epochs=2, resume=True, **kw)
    assert [h["epoch"] for h in rec2["history"]] == [0, 1, 2]
    assert json.loads((out / "record.json").read_text())["init_sha256"] == rec["init_sha256"]
    # the refined network is a TIQA model the scorer loads; the parent file is untouched
    m = load_model(out / "last.keras")
    assert np.isfinite(m.predict_patches(series[0].images[0][:64, :64][None])[0]).all()
    a = load_model(model_path).model.get_weights()
    b = m.model.get_weights()
    assert any(not np.array_equal(u, v) for u, v in zip(a, b))  # it did learn something


def test_labelled_series_order_one_reference_across_impairments_by_label(tiny_labelled, tiny):
    from tomoqc.dataset import read_manifest
    from tomoqc.errors import InputError
    from tomoqc.preprocess import normalize_slice
    from tomoqc.train.series_refine import labelled_series

    rows = read_manifest(tiny_labelled)
    series = labelled_series(tiny_labelled, spacing=0.5, per_reference=3, length=8, seed=0, val_references=2)
    refs = sorted({r["reference"] for r in rows})
    assert len(series) == 3 * len(refs)
    assert sum(s.name.startswith("labelled-val:") for s in series) == 3 * 2
    assert {s.name.split(":")[1].split("#")[0] for s in series if s.name.startswith("labelled-val:")} == set(refs[-2:])
    for s in series:
        assert s.source == "labelled" and len(s.images) >= 2
        ref = s.name.split(":")[1].split("#")[0]
        # every image is one of its reference's, as the scorer normalises it; labels fall by >= the spacing
        mine = [r for r in rows if r["reference"] == ref]
        labels = []
        for img in s.images:
            hit = [r for r in mine if np.array_equal(normalize_slice(np.load(tiny_labelled / r["file"])), img)]
            assert hit
            labels.append(hit[0]["label"])
        assert all(a - b >= 0.5 - 1e-9 for a, b in zip(labels, labels[1:]))
    # the six label values of the fixture (levels 0-5) are 0.8 apart: a series takes at most six images
    assert max(len(s.images) for s in series) <= 6
    with pytest.raises(InputError, match="label"):
        labelled_series(tiny)


def test_pooled_labelled_series_draw_across_references_on_their_side_of_the_split(tiny_labelled):
    """Pooled series mix references (as a pooled ranking does) but never cross the split: the
    held-out ones draw only from the held-out references, the others never from them."""
    from tomoqc.dataset import read_manifest
    from tomoqc.preprocess import normalize_slice
    from tomoqc.train.series_refine import labelled_series

    rows = read_manifest(tiny_labelled)
    refs = sorted({r["reference"] for r in rows})
    held = set(refs[-2:])
    series = labelled_series(tiny_labelled, spacing=0.3, per_reference=3, length=8, seed=1, val_references=2,
                             pooled=True)
    assert len(series) == 3 * len(refs)
    assert sorted(s.name for s in series if s.name.startswith("labelled-val:")) == [
        f"labelled-val:pooled#{k}" for k in range(6)]
    normalised = [(r, normalize_slice(np.load(tiny_labelled / r["file"]))) for r in rows]
    mixed = 0
    for s in series:
        val = s.name.startswith("labelled-val:")
        labels, drawn_from = [], set()
        for img in s.images:
            hit = [r for r, a in normalised if np.array_equal(a, img)]
            assert hit and all((r["reference"] in held) == val for r in hit)
            labels.append(hit[0]["label"])
            drawn_from.add(hit[0]["reference"])
        assert len(s.images) >= 2 and all(a - b >= 0.3 - 1e-9 for a, b in zip(labels, labels[1:]))
        mixed += len(drawn_from) > 1
    assert mixed > 0  # a series of one reference's images only would never mix them
