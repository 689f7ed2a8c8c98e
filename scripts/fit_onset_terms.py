#!/usr/bin/env python
"""Fit the onset terms of a TIQA model (tomoqc.train.onset_terms: limited angle and sparse
views) and write them into its card's measured terms.

Usage::

    python scripts/fit_onset_terms.py --out onset-out [--terms wedge,spacing] \
        [--model tomoqc/models/weights/tiqa_default.keras] [--references 12] [--seed 20261202] \
        [--realdata ../shared/realdata] [--write-card]

Seeded; about 1-2 minutes per term on 2 cores, 3 more with ``--realdata``. The sparse-view
term is fitted to order series, and with ``--realdata`` its measured HTC2022 series
(:data:`tomoqc.train.onset_terms.HTC_FIT_DISCS`) join the phantom ones; the bundled card's
term was fitted with them. Each fit (series, weight, target errors, mean scores per level,
every image's row) is written to ``--out/<term>_term.json``; with ``--write-card`` the card's
``measured_terms`` gain ``weights.<term>``, ``typical.<term>``, ``onset``, ``holds.<term>``
and ``<term>_fit``, the other terms unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tomoqc.train.onset_terms import ONSET_DEGREES, ONSET_SEED

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("onset-out"), help="folder for <term>_term.json")
    ap.add_argument("--terms", default=",".join(ONSET_DEGREES), help="comma-separated onset terms to fit")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--references", type=int, default=12, help="phantom slices, each scanned at 6 levels")
    ap.add_argument("--seed", type=int, default=ONSET_SEED)
    ap.add_argument("--realdata", type=Path, default=None,
                    help="the real-data folder (../shared/realdata): measured sparse-view series join the order fit")
    ap.add_argument("--write-card", action="store_true", help="write the terms into the model's card")
    args = ap.parse_args(argv)

    from tomoqc.errors import TomoqcError
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import default_weights_path, load_model
    from tomoqc.train.common import atomic_write_text
    from tomoqc.train.onset_terms import fit_onset_term

    names = [n.strip() for n in args.terms.split(",") if n.strip()]
    try:
        unknown = [n for n in names if n not in ONSET_DEGREES]
        if unknown or not names:
            raise TomoqcError(f"--terms: unknown onset term(s) {', '.join(unknown) or '(none)'}; "
                              f"choose from {', '.join(ONSET_DEGREES)}")
        model = load_model(args.model)
        weights = Path(default_weights_path() if args.model is None else args.model)
        card_path = weights.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        terms = MeasuredTerms.from_card(card)
        if args.write_card and terms is None:
            raise TomoqcError(f"{card_path}: the card has no measured terms to add the onset terms to")
        entries = {}
        for name in names:
            entries[name] = fit_onset_term(model, name, references=args.references, seed=args.seed,
                                           realdata=args.realdata)
    except TomoqcError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    command = "python scripts/fit_onset_terms.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, entry in entries.items():
        entry["fit"]["command"] = command
        atomic_write_text(args.out / f"{name}_term.json", json.dumps(entry, indent=2) + "\n")
    if args.write_card:
        for name, entry in entries.items():
            terms = terms.with_term(name, entry["weight"], entry["typical"], onset=name not in terms.onset,
                                    info={f"{name}_fit": entry["fit"]}, holds=entry.get("holds", ()))
        card["measured_terms"] = terms.to_card()
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
        print(f"wrote the {', '.join(entries)} term(s) into {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
