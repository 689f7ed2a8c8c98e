#!/usr/bin/env python
"""Refit the score head of the bundled TIQA network on labelled phantoms and series of known order (seeded).

    python scripts/refit_score_head.py --realdata ../shared/realdata --work /tmp/score_head \
        [--init tomoqc/models/weights/tiqa_default.keras] [--install DIR] [--evaluate DATA]

Steps (each resumes or is skipped when its output exists):

1. data: a labelled phantom set of its own (``--references 12 --seed 7373``, both domains,
   every impairment, labelled on the anchors of the parent's card:
   :func:`tomoqc.labels.labelled_phantom_set`; never the phantom table's seed-9001 set), the
   series of :func:`tomoqc.train.series_refine.build_training_series` (``WORK/series.npz``)
   and the image-domain ring series of real slices (:func:`tomoqc.train.score_head.image_ring_series`,
   ``--image-weight``);
2. features: the parent's pooled features of every valid grid patch of each image, as the
   scorer computes them (``WORK/features.pkl``);
3. refit: :func:`tomoqc.train.score_head.refit_score_head` (label term + series rank term +
   anchor on the starting weights; the step kept by held-out references and series), the
   network with the new head written to ``WORK/score_head.keras`` with ``WORK/record.json``;
4. install (``--install DIR``): ``DIR/tiqa_default.{keras,json}``
   (:func:`tomoqc.train.install.install_stage`); the card keeps the parent's calibration,
   severity head and baseline, and drops the measured terms and trust statistics, which are
   refitted on the installed network::

    python scripts/fit_measured_terms.py --realdata ../shared/realdata --model DIR/tiqa_default.keras \
        --out WORK/terms --write-card
    python scripts/fit_trust.py --realdata ../shared/realdata --model DIR/tiqa_default.keras \
        --out DIR/tiqa_default.json --quantile 0.9 --tta 1

About 15 minutes on 2 cores, most of it building the series and computing features.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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
    ap.add_argument("--work", type=Path, default=Path("score_head_work"))
    ap.add_argument("--init", type=Path, default=REPO / "tomoqc" / "models" / "weights" / "tiqa_default.keras")
    ap.add_argument("--references", type=int, default=12, help="labelled phantom references")
    ap.add_argument("--label-seed", type=int, default=7373, help="seed of the labelled phantom set")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--margin", type=float, default=0.1, help="rank margin, score units")
    ap.add_argument("--series-weight", type=float, default=1.0)
    ap.add_argument("--anchor-weight", type=float, default=0.01)
    ap.add_argument("--level-weight", type=float, default=0.0,
                    help="weight of the rank hinge on the labelled phantoms' levels (0: none)")
    ap.add_argument("--image-weight", type=float, default=1.0,
                    help="weight of the image-domain ring series of real slices against the real and the simulated "
                         "series' 1 each (0: left out)")
    ap.add_argument("--seed", type=int, default=20261130, help="seed of the series (as the series refinement)")
    ap.add_argument("--install", type=Path, default=None, help="folder to write tiqa_default.keras/.json into")
    ap.add_argument("--evaluate", type=Path, default=None,
                    help="labelled phantom dataset for the card's evaluation table (with --install)")
    a = ap.parse_args(argv)

    from tomoqc.errors import TomoqcError
    from tomoqc.labels import labelled_phantom_set
    from tomoqc.logs import quiet_native_logs
    from tomoqc.models.tiqa import file_sha256, load_model
    from tomoqc.train.common import atomic_write_text, save_keras_atomic
    from tomoqc.train.score_head import (image_ring_series, labelled_features, refit_score_head, series_features,
                                         set_head_weights)
    from tomoqc.train.series_refine import cached_training_series

    quiet_native_logs()
    if not a.realdata.is_dir():
        print(f"error: {a.realdata}: real-data folder not found", file=sys.stderr)
        return 1
    command = "python scripts/refit_score_head.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        model = load_model(a.init)
        a.work.mkdir(parents=True, exist_ok=True)
        data = labelled_phantom_set(a.work / f"labelled_{a.references}_{a.label_seed}", references=a.references,
                                    seed=a.label_seed, card=model.card, log=log)
        feats_path = a.work / "features.pkl"
        init_sha = file_sha256(a.init)
        feats = None
        if feats_path.is_file():
            with open(feats_path, "rb") as fh:
                feats = pickle.load(fh)
            if feats.get("init_sha256") != init_sha:
                log(f"{feats_path} was computed with another network: recomputing")
                feats = None
        if feats is None:
            series = cached_training_series(a.realdata, a.work / "series.npz", seed=a.seed, log=log)
            feats = {"init_sha256": init_sha, "labelled": labelled_features(model, data, log=log),
                     "series": series_features(model, series, log=log)}
            _save(feats, feats_path)
        if a.image_weight > 0 and "image" not in feats:  # a cache from before the image-domain rings
            feats["image"] = series_features(model, image_ring_series(a.realdata, seed=a.seed, log=log), log=log)
            _save(feats, feats_path)
        series = feats["series"] + (feats.get("image", []) if a.image_weight > 0 else [])
        rec = refit_score_head(model, feats["labelled"], series, steps=a.steps, lr=a.lr, margin=a.margin,
                               series_weight=a.series_weight, anchor_weight=a.anchor_weight,
                               level_weight=a.level_weight, image_weight=a.image_weight, log=log)
    except TomoqcError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    weights = rec.pop("weights")
    rec.pop("initial")
    set_head_weights(model.model, weights)
    out = a.work / "score_head.keras"
    save_keras_atomic(model.model, out)
    rec.update({"stage": "score_head", "init": str(a.init), "init_sha256": init_sha, "command": command,
                "data": {"labelled": {"references": a.references, "seed": a.label_seed, "size": 256,
                                      "domains": ["image", "physics"], "path": str(data)},
                         "series_seed": a.seed}})
    atomic_write_text(a.work / "record.json", json.dumps(rec, indent=2, default=float) + "\n")
    b = rec["best"]
    log(f"kept step {b['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in b.items() if k.startswith("val")))
    if a.install is not None:
        from tomoqc.train.install import install_stage

        install_stage(out, a.init, a.install, stage="score_head", record=rec, command=command,
                      description="its score head refitted on frozen features to phantom labels and series of "
                                  "known order together (tomoqc.train.score_head)",
                      evaluate=a.evaluate, log=log)
    return 0


def _save(feats: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        pickle.dump(feats, fh)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
