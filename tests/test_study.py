"""`tomoqc study`: a tiny run end to end through the CLI, resuming, and refusing bad input.

The run uses the quick settings (4 phantom references of 64 px, a tiny RankIQA, the tiny
TIQA network of conftest) and, where the shared real data is there, one real series per
kind and one HTC2022 disc at 64 px.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tomoqc.cli import main
from tomoqc.errors import OptionError
from tomoqc.study import pair_accuracy, training_disjointness

_REPO = Path(__file__).resolve().parents[1]
REAL = next((p for p in (Path("/work/shared/realdata"), _REPO.parent / "shared" / "realdata")
             if (p / "htc2022").is_dir() and (p / "savu_24737").is_dir()), None)

TABLES = ("table1_label_projection", "table2_methods", "table3_quality_vs_segmentation")
FIGURES = ("fig4_pred_vs_label.png", "fig7_two_point_correlation.png")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def study(tmp_path_factory, model_path):
    out = tmp_path_factory.mktemp("study") / "run"
    argv = ["study", "--out", str(out), "--quick", "--model", str(model_path), "--quiet"]
    if REAL is not None:
        argv += ["--real", str(REAL), "--real-limit", "1"]
    assert main(argv) == 0
    return out, argv


def test_writes_every_table_and_figure(study):
    out, _ = study
    for t in TABLES:
        assert (out / f"{t}.csv").is_file()
        md = (out / f"{t}.md").read_text()
        assert md.startswith("## Table") and "|---|" in md
    for f in FIGURES:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fig7_two_point_correlation.csv").is_file()
    summary = (out / "summary.md").read_text()
    assert all(f"Table {i} analog" in summary for i in (1, 2, 3))
    s = json.loads((out / "study.json").read_text())
    assert s["parameters"]["references"] == 4 and s["parameters"]["size"] == 64
    assert s["never_used_in_training"]["shared_reference_seeds"] == 0
    assert s["versions"]["tomoqc"]
    # no temporary file is left behind
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def test_protocol_counts_and_splits(study):
    out, _ = study
    s = json.loads((out / "study.json").read_text())
    train, test = set(s["split"]["train"]), set(s["split"]["test"])
    assert train and test and not train & test
    manifest = _rows(out / "data" / "manifest.csv")
    assert train | test == {r["reference"] for r in manifest}
    # per reference: the image domain has the reference and 3 impairments x 5 levels, the
    # physics domain also streaks: 16 + 21 images
    assert len(manifest) == 4 * (16 + 21)
    t1 = _rows(out / "table1_label_projection.csv")
    level_all = next(r for r in t1 if r["distortion"] == "ALL" and r["truth"] == "distortion level")
    assert int(level_all["n"]) == len(manifest)
    # more noise, lower label: the projection follows the level it was made from
    noise = next(r for r in t1 if r["distortion"] == "noise" and r["truth"] == "distortion level")
    assert int(noise["n"]) == 4 * 2 * 6 and float(noise["srocc"]) > 0.7
    # every method is judged on the same test images
    test_files = {r["file"] for r in manifest if r["reference"] in test}
    for m in ("tiqa", "brisque", "rankiqa", "noise"):
        got = {r["file"] for r in _rows(out / "predictions" / f"{m}.csv") if r["set"] == "phantom"}
        assert test_files <= got
        if m in ("brisque", "rankiqa"):
            assert got == test_files
    t2 = [r for r in _rows(out / "table2_methods.csv") if r["set"] == "phantom" and r["group"] == "ALL"]
    assert sorted(r["method"] for r in t2) == ["brisque", "noise", "rankiqa", "tiqa"]
    assert {int(r["n"]) for r in t2} == {len(test_files)}
    for r in t2:
        lo, v, hi = float(r["srocc_ci_low"]), float(r["srocc"]), float(r["srocc_ci_high"])
        assert -1 <= lo <= hi <= 1 and np.isfinite(v)


def test_paired_differences_are_the_differences_of_table_2(study):
    # the paired table's estimates are Table 2's own figures subtracted, its intervals come
    # from resampling whole test references / series
    out, _ = study
    s = json.loads((out / "study.json").read_text())
    t2 = {(r["set"], r["method"]): r for r in _rows(out / "table2_methods.csv") if r["group"] == "ALL"}
    diffs = _rows(out / "table2_differences.csv")
    assert {d["method"] for d in diffs} == {"tiqa"}  # the tiny model has no terms to refit
    got = {(d["set"], d["baseline"], d["statistic"]): d for d in diffs if d["method"] == "tiqa"}
    for b in ("brisque", "rankiqa", "noise"):
        for stat in ("srocc", "plcc"):
            d = got[("phantom", b, stat)]
            want = float(t2[("phantom", "tiqa")][stat]) - float(t2[("phantom", b)][stat])
            assert float(d["difference"]) == pytest.approx(want, abs=1e-9)
            assert int(d["clusters"]) == len(s["split"]["test"])
            assert 0.0 <= float(d["share_better"]) <= 1.0
            assert float(d["ci_low"]) <= float(d["ci_high"])
        if REAL is not None:
            d = got[("real", b, "pair_accuracy")]
            want = float(t2[("real", "tiqa")]["pair_accuracy"]) - float(t2[("real", b)]["pair_accuracy"])
            assert float(d["difference"]) == pytest.approx(want, abs=1e-12)
    assert "Each TIQA row minus each baseline" in (out / "table2_methods.md").read_text()


def test_paired_differences_without_resamples_are_the_plain_differences():
    """With --bootstrap 0 the table still gives each difference: Spearman +1 against -1 on the
    phantoms, and every real pair right against every pair wrong (each series counted as one)."""
    from tomoqc.study import _table2_differences

    rows = [{"reference": ref, "file": f"{ref}{k}.npy", "label": str(5 - k)} for ref in "ab" for k in range(5)]
    real_rows = [{"group": g, "rank": str(k), "file": f"{g}{k}.npy"} for g in ("s1", "s2") for k in range(3)]
    preds = {"tiqa": {**{("phantom", r["file"]): float(r["label"]) for r in rows},
                      **{("ordering", r["file"]): -float(r["rank"]) for r in real_rows}},
             "noise": {**{("phantom", r["file"]): -float(r["label"]) for r in rows},
                       **{("ordering", r["file"]): float(r["rank"]) for r in real_rows}}}
    out, md = _table2_differences(rows, {"a", "b"}, preds, ["tiqa", "noise"], 0, 0, real_rows)
    got = {(d["set"], d["statistic"]): d for d in out}
    assert got[("phantom", "srocc")]["difference"] == pytest.approx(2.0)
    assert got[("real", "pair_accuracy")]["difference"] == pytest.approx(1.0)
    assert all(d["resamples"] == 0 and np.isnan(d["ci_low"]) for d in out)
    assert "Each TIQA row minus each baseline" in md


def test_tiqa_predictions_keep_the_network_score_beside_the_final_one(study):
    # the test model has no measured terms: its final score is the network's own
    out, _ = study
    rows = _rows(out / "predictions" / "tiqa.csv")
    assert rows and "network" in rows[0]
    net = np.array([float(r["network"]) for r in rows])
    score = np.array([float(r["score"]) for r in rows])
    assert np.isfinite(net).all()
    np.testing.assert_allclose(net, score, rtol=1e-6)


def test_two_point_correlation_of_the_truth_starts_at_the_phase_fraction(study):
    out, _ = study
    s2 = _rows(out / "fig7_two_point_correlation.csv")
    from tomoqc.study import _fov
    from tomoqc.train.segdata import fov_mask

    # the phase's share of each reference's field of view (S2 counts only pairs inside it)
    fractions = []
    for r in _rows(out / "data" / "manifest.csv"):
        if r["distortion"] == "none" and r["domain"] == "image":
            t = np.load(out / "data" / r["label_file"])
            fov = fov_mask(t.shape, _fov(r["params"]))
            fractions.append(np.mean(t[fov] == 2) if fov is not None else np.mean(t == 2))
    for axis in ("x", "y"):
        r0 = [float(r["s2"]) for r in s2 if r["source"] == "true" and r["axis"] == axis and r["r"] == "0"]
        assert r0 and all(v == pytest.approx(np.mean(fractions), abs=1e-9) for v in r0)
    levels = {r["level"] for r in s2 if r["source"] == "predicted" and r["distortion"] == "noise"}
    assert levels == {str(i) for i in range(6)}


@pytest.mark.skipif(REAL is None, reason="no shared real data")
def test_real_parts(study):
    out, _ = study
    htc = _rows(out / "real" / "htc.csv")
    assert len(htc) == 1 + 4 * 2  # one disc: full data, then 2 levels of 4 impairments
    assert {r["impairment"] for r in htc} == {"none", "angles", "limited angle", "dose", "blur"}
    for r in htc:
        assert np.load(out / r["file"]).shape == np.load(out / r["truth_file"]).shape == (64, 64)
    orderings = _rows(out / "real" / "orderings.csv")
    assert sorted({r["kind"] for r in orderings}) == ["angles", "blur", "dose", "gain", "stripes"]
    t2 = [r for r in _rows(out / "table2_methods.csv") if r["set"] == "real" and r["group"] == "ALL"]
    assert len(t2) == 4 and all(0.0 <= float(r["pair_accuracy"]) <= 1.0 for r in t2)
    t3 = {r["impairment"] for r in _rows(out / "table3_quality_vs_segmentation.csv") if r["set"] == "real"}
    assert t3 == {"angles", "limited angle", "dose", "blur", "ALL"}


def _mtimes(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in [*out.glob("stages/*.json"), *out.glob("predictions/*.csv"), *out.glob("segmentation/*.csv"),
                      out / "data" / "manifest.csv", out / "study.json"]}


def test_rerun_resumes(study, tmp_path):
    out, argv = study
    before = _mtimes(out)
    assert main(argv) == 0
    assert _mtimes(out) == before  # nothing redone

    # a stage whose marker is missing (interrupted) runs again, and so does the report
    (out / "stages" / "segment_phantom.json").unlink()
    assert main(argv) == 0
    after = _mtimes(out)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {"stages/segment_phantom.json", "segmentation/phantom.csv", "segmentation/s2_phantom.csv",
                       "stages/report.json", "study.json"}

    # annotations only redo the report, which gains the human MOS as a truth
    manifest = _rows(out / "data" / "manifest.csv")
    ann = tmp_path / "ratings.csv"
    picked = [r for r in manifest if r["distortion"] in ("noise", "none")]
    with open(ann, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "mos", "std", "n"])
        for r in picked:
            w.writerow([r["file"], 5.0 - 0.7 * int(r["level"]), 0.5, 10])
    before = _mtimes(out)
    assert main(argv + ["--annotations", str(ann)]) == 0
    after = _mtimes(out)
    assert {k for k in before if after.get(k) != before[k]} == {"stages/report.json", "study.json"}
    human = [r for r in _rows(out / "table1_label_projection.csv") if r["truth"] == "human MOS"]
    assert int(next(r for r in human if r["distortion"] == "ALL")["n"]) == len(picked)
    s = json.loads((out / "study.json").read_text())
    assert s["annotations"]["matched"] == len(picked)


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("tomoqc: error: ")
    return err[0]


@pytest.mark.parametrize("option, name", [("--real", "no-such-realdata"), ("--source", "no-scan.tif")])
def test_a_missing_input_is_refused(tmp_path, model_path, capsys, option, name):
    """A real-data folder or a source volume that is not there: one error line naming it, nothing written."""
    out = tmp_path / "run"
    missing = tmp_path / name
    rc = main(["study", "--out", str(out), "--quick", "--model", str(model_path), "--quiet", option, str(missing)])
    assert rc == 1
    assert str(missing) in _one_error_line(capsys)
    assert not out.exists()


def test_annotations_without_the_needed_columns(tmp_path, model_path, capsys):
    ann = tmp_path / "ratings.csv"
    ann.write_text("image,quality\na.npy,3\n")
    out = tmp_path / "run"
    rc = main(["study", "--out", str(out), "--quick", "--model", str(model_path), "--quiet", "--annotations", str(ann)])
    assert rc == 1
    line = _one_error_line(capsys)
    assert str(ann) in line and "missing columns" in line
    assert not out.exists()


def test_other_parameters_refused(study, capsys):
    out, argv = study
    before = _mtimes(out)
    assert main(argv + ["--seed", "1819"]) == 1
    assert "other parameters" in _one_error_line(capsys)
    assert _mtimes(out) == before


def test_a_changed_model_card_is_refused(study, tmp_path, capsys):
    """The card's measured terms and calibration are part of every score: a folder begun with
    another card (here: its recorded card digest differs) is not resumed with this one."""
    import shutil

    out, argv = study
    from tomoqc.models.tiqa import card_sha256

    params = json.loads((out / "study_params.json").read_text())
    assert params["model_card_sha256"] == card_sha256(argv[argv.index("--model") + 1])  # "" without a card
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    params["model_card_sha256"] = "0" * 64
    (copy / "study_params.json").write_text(json.dumps(params))
    before = _mtimes(copy)
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(copy)
    assert main(argv) == 1
    assert "other parameters" in _one_error_line(capsys)
    assert _mtimes(copy) == before


def test_training_seeds_refused():
    from tomoqc.models.tiqa import default_weights_path

    card = json.loads(default_weights_path().with_suffix(".json").read_text())
    # the bundled model's training set was built with seed 2026 (its card says so)
    assert card["data"]["train"]["seed"] == 2026
    with pytest.raises(OptionError, match="2026"):
        training_disjointness(2026, 4, {"tiqa": card})
    with pytest.raises(OptionError, match="7"):
        training_disjointness(7, 4, {"x": {"a": {"val_seed": 7}}})
    ok = training_disjointness(1818, 24, {"tiqa": card})
    assert ok["shared_reference_seeds"] == 0
    assert {(d["seed"], d["references"]) for d in ok["datasets"]} >= {(2026, 160), (9001, 24)}


def test_f1_loss_is_against_the_samples_own_clean_image(study):
    from tomoqc.study import _f1_loss

    sub = [{"s": "a", "lv": 0}, {"s": "a", "lv": 1}, {"s": "b", "lv": 1}, {"s": "b", "lv": 0}, {"s": "c", "lv": 2}]
    loss = _f1_loss(sub, [0.9, 0.8, 0.5, 0.6, 0.7], lambda r: r["s"], lambda r: r["lv"] == 0)
    assert loss[:4] == pytest.approx([0.0, -0.1, -0.1, 0.0]) and np.isnan(loss[4])
    # the study's table carries the pooled SROCC against it, a correlation in [-1, 1]
    out, _ = study
    rows = _rows(out / "table3_quality_vs_segmentation.csv")
    vals = [float(r["srocc_loss"]) for r in rows if r["srocc_loss"] not in ("", "nan")]
    assert vals and all(-1.0 <= v <= 1.0 for v in vals)


def test_level_ceiling_of_table3(study):
    from tomoqc.study import _level_srocc

    # F1 set by the level alone: the level orders it exactly; F1 that falls with the level
    # in every sample by far less than the samples differ: the level hardly orders it
    sub = [{"level": lv} for _ in range(3) for lv in range(4)]
    steep = [0.99 - 0.1 * lv for _ in range(3) for lv in range(4)]
    assert _level_srocc(sub, steep, "dose") == pytest.approx(1.0)
    flat = [0.99 - 0.001 * lv + 0.05 * k for k in range(3) for lv in range(4)]
    assert abs(_level_srocc(sub, flat, "dose")) < 0.4
    assert np.isnan(_level_srocc(sub, steep, "ALL"))
    out, _ = study
    rows = _rows(out / "table3_quality_vs_segmentation.csv")
    vals = [float(r["srocc_level"]) for r in rows if r["impairment"] != "ALL" and r["srocc_level"] not in ("", "nan")]
    assert vals and all(-1.0 <= v <= 1.0 for v in vals)
    assert all(r["srocc_level"] in ("", "nan") for r in rows if r["impairment"] == "ALL")
    assert "level SROCC" in (out / "table3_quality_vs_segmentation.md").read_text()


def test_pair_accuracy():
    # two series: one ordered right, one reversed; pairs across series never count
    scores = [3.0, 2.0, 1.0, 1.0, 2.0]
    ranks = [0, 1, 2, 0, 1]
    series = ["a", "a", "a", "b", "b"]
    acc, n = pair_accuracy(scores, ranks, series)
    assert n == 3 + 1 and acc == pytest.approx(3 / 4)
    acc, n = pair_accuracy([1.0, 1.0, float("nan")], [0, 1, 2], ["s"] * 3)
    assert n == 3 and acc == pytest.approx(0.5)
    assert np.isnan(pair_accuracy([1.0], [0], ["s"])[0])


def test_noise_estimator_score_reads_the_noise_of_a_plane():
    from tomoqc.metrics.nr import noise_estimator_score

    # the finest diagonal Haar band of a plane is exactly 0, so it holds the noise alone
    yy, xx = np.mgrid[:512, :512] / 511.0
    plane = 0.5 * yy + 0.5 * xx
    rng = np.random.default_rng(3)
    sigma = 0.01
    img = plane + rng.normal(0, sigma, plane.shape)
    lo, hi = np.percentile(img, [0.5, 99.5])
    assert noise_estimator_score(img) == pytest.approx(-sigma / (hi - lo), rel=0.03)
    assert noise_estimator_score(7.0 * img - 3.0) == pytest.approx(noise_estimator_score(img), rel=1e-9)
    assert noise_estimator_score(plane) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.skipif(REAL is None, reason="no shared real data")
def test_htc2022_limited_angle():
    from tomoqc.train.segdata import htc2022_files, htc2022_recon

    sino = htc2022_files(REAL)["td"][0]
    full = htc2022_recon(sino, bin=8)
    # the rebinned projections cover [0, 180) degrees: an arc of 180 keeps them all
    np.testing.assert_array_equal(htc2022_recon(sino, bin=8, arc=180), full)
    half = htc2022_recon(sino, bin=8, arc=90)
    assert half.shape == full.shape and np.isfinite(half).all()
    assert np.abs(half - full).mean() > 0.05 * np.abs(full).mean()


def test_tiqa_terms_refitted_on_the_train_split_fit_its_labels_better(study, model_path, tmp_path):
    """With a card that has measured terms, the study refits them to the train references'
    labels (`tiqa_fitted`): every scored image gets a score, and on the train labels the
    refit is at least as close as the card's own combination it starts from."""
    import shutil

    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import default_weights_path
    from tomoqc.study import _phantom_rows, _tiqa_fitted

    out, _ = study
    m = tmp_path / "m.keras"
    shutil.copy(model_path, m)
    card_file = model_path.with_suffix(".json")
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    card["measured_terms"] = json.loads(default_weights_path().with_suffix(".json").read_text())["measured_terms"]
    m.with_suffix(".json").write_text(json.dumps(card))
    s = json.loads((out / "study.json").read_text())
    rows = _phantom_rows(out)
    assert _tiqa_fitted(out, rows, s["split"]["train"], model_path) is None  # no terms, no row
    fit = _tiqa_fitted(out, rows, s["split"]["train"], m)
    pred = _rows(out / "predictions" / "tiqa.csv")
    assert set(fit["scores"]) == {(r["set"], r["file"]) for r in pred}
    assert fit["fit"]["images"] == sum(r["reference"] in s["split"]["train"] for r in rows)
    terms = MeasuredTerms.from_card(card)
    label = {r["file"]: float(r["label"]) for r in rows if r["reference"] in s["split"]["train"]}
    tr = [r for r in pred if r["set"] == "phantom" and r["file"] in label]
    y = np.array([label[r["file"]] for r in tr])
    net = np.array([float(r["network"]) for r in tr])
    card_scores = terms.combine(net, {})  # the tiny run measured no indicators: the card's terms read typical
    refit = np.array([fit["scores"][("phantom", r["file"])] for r in tr])
    assert np.sqrt(np.mean((refit - y) ** 2)) <= np.sqrt(np.mean((card_scores - y) ** 2)) + 1e-9
    assert fit["fit"]["label_rmse"] == pytest.approx(np.sqrt(np.mean((refit - y) ** 2)), rel=1e-6)
    # another reading of the same images (benchmarks/network_variants.py): the stored one
    # refits identically, a network that reads every train label exactly is refitted onto
    # them (offset 0 and slope 1 of its logit, the constant penalty into the offset), and a
    # reading of the wrong length is refused
    stored = np.array([float(r["network"]) for r in pred])
    same = _tiqa_fitted(out, rows, s["split"]["train"], m, network=stored)
    assert same["scores"] == fit["scores"]
    by_file = {r["file"]: float(r["label"]) for r in rows}
    exact = np.array([by_file.get(r["file"], 3.0) if r["set"] == "phantom" else 3.0 for r in pred])
    perfect = _tiqa_fitted(out, rows, s["split"]["train"], m, network=exact)
    assert perfect["fit"]["label_rmse"] < 1e-3
    with pytest.raises(OptionError, match="network scores"):
        _tiqa_fitted(out, rows, s["split"]["train"], m, network=stored[:-1])


