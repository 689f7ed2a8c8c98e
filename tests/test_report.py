"""Per-volume summaries, aggregated reports, plots and the QC gate."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image

from tomoqc.errors import InputError, QCFailed
from tomoqc.report import report, summarize, worst_ranges


def write_quality(path: Path, scores, *, z=None, severity=None, flags=None, input_path="", complete=True,
                  ring_index=None, uncertainty=None, distortions=("noise", "blur", "ring"), missing_wedge=None,
                  view_spacing=None, noise_confound_gap=None, inclusion_fraction=None):
    """A quality output with known numbers, in the layout `tomoqc score` writes."""
    scores = np.asarray(scores, np.float32)
    n = len(scores)
    z = np.arange(n) if z is None else np.asarray(z)
    nd = len(distortions)
    sev = np.full((n, nd), 0.1, np.float32) if severity is None else np.asarray(severity, np.float32)
    flags = np.zeros(n, np.int8) if flags is None else np.asarray(flags, np.int8)
    ds = xr.Dataset(
        {
            "score": (("z",), scores),
            "flag": (("z",), flags),
            "valid_fraction": (("z",), np.ones(n, np.float32)),
            "patch_score": (("z", "py", "px"), np.repeat(scores[:, None, None], 4, 1).reshape(n, 2, 2)),
            "severity": (("z", "distortion"), sev),
        },
        coords={"z": z, "distortion": np.array(list(distortions), dtype=object)},
        attrs={"complete": complete, "input": str(input_path), "axis": "z", "dataset": "", "model_id": "m-test"},
    )
    if ring_index is not None:
        ds["ring_index"] = (("z",), np.asarray(ring_index, np.float32))
    if uncertainty is not None:
        ds["score_uncertainty"] = (("z",), np.asarray(uncertainty, np.float32))
    if missing_wedge is not None:
        ds["missing_wedge"] = (("z",), np.asarray(missing_wedge, np.float32))
    if view_spacing is not None:
        ds["view_spacing"] = (("z",), np.asarray(view_spacing, np.float32))
    if noise_confound_gap is not None:
        ds["noise_confound_gap"] = (("z",), np.asarray(noise_confound_gap, np.float32))
    if inclusion_fraction is not None:
        ds["inclusion_fraction"] = (("z",), np.asarray(inclusion_fraction, np.float32))
    ds.to_zarr(str(path), mode="w", consolidated=False)
    return path


def scores_20():
    s = np.full(20, 4.0, np.float32)
    s[5:8] = 1.5
    s[12] = 2.0
    s[15] = np.nan
    return s


def test_summary_numbers(tmp_path):
    sev = np.zeros((20, 3), np.float32)
    sev[:, 0], sev[:, 1], sev[:, 2] = 0.1, 0.2, 0.6
    flags = np.zeros(20, np.int8)
    flags[15] = 1
    ring = np.full(20, 0.002, np.float32)
    ring[:8] = 0.05  # 8 of the 18 scored slices with a ring index are ringed: the median is the clean value...
    ring[15] = 0.05  # ... and the unscored slice 15 does not count
    ring[16] = np.nan
    p = write_quality(tmp_path / "a.quality.zarr", scores_20(), severity=sev, flags=flags, input_path="/data/a.zarr",
                      ring_index=ring)
    s = summarize(p)
    assert s["median_ring_index"] == 0.002  # 8 x 0.05 and 10 x 0.002
    ring[8:10] = 0.05
    p2 = write_quality(tmp_path / "b.quality.zarr", scores_20(), severity=sev, ring_index=ring)
    assert summarize(p2)["median_ring_index"] == 0.05  # now 10 of 18 ringed
    # 19 finite scores: 15 x 4.0, 3 x 1.5, 1 x 2.0
    assert s["slices"] == 19 and s["slices_total"] == 20 and s["flagged"] == 1
    assert s["median_score"] == 4.0
    assert s["p5_score"] == 1.5 and s["min_score"] == 1.5
    assert s["worst_slices"] == [[5, 7], [12, 12]]  # runs below 3, worst first
    assert s["dominant_distortion"] == "ring"
    assert s["severity"] == {"noise": 0.1, "blur": 0.2, "ring": 0.6}
    assert s["verdict"] == "pass" and s["threshold"] == 3.0
    assert s["path"] == "/data/a.zarr" and s["output"] == str(p.resolve())
    assert summarize(p, fail_below=4.5)["verdict"] == "fail"


def test_summary_without_scores_or_distortion(tmp_path):
    p = write_quality(tmp_path / "n.quality.zarr", [np.nan] * 4, flags=[1, 2, 2, 3])
    s = summarize(p)
    assert s["verdict"] == "unknown" and s["slices"] == 0 and s["median_score"] is None
    assert s["worst_slices"] == [] and s["flagged"] == 4
    q = write_quality(tmp_path / "q.quality.zarr", [4.0, 4.2, 3.9], severity=np.full((3, 3), 0.05))
    assert summarize(q)["dominant_distortion"] == "none"
    assert summarize(q)["median_ring_index"] is None  # an output without a ring index (earlier versions)


def test_worst_ranges_follow_scored_neighbours():
    z = np.arange(0, 20, 2)
    s = np.array([4, 4, 2, 2.5, 2, 4, 4, 4, 1, 4], float)
    assert worst_ranges(z, s, 3.0) == [[16, 16], [4, 8]]
    # nothing below the threshold: the 5th percentile is pointed at instead
    assert worst_ranges(np.arange(5), np.array([4.0, 4.5, 3.5, 4.8, 4.9]), 3.0) == [[2, 2]]


def _input_volume(path: Path):
    from tomoqc.phantom import electrode_volume

    vol, _ = electrode_volume((20, 96, 96), seed=2)
    z = zarr.create_array(str(path), shape=vol.shape, chunks=(1, 96, 96), dtype="float32")
    z[:] = vol.astype(np.float32)
    return path


def _image_ok(path: Path):
    im = Image.open(path)
    im.load()
    assert im.format == "PNG"
    assert im.size[0] >= 800 and im.size[1] >= 600
    a = np.asarray(im.convert("L"), dtype=np.float64)
    assert a.std() > 10  # not blank
    assert len(np.unique(a)) > 20
    return a


def test_report_files_and_html_references(tmp_path):
    vol = _input_volume(tmp_path / "a.zarr")
    a = write_quality(tmp_path / "a.zarr.quality.zarr", scores_20(), input_path=vol.resolve())
    (tmp_path / "other").mkdir()
    b = write_quality(tmp_path / "other" / "a.zarr.quality.zarr", np.linspace(1.2, 2.8, 10), input_path="/gone/a.zarr")
    out = tmp_path / "rep"
    r = report([a, b], out)
    assert [v["verdict"] for v in r["volumes"]] == ["pass", "fail"]
    for name in ("report.csv", "report.json", "index.html"):
        assert (out / name).is_file()
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 2
    assert rows[0]["median_score"] == "4.0" and rows[0]["worst_slices"] == "5-7 12"
    assert rows[1]["verdict"] == "fail"
    j = json.loads((out / "report.json").read_text())
    assert j["volumes"][0]["worst_slices"] == [[5, 7], [12, 12]]
    html = (out / "index.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", html)
    assert len(srcs) == 2 and len(set(srcs)) == 2  # same file name, two distinct plots
    imgs = [_image_ok(out / s) for s in srcs]
    # the first volume's plot carries thumbnails read from its input; the other says it is gone
    assert imgs[0].shape == imgs[1].shape
    assert not np.array_equal(imgs[0], imgs[1])
    assert "fail" in html and "pass" in html


def test_report_refuses_incomplete_or_foreign_outputs(tmp_path):
    inc = write_quality(tmp_path / "i.quality.zarr", [3.0, 3.0], complete=False)
    with pytest.raises(InputError, match="incomplete"):
        report([inc], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written
    zarr.create_array(str(tmp_path / "x.zarr"), shape=(4, 4), dtype="float32")
    with pytest.raises(InputError):
        report([tmp_path / "x.zarr"], tmp_path / "r")
    with pytest.raises(InputError):
        report([tmp_path / "missing.quality.zarr"], tmp_path / "r")


def test_fail_below_raises_after_writing(tmp_path):
    a = write_quality(tmp_path / "a.quality.zarr", [2.0, 2.5, 2.2])
    with pytest.raises(QCFailed) as info:
        report([a], tmp_path / "r", fail_below=3.0)
    assert info.value.exit_code == 3
    assert (tmp_path / "r" / "index.html").is_file()
    assert info.value.report["volumes"][0]["verdict"] == "fail"
    assert report([a], tmp_path / "r2", fail_below=2.0)["volumes"][0]["verdict"] == "pass"


def test_report_cli_exit_codes_and_json(tmp_path, capsys):
    from tomoqc.cli import main

    a = write_quality(tmp_path / "a.quality.zarr", [2.0, 2.5, 2.2], input_path="/x/a.zarr")
    assert main(["report", str(a), "--out", str(tmp_path / "r"), "--fail-below", "2.0", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert line["path"] == "/x/a.zarr" and line["slices"] == 3 and line["median_score"] == 2.2
    assert line["p5_score"] == pytest.approx(2.02) and line["verdict"] == "pass"
    assert set(line) >= {"path", "output", "slices", "median_score", "p5_score", "dominant_distortion", "verdict"}
    assert main(["report", str(a), "--out", str(tmp_path / "r"), "--fail-below", "2.3"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("tomoqc: error: 1 of 1 volume(s) below --fail-below 2.3")
    assert main(["report", str(tmp_path / "nope.quality.zarr"), "--out", str(tmp_path / "r")]) == 1


def test_dominant_distortion_follows_the_bad_slices(tmp_path):
    n = 20
    sev = np.full((n, 3), 0.1, np.float32)
    s = np.full(n, 4.0, np.float32)
    s[10:13] = 1.8
    sev[10:13, 1] = 0.9  # blur only where the scores drop
    p = write_quality(tmp_path / "b.quality.zarr", s, severity=sev)
    out = summarize(p)
    assert out["severity"]["blur"] == pytest.approx(0.1)  # the volume-wide median is low
    assert out["dominant_distortion"] == "blur"


def test_limited_angle_is_named_where_the_low_slices_miss_views(tmp_path):
    """The severity head knows no limited angle: where the low slices lack a wedge of views
    past the term's onset, the summary names it and gives its median width."""
    n = 20
    s = np.full(n, 4.0, np.float32)
    s[:12] = 1.9
    wedge = np.zeros(n, np.float32)
    wedge[:12] = 60.0
    sev = np.full((n, 3), 0.1, np.float32)
    sev[:12, 0] = 0.5  # the head blames noise
    out = summarize(write_quality(tmp_path / "w.quality.zarr", s, severity=sev, missing_wedge=wedge))
    assert out["dominant_distortion"] == "limited angle" and out["missing_wedge_deg"] == 60.0
    wedge[:12] = 5.0  # below the onset: the head's answer stands
    out = summarize(write_quality(tmp_path / "v.quality.zarr", s, severity=sev, missing_wedge=wedge))
    assert out["dominant_distortion"] == "noise" and out["missing_wedge_deg"] == 5.0
    assert summarize(write_quality(tmp_path / "u.quality.zarr", s, severity=sev))["missing_wedge_deg"] is None


