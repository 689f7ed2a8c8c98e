#!/usr/bin/env python
"""Which slices the noise-confound check flags, on a finished study run.

Usage::

    python benchmarks/noise_confound.py --study S [--model M.keras] [--csv OUT.csv]

``S`` is a ``tomoqc study --out S`` run made with this version (its ``predictions/tiqa.csv``
keeps the network's score and the measured indicators of every image). For every image of
the run (phantoms of both splits, the real orderings and the HTC2022 series) the noise index
is read again from the low quantiles of the Haar bands
(:func:`tomoqc.metrics.nr.noise_index`, ``estimator="low_quantiles"``), the card's measured
terms are applied with it, and the gap to the stored score is what
:meth:`tomoqc.models.measured.MeasuredTerms.noise_confound_gap` gives and
:meth:`tomoqc.models.tiqa.TiqaModel.score_slices` reports as ``noise_confound_gap``. The
table gives, per set and impairment, the images flagged ``noise_confounded`` (gap at least
:data:`tomoqc.models.tiqa.NOISE_CONFOUND_GAP`), the median and largest gap, and for flagged
phantoms their mean label, score and score with the low-quantile reading. A column checks
that the card recombines the stored scores (largest difference). About 1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, required=True, help="a finished `tomoqc study --out` folder")
    ap.add_argument("--model", type=Path, default=None, help="the TIQA model the study ran (default: bundled)")
    ap.add_argument("--csv", type=Path, default=None, help="write every image's row here")
    a = ap.parse_args(argv)

    from tomoqc.dataset import read_manifest
    from tomoqc.metrics.nr import noise_index
    from tomoqc.models.measured import INDICATORS, MeasuredTerms
    from tomoqc.models.tiqa import NOISE_CONFOUND_GAP, load_model
    from tomoqc.preprocess import normalize_slice_flagged

    pred_path = a.study / "predictions" / "tiqa.csv"
    if not pred_path.is_file():
        print(f"error: {pred_path}: not found (is {a.study} a finished study run?)", file=sys.stderr)
        return 1
    with open(pred_path, newline="") as fh:
        pred = list(csv.DictReader(fh))
    if not pred or "network" not in pred[0]:
        print(f"error: {pred_path}: no network scores stored (rerun the study with this version)", file=sys.stderr)
        return 1
    terms = MeasuredTerms.from_card(load_model(a.model).card)
    if terms is None or not terms.weighs("noise"):
        print("error: the model card has no noise term", file=sys.stderr)
        return 1
    manifest = {r["file"]: r for r in read_manifest(a.study / "data")}
    num = lambda v: float(v) if v not in ("", None) else float("nan")  # noqa: E731
    network = np.array([num(r["network"]) for r in pred])
    stored = np.array([num(r["score"]) for r in pred])
    ind = {k: np.array([num(r.get(k)) for r in pred]) for k in INDICATORS if k in pred[0]}
    low = np.full(len(pred), np.nan)
    for i, r in enumerate(pred):
        path = a.study / "data" / r["file"] if r["set"] == "phantom" else a.study / r["file"]
        img, constant = normalize_slice_flagged(np.load(path), clip=False)
        if not constant:
            low[i] = noise_index(img, estimator="low_quantiles")
    score = terms.combine(network, ind)
    gap = terms.noise_confound_gap(network, ind, low)
    lifted = score + gap
    flagged = gap >= NOISE_CONFOUND_GAP

    def group(r):
        if r["set"] == "phantom":
            return "phantom", manifest[r["file"]]["distortion"]
        return r["set"], "all"

    groups: dict = {}
    for i, r in enumerate(pred):
        groups.setdefault(group(r), []).append(i)
    head = ["set", "impairment", "images", "flagged", "median gap", "largest gap", "flagged: label", "score",
            "score, low-quantile noise"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (st, imp), idx in sorted(groups.items()):
        idx = np.asarray(idx)
        f = idx[flagged[idx]]
        lab = [num(manifest[pred[i]["file"]]["label"]) for i in f] if st == "phantom" else []
        cells = [st, imp, len(idx), int(len(f)), f"{np.nanmedian(gap[idx]):.2f}", f"{np.nanmax(gap[idx]):.2f}",
                 f"{np.mean(lab):.2f}" if lab else "-", f"{np.mean(score[f]):.2f}" if len(f) else "-",
                 f"{np.mean(lifted[f]):.2f}" if len(f) else "-"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"\ncard recombines the stored scores to {np.nanmax(np.abs(score - stored)):.1e} (largest difference)")
    if a.csv is not None:
        with open(a.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["set", "file", "score", "noise", "noise_low_quantiles", "score_low_quantiles", "gap"])
            for i, r in enumerate(pred):
                w.writerow([r["set"], r["file"], score[i], ind["noise"][i], low[i], lifted[i], gap[i]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
