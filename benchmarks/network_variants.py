#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""What more the TIQA network itself gives Table 2: test-time views, and fine-tuning on the train split.

Usage::

    python benchmarks/network_variants.py --study S [--work DIR] [--views 1 2 4 8]
                                          [--finetune-epochs N] [--finetune-lr LR]
                                          [--network M.keras ...] [--zoom Z ...]

``S`` is a finished ``tomoqc study --out S`` run. ``benchmarks/last_stage_ceiling.py``
changes only what follows the network; this benchmark changes the network's reading:

* **test-time views**: each image's network score averaged over the first K of the eight
  symmetries of the square (:data:`tomoqc.models.tiqa.TTA_VIEWS`, applied to the whole image;
  the product scores with the first view and uses the others for the uncertainty);
* **fine-tuned on the train split** (``--finetune-epochs N``): the run's network trained
  further, as the baselines are trained, on the study's train references only
  (:func:`tomoqc.train.finetune.train_finetune` with ``references=``; its last two train
  references validate, the group and rank terms on), then every image scored again. Its
  reading is its own score head's, which ``train_finetune`` first maps linearly onto the train
  labels; the bundled card's score calibration does not apply to it, so only the network
  alone and the refitted terms are shown for it.
* **another network** (``--network M.keras``, each with its card beside it): e.g. the bundled
  network with its score head refitted on more labelled phantoms
  (``scripts/refit_score_head.py --references 48 --label-seed 5151 --install DIR``, then
  ``--network DIR/tiqa_default.keras``). Its card's calibration applies; the bundled card's
  measured terms were fitted on another reading, so again only the network alone and the
  refitted terms are shown.
* **another scale** (``--zoom Z``): every image magnified Z times (cubic spline) before the
  run's network reads it, alone and with the 1x reading (the mean of their logits): a second
  scale, as BRISQUE reads its features at two.

For each reading it prints the network alone, the card's own measured terms on it and the
terms refitted on the train references (Table 2's fitted row), scored as Table 2 (ALL SROCC,
PLCC after the VQEG logistic, on the test references; pair accuracy on the real series),
beside the trained baselines. A second table shows where the fitted row and BRISQUE-SVR
err: the mean absolute error after each one's logistic map, per domain and distortion.