# --- a study on a volume of the user's ------------------------------------------------------

REAL_SLICES = _REPO / "tests" / "data" / "real"


@pytest.fixture(scope="module")
def volume_study(tmp_path_factory, model_path):
    """`tomoqc study --source` on a 3-slice TIFF of the project's real test slices (the HTC2022
    disc, the Savu row, the battery crop; see tests/data/real/README.md)."""
    import tifffile
    from skimage.transform import resize

    d = tmp_path_factory.mktemp("volume_study")
    slices = [np.load(REAL_SLICES / f).astype(np.float32) for f in
              ("htc2022_ta_fbp256.npy", "savu24737_row104_fbp160.npy", "battery_xct_im1_crop128.npy")]
    vol = np.stack([resize(s, (128, 128), preserve_range=True).astype(np.float32) for s in slices])
    src = d / "scan.tif"
    tifffile.imwrite(src, vol)
    out = d / "run"
    argv = ["study", "--out", str(out), "--quick", "--source", str(src), "--references", "3",
            "--methods", "tiqa,noise", "--model", str(model_path), "--quiet"]
    assert main(argv) == 0
    return out, src, vol


def test_volume_study_builds_its_references_from_the_volume(volume_study):
    out, src, vol = volume_study
    s = json.loads((out / "study.json").read_text())
    assert s["parameters"]["source"] == str(src.resolve()) and s["parameters"]["size"] == 64
    manifest = _rows(out / "data" / "manifest.csv")
    refs = [r for r in manifest if r["distortion"] == "none" and r["domain"] == "image"]
    assert len(refs) == 3 and all(r["label_file"] == "" for r in manifest)
    # three references drawn without replacement from three slices: every slice once
    assert sorted(json.loads(r["params"])["z"] for r in refs) == [0, 1, 2]
    for t in TABLES:
        assert (out / f"{t}.csv").is_file()
    assert "Test references (scan.tif slices" in (out / "table2_methods.md").read_text()


