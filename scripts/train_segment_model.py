#!/usr/bin/env python
"""Train tomoqc's bundled D-LinkNet segmentation weights with one seeded command.

    python scripts/train_segment_model.py --realdata ../shared/realdata --out tomoqc/models/weights/ \\
        --seed 0 --kind phases
    python scripts/train_segment_model.py --realdata ../shared/realdata --out tomoqc/models/weights/ \\
        --seed 0 --kind binary

``phases``
    Three electrode phases (0 pore, 1 carbon-binder, 2 active material) on
    domain-randomised phantoms (:func:`tomoqc.phantom.random_params`), impaired on the fly
    in the image domain and, for a share of them, by simulated scans
    (:mod:`tomoqc.train.segdata`). Written as ``dlinknet_phases.keras`` + ``.json``.
``binary``
    Material vs void on the HTC2022 discs with the organisers' ground truth (measured
    sinograms, reconstructed at full quality and degraded: fewer photons, fewer angles,
    detector blur), disc ``td`` held out for validation, plus binary phantoms (carbon-binder
    or active material vs pore). Written as ``dlinknet_binary.keras`` + ``.json``.

The network is D-LinkNet34 at width 0.25 (every channel count a quarter of the paper's):
these weights are trained from scratch on a two-core CPU (about 40 minutes for ``binary``,
about 75 minutes for ``phases``), where the full-width network (31 M parameters) would not train in that
time; the width is in the card. The ``phases`` network adds the full-resolution skip of
:func:`tomoqc.models.dlinknet.build_dlinknet` (``full_res``) and weighs carbon-binder
pixels twice in the loss: the paper's finest features are at 1/4 resolution, which caps
the F1 of a carbon-binder film a few pixels thin near 0.7 however long it trains
(majority labels of 4x4 blocks score 0.68-0.70 against the exact ones).

``phases`` trains in two stages. The first (160 epochs, about 78 minutes) ends with the
carbon-binder film's edges a pixel off on clean slices: four draws in five are impaired
and its learning rate has decayed. The second (``FINETUNE``, seed + 1, in
``<work>/finetune``) starts from the first stage's best weights and trains 80 epochs on 640
fresh phantoms at learning rate 1e-4 (halved every 20 epochs) with three draws in five
left clean. ``--stage1-weights`` skips the first stage and fine-tunes the given weights
(with their card): the shipped weights were made so from the previous bundled ones, which
were this script's first stage.

Training runs in ``--work`` (default ``runs/segment_<kind>``) with a state saved
every epoch: rerunning the same command resumes. The weights are copied to ``--out``
only when the run has finished and its held-out metrics pass ``--min-iou`` (mean IoU over
the classes on the held-out data); otherwise the script says so and exits with code 1.

After training, the held-out data are evaluated once more in detail: for ``phases`` a
fresh, independently seeded test set of impaired phantoms, for ``binary`` each degraded
version of the held-out disc; both go into the card (``metrics.test``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

KINDS = {
    # kind: training options of tomoqc.train.segment.train_segment
    "phases": dict(classes=3, phantoms=320, phantom_size=256, physics_fraction=0.1, epochs=160, steps_per_epoch=50,
                   batch_size=8, crop=256, lr=5e-4, decay_epochs=32, full_res=True, class_weights=(1.0, 2.0, 1.0)),
    "binary": dict(classes=2, phantoms=160, phantom_size=256, physics_fraction=0.1, epochs=36, steps_per_epoch=50,
                   batch_size=8, crop=256, lr=5e-4, decay_epochs=12),
}
#: A second stage, started from the first stage's weights: more, fresh phantoms (seed + 1), a
#: lower learning rate and more unimpaired draws (the first stage leaves 1 in 5 draws clean
#: and ends with a carbon-binder film whose edges are a pixel off on clean slices).
FINETUNE = {
    "phases": dict(classes=3, phantoms=640, phantom_size=256, physics_fraction=0.1, epochs=80, steps_per_epoch=50,
                   batch_size=8, crop=256, lr=1e-4, decay_epochs=20, class_weights=(1.0, 2.0, 1.0),
                   clean_share=0.6),
}
MIN_IOU = {"phases": 0.5, "binary": 0.8}
DEFAULT_MINUTES = {"phases": 120.0, "binary": 38.0}
FINETUNE_MINUTES = 80.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, required=True, help="../shared/realdata (holds htc2022/)")
    ap.add_argument("--out", type=Path, default=Path("tomoqc/models/weights"))
    ap.add_argument("--kind", choices=sorted(KINDS), default="phases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="training folder (default runs/segment_<kind>)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training time budget (default 38 for binary, 120 for phases)")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--min-iou", type=float, default=None, help="held-out mean IoU needed to install the weights")
    ap.add_argument("--stage1-weights", type=Path, default=None,
                    help="phases: skip the first stage and fine-tune these weights (a first stage's best.keras "
                         "with its card)")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)

    from tomoqc.errors import TomoqcError

    try:
        return _run(a)
    except TomoqcError as err:
        print(f"train_segment_model: error: {err}", file=sys.stderr)
        return 1


def _run(a) -> int:
    import numpy as np

    from tomoqc.models.tiqa import file_sha256
    from tomoqc.train import common
    from tomoqc.train.segdata import htc2022_items, phantom_items
    from tomoqc.train.segment import evaluate_items, train_segment

    opts = dict(KINDS[a.kind])
    work = a.work or Path("runs") / f"segment_{a.kind}"
    work.mkdir(parents=True, exist_ok=True)
    realdata = a.realdata if a.kind == "binary" else None
    if a.kind == "binary":
        from tomoqc.train.segdata import htc2022_files

        htc2022_files(a.realdata)  # fail now, not after the phantoms, when the data are missing
    command = " ".join(["python", "scripts/train_segment_model.py", *sys.argv[1:]])
    if a.stage1_weights is not None and a.kind not in FINETUNE:
        print(f"train_segment_model: error: --stage1-weights: {a.kind} has one stage", file=sys.stderr)
        return 2
    stages = []  # (folder, options, minutes, seed, initial weights: None = the previous stage's best)
    if a.stage1_weights is None:
        stages.append((work, opts, a.minutes or DEFAULT_MINUTES[a.kind], a.seed, None))
    if a.kind in FINETUNE:
        stages.append((work / "finetune", FINETUNE[a.kind], FINETUNE_MINUTES, a.seed + 1, a.stage1_weights))
    history_s = 0.0
    for i, (folder, stage_opts, minutes, seed, init) in enumerate(stages):
        if i > 0 and init is None:
            init = res["best"]
        t0 = time.monotonic()
        res = train_segment(folder, realdata=realdata, width=a.width, dropout=a.dropout, seed=seed,
                            resume=common.has_state(folder), time_limit_s=60.0 * minutes, progress=a.progress,
                            command=command, init_weights=init, **stage_opts)
        history_s += sum(r["seconds"] for r in res["history"])
        print(f"stage {folder}: {time.monotonic() - t0:.0f} s, best validation mean IoU "
              f"{res['best_val_mean_iou']:.4f}", flush=True)
        if res["interrupted"] or res["card"].get("stopped_for_time"):
            print("interrupted or out of time: rerun the same command to resume; no weights installed")
            return 1

    import keras

    import tensorflow as tf

    model = keras.saving.load_model(res["best"], compile=False)
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)  # traced once, reused
    classes = opts["classes"]
    if a.kind == "phases":
        test = phantom_items(48, size=opts["phantom_size"], classes=3, seed=a.seed + 104729,
                             physics_fraction=opts["physics_fraction"], fixed=True, source="test phantoms")
        ev = evaluate_items(predict, test, classes=classes)
        test_metrics = {"set": "48 fresh phantoms (seed + 104729), one random impairment each", **ev}
        held = ev["all"]
    else:
        val_disc = res["card"]["data"]["htc2022"]["val_disc"]
        items = htc2022_items(a.realdata, discs=[val_disc], seed=a.seed)[val_disc]
        per = {}
        for it in items:
            e = evaluate_items(predict, [it], classes=classes)["all"]
            per[it.name] = {"f1": e["f1"], "iou": e["iou"], "mean_iou": e["mean_iou"]}
        ev = evaluate_items(predict, items, classes=classes)
        test_metrics = {"set": f"held-out HTC2022 disc {val_disc}, every degraded version", **ev,
                        "by_version": per}
        held = ev["all"]
    names = res["card"]["class_names"]
    for n, f, i in zip(names, held["f1"], held["iou"]):
        print(f"held-out {n}: F1 {f:.3f}  IoU {i:.3f}")
    print(f"held-out mean IoU {held['mean_iou']:.4f}")
    min_iou = MIN_IOU[a.kind] if a.min_iou is None else a.min_iou
    if not (np.isfinite(held["mean_iou"]) and held["mean_iou"] >= min_iou):
        print(f"held-out mean IoU below {min_iou}: weights NOT installed (they stay in {work})")
        return 1

    a.out.mkdir(parents=True, exist_ok=True)
    name = f"dlinknet_{a.kind}"
    dest = a.out / f"{name}.keras"
    tmp = a.out / f".{name}.partial.keras"
    shutil.copyfile(res["best"], tmp)
    os.replace(tmp, dest)
    card = dict(res["card"])
    card.pop("history", None)
    sha = file_sha256(dest)
    card.update({
        "weights": dest.name,
        "weights_sha256": sha,
        "model_id": f"dlinknet-{sha[:12]}",
        "kind_of_model": a.kind,
        "width_note": (f"encoder and decoder at width {a.width} (channels {a.width:g} x the paper's D-LinkNet34): "
                       "trained from scratch on a two-core CPU, where the full network (31 M parameters) would "
                       f"not train in that time ({history_s / 60:.0f} minutes in this run"
                       + (f", which fine-tuned the given first-stage weights "
                          f"{res['card']['initialised_from']['model_id']}" if a.stage1_weights else "")
                       + ")"
                       + ("; plus a full-resolution skip (not in the paper) that thin phases need"
                          if opts.get("full_res") else "")),
        "training_log": {"epochs_run": len(res["history"]) - 1, "log": "log.csv of the training folder"},
    })
    card["metrics"] = {**card["metrics"], "test": test_metrics}
    common.write_model_card(a.out / f"{name}.json", card)
    os.chmod(a.out / f"{name}.json", 0o644)  # readable like the weights (the atomic write makes it 0600)
    print(f"installed {dest} ({dest.stat().st_size / 1e6:.1f} MB) and {a.out / (name + '.json')}")
    print(json.dumps({"held_out": {"f1": held["f1"], "iou": held["iou"]}}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
