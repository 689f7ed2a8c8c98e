"""``tomoqc segment``: the segment job on the slice-wise engine, its OME-Zarr output, resume, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from tomoqc.errors import InputError, OptionError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 3-class D-LinkNet (width 0.125, with dropout) and its card."""
    from tomoqc.models.dlinknet import build_dlinknet

    d = tmp_path_factory.mktemp("segmodel")
    net = build_dlinknet(3, width=0.125, dropout=0.2, seed=1) if _takes_seed() else build_dlinknet(
        3, width=0.125, dropout=0.2)
    path = d / "tiny.keras"
    net.save(path)
    (d / "tiny.json").write_text(json.dumps({"kind": "dlinknet", "n_classes": 3, "width": 0.125, "dropout": 0.2,
                                             "class_names": ["pore", "carbon-binder", "active material"]}))
    return path


def _takes_seed() -> bool:
    import inspect

    from tomoqc.models.dlinknet import build_dlinknet

    return "seed" in inspect.signature(build_dlinknet).parameters


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A 5-slice phantom volume stored in chunks of (2, 48, 90), as uint16."""
    from tomoqc.phantom import electrode_volume

    img = electrode_volume((8, 96, 90), seed=3)[0][:5]
    raw = np.clip(img * 4000 + 500, 0, 65535).astype(np.uint16)
    path = tmp_path_factory.mktemp("segvol") / "vol.zarr"
    z = zarr.create_array(str(path), shape=raw.shape, chunks=(2, 48, 90), dtype="uint16")
    z[:] = raw
    return path, raw


@pytest.fixture(scope="module")
def direct(tiny_model, volume):
    from tomoqc.models.segmenter import load_segment_model

    return load_segment_model(tiny_model).segment_slices(volume[1], tile=512, overlap=64, uncertainty="tta")


def test_volume_equals_direct_model_in_any_chunking(tiny_model, volume, direct, tmp_path):
    from tomoqc.segmentation import open_segmentation, segment

    path, raw = volume
    for chunk in (1, 3):
        out = tmp_path / f"c{chunk}"
        ds = segment(path, model=tiny_model, out=out, workers=0, chunk_slices=chunk, uncertainty="tta",
                     progress=False)
        assert ds.attrs["complete"] is True and ds.attrs["chunks_total"] == -(-5 // chunk)
        np.testing.assert_array_equal(ds["label"].values, direct["label"])
        # a chunk's last batch of tiles is padded to fewer items than the direct call's, and
        # the CPU kernels sum in another order for another batch shape: float32 rounding only
        np.testing.assert_allclose(ds["probability"].transpose("z", "class", "y", "x").values,
                                   direct["probability"], atol=1e-5)
        # the entropies carry that rounding multiplied by |dH/dp| = |log2 p + 1/ln 2|, about
        # 11 bits at p = 1e-3: 1e-5 in a probability can move them by 1e-4 (seen: 1.6e-5 when
        # other tests had run first in the same process)
        for name in ("uncertainty", "aleatoric", "epistemic"):
            np.testing.assert_allclose(ds[name].values, direct[name], atol=1e-4)
        # reopened from disk, the same
        again = open_segmentation(out / "vol.zarr.seg.zarr")
        np.testing.assert_array_equal(again["label"].values, direct["label"])
    # in memory, no output written
    mem = segment(raw, model=tiny_model, workers=0, uncertainty="tta", progress=False)
    np.testing.assert_array_equal(mem["label"].values, direct["label"])
    assert list(mem["class"].values) == ["pore", "carbon-binder", "active material"]


def test_output_is_ome_zarr_05_read_by_an_independent_reader(tiny_model, volume, tmp_path):
    """ome-zarr-py (the OME-NGFF reference reader) finds the probability image, the label image
    with its class names and colours, and the uncertainty as an image of its own."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from tomoqc.segmentation import segment

    path, raw = volume
    segment(path, model=tiny_model, out=tmp_path, workers=0, progress=False)
    root = tmp_path / "vol.zarr.seg.zarr"
    loc = parse_url(str(root))
    assert loc.version == "0.5"
    nodes = {str(n.zarr): n for n in Reader(loc)()}
    image = nodes[str(loc)]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    assert image.data[0].shape == (3, *raw.shape)
    label = next(n for k, n in nodes.items() if "labels/phases" in k)
    assert label.data[0].shape == raw.shape and label.data[0].dtype == np.uint8
    assert {v["class"] for v in label.metadata["properties"].values()} == {"pore", "carbon-binder",
                                                                             "active material"}
    unc = list(Reader(parse_url(str(root / "uncertainty")))())[0]
    assert unc.data[0].shape == raw.shape
    # chunked like the input across the slices
    assert zarr.open_array(str(root / "labels" / "phases" / "0"), mode="r").chunks[1:] == (48, 90)
    # every array opens with xarray, with named dimensions
    import xarray as xr

    u = xr.open_zarr(str(root / "uncertainty"), consolidated=False)["0"]
    assert u.dims == ("z", "y", "x")
    # entropy of 3 classes lies in [0, log2 3] bits; probabilities sum to 1
    vals = np.asarray(u.values)
    assert np.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= np.log2(3) + 1e-5
    p = np.asarray(zarr.open_array(str(root / "0"), mode="r")[:])
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