Network scores are cached in ``DIR`` (keyed by the weights' SHA-256 and the run's images),
the fine-tuning in ``DIR/finetune`` (it resumes; other settings start it again). Scoring is about 0.15 s per image and view
on 2 cores; a fine-tuning epoch of a 12-reference split about 3 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def network_readings(run, model_path, views: int, cache: Path, zoom: float = 1.0) -> np.ndarray:
    """The network score of ``run``'s phantom and real-ordering images under views 0..views-1,
    (n, views) with NaN for its other rows, cached; with ``zoom`` != 1 each image is first
    resampled by that factor (cubic spline, :func:`scipy.ndimage.zoom`)."""
    from tomoqc.models.tiqa import _view, load_model

    from _study_run import read_cache, write_cache

    from scipy import ndimage

    model = load_model(model_path)
    key = run.cache_key(model) + (f":zoom{zoom:g}" if zoom != 1 else "")
    done = read_cache(cache, key, "scores")
    if done is None:
        done = np.zeros((len(run.pred), 0))
    if done.shape[1] >= views:
        return done[:, :views]
    out = np.full((len(run.pred), views), np.nan)
    out[:, : done.shape[1]] = done
    used = set(np.flatnonzero(run.tr | run.te)) | set(run.od)  # the HTC2022 rows are not evaluated here
    t0 = time.time()
    for i in range(len(run.pred)):
        if i not in used:
            continue
        img = run.image(i)
        if zoom != 1:
            img = ndimage.zoom(np.asarray(img, np.float64), zoom, order=3).astype(np.float32)
        for k in range(done.shape[1], views):
            v = np.ascontiguousarray(_view(img[None], k)[0])
            res = model.score_slices(v[None], tta=1, ood=False, measure=False, measured_terms=False)
            out[i, k] = float(res["network_score"][0])
        if (i + 1) % 100 == 0 or i + 1 == len(run.pred):
            print(f"  {cache.stem}: {i + 1}/{len(run.pred)} images ({time.time() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    write_cache(cache, key, "scores", out)
    return out


def finetuned_weights(run, work: Path, epochs: int, lr: float) -> Path:
    """The run's network fine-tuned on the study's train references (its last two validate).

    Kept in ``work/finetune`` with the settings it was made with (``settings.json``): a
    finished fine-tuning with the same study, split, model, epochs and learning rate is reused,
    an unfinished one resumed, one made otherwise started again. An interrupted fine-tuning is
    not scored (``SystemExit``; rerun to resume)."""
    import json
    import shutil

    from tomoqc.models.tiqa import default_weights_path
    from tomoqc.train.finetune import train_finetune

    out = work / "finetune"
    init = Path(run.model) if run.model else default_weights_path()
    train = sorted(run.train)
    settings = {"study": str(run.root.resolve()), "train": train, "init": str(init.resolve()), "epochs": epochs,
                "lr": lr}
    key = out / "settings.json"
    if out.exists() and (not key.is_file() or json.loads(key.read_text()) != settings):
        shutil.rmtree(out)  # made with other settings
    log = out / "log.csv"
    if (out / "best.keras").is_file() and log.is_file() and len(log.read_text().splitlines()) - 2 == epochs:
        return out / "best.keras"  # finished before (the log has a header and epoch 0)
    out.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(settings))
    size = min(np.load(run.root / "data" / next(iter(run.manifest))).shape)
    res = train_finetune(run.root / "data", out, init=init, epochs=epochs, batch_size=16, crop=min(224, size), lr=lr,
                         decay_epochs=3, group_weight=1.0, rank_weight=0.5, references=train,
                         val_references=train[-2:], patience=epochs, seed=0, progress=True,
                         resume=(out / "state").exists())
    if res.get("interrupted"):
        raise SystemExit(f"error: {out}: the fine-tuning was interrupted; rerun to resume it")
    return out / "best.keras"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, required=True, help="a finished tomoqc study run")
    ap.add_argument("--work", type=Path, default=Path("bench-out/network_variants"), help="cache folder")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2], help="test-time views to average (1-8)")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune on the train split (0: skip)")
    ap.add_argument("--finetune-lr", type=float, default=2e-5)
    ap.add_argument("--network", type=Path, nargs="*", default=[],
                    help="other TIQA networks (.keras with their .json card) to read the run's images with")
    ap.add_argument("--zoom", type=float, nargs="*", default=[],
                    help="also read every image magnified by these factors (one view), alone and with the "
                         "1x reading (their logits averaged)")
    args = ap.parse_args(argv)
    if not args.views or min(args.views) < 1 or max(args.views) > 8:
        raise SystemExit(f"error: --views must lie in 1-8, got {args.views}")
    if any(not 0.25 <= z <= 4 for z in args.zoom):
        raise SystemExit(f"error: --zoom must lie in 0.25-4, got {args.zoom}")
    if args.finetune_epochs < 0:
        raise SystemExit(f"error: --finetune-epochs must be >= 0, got {args.finetune_epochs}")
    for path in args.network:
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise SystemExit(f"error: {path}: not a TIQA network with its card (.keras and .json)")

    from tomoqc.metrics import stats
    from tomoqc.models.measured import _logit_score, _score_of_logit
    from tomoqc.study import LOGISTIC_KIND

    from _study_run import load_study

    run = load_study(args.study)
    ind = run.indicators()
    terms = run.terms()
    readings = network_readings(run, run.model, max(args.views), args.work / "views.npz")
    if not np.allclose(readings[:, 0], run.column("network"), atol=1e-3, equal_nan=True):
        print("note: the first view differs from the run's stored network scores (another model or version)",
              file=sys.stderr)
    variants = [(f"{k} view{'s' if k > 1 else ''}", readings[:, :k].mean(axis=1), True) for k in args.views]
    if args.finetune_epochs:
        tuned = finetuned_weights(run, args.work, args.finetune_epochs, args.finetune_lr)
        variants.append((f"fine-tuned on the train split ({args.finetune_epochs} epochs)",
                         network_readings(run, tuned, 1, args.work / "finetuned.npz")[:, 0], False))
    for k, path in enumerate(args.network):
        variants.append((f"{path}", network_readings(run, path, 1, args.work / f"network{k}.npz")[:, 0], False))
    for z in args.zoom:
        zoomed = network_readings(run, run.model, 1, args.work / f"zoom{z:g}.npz", zoom=z)[:, 0]
        variants.append((f"read at {z:g}x", zoomed, True))
        both = _score_of_logit((_logit_score(readings[:, 0]) + _logit_score(zoomed)) / 2)
        variants.append((f"1x and {z:g}x (mean logit)", both, True))

    print(f"\nTIQA readings of {run.root}: {len(run.train)} train / {len(run.test)} test references "
          f"({int(run.te.sum())} test images), {len(run.od)} real ordering images\n")
    print("| network reading | last stage | ALL SROCC | ALL PLCC | real pairs |")
    print("|---|---|---|---|---|")
    for name, net, own_card in variants:
        stages = [("network alone", net)]
        if own_card and terms is not None:  # the card's terms were fitted on this network's scale
            stages.append(("card's terms", terms.combine(net, ind)))
        fit = run.fitted(net)
        if fit is not None:
            stages.append(("terms fitted on the train split", fit))
        for stage, s in stages:
            sr, pl, acc = run.evaluate(s)
            print(f"| {name} | {stage} | {sr:.3f} | {pl:.3f} | {acc:.3f} |")
    baselines = {m: run.method(m) for m in ("brisque", "rankiqa", "noise")}
    for m, s in baselines.items():
        if s is not None:
            sr, pl, acc = run.evaluate(s)
            print(f"| {m} (the run's) | - | {sr:.3f} | {pl:.3f} | {acc:.3f} |")

    fit = run.fitted()
    brisque = baselines["brisque"]
    if fit is None or brisque is None:
        return 0
    te = np.flatnonzero(run.te)
    y = run.label[te]
    err = {}
    for name, s in (("fitted", fit[te]), ("brisque", brisque[te])):
        ok = np.isfinite(s)
        err[name] = np.full(len(s), np.nan)
        err[name][ok] = np.abs(stats.logistic_fit(s[ok], y[ok], kind=LOGISTIC_KIND)(s[ok]) - y[ok])
    kinds = [(run.manifest[run.pred[i]["file"]]["domain"], run.manifest[run.pred[i]["file"]]["distortion"]) for i in te]
    print("\nMean absolute error after each method's logistic map, test references (label units)\n")
    print("| domain | distortion | images | mean label | TIQA, terms fitted | BRISQUE-SVR |")
    print("|---|---|---|---|---|---|")
    for key in sorted(set(kinds)):
        m = np.array([k == key for k in kinds])
        print(f"| {key[0]} | {key[1]} | {int(m.sum())} | {y[m].mean():.2f} | {np.nanmean(err['fitted'][m]):.3f} "
              f"| {np.nanmean(err['brisque'][m]):.3f} |")
    print(f"| all | all | {len(te)} | {y.mean():.2f} | {np.nanmean(err['fitted']):.3f} "
          f"| {np.nanmean(err['brisque']):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