def test_sparse_views_are_named_where_the_low_slices_have_few(tmp_path):
    """The severity head knows no sparse views either: where the low slices' views lie past the
    spacing term's onset apart (8 degrees), the summary says so; a limited angle goes first."""
    n = 20
    s = np.full(n, 4.0, np.float32)
    s[:12] = 1.2
    spacing = np.zeros(n, np.float32)
    spacing[:12] = 15.0
    sev = np.full((n, 3), 0.1, np.float32)
    sev[:12, 0] = 0.6  # the head blames noise: the noise index reads the streaks
    out = summarize(write_quality(tmp_path / "s.quality.zarr", s, severity=sev, view_spacing=spacing))
    assert out["dominant_distortion"] == "sparse views" and out["view_spacing_deg"] == 15.0  # 12 of the 20
    spacing[:12] = 4.0  # 45 views: below the onset, the streak index's range
    out = summarize(write_quality(tmp_path / "t.quality.zarr", s, severity=sev, view_spacing=spacing))
    assert out["dominant_distortion"] == "noise"
    spacing[:12] = 15.0
    wedge = np.where(np.arange(n) < 12, 60.0, 0.0)
    out = summarize(write_quality(tmp_path / "r.quality.zarr", s, severity=sev, view_spacing=spacing,
                                  missing_wedge=wedge))
    assert out["dominant_distortion"] == "limited angle"
    assert summarize(write_quality(tmp_path / "q.quality.zarr", s, severity=sev))["view_spacing_deg"] is None


