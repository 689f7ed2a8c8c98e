#!/usr/bin/env python
"""Training speed of the RankIQA baseline: steps per second by crop size and width.

    python benchmarks/rankiqa_speed.py [--data DIR] [--sizes 64 96] [--widths 1.0 0.0625] [--steps 4]

Each (size, width) runs :func:`tomoqc.models.rankiqa.train_rankiqa`, the path a study takes,
for two epochs of ``--steps`` steps in each stage; the first epoch absorbs the tracing, so
the speed is the second epoch's (``--steps`` / its seconds). A rank step is one batch of 4
rank blocks (24 crops, forward and backward); a fine-tune step is 16 crops. Without
``--data`` a small labelled phantom set is built first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def second_epoch_rate(history, stage: str) -> float:
    rows = [r for r in history if r["stage"] == stage]
    if len(rows) < 2:
        return float("nan")
    return rows[1]["steps"] / (rows[1]["seconds"] - rows[0]["seconds"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a labelled dataset (default: build a small one)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.0625])
    ap.add_argument("--steps", type=int, default=4, help="steps per timed epoch")
    args = ap.parse_args(argv)

    from benchmarks._sample import labelled_sample
    from tomoqc.models.rankiqa import train_rankiqa

    data = args.data or labelled_sample(references=4, size=128)
    print(f"{os.cpu_count()} CPU cores visible; {args.steps} steps per epoch, second epoch timed")
    print(f"{'size':>4} {'width':>7} {'rank steps/s':>12} {'crops/s':>8} {'finetune steps/s':>16} {'crops/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for width in args.widths:
                res = train_rankiqa(data, Path(tmp) / f"m{size}_{width}.keras", size=size, width=width,
                                    rank_epochs=2, finetune_epochs=2, steps_per_epoch=args.steps, seed=0,
                                    progress=False, check_blocks=0)
                h = res["card"]["history"]
                r, f = second_epoch_rate(h, "rank"), second_epoch_rate(h, "finetune")
                print(f"{size:>4} {width:>7.4g} {r:>12.3f} {24 * r:>8.1f} {f:>16.3f} {16 * f:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
