"""Dataset builder, manifest, preview, example volume and their CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tomoqc.cli import main
from tomoqc.dataset import COLUMNS, build_dataset, preview, read_manifest, write_manifest
from tomoqc.errors import InputError, OptionError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "set"
    build_dataset(out, references=3, domain="both", size=64, seed=5, workers=1, progress=False)
    return out


def _files(d):
    return sorted(
        os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs
    )


def test_layout_and_manifest(small):
    rows = read_manifest(small)
    # per reference and domain: 1 reference + 3 x 5 single impairments + 3 mixtures, and in the
    # physics domain 5 streak levels (too few projections) besides
    assert len(rows) == 3 * 2 * 19 + 3 * 5
    streak = [r for r in rows if r["distortion"] == "streak"]
    assert {r["domain"] for r in streak} == {"physics"} and sorted({r["level"] for r in streak}) == [1, 2, 3, 4, 5]
    assert list(rows[0])[: len(COLUMNS)] == list(COLUMNS)
    refs = {r["reference"] for r in rows}
    assert len(refs) == 3
    for r in rows:
        arr = np.load(small / r["file"])
        assert arr.dtype == np.float32 and arr.shape == (64, 64) and np.isfinite(arr).all()
        assert r["domain"] in ("image", "physics")
        assert isinstance(r["level"], int) and isinstance(r["seed"], int)
        json.loads(r["params"])
        if r["distortion"] == "none":
            assert r["level"] == 0 and r["file"].startswith("references/")
        elif r["distortion"] == "mixed":
            comps = json.loads(r["params"])["components"]
            assert len(comps) >= 2 and r["level"] == max(comps.values())
        else:
            assert 1 <= r["level"] <= 5
    singles = [(r["reference"], r["domain"], r["distortion"], r["level"]) for r in rows
               if r["distortion"] in ("noise", "blur", "ring")]
    assert len(set(singles)) == 3 * 2 * 15
    # the image-domain parameters are Table S1's
    noise5 = [r for r in rows if r["domain"] == "image" and r["distortion"] == "noise" and r["level"] == 5]
    assert all(json.loads(r["params"])["variance"] == 1.0 for r in noise5)


def test_labels_are_the_phantom_phases(small):
    rows = read_manifest(small)
    for r in rows:
        if r["distortion"] == "none" and r["domain"] == "image":
            lab = np.load(small / r["label_file"])
            img = np.load(small / r["file"])
            assert lab.dtype == np.uint8 and lab.shape == img.shape
            assert set(np.unique(lab)) <= {0, 1, 2}
            med = [np.median(img[lab == k]) for k in (0, 1, 2) if np.any(lab == k)]
            assert med == sorted(med)  # pore < CBD < active material


def test_image_domain_distortions_match_their_reference(small):
    rows = read_manifest(small)
    ref = {r["reference"]: np.load(small / r["file"]) for r in rows
           if r["distortion"] == "none" and r["domain"] == "image"}
    for r in rows:
        if r["domain"] == "image" and r["distortion"] == "blur" and r["level"] == 1:
            out = np.load(small / r["file"])
            from scipy import ndimage as ndi

            assert np.allclose(out, ndi.gaussian_filter(ref[r["reference"]], 1.2, mode="nearest"), atol=1e-5)


def test_parallel_equals_serial_and_seed_determinism(small, tmp_path):
    par = build_dataset(tmp_path / "par", references=3, domain="both", size=64, seed=5,
                        workers=2, progress=False)
    assert _files(par) == _files(small)
    for f in _files(small):
        if f.endswith(".npy"):
            assert np.array_equal(np.load(small / f), np.load(par / f)), f
    assert read_manifest(par) == read_manifest(small)
    other = build_dataset(tmp_path / "other", references=1, domain="image", size=64, seed=6,
                          progress=False)
    a = np.load(small / "references" / "r00000_image.npy")
    b = np.load(other / "references" / "r00000_image.npy")
    assert not np.array_equal(a, b)


def test_manifest_round_trip_keeps_extra_columns(small, tmp_path):
    rows = read_manifest(small)
    for i, r in enumerate(rows):
        r["label"] = 1.0 + (i % 5) / 3.0
        r["obs_ssim"] = 0.1 * i
    d = tmp_path / "copy"
    d.mkdir()
    write_manifest(d, rows)
    back = read_manifest(d)
    assert back == rows  # floats written with repr read back exactly
    assert not [p for p in os.listdir(d) if p.startswith(".")]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(InputError):
        read_manifest(tmp_path / "missing")
    with pytest.raises(InputError):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("reference,file\nr0,a.npy\n")
    with pytest.raises(InputError, match="lacks"):
        read_manifest(tmp_path)


def test_volume_source_report_crop_and_full(tmp_path):
    rng = np.random.default_rng(0)
    vol = (rng.random((6, 300, 400)) * 1000 + 200).astype(np.float32)
    np.save(tmp_path / "vol.npy", vol)
    # no size given: the report's 224 x 224 crop
    out = build_dataset(tmp_path / "crop", source=tmp_path / "vol.npy", references=4, domain="image",
                        seed=1, mixtures=False, progress=False)
    rows = read_manifest(out)
    assert len(rows) == 4 * 16
    zs = set()
    for r in rows:
        assert r["label_file"] == ""
        a = np.load(out / r["file"])
        assert a.shape == (224, 224)
        if r["distortion"] == "none":
            p = json.loads(r["params"])
            zs.add(p["z"])
            # short side 300 -> 255: scale 0.85
            assert p["scale"] == pytest.approx(255 / 300)
            assert -0.01 <= a.min() and a.max() <= 1.01
    assert len(zs) == 4  # distinct slices while the volume has enough
    full = build_dataset(tmp_path / "full", source=tmp_path / "vol.npy", references=2, domain="image",
                         fit="full", seed=1, mixtures=False, progress=False)
    assert np.load(full / "references" / "r00000_image.npy").shape == (300, 400)
    with pytest.raises(OptionError):
        build_dataset(tmp_path / "big", source=tmp_path / "vol.npy", references=1, size=256, progress=False)


def test_failure_leaves_nothing_behind(tmp_path):
    vol = np.full((3, 32, 32), np.nan, np.float32)
    np.save(tmp_path / "nan.npy", vol)
    with pytest.raises(InputError):
        build_dataset(tmp_path / "bad", source=tmp_path / "nan.npy", references=2, domain="image",
                      size=16, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["nan.npy"]


@pytest.mark.parametrize(
    "kw",
    [{"domain": "fourier"}, {"references": 0}, {"size": 8}, {"workers": 0}, {"fit": "stretch"}],
)
def test_bad_options(tmp_path, kw):
    with pytest.raises(OptionError):
        build_dataset(tmp_path / "x", progress=False, **kw)
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(small):
    with pytest.raises(InputError, match="exists"):
        build_dataset(small, references=1, progress=False)


def test_preview_png(small, tmp_path):
    import matplotlib.image as mpimg

    png = preview(small, tmp_path / "p.png", rows=2)
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not blank


def test_cli_build_preview_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["dataset", "build", "--references", "1", "--domain", "image", "--out", str(out),
               "--size", "48", "--seed", "2", "--no-progress"])
    assert rc == 0
    assert len(read_manifest(out)) == 19
    assert main(["dataset", "preview", str(out), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["dataset", "build", "--out", str(out), "--references", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tomoqc: error: ") and "exists" in err[0]
    assert main(["dataset", "build", "--out", str(tmp_path / "y"), "--domain", "xray"]) == 1
    assert main(["dataset", "preview", str(tmp_path / "nothing")]) == 1


def test_example_volume_truth_and_cli(tmp_path):
    from tomoqc.example import example_plan, make_example_volume
    from tomoqc.io import open_volume

    dist, lev, segs = example_plan(22)
    assert [s["distortion"] for s in segs] == ["none", "noise", "blur", "ring"]
    assert segs[0]["z_stop"] - segs[0]["z_start"] == 22 - 3 * 5
    assert lev[segs[1]["z_start"]:segs[1]["z_stop"]] == [1, 2, 3, 4, 5]
    vol, truth = make_example_volume((22, 64, 64), seed=1)
    vol2, _ = make_example_volume((22, 64, 64), seed=1)
    assert np.array_equal(vol, vol2) and vol.dtype == np.float32
    clean = truth["clean"]
    # clean part untouched; noise part's deviation grows with level; blur lowers variance
    assert np.array_equal(vol[:7], clean[:7])
    dev = [np.std(vol[z] - clean[z]) for z in range(7, 12)]
    assert np.all(np.diff(dev) > 0)
    assert np.std(vol[16]) < np.std(clean[16])
    # rings: same ring radii on every ring slice -> the relative change pattern repeats
    g1 = np.isclose(vol[17], clean[17])
    g2 = np.isclose(vol[18], clean[18])
    assert not g1.all() and np.mean(g1 == g2) > 0.9
    out = tmp_path / "ex.zarr"
    assert main(["example", str(out), "--slices", "12", "--size", "48", "--no-progress"]) == 0
    v = open_volume(out)
    assert v.shape == (12, 48, 48)
    attrs = dict(v.attrs)
    import zarr

    meta = zarr.open_array(str(out), mode="r").attrs.asdict()
    assert meta["example"]["level"] == example_plan(12)[1]
    assert attrs["format"].startswith("zarr")
    assert main(["example", str(out), "--slices", "12", "--size", "48", "--no-progress"]) == 1
    assert main(["example", str(tmp_path / "e2.zarr"), "--slices", "3"]) == 1
