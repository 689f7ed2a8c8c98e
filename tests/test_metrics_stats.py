"""Correlation statistics against scipy.stats, and the logistic fit and bootstrap."""

import math

import numpy as np
import pytest
import scipy.stats as ss

from tomoqc.metrics import stats


def _data(seed, n, ties):
    rng = np.random.default_rng(seed)
    if ties:
        x = rng.integers(0, 6, n).astype(float)
        y = np.round(x + rng.normal(0, 1.5, n))
    else:
        x = rng.normal(size=n)
        y = 0.6 * x + rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [3, 10, 57, 400])
@pytest.mark.parametrize("ties", [False, True])
def test_against_scipy(seed, n, ties):
    x, y = _data(seed, n, ties)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        pytest.skip("constant sample")
    assert stats.srocc(x, y) == pytest.approx(ss.spearmanr(x, y)[0], abs=1e-12)
    assert stats.krocc(x, y) == pytest.approx(ss.kendalltau(x, y, variant="b")[0], abs=1e-12)
    assert stats.plcc(x, y) == pytest.approx(ss.pearsonr(x, y)[0], abs=1e-12)


def test_rankdata_matches_scipy_average():
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    np.testing.assert_array_equal(stats.rankdata(x), ss.rankdata(x, method="average"))


def test_srocc_formula_without_ties():
    # the report's IV.2 formula 1 - 6 sum d^2 / (n (n^2 - 1))
    x = np.array([1.0, 2, 3, 4, 5])
    y = np.array([2.0, 1, 4, 3, 5])
    d = stats.rankdata(x) - stats.rankdata(y)
    assert stats.srocc(x, y) == pytest.approx(1 - 6 * np.sum(d**2) / (5 * 24))


def test_krocc_large_blocks_exact():
    x, y = _data(9, 3000, True)
    assert stats.krocc(x, y) == pytest.approx(ss.kendalltau(x, y)[0], abs=1e-12)


def test_degenerate_and_errors():
    assert math.isnan(stats.plcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.srocc([1, 2, 3], [2, 2, 2]))
    assert math.isnan(stats.krocc([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="length"):
        stats.srocc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        stats.plcc([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        stats.plcc([1], [1])
    assert stats.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))


@pytest.mark.parametrize("kind", [4, 5])
def test_logistic_fit_recovers_a_logistic(kind):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 300)
    truth = 1 + 4 / (1 + np.exp(-10 * (x - 0.4)))
    y = truth + 0.05 * rng.standard_normal(300)
    fit = stats.logistic_fit(x, y, kind=kind)
    assert fit.converged
    assert np.max(np.abs(fit(x) - truth)) < 0.1
    assert fit.rmse == pytest.approx(0.05, abs=0.01)
    # the fitted PLCC is higher than the raw one for a nonlinear relation
    assert fit.plcc > stats.plcc(x, y)
    p, r, params = stats.plcc_logistic(x, y, kind=kind)
    assert p == pytest.approx(fit.plcc) and r == pytest.approx(fit.rmse) and len(params) == kind


def test_logistic_fit_decreasing_relation():
    # e.g. GMSD against opinion scores: lower metric = better quality
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.3, 200)
    y = 5 - 4 / (1 + np.exp(-30 * (x - 0.15))) + 0.05 * rng.standard_normal(200)
    fit = stats.logistic_fit(x, y, kind=4)
    assert fit.plcc > 0.98 and fit.srocc > 0.95


def test_bootstrap_ci():
    x, y = _data(4, 200, False)
    est, lo, hi = stats.bootstrap_ci(stats.plcc, x, y, n=400, seed=1)
    assert est == pytest.approx(ss.pearsonr(x, y)[0])
    assert lo < est < hi
    # Fisher-z interval as an independent check of the width
    z = np.arctanh(est)
    half = 1.96 / math.sqrt(200 - 3)
    assert lo == pytest.approx(np.tanh(z - half), abs=0.03)
    assert hi == pytest.approx(np.tanh(z + half), abs=0.03)
    # reproducible for a seed
    assert stats.bootstrap_ci(stats.plcc, x, y, n=50, seed=3) == stats.bootstrap_ci(stats.plcc, x, y, n=50, seed=3)


# ---------------------------------------------------------------------------------------
# tomoqc.evaluate and `tomoqc evaluate`
# ---------------------------------------------------------------------------------------

def _write_eval_files(tmp_path):
    rng = np.random.default_rng(5)
    truth_lines = ["file,reference,distortion,level,label"]
    pred_lines = ["file,score"]
    truth = {}
    for d in ("noise", "blur", "ring"):
        for r in range(4):
            for lv in range(1, 6):
                name = f"distorted/ref{r}_{d}{lv}.npy"
                lab = 5.0 - 0.8 * lv + 0.1 * rng.standard_normal()
                truth[name] = (d, lab)
                truth_lines.append(f"{name},ref{r},{d},{lv},{lab}")
                pred_lines.append(f"./{name},{2 + 0.3 * lab + 0.05 * rng.standard_normal()}")
    truth_lines.append("references/ref0.npy,ref0,none,0,")  # unlabelled row is skipped
    (tmp_path / "manifest.csv").write_text("\n".join(truth_lines) + "\n")
    (tmp_path / "pred.csv").write_text("\n".join(pred_lines) + "\n")
    return truth


def test_evaluate_groups_and_matches_scipy(tmp_path):
    from tomoqc.evaluate import evaluate

    truth = _write_eval_files(tmp_path)
    rows = evaluate(tmp_path / "pred.csv", tmp_path, out_png=tmp_path / "scatter.png")
    assert [r["distortion"] for r in rows] == ["blur", "noise", "ring", "ALL"]
    assert [r["n"] for r in rows] == [20, 20, 20, 60]
    pred = {}
    for line in (tmp_path / "pred.csv").read_text().splitlines()[1:]:
        f, s = line.split(",")
        pred[f[2:]] = float(s)
    for r in rows:
        keys = [k for k in truth if r["distortion"] in ("ALL", truth[k][0])]
        p = [pred[k] for k in keys]
        t = [truth[k][1] for k in keys]
        assert r["srocc"] == pytest.approx(ss.spearmanr(p, t)[0], abs=1e-12)
        assert r["plcc"] == pytest.approx(ss.pearsonr(p, t)[0], abs=1e-12)
        assert r["plcc_logistic"] >= r["plcc"] - 1e-6
    png = (tmp_path / "scatter.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_evaluate_cli(tmp_path, capsys):
    from tomoqc.cli import main

    _write_eval_files(tmp_path)
    out = tmp_path / "plot.png"
    assert main(["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "manifest.csv"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ALL" in text and "SROCC" in text and "ring" in text
    assert out.is_file()
    # bad input: one error line, exit 1
    (tmp_path / "bad.csv").write_text("file,score\na.npy,high\n")
    assert main(["evaluate", str(tmp_path / "bad.csv"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tomoqc: error: ") and "line 2" in err and err.count("\n") == 1
