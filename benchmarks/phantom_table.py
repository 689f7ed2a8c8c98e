"""The bundled model on unseen phantoms: agreement with the labels and the named impairment.

Builds (once) a labelled phantom set from fresh seeds - both distortion domains, mixtures,
and in the physics domain the fourth impairment, ``streak`` (too few projections) - labels
it on the anchors recorded in the model card (as the model's own training data were
labelled), and prints, per domain and impairment: SROCC and PLCC of the score against the
label, SROCC against the level within each reference, and the share of single-impairment
images at level >= 2 whose largest severity names their impairment. The same table with the
network alone (no measured terms) follows, then the median label and score per impairment
and level (:func:`format_levels`), which shows where pooling the impairments loses order.

Run: ``.venv/bin/python benchmarks/phantom_table.py [--references 12] [--seed 9001] [--out DIR]
[--model M.keras] [--write-card]`` (about 5 minutes to build and label 12 references, 2 minutes
per table, on 2 cores). ``--write-card`` records both tables as the ``evaluation`` entry of the
model's card (the last step of making a card, after its measured terms and trust).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def labelled_set(out: Path, references: int, seed: int, model) -> Path:
    """``out/data_<references>_<seed>``: phantoms of both domains with the fourth impairment,
    labelled on the anchors of ``model``'s card as its training data were; built once
    (:func:`tomoqc.labels.labelled_phantom_set`)."""
    from tomoqc.labels import labelled_phantom_set

    return labelled_phantom_set(Path(out) / f"data_{references}_{seed}", references=references, seed=seed,
                                card=model.card)


def format_levels(with_terms: list, network: list) -> str:
    """Median label and score per domain, impairment and level, with the terms and without.

    Pooling the impairments onto one label scale needs each impairment's score to fall as
    far as its labels do; this table shows, level by level, where the score falls short
    (a median score above the median label) or overshoots.
    """
    import numpy as np

    net = {p["file"]: p["pred"] for p in network}
    groups: dict = {}
    for p in with_terms:
        if p["distortion"] == "mixed":
            continue
        groups.setdefault((p["domain"], p["distortion"], p["level"]), []).append(p)
    lines = ["median per level (single impairments)",
             f"{'domain':<8} {'impairment':<10} {'level':>5} {'n':>4} {'label':>7} {'network':>8} {'with terms':>11}"]
    for (dom, dist, lv), items in sorted(groups.items()):
        lab = np.median([p["label"] for p in items])
        alone = np.median([net[p["file"]] for p in items])
        full = np.median([p["pred"] for p in items])
        lines.append(f"{dom:<8} {dist:<10} {lv:>5} {len(items):>4} {lab:>7.2f} {alone:>8.2f} {full:>11.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--references", type=int, default=12)
    ap.add_argument("--seed", type=int, default=9001, help="phantom seed (9001: the card's evaluation seed)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "phantom_table")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--write-card", action="store_true",
                    help="record the tables as the 'evaluation' entry of the model's card")
    args = ap.parse_args(argv)

    from tomoqc.models.tiqa import load_model
    from tomoqc.train.finetune import evaluate_dataset, format_table

    model = load_model(args.model)
    d = labelled_set(args.out, args.references, args.seed, model)
    ev = evaluate_dataset(model, d)
    print(f"model {model.model_id} with its measured terms, {args.references} fresh references (seed {args.seed})")
    print(format_table(ev["table"]))
    terms, model.measured_terms = model.measured_terms, None
    net = evaluate_dataset(model, d)
    model.measured_terms = terms
    print("\nthe network alone (calibrated; the severities of noise, blur and ring are its head's)")
    print(format_table(net["table"]))
    print("\n" + format_levels(ev["per_image"], net["per_image"]))
    (args.out / "phantom_table.json").write_text(json.dumps({"with_terms": ev["table"], "network": net["table"]},
                                                            indent=1, default=float))
    if args.write_card:
        write_evaluation(model.path.with_suffix(".json"), ev["table"], net["table"],
                         references=args.references, seed=args.seed)
    return 0


def write_evaluation(card_path: Path, with_terms: list, network: list, *, references: int, seed: int) -> None:
    """Record the two tables as the card's ``evaluation`` entry (written atomically; every other key kept)."""
    from tomoqc.train.common import atomic_write_text

    card = json.loads(card_path.read_text())
    card["evaluation"] = {
        "sampling": "grid", "severity": "measured from severity_baseline",
        "data": f"{references} fresh phantom references, seed {seed} (python benchmarks/phantom_table.py)",
        "table": network, "table_with_measured_terms": with_terms,
        "note": "table: the network alone (calibrated); table_with_measured_terms: the score as reported",
    }
    atomic_write_text(card_path, json.dumps(card, indent=2, default=float) + "\n")
    print(f"wrote evaluation into {card_path}")


if __name__ == "__main__":
    sys.exit(main())