def test_interrupted_output_resumes_only_missing_chunks(tiny_model, volume, tmp_path):
    from tomoqc.engine import DONE_DIR, partial_path
    from tomoqc.segmentation import segment

    path, _ = volume
    ds = segment(path, model=tiny_model, out=tmp_path, workers=0, chunk_slices=1, progress=False)
    final = tmp_path / "vol.zarr.seg.zarr"
    truth = ds["label"].values.copy()
    # make it an interrupted run: chunks 0 and 1 done, the rest never written
    part = partial_path(final)
    shutil.move(final, part)
    g = zarr.open_group(str(part), mode="r+")
    g.attrs["complete"] = False
    g["labels/phases/0"][2:] = 255
    (part / DONE_DIR).mkdir()
    for k in (0, 1):
        (part / DONE_DIR / f"chunk-{k:06d}").write_text("{}")
    ds = segment(path, model=tiny_model, out=tmp_path, workers=0, chunk_slices=1, progress=False)
    assert ds.attrs["chunks_resumed"] == 2 and not part.exists()
    np.testing.assert_array_equal(ds["label"].values, truth)


def test_local_cluster_gives_the_same_labels(tiny_model, volume, direct, tmp_path):
    from tomoqc.cluster import start_cluster
    from tomoqc.segmentation import segment

    path, _ = volume
    with start_cluster("local", workers=1) as client:
        ds = segment(path, model=tiny_model, out=tmp_path, client=client, chunk_slices=2, uncertainty="tta",
                     progress=False)
    np.testing.assert_array_equal(ds["label"].values, direct["label"])


def test_bad_inputs_and_options(tiny_model, volume, tmp_path, capsys):
    from tomoqc.cli import main
    from tomoqc.segmentation import segment

    path, _ = volume
    assert main(["segment", str(tmp_path / "missing.zarr"), "--model", str(tiny_model), "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.zarr" in err[0] and "no such file" in err[0]
    # weights without a card
    bare = tmp_path / "bare.keras"
    shutil.copy(tiny_model, bare)
    with pytest.raises(InputError, match="bare"):
        segment(path, model=bare, out=tmp_path, workers=0, progress=False)
    with pytest.raises(OptionError, match="--uncertainty"):
        segment(path, model=tiny_model, out=tmp_path, workers=0, uncertainty="bayes", progress=False)
    with pytest.raises(OptionError):
        segment(path, model=tiny_model, out=tmp_path, workers=0, tile=100, progress=False)
    # an existing output is not replaced without --overwrite, and nothing else is written
    segment(path, model=tiny_model, out=tmp_path, workers=0, progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["segment", str(path), "--model", str(tiny_model), "--out", str(tmp_path), "--workers", "0",
                 "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_summary_json(tiny_model, volume, tmp_path, capsys):
    from tomoqc.cli import main

    path, raw = volume
    assert main(["segment", str(path), "--model", str(tiny_model), "--out", str(tmp_path), "--workers", "0",
                 "--quiet", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["slices"] == raw.shape[0]
    assert abs(sum(row["fractions"].values()) - 1.0) < 1e-3
    assert 0 <= row["mean_uncertainty_bits"] <= np.log2(3)
