"""Does the network order real series better when it scores smaller patches?

    python benchmarks/patch_side_orderings.py [--out bench-out/real_orderings] [--sides 64 96 128 224]

Uses the images and manifest that ``benchmarks/real_orderings.py`` builds (run it first:
it writes ``manifest.csv`` and ``images/`` under ``--out``). For every patch side, the
model is scored as if its card said ``test_time_sampling.patch = side``
(:func:`tomoqc.models.tiqa.patch_from_card`): the network alone, calibrated, without the
measured terms (their weights were fitted at the card's own side) and without the
out-of-distribution tests (idem), one test-time view. Pair accuracy per kind and overall,
counted as in ``real_orderings.pair_accuracy`` (within-group pairs of one format, ties 0.5).

This measures a direction, not a release: a model that scores at another side needs its
calibration, measured terms and trust statistics fitted at that side. Writes
``patch_sides.csv`` under ``--out`` (one network score per image and side).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/real_orderings"),
                    help="folder of benchmarks/real_orderings.py (manifest.csv, images/)")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (default: the bundled one)")
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 96, 128, 224])
    a = ap.parse_args(argv)

    from real_orderings import KINDS, _read_image, pair_accuracy

    from tomoqc.logs import quiet_native_logs
    from tomoqc.models.tiqa import TiqaModel, load_model

    manifest = a.out / "manifest.csv"
    if not manifest.is_file():
        print(f"patch_side_orderings: error: {manifest}: not found (run benchmarks/real_orderings.py first)",
              file=sys.stderr)
        return 1
    quiet_native_logs()
    with open(manifest) as fh:
        rows = [dict(r, rank=int(r["rank"])) for r in csv.DictReader(fh)]
    images = [_read_image(r["path"]) for r in rows]
    base = load_model(a.model)
    table = {}
    for side in a.sides:
        card = dict(base.card)
        card["test_time_sampling"] = {**(card.get("test_time_sampling") or {}), "patch": int(side)}
        model = TiqaModel(base.model, path=base.path, card=card, tta_views=1)
        t0 = time.monotonic()
        col = f"network_{side}"
        for r, img in zip(rows, images):
            res = model.score_slices(img, measured_terms=False, ood=False, tta=1)
            r[col] = float(res["network_score"][0])
        acc = {}
        for kind in (*KINDS, "ALL"):
            sel = [r for r in rows if kind == "ALL" or r["kind"] == kind]
            good, n = pair_accuracy(sel, col)
            acc[kind] = (good / n if n else float("nan"), n)
        table[side] = acc
        print(f"side {side}: scored {len(rows)} images in {time.monotonic() - t0:.0f} s", flush=True)

    print(f"\nnetwork alone (calibrated, no measured terms), pair accuracy; model {base.model_id}")
    print("side  " + "".join(f"{k:>9s}" for k in (*KINDS, "ALL")))
    for side, acc in table.items():
        print(f"{side:4d}  " + "".join(f"{acc[k][0]:9.3f}" for k in (*KINDS, "ALL")))
    print("pairs " + "".join(f"{table[a.sides[0]][k][1]:9d}" for k in (*KINDS, "ALL")))
    out_csv = a.out / "patch_sides.csv"
    fields = ["group", "kind", "rank", "format", "path", *[f"network_{s}" for s in a.sides]]
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
