#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""How far any last stage on the TIQA network can go on the study's phantoms.

Usage::

    python benchmarks/last_stage_ceiling.py --study S [--work DIR]

``S`` is a finished ``tomoqc study --out S`` run. Table 2's TIQA rows keep the network and
change only what follows it: the bundled card combines the network's score with measured
terms, the fitted row refits those terms to the train references' labels
(:func:`tomoqc.models.measured.fit_to_labels`). This benchmark asks whether a more flexible
last stage, fitted on the same train references' labels, would do better: it fits, with
hyperparameters chosen by 4-fold cross-validation grouped by reference on the train split,

* gradient-boosted trees (scikit-learn) on the network's score and the indicators, free and
  monotone (score up, every indicator down);
* an RBF SVR on the same inputs;
* ridge regression on the network's pooled backbone features (mean over the slice's patches)
  with the network's score, the card's score and the indicators;
* the card's own form (slope of the network's logit, weights >= 0 of the four absolute terms)
  fitted to the *order* of the labels rather than their values: a pairwise logistic loss over
  every pair of train images whose labels differ by more than 0.1, across references as Table
  2 pools them, its temperature chosen by the same cross-validation on the fold's SROCC.

Each is scored on the test references (ALL SROCC, and PLCC after the VQEG logistic, as
Table 2) and on the real series of known order (pair accuracy). The card, the network
alone, the fitted row and BRISQUE-SVR (from the run's predictions) are printed beside them.
The pooled features are computed with the run's TIQA model (about 3 minutes on 2 cores for
a full run's 1247 images) and cached in ``DIR/pooled_features.npz``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pooled_features(run, cache: Path) -> np.ndarray:
    """Mean pooled backbone feature of every predicted image of ``run`` (one row each), cached."""
    from tomoqc.models.tiqa import load_model

    from _study_run import read_cache, write_cache

    model = load_model(run.model)
    key = run.cache_key(model)
    out = read_cache(cache, key, "features")
    if out is not None:
        return out
    feats = []
    t0 = time.time()
    for i in range(len(run.pred)):
        res = model.score_slices(run.image(i)[None], tta=1, ood=False, measure=False, measured_terms=False,
                                 features=True)
        feats.append(np.asarray(res["features"][0]).mean(axis=0))
        if (i + 1) % 100 == 0 or i + 1 == len(run.pred):
            print(f"  pooled features {i + 1}/{len(run.pred)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    out = np.asarray(feats, np.float32)
    write_cache(cache, key, "features", out)
    return out


def rank_fit(run, folds: int = 4, temperatures=(0.1, 0.3, 1.0)) -> tuple[np.ndarray, dict]:
    """The card's form, ``z = b logit(network) - sum_k w_k f_k(indicator_k) - onset terms``, with
    ``b`` and the absolute weights ``w_k >= 0`` fitted to the label order of the train rows:
    the mean of ``log(1 + exp(-(z_i - z_j) / tau))`` over pairs with ``label_i > label_j + 0.1``
    (L-BFGS-B from the card's weights). ``tau`` by grouped cross-validation (held-out SROCC).
    Returns the z of every row (a score up to a monotone map) and the chosen settings."""
    from scipy.optimize import minimize
    from sklearn.model_selection import GroupKFold

    from tomoqc.metrics import stats
    from tomoqc.models.measured import _logit_score as logit_score

    terms = run.terms()
    absolute, feats, fixed = terms.absolute_design(run.indicators(), len(run.pred))
    x = logit_score(run.column("network"))
    ok = np.isfinite(x) & np.isfinite(run.label)

    def z_of(p, rows):
        return p[0] * x[rows] - feats[rows] @ p[1:] - fixed[rows]

    def fit(rows, tau):
        y = run.label[rows]
        i, j = np.nonzero(y[:, None] - y[None, :] > 0.1)

        def loss(p):
            z = z_of(p, rows)
            return float(np.mean(np.logaddexp(0.0, -(z[i] - z[j]) / tau)))

        p0 = np.r_[1.0, [terms.weights[k] for k in absolute]]
        return minimize(loss, p0, bounds=[(1e-3, 10.0)] + [(0.0, 100.0)] * len(absolute), method="L-BFGS-B").x

    train_rows = np.nonzero(run.tr & ok)[0]
    groups = np.asarray(run.reference, dtype=object)[train_rows]
    cv = {}
    for tau in temperatures:
        scores = []
        for a, b in GroupKFold(folds).split(train_rows, groups=groups):
            p = fit(train_rows[a], tau)
            scores.append(stats.srocc(z_of(p, train_rows[b]), run.label[train_rows[b]]))
        cv[tau] = float(np.mean(scores))
    tau = max(cv, key=cv.get)
    p = fit(train_rows, tau)
    return z_of(p, np.arange(len(x))), {"tau": tau, "slope": round(float(p[0]), 3),
                                       **{k: round(float(w), 3) for k, w in zip(absolute, p[1:])}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, required=True, help="a finished tomoqc study run")
    ap.add_argument("--work", type=Path, default=Path("bench-out/last_stage_ceiling"), help="cache folder")
    args = ap.parse_args(argv)

    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    from tomoqc.models.measured import _logit_score as logit_score  # the logit the card's terms combine on

    from _study_run import load_study

    run = load_study(args.study)
    study, tr, te, label, od = run.root, run.tr, run.te, run.label, run.od
    card = run.column("score")
    network = run.column("network")
    ind = np.column_stack([np.nan_to_num(v) for v in run.indicators().values()])
    ind = ind[:, np.ptp(ind, axis=0) > 0]  # an indicator the run never measured has nothing to say
    feats = pooled_features(run, args.work / "pooled_features.npz")
    groups = [g for g, k in zip(run.reference, tr) if k]
    evaluate = run.evaluate
    train, test = run.train, run.test

    def fitted(estimator, grid, x):
        search = GridSearchCV(estimator, grid, cv=GroupKFold(4), scoring="neg_mean_squared_error")
        search.fit(x[tr], label[tr], groups=groups)
        return search.predict(x), search.best_params_

    basic = np.column_stack([logit_score(network), ind])
    table = [("card (bundled TIQA)", "network, indicators", card, "-"),
             ("network alone", "network", network, "-")]
    fit_row = run.fitted()
    if fit_row is not None:
        table.append(("card's terms fitted (Table 2)", "network, indicators", fit_row, "least squares"))
    trees = {"max_iter": [100, 300], "learning_rate": [0.03, 0.1], "max_leaf_nodes": [7, 15],
             "min_samples_leaf": [10, 30]}
    s, p = fitted(HistGradientBoostingRegressor(random_state=0), trees, basic)
    table.append(("boosted trees", "network, indicators", s, p))
    mono = [1] + [-1] * ind.shape[1]
    s, p = fitted(HistGradientBoostingRegressor(monotonic_cst=mono, random_state=0), trees, basic)
    table.append(("boosted trees, monotone", "network, indicators", s, p))
    s, p = fitted(make_pipeline(StandardScaler(), SVR()),
                  {"svr__C": [1, 10, 100], "svr__gamma": ["scale", 0.03, 0.3]}, basic)
    table.append(("RBF SVR", "network, indicators", s, p))
    rich = np.column_stack([feats, basic, logit_score(card)])
    s, p = fitted(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": [1, 10, 100, 1000, 1e4]}, rich)
    table.append(("ridge", f"{feats.shape[1]} pooled features, network, card, indicators", s, p))
    if fit_row is not None:
        s, p = rank_fit(run)
        table.append(("card's terms fitted to the label order", "network, indicators", s, p))
    brisque = run.method("brisque")
    if brisque is not None:
        table.append(("BRISQUE-SVR (Table 2)", "36 BRISQUE features", brisque, "the study's search"))

    print(f"\nLast stages on the TIQA network of {study}: fitted on {len(train)} train references' labels "
          f"({int(tr.sum())} images), tested on {len(test)} references ({int(te.sum())} images) and "
          f"{len(od)} real ordering images\n")
    print("| last stage | inputs | ALL SROCC | ALL PLCC | real pairs | chosen settings |")
    print("|---|---|---|---|---|---|")
    for name, inputs, s, p in table:
        sr, pl, acc = evaluate(s)
        settings = ", ".join(f"{k.split('__')[-1]} {v}" for k, v in p.items()) if isinstance(p, dict) else p
        print(f"| {name} | {inputs} | {sr:.3f} | {pl:.3f} | {acc:.3f} | {settings} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