def test_screenshot_of_index_html_is_not_blank(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "report_screenshot", Path(__file__).resolve().parents[1] / "benchmarks" / "report_screenshot.py"
    )
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    if shot.find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    vol = _input_volume(tmp_path / "a.zarr")
    q = write_quality(tmp_path / "a.zarr.quality.zarr", scores_20(), input_path=vol.resolve())
    report([q], tmp_path / "rep")
    png = shot.screenshot(tmp_path / "rep" / "index.html", tmp_path / "shot.png")
    facts = shot.check_screenshot(png)
    assert facts["ok"], facts
    # an empty page renders as a blank screenshot that the check rejects
    (tmp_path / "blank.html").write_text("<html><body></body></html>")
    assert not shot.check_screenshot(shot.screenshot(tmp_path / "blank.html", tmp_path / "blank.png"))["ok"]


def test_module_is_callable_like_the_function(tmp_path):
    import tomoqc.report as rep_module

    a = write_quality(tmp_path / "a.quality.zarr", [2.0, 4.0, 4.5])
    r = rep_module(a, tmp_path / "r")  # tomoqc.report(...) mirrors `tomoqc report`
    assert r["volumes"][0]["median_score"] == 4.0
    assert rep_module.summarize(a)["median_score"] == 4.0


def test_uncertain_verdict_and_ood_share(tmp_path):
    from tomoqc.report import OOD_SHARE_MAX, UNCERTAINTY_MAX

    s = np.full(10, 4.0, np.float32)
    # an old output without score_uncertainty: judged on the score alone
    old_path = write_quality(tmp_path / "old.quality.zarr", s)
    old = summarize(old_path)
    assert old["verdict"] == "pass" and old["median_score_uncertainty"] is None and old["ood_fraction"] == 0.0
    low = summarize(write_quality(tmp_path / "low.quality.zarr", s, uncertainty=np.full(10, 0.2)))
    assert low["verdict"] == "pass" and low["median_score_uncertainty"] == pytest.approx(0.2)
    high = write_quality(tmp_path / "high.quality.zarr", s, uncertainty=np.full(10, UNCERTAINTY_MAX + 0.3))
    assert summarize(high)["verdict"] == "uncertain"
    # a low score with a high uncertainty still fails; out-of-distribution slices make it uncertain
    bad = write_quality(tmp_path / "bad.quality.zarr", np.full(10, 2.0), uncertainty=np.full(10, 0.8))
    assert summarize(bad)["verdict"] == "fail"
    flags = np.zeros(10, np.int8)
    flags[: int(10 * OOD_SHARE_MAX) + 1] = 4  # out of distribution
    ood = write_quality(tmp_path / "ood.quality.zarr", np.full(10, 2.0), uncertainty=np.full(10, 0.1), flags=flags)
    so = summarize(ood)
    assert so["verdict"] == "uncertain" and so["ood_fraction"] == pytest.approx(0.3)
    # uncertain never raises QCFailed; the report carries the new fields, a fourth distortion
    # becomes a column of its own, and the plot draws the band
    four = write_quality(tmp_path / "four.quality.zarr", s, uncertainty=np.full(10, 0.9),
                         distortions=("noise", "blur", "ring", "streak"), severity=np.full((10, 4), 0.3),
                         input_path="/gone/v.zarr")
    r = report([high, four, old_path], tmp_path / "r", fail_below=3.0)
    assert [v["verdict"] for v in r["volumes"]] == ["uncertain", "uncertain", "pass"]
    rows = list(csv.DictReader(open(tmp_path / "r" / "report.csv")))
    assert rows[1]["severity_streak"] == "0.3" and rows[0]["severity_streak"] == ""
    assert rows[0]["median_score_uncertainty"] == "0.8" and rows[2]["median_score_uncertainty"] == ""
    j = json.loads((tmp_path / "r" / "report.json").read_text())
    assert j["volumes"][0]["median_score_uncertainty"] == 0.8 and "ood_fraction" in j["volumes"][0]
    assert "uncertain" in (tmp_path / "r" / "index.html").read_text()
    _image_ok(tmp_path / "r" / r["volumes"][0]["plot"])


