"""`tomoqc compare`: paired statistics, ties, sweep readers, geometry errors, the comparison page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import scipy.stats
import tifffile
from PIL import Image

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.paired import (
    choose_best,
    median_uncertainty,
    paired_difference,
    rank_variants,
    slice_wins,
)

# ----------------------------------------------------------------------------- paired statistics


def test_wilcoxon_p_value_and_median_match_scipy():
    rng = np.random.default_rng(17)
    a = rng.normal(3.0, 0.4, 24)
    b = a - rng.normal(0.08, 0.1, 24)
    r = paired_difference(a, b, n_boot=500, seed=0)
    d = a - b
    assert r["test"] == "wilcoxon" and r["n"] == 24
    assert r["p_value"] == pytest.approx(scipy.stats.wilcoxon(d).pvalue, rel=1e-12)
    assert r["median_difference"] == pytest.approx(float(np.median(d)), abs=1e-15)
    # the other way round: same p, opposite median
    r2 = paired_difference(b, a, n_boot=500, seed=0)
    assert r2["p_value"] == pytest.approx(r["p_value"], rel=1e-12)
    assert r2["median_difference"] == pytest.approx(-r["median_difference"], abs=1e-15)
    assert r["ci_low"] <= r["median_difference"] <= r["ci_high"]


def test_wilcoxon_exact_p_value_of_a_clean_sweep():
    # 10 pairs, all differences positive and distinct: the exact two-sided p is 2 / 2**10
    a = np.arange(10, dtype=float) + 1.0
    b = a - np.linspace(0.1, 1.0, 10)
    r = paired_difference(a, b, n_boot=200)
    assert r["test"] == "wilcoxon"
    assert r["p_value"] == pytest.approx(2 / 2**10, rel=1e-9)


def test_bootstrap_for_few_slices_analytic_cases():
    # three pairs with differences 1, 2, 3: every resampled median is 1, 2 or 3, and 1 has
    # probability 7/27, 3 too: the 95 % interval is [1, 3]; all positive: p = 1 / (B + 1)
    a = np.array([5.0, 6.0, 7.0])
    r = paired_difference(a, a - np.array([1.0, 2.0, 3.0]), n_boot=999, seed=3)
    assert r["test"] == "bootstrap"
    assert (r["ci_low"], r["ci_high"]) == (1.0, 3.0)
    assert r["median_difference"] == 2.0
    assert r["p_value"] == pytest.approx(1 / 1000)
    # a symmetric set of differences about 0: P(median <= 0) and P(median >= 0) are both
    # at least 1/2, so the two-sided p is 1
    d = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    r = paired_difference(d, np.zeros(5), n_boot=999, seed=4)
    assert r["p_value"] == 1.0 and r["median_difference"] == 0.0
    # one pair: no test, no interval
    r = paired_difference([3.0], [2.0])
    assert r["test"] == "none" and math.isnan(r["p_value"]) and math.isnan(r["ci_low"])
    with pytest.raises(OptionError):
        paired_difference([1.0, 2.0], [1.0])


def test_median_uncertainty_and_wins_analytic():
    assert median_uncertainty(np.full(16, 0.3)) == pytest.approx(math.sqrt(math.pi / 2) * 0.3 / 4)
    assert median_uncertainty([0.3, 0.4]) == pytest.approx(math.sqrt((0.09 + 0.16) / 2) / math.sqrt(2))
    assert median_uncertainty([0.5]) == pytest.approx(0.5)
    assert median_uncertainty([np.nan, np.nan, np.nan]) == 0.0
    s = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0], [0.0, 2.0, 1.0]])
    w = slice_wins(s)
    # slice 0: variants 0 and 1 share the top; slice 1: 0 and 2; slice 2: 1 alone
    np.testing.assert_allclose(w, [1 / 3, 1 / 2, 1 / 6])
    assert w.sum() == pytest.approx(1.0)


def test_identical_variants_are_tied_and_share_the_wins():
    rng = np.random.default_rng(2)
    a = rng.uniform(2, 4, 15)
    st = rank_variants(np.stack([a, a - 0.6, a.copy()]), np.full((3, 15), 0.05), n_boot=300)
    assert st["best"] in (0, 2)
    other = 2 if st["best"] == 0 else 0
    assert st["tied_with_best"][other] and st["p_value"][other] == 1.0
    assert st["median_difference"][other] == 0.0
    assert not st["tied_with_best"][1] and st["rank"][1] == 3
    np.testing.assert_allclose(st["wins"], [0.5, 0.0, 0.5])


def test_a_lead_inside_the_uncertainty_is_a_tie_not_a_win():
    rng = np.random.default_rng(5)
    a = rng.uniform(2, 4, 20)
    s = np.stack([a, a - 0.05])  # consistently lower, Wilcoxon p = 2 / 2**20
    big = rank_variants(s, np.full_like(s, 0.5), n_boot=300)
    assert big["p_value"][1] < 1e-5
    # u_d = sqrt(pi/2) * sqrt(0.5^2 + 0.5^2) / sqrt(20) = 0.198 > 0.05
    assert big["difference_uncertainty"][1] == pytest.approx(math.sqrt(math.pi / 2) * math.sqrt(0.5) / math.sqrt(20))
    assert big["tied_with_best"][1]
    small = rank_variants(s, np.full_like(s, 0.01), n_boot=300)
    assert not small["tied_with_best"][1]
    # large but inconsistent differences: not significant, so tied whatever the uncertainty
    d = np.where(np.arange(20) % 2 == 0, 0.5, -0.45)
    mixed = rank_variants(np.stack([a, a + d]), np.zeros((2, 20)), n_boot=300)
    loser = 1 - mixed["best"]
    assert mixed["p_value"][loser] > 0.05 and mixed["tied_with_best"][loser]


def test_best_leads_every_other_in_pairs_when_one_does():
    rng = np.random.default_rng(8)
    found = 0
    for _ in range(30):
        s = rng.normal(3, 0.5, (5, 9)) + rng.normal(0, 0.3, (5, 1))
        md = np.array([[np.median(s[v] - s[w]) for w in range(5)] for v in range(5)])
        leaders = [v for v in range(5) if np.all(md[v] >= 0)]
        b = choose_best(s)
        if leaders:
            found += 1
            assert b in leaders
        # nobody trails its strongest rival less than the best does
        worst = [min(md[v, w] for w in range(5) if w != v) for v in range(5)]
        assert worst[b] == max(worst)
    assert found > 10
    # a rock-paper-scissors cycle on three slices: every variant trails one rival by 1,
    # all medians are 2: the first is chosen
    assert choose_best(np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [3.0, 1.0, 2.0]])) == 0


def test_sweep_peak_is_the_vertex_of_the_parabola_through_the_best_and_its_neighbours():
    from tomoqc.compare import _peak

    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(1)
    content = rng.uniform(2, 4, 9)
    s = content[None, :] - (x[:, None] - 2.3) ** 2  # every slice peaks at 2.3
    st = rank_variants(s, n_boot=100)
    assert st["best"] == 2
    best, peak = _peak(x, st["order"], st["median_difference"])
    assert best == 2.0 and peak == pytest.approx(2.3, abs=1e-9)
    # at the end of the sweep there is no vertex to find: the end value
    s = content[None, :] - (x[:, None] - 5.0) ** 2
    st = rank_variants(s, n_boot=100)
    assert _peak(x, st["order"], st["median_difference"]) == (4.0, 4.0)


# ----------------------------------------------------------------------------- slice selection


def test_parse_slices():
    from tomoqc.compare import parse_slices

    np.testing.assert_array_equal(parse_slices("::4", 10), [0, 4, 8])
    np.testing.assert_array_equal(parse_slices("3,8,2-4", 10), [2, 3, 4, 8])
    np.testing.assert_array_equal(parse_slices(None, 3), [0, 1, 2])
    np.testing.assert_array_equal(parse_slices("-2:", 5), [3, 4])
    for bad in ("12", "5:2", "a,b", "4-2", "::0"):
        with pytest.raises(OptionError):
            parse_slices(bad, 10)


# ----------------------------------------------------------------------------- sweeps


def _stack(seed, shape=(2, 16, 16)):
    return np.random.default_rng(seed).integers(0, 60000, shape).astype(np.uint16)


def _tif(path, arr):
    """A stack of grey slices (never read as planar colour)."""
    tifffile.imwrite(path, arr, photometric="minisblack")


def test_sweep_folder_reads_parameter_values_from_names(tmp_path):
    from tomoqc.sweep import read_sweep, sweep_entry

    d = tmp_path / "cor"
    d.mkdir()
    data = {}
    for i, v in enumerate(("101", "99.5", "100.25")):
        data[float(v)] = _stack(i)
        _tif(d / f"center_{v}.tif", data[float(v)])
    (d / "README.txt").write_text("not an entry")
    (d / ".hidden.tif").write_bytes(b"")
    entries = read_sweep(d)
    assert [e.value for e in entries] == [99.5, 100.25, 101.0]
    assert {e.name for e in entries} == {"center"}
    assert [e.label for e in entries] == ["center=99.5", "center=100.25", "center=101"]
    for e in entries:
        np.testing.assert_array_equal(e.open().values, data[e.value])
    np.testing.assert_array_equal(sweep_entry(f"{d}::100.25").open().values, data[100.25])
    with pytest.raises(InputError, match="values: 99.5, 100.25, 101"):
        sweep_entry(f"{d}::100")

    # folders of PNG slices, one folder per value (strength=0, strength=2)
    p = tmp_path / "rings"
    pngs = {}
    for v in (2, 0):
        sub = p / f"strength={v}"
        sub.mkdir(parents=True)
        pngs[v] = np.random.default_rng(v).integers(0, 255, (3, 12, 10)).astype(np.uint8)
        for k in range(3):
            Image.fromarray(pngs[v][k]).save(sub / f"slice_{k}.png")
    entries = read_sweep(p)
    assert [(e.name, e.value, e.kind) for e in entries] == [("strength", 0.0, "image-stack"),
                                                            ("strength", 2.0, "image-stack")]
    for e in entries:
        np.testing.assert_array_equal(e.open().values, pngs[int(e.value)])


def test_hdf5_and_zarr_sweeps_read_with_their_parameter_values(tmp_path):
    import h5py
    import zarr

    from tomoqc.sweep import read_sweep

    vals = [0.5, 0.25, 1.0]
    arr = np.stack([_stack(10 + i) for i in range(3)]).astype(np.float32)  # (3, 2, 16, 16)
    h5 = tmp_path / "dose.h5"
    with h5py.File(h5, "w") as fh:
        ds = fh.create_dataset("recon/sweep", data=arr)
        ds.attrs["parameter_values"] = vals
        ds.attrs["parameter_name"] = "dose"
        fh.create_dataset("recon/other", data=np.zeros((4, 4)))
    entries = read_sweep(h5)
    assert [e.value for e in entries] == [0.25, 0.5, 1.0] and entries[0].name == "dose"
    for e in entries:
        np.testing.assert_array_equal(e.open().values, arr[vals.index(e.value)])
    # slicing along y works on an entry as on a volume
    e = entries[0]
    np.testing.assert_array_equal(e.open(axis="y").values, arr[1].transpose(1, 0, 2))

    # a group of one array per value: the value from an attribute, else from the name
    g5 = tmp_path / "cor.h5"
    with h5py.File(g5, "w") as fh:
        g = fh.create_group("sweep")
        g.attrs["parameter_name"] = "center"
        g.create_dataset("a", data=arr[0]).attrs["parameter_value"] = 80.5
        g.create_dataset("cor_79", data=arr[1])
    entries = read_sweep(g5, dataset="sweep")
    assert [(e.value, e.name) for e in entries] == [(79.0, "center"), (80.5, "center")]
    np.testing.assert_array_equal(entries[1].open().values, arr[0])

    # zarr, one slice per value, the values in a sibling array
    zp = tmp_path / "sweep.zarr"
    root = zarr.open_group(str(zp), mode="w")
    root.create_array("data", shape=(3, 16, 16), dtype="float32")[:] = arr[:, 0]
    root.create_array("parameter_values", shape=(3,), dtype="float64")[:] = vals
    entries = read_sweep(zp)
    assert [e.value for e in entries] == [0.25, 0.5, 1.0]
    np.testing.assert_array_equal(entries[0].open().values, arr[1, :1])


def test_bad_sweeps_give_one_clear_error(tmp_path):
    import h5py

    from tomoqc.sweep import read_sweep

    d = tmp_path / "s"
    d.mkdir()
    _tif(d / "a_1.tif", _stack(0))
    _tif(d / "recon.tif", _stack(1))
    with pytest.raises(InputError, match="recon.tif.*no parameter value"):
        read_sweep(d)
    (d / "recon.tif").unlink()
    _tif(d / "a_1.0.tif", _stack(1))
    with pytest.raises(InputError, match="same parameter value 1"):
        read_sweep(d)
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as fh:
        fh.create_dataset("s", data=np.zeros((3, 2, 8, 8))).attrs["parameter_values"] = [1, 2]
    with pytest.raises(InputError, match="3 entries along its first axis but 2 parameter values"):
        read_sweep(h5)


# ----------------------------------------------------------------------------- geometry


def test_variants_of_different_shapes_give_one_error_line(tmp_path, capsys):
    from tomoqc.cli import main

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    _tif(a, _stack(0, (3, 16, 16)))
    _tif(b, _stack(1, (3, 16, 20)))
    out = tmp_path / "cmp"
    rc = main(["compare", str(a), str(b), "--workers", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1
    assert err.startswith("tomoqc: error: ") and str(b) in err and "same slice geometry" in err
    assert not out.exists()
    c = tmp_path / "c.tif"
    _tif(c, _stack(2, (2, 16, 16)))
    rc = main(["compare", str(a), str(c), "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(c) in err and "same number of slices" in err


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def noise_sweep(tmp_path_factory):
    """Four 224 px phantom slices at three noise levels, as a sweep folder of TIFF stacks."""
    from tomoqc.phantom import electrode_volume

    vol, _ = electrode_volume((8, 224, 224), seed=21)
    vol = vol[:4].astype(np.float32)
    d = tmp_path_factory.mktemp("sweep") / "noise"
    d.mkdir()
    rng = np.random.default_rng(0)
    spread = float(np.percentile(vol, 99) - np.percentile(vol, 1))
    stacks = {}
    for level in (0.0, 0.1, 0.3):
        stacks[level] = (vol + rng.normal(0, level * spread, vol.shape)).astype(np.float32)
        _tif(d / f"noise_{level:g}.tif", stacks[level])
    return d, stacks


def test_compare_sweep_outputs_html_and_rerun(noise_sweep, tmp_path, capsys):
    from tomoqc.cli import main

    d, stacks = noise_sweep
    out = tmp_path / "cmp"
    rc = main(["compare", "--sweep", str(d), "--out", str(out), "--workers", "0", "--json", "--quiet"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    ranking = s["ranking"]
    assert [r["label"] for r in ranking] == ["noise=0", "noise=0.1", "noise=0.3"]  # less noise is better
    for r in ranking:
        assert {"label", "path", "median_score", "uncertainty", "wins", "p_value", "tied_with_best"} <= set(r)
    assert ranking[0]["p_value"] is None and ranking[0]["tied_with_best"]
    assert ranking[2]["tied_with_best"] is False and ranking[2]["median_difference"] < 0
    assert ranking[2]["test"] == "bootstrap" and ranking[2]["separating_impairment"] == "noise"
    assert sum(r["wins"] for r in ranking) == pytest.approx(1.0)
    assert s["parameter_name"] == "noise" and s["best_parameter"] == 0.0
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk["ranking"] == ranking
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[0].startswith("rank,label,path,parameter,median_score,uncertainty") and len(rows) == 4

    # the page and its images: every referenced image exists and shows something
    page = (out / "compare.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert set(srcs) == {"compare_ranking.png", "compare_sweep.png", "compare_slices.png"}
    for src in srcs:
        img = np.asarray(Image.open(out / src).convert("L"), np.float64)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert img.std() > 10  # not a blank canvas
        assert len(np.unique(img)) > 50
    # the side-by-side panel shows the slices themselves: its dark-to-light structure is
    # spread over the width of three panels
    sl = np.asarray(Image.open(out / "compare_slices.png").convert("L"), np.float64)
    cols = sl.std(axis=0)
    thirds = np.array_split(cols, 3)
    assert all(t.max() > 40 for t in thirds)
    for label in ("noise=0", "noise=0.1", "noise=0.3"):
        assert label in page

    # a rerun into the same folder reuses the variants' quality outputs
    stores = sorted((out / "quality").glob("*/*.quality.zarr"))
    assert len(stores) == 3
    before = {p: (p / "zarr.json").stat().st_mtime_ns for p in stores}
    rc = main(["compare", "--sweep", str(d), "--out", str(out), "--workers", "0", "--json", "--quiet"])
    assert rc == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["median_score"] for r in again["ranking"]] == [r["median_score"] for r in ranking]
    assert {p: (p / "zarr.json").stat().st_mtime_ns for p in stores} == before


def test_compare_api_ties_identical_copies(noise_sweep):
    import tomoqc

    _, stacks = noise_sweep
    clean = stacks[0.0]
    ds = tomoqc.compare([clean, stacks[0.3], clean.copy()], labels=["a", "noisy", "b"], workers=0,
                        progress=False, slices="1:4")
    assert ds.sizes == {"variant": 3, "z": 3, "distortion": 4, "preview_y": 224, "preview_x": 224}
    np.testing.assert_array_equal(ds["z"].values, [1, 2, 3])
    assert ds.attrs["winner"] == ""  # a and b are tied: no single winner
    assert set(json.loads(ds.attrs["tied"])) == {"a", "b"}
    np.testing.assert_array_equal(ds["score"].sel(variant="a").values, ds["score"].sel(variant="b").values)
    assert bool(ds["tied_with_best"].sel(variant="noisy")) is False
    assert int(ds["rank"].sel(variant="noisy")) == 3
    # the same numbers are what compare.json would say
    s = tomoqc.compare.summary(ds)
    assert s["ranking"][-1]["label"] == "noisy"
    assert s["ranking"][-1]["median_score"] == pytest.approx(float(np.median(ds["score"].sel(variant="noisy"))))


@pytest.mark.slow
def test_compare_on_a_local_dask_cluster_matches_in_process(noise_sweep):
    import tomoqc

    _, stacks = noise_sweep
    arrays = [stacks[0.0][:2], stacks[0.3][:2]]
    local = tomoqc.compare(arrays, workers=0, progress=False)
    dist = tomoqc.compare(arrays, cluster="local", workers=1, progress=False)
    np.testing.assert_allclose(dist["score"].values, local["score"].values, rtol=1e-5)
    assert list(dist["rank"].values) == list(local["rank"].values)


def test_a_changed_model_card_is_not_reused(noise_sweep, model_path, tmp_path, capsys):
    """The card (calibration, measured terms) is part of the model: a rerun after the card
    changed scores the variants again instead of reusing their quality outputs."""
    import shutil

    from tomoqc.cli import main

    d = tmp_path / "sweep"
    d.mkdir()
    for level, stack in list(noise_sweep[1].items())[:2]:  # two variants of two 224-px slices: enough here
        _tif(d / f"noise_{level:g}.tif", stack[:2])
    model = tmp_path / "m.keras"
    shutil.copy(model_path, model)
    card = model.with_suffix(".json")
    card.write_text(json.dumps({"model_id": "card-test", "note": "first"}))
    out = tmp_path / "cmp"
    args = ["compare", "--sweep", str(d), "--out", str(out), "--model", str(model), "--workers", "0", "--json",
            "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    stores = sorted((out / "quality").glob("*/*.quality.zarr"))
    assert len(stores) == 2
    before = {p: (p / "zarr.json").stat().st_mtime_ns for p in stores}
    card.write_text(json.dumps({"model_id": "card-test", "note": "second"}))
    assert main(args) == 0
    capsys.readouterr()
    after = {p: (p / "zarr.json").stat().st_mtime_ns for p in stores}
    assert all(after[p] != before[p] for p in stores)
