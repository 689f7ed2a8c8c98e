#!/usr/bin/env python
"""Fit the measured terms of a TIQA model (tomoqc.train.measured) and write them into its card.

Usage::

    python scripts/fit_measured_terms.py --realdata ../shared/realdata --out fit-out \
        [--model tomoqc/models/weights/tiqa_default.keras] [--write-card]

The series, what is fitted and what is left out are described in :mod:`tomoqc.train.measured`.
Seeded; about 10 minutes on 2 cores (scored tables are cached in ``--out``, a rerun only refits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tomoqc.train.measured import BALANCE, BALANCES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--out", type=Path, default=Path("fit-out"), help="folder for the scored tables")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--phantoms", type=int, default=6, help="phantom references")
    ap.add_argument("--labelled", type=Path, nargs="*", default=[],
                    help="labelled dataset folders (tomoqc dataset build + tomoqc label) for the label term")
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--balance", choices=BALANCES, default=BALANCE,
                    help="weigh every pair alike, or every series kind alike, inside the real and the simulated "
                         "half (tomoqc.train.measured.pair_weights)")
    ap.add_argument("--write-card", action="store_true", help="write measured_terms into the model's card")
    args = ap.parse_args(argv)

    from tomoqc.errors import TomoqcError
    from tomoqc.models.tiqa import default_weights_path, load_model
    from tomoqc.train.measured import fit_card_terms
    from tomoqc.train.common import atomic_write_text

    if not args.realdata.is_dir():
        print(f"error: {args.realdata}: real-data folder not found", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model)
    except TomoqcError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    entry = fit_card_terms(model, args.realdata, args.out, labelled=args.labelled, phantoms=args.phantoms,
                           seed=args.seed, balance=args.balance)
    entry["command"] = "python scripts/fit_measured_terms.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measured_terms.json").write_text(json.dumps(entry, indent=2) + "\n")
    if args.write_card:
        weights = default_weights_path() if args.model is None else args.model
        card_path = Path(weights).with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["measured_terms"] = entry
        card.pop("ring_term", None)  # superseded by the measured ring term
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
        print(f"wrote measured_terms into {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
