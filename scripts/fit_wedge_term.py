#!/usr/bin/env python
"""Fit the limited-angle (missing-wedge) term of a TIQA model (tomoqc.train.wedge_term) and
write it into its card's measured terms.

Usage::

    python scripts/fit_wedge_term.py --out wedge-out [--model tomoqc/models/weights/tiqa_default.keras] \
        [--references 12] [--seed 20261202] [--write-card]

Seeded, no real data needed; about 2 minutes on 2 cores. The fit (series, weight, target
errors, mean scores per arc) is written to ``--out/wedge_term.json``; with ``--write-card``
the card's ``measured_terms`` gain ``weights.wedge``, ``typical.wedge``, ``onset`` and
``wedge_fit``, the other terms unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tomoqc.train.wedge_term import WEDGE_SEED

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("wedge-out"), help="folder for wedge_term.json")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--references", type=int, default=12, help="phantom slices, each scanned over 6 arcs")
    ap.add_argument("--seed", type=int, default=WEDGE_SEED)
    ap.add_argument("--write-card", action="store_true", help="write the term into the model's card")
    args = ap.parse_args(argv)

    from tomoqc.errors import TomoqcError
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import default_weights_path, load_model
    from tomoqc.train.common import atomic_write_text
    from tomoqc.train.wedge_term import fit_wedge_term

    try:
        model = load_model(args.model)
        weights = Path(default_weights_path() if args.model is None else args.model)
        card_path = weights.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        terms = MeasuredTerms.from_card(card)
        if args.write_card and terms is None:
            raise TomoqcError(f"{card_path}: the card has no measured terms to add the wedge term to")
        entry = fit_wedge_term(model, references=args.references, seed=args.seed)
    except TomoqcError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    entry["fit"]["command"] = "python scripts/fit_wedge_term.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "wedge_term.json", json.dumps(entry, indent=2) + "\n")
    if args.write_card:
        new = terms.with_term("wedge", entry["weight"], entry["typical"], onset=True, info={"wedge_fit": entry["fit"]})
        card["measured_terms"] = new.to_card()
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
        print(f"wrote the wedge term into {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