def test_volume_study_segments_against_the_undistorted_slice(volume_study):
    # with no exact phase map, the truth is the segmenter's own reading of the clean slice:
    # that slice then agrees with it (up to the batch's float rounding at a few boundary
    # pixels), and the truth map is stored per reference
    out, _, _ = volume_study
    manifest = _rows(out / "data" / "manifest.csv")
    f1 = {r["file"]: float(r["f1_mean"]) for r in _rows(out / "segmentation" / "phantom.csv")}
    for r in manifest:
        if r["distortion"] == "none" and r["domain"] == "image":
            truth = np.load(out / "segmentation" / "reference_labels" / f"{r['reference']}.npy")
            assert truth.shape == np.load(out / "data" / r["file"]).shape
            assert f1[r["file"]] >= 0.995
    assert len(f1) == len(manifest)
    assert "its own segmentation of the undistorted slice" in (out / "table3_quality_vs_segmentation.md").read_text()


def test_the_field_of_view_of_a_real_slice():
    from tomoqc.study import _inside_of

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 28 ** 2
    rng = np.random.default_rng(0)
    img = np.where(disc, 100 + 20 * rng.random((64, 64)), 0.0)  # a reconstruction, zero outside its disc
    np.testing.assert_array_equal(_inside_of(img), disc)
    assert _inside_of(rng.random((64, 64))) is None  # no constant outside: every pixel counts