def test_a_failure_that_hinges_on_the_noise_reading_is_uncertain(tmp_path):
    """Slices flagged noise confounded (6) whose scores would reach the threshold with the
    noise read from the flattest coefficients make a low volume *uncertain*, not *fail*; a
    gap too small to reach it, or too few flagged slices, still fails."""
    from tomoqc.errors import QCFailed
    from tomoqc.report import OOD_SHARE_MAX

    n = 10
    s = np.full(n, 2.0, np.float32)
    flags = np.zeros(n, np.int8)
    flags[: int(n * OOD_SHARE_MAX) + 1] = 6  # 30 % flagged
    hinges = summarize(write_quality(tmp_path / "a.quality.zarr", s, flags=flags, noise_confound_gap=np.full(n, 1.5)))
    assert hinges["verdict"] == "uncertain" and hinges["noise_confounded_fraction"] == pytest.approx(0.3)
    small_gap = summarize(write_quality(tmp_path / "b.quality.zarr", s, flags=flags,
                                        noise_confound_gap=np.full(n, 0.6)))
    assert small_gap["verdict"] == "fail"  # 2.6 < 3: it fails with either noise reading
    few = flags.copy()
    few[1:] = 0
    assert summarize(write_quality(tmp_path / "c.quality.zarr", s, flags=few,
                                   noise_confound_gap=np.full(n, 1.5)))["verdict"] == "fail"
    # an output of an earlier version, without the gap, is judged on its score
    assert summarize(write_quality(tmp_path / "d.quality.zarr", s, flags=flags))["verdict"] == "fail"
    with pytest.raises(QCFailed):  # the small gap still fails the gate; the uncertain one does not count
        report([tmp_path / "a.quality.zarr", tmp_path / "b.quality.zarr"], tmp_path / "r", fail_below=3.0)
    rows = list(csv.DictReader(open(tmp_path / "r" / "report.csv")))
    assert [row["verdict"] for row in rows] == ["uncertain", "fail"]
    assert rows[0]["noise_confounded_fraction"] == "0.3"


def test_the_share_of_slices_with_inclusions_filled_is_reported(tmp_path):
    """Three of ten scored slices had dense inclusions filled (one more slice is not scored);
    an output of an earlier version has no such variable and reports None."""
    n = 11
    s = np.full(n, 4.0, np.float32)
    s[-1] = np.nan
    inc = np.zeros(n, np.float32)
    inc[[1, 4, 7, 10]] = 0.004
    got = summarize(write_quality(tmp_path / "a.quality.zarr", s, inclusion_fraction=inc))
    assert got["slices"] == 10 and got["inclusions_filled_fraction"] == pytest.approx(0.3)
    assert summarize(write_quality(tmp_path / "b.quality.zarr", s))["inclusions_filled_fraction"] is None
    report([tmp_path / "a.quality.zarr", tmp_path / "b.quality.zarr"], tmp_path / "r")
    rows = list(csv.DictReader(open(tmp_path / "r" / "report.csv")))
    assert rows[0]["inclusions_filled_fraction"] == "0.3" and rows[1]["inclusions_filled_fraction"] == ""
