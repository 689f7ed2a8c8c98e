#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""What the measured terms' overall strength does: real orderings against label agreement.

Usage::

    python benchmarks/term_strength.py --realdata ../shared/realdata --work DIR [--model M.keras]

The measured terms' pair fit (``scripts/fit_measured_terms.py``) fixes how the absolute terms
(noise, blur, ring, streak) weigh against each other, but ordering pairs asks only that they
be strong enough. This benchmark scales them together
(:meth:`tomoqc.models.measured.MeasuredTerms.scaled`, relative and onset terms unchanged)
and prints, per factor (:func:`tomoqc.train.measured.term_strength_table`):

* the pair accuracy on the terms' own fit series (:func:`tomoqc.train.measured.fit_tables`):
  real measured data degraded directly, real slices scanned again, phantoms scanned again
  and impaired in the image domain;
* the pair accuracy on the real slices of the fit impaired in the image domain
  (:func:`tomoqc.train.measured.image_series`, the report's recipes; cached in
  ``DIR/real_image_series.csv``), per impairment;
* SROCC and PLCC against the labels of 12 labelled phantom references (seed 2026: the first
  references of the bundled card's training set, labelled on its anchors,
  :func:`tomoqc.labels.labelled_phantom_set`).

Every set is training data of the card: no sample or reference of the study or of the
real-orderings benchmark is used. Writes ``DIR/term_strength.csv`` and ``DIR/term_strength.png``.
About 20 minutes on 2 cores the first time (scoring the series); a rerun reads the cached tables.

With ``--study S`` (a finished ``tomoqc study --out S`` run on the same card), it also
recombines that run's stored network scores and indicators (``S/predictions/tiqa.csv``) with
the scaled terms and prints, per factor, Table 2's TIQA row: SROCC and PLCC (after the
VQEG's 4-parameter logistic) against the labels of the test references, and the pair
accuracy on the real series of known order. At factor 1 it gives back the run's own row.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FACTORS = (0.1, 0.18, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
LABEL_SEED = 2026
LABEL_REFERENCES = 12


def real_image_rows(model, realdata: Path, path: Path, *, seed: int = 20261130) -> list:
    """The fit's real reference slices, each impaired in the image domain at every level (cached)."""
    from tomoqc.models.measured import measure_indicators
    from tomoqc.train.measured import SIZE, read_rows, write_rows, image_series, reference_slices

    if path.is_file():
        return read_rows(path)
    rows = []
    rng = np.random.default_rng(seed + 1)
    centre = ((SIZE - 1) / 2.0, (SIZE - 1) / 2.0)
    t0 = time.time()
    for name, img in reference_slices(realdata, 0, seed):
        for kind, imgs in image_series(img, rng).items():
            res = model.score_slices(np.stack(imgs), measured_terms=False, tta=1, ood=False, measure=False)
            for lv, a in enumerate(imgs):
                rows.append({"reference": f"{name} (image domain)", "kind": kind, "level": lv,
                             "network": float(res["score"][lv]), "label": float("nan"),
                             **measure_indicators(a, ring_center=centre)})
        print(f"{name}: image-domain series scored ({time.time() - t0:.0f} s)", flush=True)
    write_rows(path, rows)
    return rows


def study_rows(study: Path, terms, factors) -> list[dict]:
    """Table 2's TIQA figures of a finished study run with the absolute terms scaled by each factor."""
    import json

    from tomoqc.dataset import read_manifest
    from tomoqc.metrics import stats
    from tomoqc.models.measured import INDICATORS
    from tomoqc.study import LOGISTIC_KIND, pair_accuracy

    pred_path = study / "predictions" / "tiqa.csv"
    pred = read_rows_text(pred_path)
    if not pred or "network" not in pred[0]:
        raise SystemExit(f"error: {pred_path}: no network scores stored (rerun the study with this version)")
    split = json.loads((study / "study.json").read_text())["split"]
    test = set(split["test"])
    manifest = {r["file"]: r for r in read_manifest(study / "data")}
    orderings = {r["file"]: r for r in read_rows_text(study / "real" / "orderings.csv")}
    num = lambda v: float(v) if v not in ("", None) else float("nan")  # noqa: E731
    network = np.array([num(r["network"]) for r in pred])
    ind = {k: np.array([num(r.get(k)) for r in pred]) for k in INDICATORS if k in pred[0]}
    ph = np.array([r["set"] == "phantom" and manifest.get(r["file"], {}).get("reference") in test for r in pred])
    label = np.array([num(manifest[r["file"]]["label"]) if ph[i] else np.nan for i, r in enumerate(pred)])
    od = [i for i, r in enumerate(pred) if r["set"] == "ordering" and r["file"] in orderings]
    out = []
    for f in factors:
        s = terms.scaled(f).combine(network, ind)
        a, b = s[ph], label[ph]
        fit = stats.logistic_fit(a, b, kind=LOGISTIC_KIND)
        acc, n = pair_accuracy(s[od], [int(float(orderings[pred[i]["file"]]["rank"])) for i in od],
                               [orderings[pred[i]["file"]]["group"] for i in od])
        out.append({"factor": f, "ALL SROCC": stats.srocc(a, b), "ALL PLCC": stats.plcc(fit(a), b),
                    "real pairs": acc, "pairs": n, "images": int(ph.sum())})
    return out


