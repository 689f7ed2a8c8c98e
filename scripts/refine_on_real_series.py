#!/usr/bin/env python
"""Refine the bundled TIQA network on series of known order from real data (seeded).

    python scripts/refine_on_real_series.py --realdata ../shared/realdata --work /tmp/series_refine \
        [--init tomoqc/models/weights/tiqa_default.keras] [--crop 256] [--minutes 40] [--seed 2026]

Steps (each resumes or is skipped when its output exists):

1. series: :func:`tomoqc.train.series_refine.build_training_series` (real measured data
   degraded directly, float and 8-bit exports; real slices and phantoms re-projected and
   scanned again), cached in ``WORK/series.npz``;
2. refine: :func:`tomoqc.train.series_refine.refine_on_series` from ``--init`` (rank loss on
   the series, anchored on the parent's raw scores and severities), ``WORK/refine``.

3. install (``--install DIR``): ``DIR/tiqa_default.keras`` and its card, which keeps the
   parent's score calibration and severity baseline (the anchor keeps the raw outputs they
   were fitted on; the phantom table checks it), records this stage and its parent, and
   drops the parent's measured terms and trust statistics, fitted on another network;
   ``--evaluate DATA`` (a labelled phantom set, e.g. the one ``benchmarks/phantom_table.py``
   builds) writes the card's evaluation table.

The bundled model's last training stage (the shipped weights came from this script on the
previous release, ``--crop 256 --minutes 25``, 18 epochs, best at epoch 15;
``scripts/train_default_model.py`` runs the same stage as 4d). Measured on 2 cores:

* crops of 160 px (13 epochs, 8 min) left the held-out real series' pair accuracy where the
  parent had it (0.920) while the held-out simulated series fell from 0.890 to 0.807: such
  crops often miss the ring or column defect a series is about, so many pairs teach noise;
* crops of 256 px raised the held-out simulated series from 0.890 to 0.931 (real flat at
  0.920), and the network alone then orders the real series of
  ``benchmarks/real_orderings.py`` 0.877 against the parent's 0.847
  (``benchmarks/patch_side_orderings.py --model WORK/refine/best.keras --sides 224``).

The install keeps the parent's calibration and severity baseline; what depends on the
network's features is then refitted (stages 4f-4g of ``scripts/train_default_model.py``)::

    python scripts/fit_measured_terms.py --realdata ../shared/realdata --model DIR/tiqa_default.keras \
        --out WORK/terms --write-card
    python scripts/fit_trust.py --realdata ../shared/realdata --model DIR/tiqa_default.keras \
        --out DIR/tiqa_default.json --quantile 0.9 --tta 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=Path("series_refine_work"))
    ap.add_argument("--init", type=Path, default=REPO / "tomoqc" / "models" / "weights" / "tiqa_default.keras")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=40, help="batches per epoch")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--margin", type=float, default=0.3)
    ap.add_argument("--anchor-weight", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--image-rings", action="store_true",
                    help="also learn from image-domain ring series of the real reference slices "
                         "(cached in WORK/image_rings.npz)")
    ap.add_argument("--labelled", type=Path, default=None,
                    help="a labelled phantom dataset (tomoqc dataset build + tomoqc label) whose images, ordered by "
                         "label across impairments, join as a fourth source (tomoqc.train.series_refine.labelled_series)")
    ap.add_argument("--labelled-spacing", type=float, default=0.15, help="least label difference within such a series")
    ap.add_argument("--labelled-pooled", action="store_true",
                    help="draw each labelled series from the images of all references (pooled ranking), not one's")
    ap.add_argument("--labelled-val-references", type=int, default=6,
                    help="references of --labelled held out for validation")
    ap.add_argument("--val-extra", nargs="*", default=[],
                    help="more reference names to hold out for validation (besides VAL_SAMPLES)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--install", type=Path, default=None, help="folder to write tiqa_default.keras/.json into")
    ap.add_argument("--evaluate", type=Path, default=None,
                    help="labelled phantom dataset for the card's evaluation table (with --install)")
    a = ap.parse_args(argv)

    from tomoqc.logs import quiet_native_logs
    from tomoqc.train.series_refine import (VAL_SAMPLES, cached_series, cached_training_series, labelled_series,
                                            refine_on_series)

    quiet_native_logs()
    a.work.mkdir(parents=True, exist_ok=True)
    series = cached_training_series(a.realdata, a.work / "series.npz", seed=a.seed, log=log)
    if a.image_rings:
        from tomoqc.train.score_head import image_ring_series

        series = series + cached_series(a.work / "image_rings.npz",
                                        lambda: image_ring_series(a.realdata, seed=a.seed, log=log), log=log)
    val_labelled = []
    if a.labelled is not None:
        lab = labelled_series(a.labelled, spacing=a.labelled_spacing, seed=a.seed,
                              val_references=a.labelled_val_references, pooled=a.labelled_pooled)
        val_labelled = [s.name for s in lab if s.name.startswith("labelled-val:")]
        log(f"labelled series: {len(lab) - len(val_labelled)} to train on, {len(val_labelled)} held out "
            f"({a.labelled})")
        series = series + lab
    command = "python scripts/refine_on_real_series.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rec = refine_on_series(a.init, series, a.work / "refine", epochs=a.epochs, steps_per_epoch=a.steps,
                           crop=a.crop, margin=a.margin, val_samples=(*VAL_SAMPLES, *a.val_extra, *val_labelled),
                           anchor_weight=a.anchor_weight, lr=a.lr, seed=a.seed,
                           resume=a.resume, time_limit_s=a.minutes * 60, log=log, command=command)
    log(f"best validation pair accuracy {rec['best_val_accuracy']:.3f}: {rec['best']}")
    if rec["interrupted"]:
        return 3
    if a.install is not None:
        from tomoqc.train.install import install_stage

        install_stage(Path(rec["best"]), a.init, a.install, stage="series_refine",
                      record={k: v for k, v in rec.items() if k != "best"}, command=command,
                      description="refined on series of known quality order from real measured data, re-projected "
                                  "real slices and phantoms (tomoqc.train.series_refine), anchored on its own outputs",
                      evaluate=a.evaluate, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
