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


# --- cluster bootstrap -------------------------------------------------------------------

def test_cluster_bootstrap_of_single_samples_is_the_ordinary_bootstrap():
    rng = np.random.default_rng(4)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    names = [f"{i:03d}" for i in range(40)]  # sorted like the sample order
    res = stats.cluster_bootstrap(lambda i, g: stats.plcc(x[i], y[i]), names, n=300, seed=9)
    est, lo, hi = stats.bootstrap_ci(stats.plcc, x, y, n=300, seed=9)
    assert (res.estimate, res.low, res.high) == (est, lo, hi)
    assert res.resamples == 300


def test_cluster_bootstrap_draws_whole_clusters_and_numbers_them():
    clusters = ["a"] * 3 + ["b"] * 5 + ["c"] * 2
    size = {"a": 3, "b": 5, "c": 2}
    seen = []

    def stat(i, g):
        assert len(i) == len(g)
        for k in np.unique(g):  # each drawn cluster: all of one cluster's samples, once
            members = [clusters[j] for j in i[g == k]]
            assert len(set(members)) == 1 and len(members) == size[members[0]]
            assert sorted(i[g == k]) == [j for j, c in enumerate(clusters) if c == members[0]]
        seen.append(len(np.unique(g)))
        return float(len(i))

    res = stats.cluster_bootstrap(stat, clusters, n=50, seed=1)
    assert res.estimate == 10.0
    assert seen[0] == 3 and all(s == 3 for s in seen[1:])  # three draws per resample


def test_cluster_bootstrap_interval_follows_the_between_cluster_spread():
    # samples share their cluster's offset: the mean's standard error is that of the K
    # cluster means, sd / sqrt(K), not that of the K * m samples
    rng = np.random.default_rng(0)
    K, m, sd = 60, 20, 1.0
    offsets = rng.normal(0.0, sd, K)
    v = np.repeat(offsets, m) + rng.normal(0.0, 0.01, K * m)
    clusters = np.repeat(np.arange(K), m)
    res = stats.cluster_bootstrap(lambda i, g: float(np.mean(v[i])), clusters, n=2000, seed=2)
    se = np.std(offsets, ddof=1) / np.sqrt(K)
    assert (res.high - res.low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # resampling single samples instead ignores the clusters and is far too narrow
    _, lo, hi = stats.bootstrap_ci(lambda a, b: float(np.mean(a)), v, v, n=500, seed=2)
    assert hi - lo < 0.4 * (res.high - res.low)


def test_cluster_bootstrap_of_a_paired_difference():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=120)
    good = truth + 0.3 * rng.normal(size=120)
    bad = truth + 3.0 * rng.normal(size=120)
    refs = np.repeat(np.arange(12), 10)

    def diff(a, b):
        return lambda i, g: stats.srocc(a[i], truth[i]) - stats.srocc(b[i], truth[i])

    same = stats.cluster_bootstrap(diff(good, good), refs, n=200, seed=0)
    assert (same.estimate, same.low, same.high, same.share_positive) == (0.0, 0.0, 0.0, 0.0)
    ahead = stats.cluster_bootstrap(diff(good, bad), refs, n=200, seed=0)
    behind = stats.cluster_bootstrap(diff(bad, good), refs, n=200, seed=0)
    assert ahead.low > 0 and ahead.share_positive == 1.0
    assert behind.estimate == -ahead.estimate
    assert behind.low == pytest.approx(-ahead.high) and behind.high == pytest.approx(-ahead.low)


def test_cluster_bootstrap_refuses_bad_settings():
    with pytest.raises(stats.MetricInputError):
        stats.cluster_bootstrap(lambda i, g: 0.0, [1, 2], n=0)
    with pytest.raises(stats.MetricInputError):
        stats.cluster_bootstrap(lambda i, g: 0.0, [1, 2], level=1.0)
    with pytest.raises(stats.MetricInputError):
        stats.cluster_bootstrap(lambda i, g: 0.0, [])


def test_cluster_index_numbers_labels_in_string_order():
    np.testing.assert_array_equal(stats.cluster_index(["b", "a", "b", 10, 2]), [3, 2, 3, 0, 1])