def test_source_crop_side_and_dataset_are_checked(tmp_path, model_path, volume_study):
    from tomoqc.study import run_study

    _, src, _ = volume_study
    with pytest.raises(OptionError, match="size"):
        run_study(tmp_path / "a", source=src, size=300, model=model_path, progress=False)
    with pytest.raises(OptionError, match="source"):
        run_study(tmp_path / "b", source_dataset="/data", model=model_path, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(REAL is None, reason="no ../shared/realdata")
def test_real_images_are_labelled_against_their_full_data_reconstruction(study):
    out, _ = study
    htc = {r["file"]: r for r in _rows(out / "real" / "htc.csv")}
    labels = {r["file"]: float(r["label"]) for r in _rows(out / "real" / "htc_labels.csv")}
    assert set(labels) == set(htc)
    for f, lab in labels.items():
        if htc[f]["impairment"] == "none":
            assert lab == 5.0  # the reference of its own projection
        else:
            assert 1.0 <= lab < 5.0  # any impairment costs something
    # along each impairment's series the projected label falls as the level rises
    for kind in ("angles", "dose", "blur", "limited angle"):
        series = sorted((int(r["level"]), labels[f]) for f, r in htc.items() if r["impairment"] in (kind, "none"))
        assert [lab for _, lab in series] == sorted((lab for _, lab in series), reverse=True), (kind, series)
    t1 = [r for r in _rows(out / "table1_label_projection.csv") if r["set"] == "real"]
    assert {r["distortion"] for r in t1} == {"angles", "limited angle", "dose", "blur", "ALL"}
    assert {r["truth"] for r in t1} == {"distortion level", "segmentation F1", "segmentation F1 loss"}
    assert "Real: HTC2022" in (out / "table1_label_projection.md").read_text()
