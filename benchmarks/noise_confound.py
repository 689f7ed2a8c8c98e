#!/usr/bin/env python
"""Which slices the noise-confound check flags, on a finished study run.

Usage::

    python benchmarks/noise_confound.py [--study S] [--realdata ../shared/realdata] [--model M.keras] [--csv OUT.csv]

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
that the card recombines the stored scores (largest difference). About 30 s on 2 cores.

With ``--realdata`` it also scores up to 7 slices along z of every real reconstruction of the
folder that is read as it is (:func:`tomoqc.realdata.reconstructed_volumes`: battery_xct,
imars3d, psi_shell, qbi, qim3d) with the model and prints, per volume, the slices flagged and
the largest gap. About 2 minutes more.
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
    ap.add_argument("--study", type=Path, default=None, help="a finished `tomoqc study --out` folder")
    ap.add_argument("--realdata", type=Path, default=None, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--model", type=Path, default=None, help="the TIQA model the study ran (default: bundled)")
    ap.add_argument("--csv", type=Path, default=None, help="write every image's row here")
    a = ap.parse_args(argv)

    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import load_model

    if a.study is None and a.realdata is None:
        ap.error("give --study, --realdata or both")
    if a.realdata is not None and not a.realdata.is_dir():
        print(f"error: {a.realdata}: real-data folder not found", file=sys.stderr)
        return 1
    model = load_model(a.model)
    terms = MeasuredTerms.from_card(model.card)
    if terms is None or not terms.weighs("noise"):
        print("error: the model card has no noise term", file=sys.stderr)
        return 1
    if a.study is not None and study_table(a.study, terms, a.csv) != 0:
        return 1
    if a.realdata is not None:
        real_volume_table(a.realdata, model)
    return 0


def real_volume_table(realdata: Path, model) -> None:
    """Flagged slices and the largest gap, per real reconstruction of the folder (7 slices along z)."""
    import tomoqc
    from tomoqc.models.tiqa import FLAG_NOISE_CONFOUNDED
    from tomoqc.realdata import reconstructed_volumes

    print("\n| real volume | slices | flagged | largest gap | median score |")
    print("|---|---|---|---|---|")
    for p in reconstructed_volumes(realdata):
        v = tomoqc.open_volume(p, axis="z")
        idx = sorted(set(np.linspace(0, v.shape[0] - 1, min(v.shape[0], 7)).astype(int)))
        res = model.score_slices(np.stack([np.asarray(v[i].values, np.float32) for i in idx]))
        flagged = int(np.count_nonzero(res["flags"] & FLAG_NOISE_CONFOUNDED))
        print(f"| {p.relative_to(realdata)} | {len(idx)} | {flagged} | {np.nanmax(res['noise_confound_gap']):.2f} | "
              f"{np.nanmedian(res['score']):.2f} |", flush=True)


def study_table(study: Path, terms, csv_path) -> int:
    """The table of the module text for a finished study run; 1 when the run lacks what it needs."""
    from tomoqc.dataset import read_manifest
    from tomoqc.metrics.nr import noise_index
    from tomoqc.models.measured import INDICATORS
    from tomoqc.models.tiqa import NOISE_CONFOUND_GAP
    from tomoqc.preprocess import normalize_slice_flagged

    pred_path = study / "predictions" / "tiqa.csv"
    if not pred_path.is_file():
        print(f"error: {pred_path}: not found (is {study} a finished study run?)", file=sys.stderr)
        return 1
    with open(pred_path, newline="") as fh:
        pred = list(csv.DictReader(fh))
    if not pred or "network" not in pred[0]:
        print(f"error: {pred_path}: no network scores stored (rerun the study with this version)", file=sys.stderr)
        return 1
    manifest = {r["file"]: r for r in read_manifest(study / "data")}
    num = lambda v: float(v) if v not in ("", None) else float("nan")  # noqa: E731
    network = np.array([num(r["network"]) for r in pred])
    stored = np.array([num(r["score"]) for r in pred])
    ind = {k: np.array([num(r.get(k)) for r in pred]) for k in INDICATORS if k in pred[0]}
    low = np.full(len(pred), np.nan)
    for i, r in enumerate(pred):
        path = study / "data" / r["file"] if r["set"] == "phantom" else study / r["file"]
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
    if csv_path is not None:
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["set", "file", "score", "noise", "noise_low_quantiles", "score_low_quantiles", "gap"])
            for i, r in enumerate(pred):
                w.writerow([r["set"], r["file"], score[i], ind["noise"][i], low[i], lifted[i], gap[i]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