def read_rows_text(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/term_strength"), help="folder for sets and tables")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--factors", type=float, nargs="+", default=list(FACTORS), help="factors on the absolute terms")
    ap.add_argument("--study", type=Path, default=None, help="a finished tomoqc study run to recombine (Table 2)")
    args = ap.parse_args(argv)

    from tomoqc.labels import labelled_phantom_set
    from tomoqc.models.tiqa import load_model
    from tomoqc.train.measured import PAIR_SETS, fit_tables, term_strength_table

    if not args.realdata.is_dir():
        print(f"error: {args.realdata}: real-data folder not found", file=sys.stderr)
        return 1
    model = load_model(args.model)
    if model.measured_terms is None:
        print("error: the model card has no measured terms", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    lab = labelled_phantom_set(args.work / f"labelled_{LABEL_REFERENCES}_{LABEL_SEED}", references=LABEL_REFERENCES,
                               seed=LABEL_SEED, card=model.card)
    rows, real_rows, lab_rows = fit_tables(model, args.realdata, args.work, labelled=[lab])
    img_rows = real_image_rows(model, args.realdata, args.work / "real_image_series.csv")
    table = term_strength_table(model.measured_terms, rows + real_rows + lab_rows + img_rows, args.factors)

    img_kinds = ("img_noise", "img_blur", "img_ring")
    # the image-domain kinds of the real slices alone (the table above pools them with the phantoms')
    real_img = {t["factor"]: t["pairs_by_kind"] for t in term_strength_table(model.measured_terms, img_rows, args.factors)}
    head = ["factor", *PAIR_SETS, *(f"real slices, {k}" for k in img_kinds), "labels SROCC", "labels PLCC"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    out = []
    for t in table:
        vals = [t["factor"], *(t[s] for s in PAIR_SETS), *(real_img[t["factor"]].get(k, np.nan) for k in img_kinds),
                t["label_srocc"], t["label_plcc"]]
        out.append(dict(zip(head, vals)))
        print("| " + " | ".join(f"{v:.2f}" if i == 0 else f"{v:.3f}" for i, v in enumerate(vals)) + " |")
    with open(args.work / "term_strength.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=head)
        w.writeheader()
        w.writerows(out)
    _plot(out, head, args.work / "term_strength.png")
    print(f"\nwrote {args.work / 'term_strength.csv'} and {args.work / 'term_strength.png'}")
    if args.study is not None:
        rows_s = study_rows(args.study, model.measured_terms, args.factors)
        print(f"\nTable 2's TIQA row of {args.study} with the terms scaled "
              f"({rows_s[0]['images']} test images, {rows_s[0]['pairs']} real pairs):\n")
        print("| factor | ALL SROCC | ALL PLCC | real pairs |")
        print("|---|---|---|---|")
        for r in rows_s:
            print(f"| {r['factor']:.2f} | {r['ALL SROCC']:.3f} | {r['ALL PLCC']:.3f} | {r['real pairs']:.3f} |")
    return 0


def _plot(rows: list, head: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["factor"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in head[1:]:
        ax.plot(x, [r[k] for r in rows], marker="o", ms=3, label=k)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("factor on the absolute measured terms (1: the card)")
    ax.set_ylabel("pair accuracy / correlation")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
