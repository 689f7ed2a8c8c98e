"""How much of the phantom labels the bundled network's frozen features hold: a linear readout.

The network alone orders noise, blur and ring phantoms well against their labels but hardly
sees streaks (``benchmarks/phantom_table.py``, its per-level table). Whether that is the
features or the score head decides what to train next: here a ridge regression
(scikit-learn) from each image's mean pooled features (the ``pool`` layer, over the
slice's valid patches, one view) to its label is fitted on one labelled phantom set
(``--train-seed``) with the ridge strength chosen by grouped cross-validation over its
references, and scored on a set of other references (``--test-seed``, the phantom table's
9001 by default), beside the network's own calibrated score. SROCC against the label,
overall and per impairment (each with the clean images).

Run: ``.venv/bin/python benchmarks/feature_readout.py [--references 12] [--train-seed 7373]
[--test-seed 9001]`` (builds and labels the two sets once, about 5 minutes each, then about
5 minutes of feature extraction on 2 cores). Nothing here changes the bundled model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("noise", "blur", "ring", "streak", "mixed")


def pooled_features(model, data_dir: Path):
    """Mean pooled features, network score, label and (reference, distortion) of every labelled image."""
    from tomoqc.dataset import read_manifest

    rows = [r for r in read_manifest(data_dir) if r.get("label") not in (None, "")]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["reference"], r.get("domain") or "image"), []).append(r)
    feats, score, label, ref, dist = [], [], [], [], []
    for rr in groups.values():
        imgs = np.stack([np.load(data_dir / r["file"]).astype(np.float32) for r in rr])
        res = model.score_slices(imgs, measured_terms=False, tta=1, ood=False, measure=False, features=True)
        for r, f, s in zip(rr, res["features"], res["score"]):
            feats.append(f.mean(axis=0))
            score.append(float(s))
            label.append(float(r["label"]))
            ref.append(r["reference"])
            dist.append(r["distortion"])
    return np.array(feats), np.array(score), np.array(label), np.array(ref), np.array(dist)


def srocc_by_kind(pred, label, dist) -> dict:
    from scipy.stats import spearmanr

    out = {"ALL": float(spearmanr(pred, label)[0])}
    for k in KINDS:
        m = (dist == k) | (dist == "none")
        out[k] = float(spearmanr(pred[m], label[m])[0]) if m.sum() > 2 else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--references", type=int, default=12)
    ap.add_argument("--train-seed", type=int, default=7373)
    ap.add_argument("--test-seed", type=int, default=9001)
    ap.add_argument("--alphas", type=float, nargs="+", default=[10.0, 100.0, 1000.0, 10000.0])
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "phantom_table")
    args = ap.parse_args(argv)
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    from phantom_table import labelled_set
    from tomoqc.models.tiqa import load_model

    model = load_model(None)
    tr = pooled_features(model, labelled_set(args.out, args.references, args.train_seed, model))
    te = pooled_features(model, labelled_set(args.out, args.references, args.test_seed, model))
    mu, sd = tr[0].mean(axis=0), tr[0].std(axis=0) + 1e-6
    xa, xb = (tr[0] - mu) / sd, (te[0] - mu) / sd
    cv = {}
    for alpha in args.alphas:
        pred = np.zeros(len(xa))
        for fit_idx, held in GroupKFold(n_splits=4).split(xa, tr[2], tr[3]):
            pred[held] = Ridge(alpha=alpha).fit(xa[fit_idx], tr[2][fit_idx]).predict(xa[held])
        cv[alpha] = srocc_by_kind(pred, tr[2], tr[4])["ALL"]
    best = max(cv, key=cv.get)
    readout = Ridge(alpha=best).fit(xa, tr[2]).predict(xb)
    print(f"ridge strength by 4-fold grouped CV on seed {args.train_seed}: "
          + ", ".join(f"{a:g}: {v:.3f}" for a, v in cv.items()) + f" -> {best:g}")
    print(f"held-out seed {args.test_seed} ({len(xb)} images), SROCC against the label")
    print(f"{'':<26}" + "".join(f"{k:>8}" for k in ("ALL",) + KINDS))
    for name, pred in (("network (calibrated)", te[1]), ("linear readout of features", readout)):
        r = srocc_by_kind(pred, te[2], te[4])
        print(f"{name:<26}" + "".join(f"{r[k]:>8.3f}" for k in ("ALL",) + KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
