#!/usr/bin/env python
"""Train tomoqc's bundled default TIQA model with one seeded command.

    python scripts/train_default_model.py --work /tmp/train_default

Steps (each skipped when its output already exists, so a rerun continues):

1. data: ``tomoqc.dataset.build_dataset`` makes domain-randomised electrode phantoms
   (morphology and particle scale, phase contrasts, noise floor and PSF of the clean
   image, field-of-view disc, intensity offset and scale; :func:`tomoqc.phantom.random_params`)
   and distorts each reference with noise, blur and rings at levels 1-5 in both the image
   domain (the TIQA report's recipes) and the sinogram domain (simulated scans), plus
   mixtures. A second set is cut from scikit-image's sample images (natural and
   microscopy scenes at two scales) and distorted the same way, so that fine-tuning sees
   more than one look of a clean image. ``--ellipse-references N`` (96 by default) random-ellipse
   CT-like "body" slices are added the same way (0: none).
   A third, independent phantom set from fresh seeds is kept for evaluation only.
2. labels: ``tomoqc.labels.project_dataset`` adds the generated 1-5 ``label`` column, first
   to the training phantoms, then to every other set on the training phantoms' anchors
   (``--label-intensity reference`` compares images in the reference's percentile units).
3. rank: :func:`tomoqc.train.rank.train_rank` (hinge rank loss on blocks of levels) on the
   phantoms, or on every training set with ``--rank-data all``.
4. finetune: :func:`tomoqc.train.finetune.train_finetune` from the rank checkpoint on the
   phantoms and the sample-image set together (MSE on labels, severity head on levels;
   early stopping on validation SROCC).
4b. refine: fine-tuning goes on with a distortion-group term (each type's ordering across
   references counts alike, rings included), a severity margin (the dominant impairment
   is named even at level 1) and a small-margin rank term on blocks of levels
   (``--refine-minutes``; ``--refine-from MODEL`` refines an already fine-tuned model,
   e.g. the previous bundled one, instead of running stages 3-4 again).
4c. severity head: :func:`tomoqc.train.heads.refit_severity_head` refits the severity head
   alone on frozen backbone features of every training image (type-balanced, targets
   ``(level / 5) ** 0.5``, epoch picked on held-out references naming the distortion);
   the backbone and the score head, hence every score, stay as they are
   (``--severity-head-epochs``, 0 to skip).
4d. series refine: :func:`tomoqc.train.series_refine.refine_on_series` goes on training the
   network on series whose quality order physics fixes, from real measured data degraded
   directly and from real slices and phantoms re-projected and scanned again (rank loss,
   anchored on the network's own raw score and severities; ``--series-refine-epochs``, 0
   to skip; it needs ``--realdata``). The stages below are fitted on the refined network.
4e. score calibration: a strictly increasing logistic map from the raw score to the label
   scale, fitted on the training phantoms (``--score-calibration none`` to skip); it
   changes no ranking, only how linearly the 1-5 score follows the labels.
4e2. score head: :func:`tomoqc.train.score_head.refit_score_head` refits the score head
   alone on frozen features, to the training phantoms' labels (through the calibration of
   4e) and the series of 4d together, with image-domain ring series of real slices as a
   third group (``--score-head-steps``, 600; 0 skips it; it needs ``--realdata``).
   ``scripts/refit_score_head.py`` runs the same stage on an installed model.
4f. measured terms: :func:`tomoqc.train.measured.fit_card_terms` fits how the measured
   noise, blur, ring and streak indicators of a whole slice (:mod:`tomoqc.metrics.nr`,
   :mod:`tomoqc.metrics.rings`) lower the network's score and give the severities, on series
   of known order from phantoms, re-projected real slices and real measured data of
   ``--realdata`` (``../shared/realdata``; ``--measured-terms none`` to skip).
4g. trust: ``scripts/fit_trust.py`` records what the model has seen (feature statistics and
   raw-score range) for the out-of-distribution flag (run after installing; it needs
   ``--realdata`` too).
5. evaluation on the fresh-seed set with the default test-time sampling (grid of 224
   patches, mean of the valid ones); the weights and the model card (with the evaluation
   table) are written to ``tomoqc/models/weights/tiqa_default.{keras,json}``.

Training sizes are chosen for a two-core CPU and about two hours in total (the
network is fully convolutional: it trains on 128-160 px crops and scores 224 px patches).
On a GPU, raise ``--references``, ``--rank-steps`` and ``--finetune-steps``.

Last, the severities the network gives the clean training references are recorded in the
model card (``severity_baseline``); reported severities are measured from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def has_labels(data: Path) -> bool:
    with open(data / "manifest.csv", newline="") as fh:
        row = next(csv.DictReader(fh), {})
    return row.get("label") not in (None, "")


SAMPLE_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass",
                 "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
                 "shepp_logan_phantom", "text")


def sample_image_volume(path: Path, *, size: int, per_image: int, seed: int) -> int:
    """Stack random ``size`` crops of scikit-image's bundled sample images (gray, at two scales).

    Natural and microscopy images add smooth regions, edges and textures that electrode
    phantoms lack, so the network meets more than one look of a "clean" image. The CT
    slice used by the transfer test (pydicom's ``CT_small.dcm``) is not among them.
    """
    import numpy as np
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    crops = []
    for name in SAMPLE_IMAGES:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if img.ndim == 3:
            img = rgb2gray(img[..., :3]).astype(np.float32)
        for k in range(per_image):
            scale = 1.0 if k % 2 == 0 else 0.5
            im = rescale(img, scale, anti_aliasing=True).astype(np.float32) if scale != 1.0 else img
            if min(im.shape) < size:
                im = rescale(img, size / min(img.shape) + 1e-3, anti_aliasing=False).astype(np.float32)
            y = int(rng.integers(0, im.shape[0] - size + 1))
            x = int(rng.integers(0, im.shape[1] - size + 1))
            crops.append(im[y : y + size, x : x + size])
    vol = np.stack(crops).astype(np.float32)
    np.save(path, vol)
    return len(vol)


def ellipse_volume(path: Path, *, n: int, size: int, seed: int) -> int:
    """Random-ellipse "body" slices: smooth, CT-like scenes that electrode phantoms lack.

    Each slice is a large soft-tissue ellipse in air holding 4-12 smaller ellipses (dark
    lung-like and bright bone-like inclusions, soft organs), edges softened by a Gaussian of
    0.6-2 px and a faint low-frequency texture; values in [0, 1]. A random-ellipse phantom
    in the spirit of the Shepp-Logan head phantom; no real scan is used.
    """
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy = (yy - size / 2) / (size / 2)
    xx = (xx - size / 2) / (size / 2)

    def ellipse(cy, cx, a, b, theta):
        c, s_ = np.cos(theta), np.sin(theta)
        u = (xx - cx) * c + (yy - cy) * s_
        v = -(xx - cx) * s_ + (yy - cy) * c
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        img = np.full((size, size), rng.uniform(0.0, 0.05), np.float32)
        a, b = rng.uniform(0.55, 0.95), rng.uniform(0.45, 0.9)
        body_cy, body_cx = rng.uniform(-0.1, 0.1, 2)
        body = ellipse(body_cy, body_cx, a, b, rng.uniform(0, np.pi))
        img[body] = rng.uniform(0.35, 0.6)
        for _ in range(int(rng.integers(4, 13))):
            kind = rng.choice(["dark", "bright", "soft"], p=[0.3, 0.3, 0.4])
            value = {"dark": rng.uniform(0.02, 0.2), "bright": rng.uniform(0.75, 1.0),
                     "soft": rng.uniform(0.3, 0.7)}[kind]
            r = rng.uniform(0.04, 0.3)
            m = ellipse(body_cy + rng.uniform(-0.5, 0.5) * b, body_cx + rng.uniform(-0.5, 0.5) * a,
                        r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5), rng.uniform(0, np.pi)) & body
            img[m] = value
        texture = gaussian_filter(rng.normal(0, 1, (size, size)).astype(np.float32), rng.uniform(2, 6))
        img += rng.uniform(0.005, 0.03) * texture / max(float(texture.std()), 1e-6) * body
        out[i] = np.clip(gaussian_filter(img, rng.uniform(0.6, 2.0)), 0, 1)
    np.save(path, out)
    return n


def label_sets(train_dir: Path, others, *, intensity: str) -> tuple[dict, list[str]]:
    """Label the training phantoms, then every other set on their anchors.

    The worst observer values of the training phantoms map to 1 on every set, so that a
    label means the same whichever set an image comes from. Sets that already carry
    labels are kept; a training set labelled in other intensity units is an error.
    Returns ``{observer: worst goodness}`` and the names of the sets whose labels use
    those anchors (a set labelled earlier on its own anchors is kept as it was).
    """
    from tomoqc.labels import project_dataset

    if not has_labels(train_dir):
        t = time.time()
        log(f"labelling {train_dir} ({intensity} intensities)")
        project_dataset(train_dir, intensity=intensity, progress=False)
        log(f"labelled in {time.time() - t:.0f} s")
    summary = json.loads((train_dir / "labels.json").read_text())
    if summary.get("intensity", "absolute") != intensity:
        raise SystemExit(f"{train_dir} was labelled with {summary.get('intensity', 'absolute')} intensities, "
                         f"not {intensity}: use another --work")
    anchors = {n: a["worst"] for n, a in summary["anchors"].items()}
    for d in others:
        if not has_labels(d):
            t = time.time()
            log(f"labelling {d} on the anchors of {train_dir.name}")
            project_dataset(d, intensity=intensity, anchors=anchors, progress=False)
            log(f"labelled in {time.time() - t:.0f} s")
    shared = [train_dir.name]
    for d in others:
        theirs = json.loads((d / "labels.json").read_text())
        if theirs.get("intensity", "absolute") == intensity and all(
                theirs["anchors"].get(n, {}).get("worst") == w for n, w in anchors.items()):
            shared.append(d.name)
    return anchors, shared


def finished_stage(out_dir: Path, init_sha: str) -> dict | None:
    """The record (``record.json``) of a stage finished in ``out_dir`` (``DONE``), or None.

    A finished stage counts only for the model it started from (the record's
    ``init_sha256``): for another one its ``DONE`` marker is removed and it runs again."""
    done = out_dir / "DONE"
    if not done.exists():
        return None
    record = json.loads((out_dir / "record.json").read_text())
    if record.get("init_sha256") != init_sha:
        done.unlink()
        return None
    return record


def merge_datasets(out: Path, parts) -> None:
    """A dataset folder whose manifest lists the images of several others (paths relative to ``out``)."""
    from tomoqc.train.common import atomic_write_text

    rows, cols = [], []
    for prefix, d in parts:
        with open(d / "manifest.csv", newline="") as fh:
            rd = csv.DictReader(fh)
            for c in rd.fieldnames or []:
                if c not in cols:
                    cols.append(c)
            for r in rd:
                r["reference"] = prefix + r["reference"]
                r["file"] = os.path.relpath(d / r["file"], out)
                rows.append(r)
    out.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "manifest.csv", buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("train_default_work"), help="working folder")
    ap.add_argument("--seed", type=int, default=2026, help="seed of the training data and the network")
    ap.add_argument("--eval-seed", type=int, default=9001, help="seed of the fresh evaluation phantoms")
    ap.add_argument("--references", type=int, default=160, help="training phantoms")
    ap.add_argument("--eval-references", type=int, default=24, help="evaluation phantoms")
    ap.add_argument("--size", type=int, default=256, help="phantom side in pixels")
    ap.add_argument("--sample-crops", type=int, default=4, help="crops per scikit-image sample image")
    ap.add_argument("--ellipse-references", type=int, default=96,
                    help="random-ellipse CT-like references added to fine-tuning (0: none)")
    ap.add_argument("--label-intensity", choices=("absolute", "reference"), default="absolute",
                    help="units the label observers compare images in (tomoqc.labels, 'Intensity scale')")
    ap.add_argument("--rank-data", choices=("phantoms", "all"), default="phantoms",
                    help="rank stage on the phantoms only, or on every training set (sample images, ellipses)")
    ap.add_argument("--margin", type=float, default=6.0, help="rank hinge margin")
    ap.add_argument("--rank-crop", type=int, default=128)
    ap.add_argument("--rank-lr", type=float, default=3e-4)
    ap.add_argument("--rank-epochs", type=int, default=8)
    ap.add_argument("--rank-steps", type=int, default=90, help="batches per rank epoch")
    ap.add_argument("--rank-minutes", type=float, default=15.0)
    ap.add_argument("--finetune-crop", type=int, default=160)
    ap.add_argument("--finetune-lr", type=float, default=1e-4)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--finetune-steps", type=int, default=120, help="batches per finetune epoch")
    ap.add_argument("--finetune-minutes", type=float, default=45.0)
    ap.add_argument("--refine-minutes", type=float, default=35.0,
                    help="minutes of the last fine-tuning stage with distortion-group, severity-margin and rank "
                         "terms (0: skip it)")
    ap.add_argument("--refine-epochs", type=int, default=20)
    ap.add_argument("--refine-steps", type=int, default=100, help="batches per refine epoch")
    ap.add_argument("--refine-lr", type=float, default=5e-5)
    ap.add_argument("--refine-severity-weight", type=float, default=2.0,
                    help="weight of the severity loss (and of the severity margin) in the refine stage")
    ap.add_argument("--refine-group-kinds", default="noise,blur,ring",
                    help="cycle of distortion types of the refine stage's ordering groups (repeat one to weigh it more)")
    ap.add_argument("--refine-rank-kinds", default="all",
                    help="distortion types of the refine stage's rank blocks (comma list, or all)")
    ap.add_argument("--refine-from", type=Path, default=None,
                    help="refine this fine-tuned model (.keras) instead of running the rank and finetune stages")
    ap.add_argument("--severity-head-epochs", type=int, default=40,
                    help="epochs of the severity-head refit on frozen features (0: skip it)")
    ap.add_argument("--severity-head-power", type=float, default=0.5,
                    help="severity targets are (level / 5) ** POWER in the severity-head refit")
    ap.add_argument("--severity-head-lr", type=float, default=1e-3)
    ap.add_argument("--series-refine-epochs", type=int, default=18,
                    help="epochs of the refine on series of known order from real data (0: skip it)")
    ap.add_argument("--series-refine-crop", type=int, default=256, help="crop side of the series refine")
    ap.add_argument("--series-refine-minutes", type=float, default=30.0)
    ap.add_argument("--score-head-steps", type=int, default=600,
                    help="steps of the score-head refit on frozen features (labels + series; 0: skip it)")
    ap.add_argument("--score-calibration", choices=("logistic", "none"), default="logistic",
                    help="fit a strictly increasing map from raw scores to labels on the training phantoms")
    ap.add_argument("--measured-terms", choices=("fit", "none"), default="fit",
                    help="fit the measured terms (noise, blur, ring and streak indicators) on series of known order")
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata",
                    help="real-data folder for the measured terms and the trust statistics (../shared/realdata)")
    ap.add_argument("--install", type=Path, default=REPO / "tomoqc" / "models" / "weights",
                    help="where the finished model and its card go")
    ap.add_argument("--resume", action="store_true", help="continue interrupted training stages")
    ap.add_argument("--skip-train", action="store_true", help="only evaluate and install the finished model")
    args = ap.parse_args(argv)

    from tomoqc.dataset import build_dataset

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    command = "python scripts/train_default_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    train_dir = work / "data_train"
    eval_dir = work / "data_eval"
    extra_dir = work / "data_extra"
    ellipse_dir = work / "data_ellipses"
    merged_dir = work / ("data_merged" if args.ellipse_references <= 0 else f"data_merged_e{args.ellipse_references}")

    # 1. data
    for d, n, seed in ((train_dir, args.references, args.seed), (eval_dir, args.eval_references, args.eval_seed)):
        if not (d / "manifest.csv").is_file():
            t = time.time()
            log(f"building {d} ({n} phantom references, both domains, mixtures, seed {seed})")
            build_dataset(d, references=n, domain="both", size=args.size, seed=seed, workers=1, progress=False)
            log(f"built in {time.time() - t:.0f} s")
    if not (extra_dir / "manifest.csv").is_file():
        vol = work / "sample_images.npy"
        n = sample_image_volume(vol, size=args.size, per_image=args.sample_crops, seed=args.seed)
        log(f"building {extra_dir} ({n} references cut from scikit-image sample images)")
        build_dataset(extra_dir, source=vol, references=n, domain="both", size=args.size, seed=args.seed + 1,
                      fit="full", workers=1, progress=False)
    if args.ellipse_references > 0 and not (ellipse_dir / "manifest.csv").is_file():
        vol = work / "ellipses.npy"
        n = ellipse_volume(vol, n=args.ellipse_references, size=args.size, seed=args.seed + 2)
        log(f"building {ellipse_dir} ({n} random-ellipse references)")
        build_dataset(ellipse_dir, source=vol, references=n, domain="both", size=args.size, seed=args.seed + 3,
                      fit="full", workers=1, progress=False)
    # 2. labels
    others = [eval_dir, extra_dir] + ([ellipse_dir] if args.ellipse_references > 0 else [])
    anchors, anchored_sets = label_sets(train_dir, others, intensity=args.label_intensity)

    if not (merged_dir / "manifest.csv").is_file():
        parts = [("", train_dir), ("img_", extra_dir)]
        if args.ellipse_references > 0:
            parts.append(("ell_", ellipse_dir))
        merge_datasets(merged_dir, parts)

    rank_out = work / "rank"
    ft_out = work / "finetune_merged"
    if not args.skip_train and args.refine_from is None:
        from tomoqc.train.common import has_state
        from tomoqc.train.finetune import train_finetune
        from tomoqc.train.rank import train_rank

        # 3. rank
        if not (rank_out / "DONE").exists():
            log("rank stage")
            rank_data = train_dir if args.rank_data == "phantoms" else merged_dir
            res = train_rank(rank_data, rank_out, epochs=args.rank_epochs, steps_per_epoch=args.rank_steps,
                             blocks_per_batch=4, crop=args.rank_crop, margin=args.margin, lr=args.rank_lr,
                             lr_decay=0.9, seed=args.seed, resume=args.resume and has_state(rank_out),
                             time_limit_s=args.rank_minutes * 60, val_size=224, val_crops=1,
                             progress=False, command=command)
            if res["interrupted"]:
                return 0
            (rank_out / "DONE").write_text("done\n")
        # 4. finetune
        if not (ft_out / "DONE").exists():
            log("finetune stage")
            res = train_finetune(merged_dir, ft_out, init=rank_out / "best.keras", epochs=args.finetune_epochs,
                                 steps_per_epoch=args.finetune_steps, batch_size=16, crop=args.finetune_crop,
                                 lr=args.finetune_lr, decay_epochs=4, lr_decay=0.5, seed=args.seed,
                                 resume=args.resume and has_state(ft_out), patience=6, val_fraction=0.08,
                                 time_limit_s=args.finetune_minutes * 60, val_size=224, val_crops=1,
                                 progress=False, command=command)
            if res["interrupted"]:
                return 0
            (ft_out / "DONE").write_text("done\n")

    # 4b. refine: fine-tuning goes on with three more terms (tomoqc.train.finetune.train_finetune):
    # distortion groups (every type's ordering across references weighs alike, rings included),
    # a severity margin (the dominant impairment named even at level 1) and a rank term on
    # blocks of levels with a small margin (levels stay ordered on every kind of reference)
    refine_out = work / "refine"
    refine_init = args.refine_from if args.refine_from is not None else ft_out / "best.keras"
    if not args.skip_train and args.refine_minutes > 0 and not (refine_out / "DONE").exists():
        from tomoqc.train.common import has_state
        from tomoqc.train.finetune import train_finetune

        log(f"refine stage from {refine_init}")
        res = train_finetune(merged_dir, refine_out, init=refine_init, calibrate_head=False,
                             epochs=args.refine_epochs, steps_per_epoch=args.refine_steps, batch_size=16,
                             crop=args.finetune_crop, lr=args.refine_lr, decay_epochs=4, lr_decay=0.5, seed=args.seed,
                             resume=args.resume and has_state(refine_out), patience=6, val_fraction=0.08,
                             time_limit_s=args.refine_minutes * 60, val_size=224, val_crops=1,
                             rank_weight=0.5, rank_margin=0.1, rank_block_count=2,
                             group_weight=1.0, group_size=8, severity_weight=args.refine_severity_weight,
                             group_kinds=tuple(k.strip() for k in args.refine_group_kinds.split(",")),
                             rank_kinds=(None if args.refine_rank_kinds == "all"
                                         else tuple(k.strip() for k in args.refine_rank_kinds.split(","))),
                             severity_margin_weight=args.refine_severity_weight,
                             severity_margin=0.15, select_on="balanced",
                             progress=False, command=command)
        if res["interrupted"]:
            return 0
        (refine_out / "DONE").write_text("done\n")

    final_out = refine_out if args.refine_minutes > 0 else ft_out
    best = final_out / "best.keras"

    # 4c. severity head on frozen features (scores unchanged)
    head_out = work / "severity_head"
    head_record = None
    if args.severity_head_epochs > 0:
        from tomoqc.models.tiqa import file_sha256 as _sha

        head_best = head_out / "best.keras"
        init_sha = _sha(best)
        head_record = finished_stage(head_out, init_sha)
        if not args.skip_train and head_record is None:
            from tomoqc.train.heads import refit_severity_head

            log(f"severity-head stage on {best}")
            head_out.mkdir(parents=True, exist_ok=True)
            head_record = refit_severity_head(best, merged_dir, head_best, epochs=args.severity_head_epochs,
                                              lr=args.severity_head_lr, target_power=args.severity_head_power,
                                              seed=args.seed, cache=head_out / "features.npz", log=log)
            head_record["init"] = str(best)
            head_record["init_sha256"] = init_sha
            (head_out / "record.json").write_text(json.dumps(head_record, indent=2, default=str) + "\n")
            (head_out / "DONE").write_text("done\n")
        if head_record is not None:
            best = head_best

    # 4d. series refine: the network goes on learning from series of known order from real
    # data (tomoqc.train.series_refine), anchored on its own raw outputs; the calibration,
    # measured terms and severity baseline below are fitted on the refined network
    series_record = None
    if args.series_refine_epochs > 0:
        from tomoqc.models.tiqa import file_sha256 as _sha

        sr_out = work / "series_refine"
        series_record = finished_stage(sr_out, _sha(best))
        if not args.skip_train and series_record is None:
            from tomoqc.train.common import has_state
            from tomoqc.train.series_refine import cached_training_series, refine_on_series

            if not args.realdata.is_dir():
                raise SystemExit(f"error: {args.realdata}: real-data folder not found (give --realdata, "
                                 "or --series-refine-epochs 0)")
            log(f"series-refine stage on {best}")
            series = cached_training_series(args.realdata, work / "series_refine_series.npz", seed=args.seed,
                                            log=log)
            series_record = refine_on_series(best, series, sr_out, epochs=args.series_refine_epochs,
                                             steps_per_epoch=40, crop=args.series_refine_crop, seed=args.seed,
                                             resume=args.resume and has_state(sr_out),
                                             time_limit_s=args.series_refine_minutes * 60, log=log, command=command)
            if series_record["interrupted"]:
                return 0
            (sr_out / "DONE").write_text("done\n")  # refine_on_series wrote record.json
        if series_record is not None:
            best = Path(series_record["best"])

    # 5. evaluate + install
    import numpy as np

    from tomoqc.models.tiqa import HEAD_DISTORTIONS, _read_card, file_sha256, load_model, severity_baseline
    from tomoqc.train.common import atomic_write_text, versions
    from tomoqc.train.data import manifest_sha256, read_manifest
    from tomoqc.train.finetune import evaluate_dataset, format_table

    model = load_model(best)
    train_rows = read_manifest(train_dir)
    # 4e. a strictly increasing map from the raw score to the label scale, fitted on the
    # training phantoms (tomoqc.models.tiqa.calibration_from_scores); rankings are unchanged
    calibration = None
    if args.score_calibration == "logistic":
        from tomoqc.models.tiqa import _calibration_from_card, score_calibration

        t = time.time()
        rows = [r for r in train_rows if r.get("label") not in (None, "")]
        calibration = score_calibration(model, (np.load(train_dir / r["file"]).astype(np.float32) for r in rows),
                                        [float(r["label"]) for r in rows])
        calibration["fitted_on"] = "training phantoms (data_train), slice scores vs labels"
        model.calibration = _calibration_from_card({"score_calibration": calibration})
        log(f"score calibration on {calibration['n']} training images in {time.time() - t:.0f} s: "
            f"logistic{calibration['kind']}, PLCC {calibration['plcc_before']:.3f} -> {calibration['plcc_after']:.3f}")
    # 4e2. the score head alone, refitted on frozen features to the training phantoms' labels
    # and the series of known order together, through the calibration above
    # (tomoqc.train.score_head); the installed network is the one with the refitted head
    score_head_record = None
    if args.score_head_steps > 0 and not args.skip_train:
        from tomoqc.models.tiqa import file_sha256 as _sha
        from tomoqc.train.common import save_keras_atomic
        from tomoqc.train.score_head import (image_ring_series, labelled_features, refit_score_head, series_features,
                                             set_head_weights)
        from tomoqc.train.series_refine import cached_training_series

        sh_out = work / "score_head"
        score_head_record = finished_stage(sh_out, _sha(best))
        if score_head_record is None:
            if not args.realdata.is_dir():
                raise SystemExit(f"error: {args.realdata}: real-data folder not found (give --realdata, "
                                 "or --score-head-steps 0)")
            t = time.time()
            series = cached_training_series(args.realdata, work / "series_refine_series.npz", seed=args.seed,
                                            log=log)
            labelled = labelled_features(model, train_dir, log=log)
            # a quarter of the training references (1 to 3) held out to pick the step
            held = max(1, min(3, len(set(labelled.groups)) // 4))
            series += image_ring_series(args.realdata, seed=args.seed, log=log)
            score_head_record = refit_score_head(model, labelled, series_features(model, series, log=log),
                                                 steps=args.score_head_steps, calibration=calibration,
                                                 val_references=held, seed=args.seed, log=log)
            weights = score_head_record.pop("weights")
            score_head_record.pop("initial")
            set_head_weights(model.model, weights)
            sh_out.mkdir(parents=True, exist_ok=True)
            save_keras_atomic(model.model, sh_out / "best.keras")
            # the kept validation row under "kept"; "best" is the network file, as the series refine's
            score_head_record.update(init=str(best), init_sha256=_sha(best), kept=score_head_record["best"],
                                     best=str(sh_out / "best.keras"))
            (sh_out / "record.json").write_text(json.dumps(score_head_record, indent=2, default=float) + "\n")
            (sh_out / "DONE").write_text("done\n")
            log(f"score head refitted in {time.time() - t:.0f} s: kept step {score_head_record['kept']['step']}")
        best = Path(score_head_record["best"])
        model = load_model(best)
        if calibration is not None:
            model.calibration = _calibration_from_card({"score_calibration": calibration})
    # 4f. the measured terms: how the slice's measured indicators lower the network's score,
    # fitted on series of known order (phantoms, re-projected real slices, real measured data)
    measured_terms = None
    model.ring_term = None
    if args.measured_terms == "fit":
        from tomoqc.models.measured import MeasuredTerms
        from tomoqc.train.measured import fit_card_terms

        if not args.realdata.is_dir():
            raise SystemExit(f"error: {args.realdata}: real-data folder not found (give --realdata, "
                             "or --measured-terms none)")
        t = time.time()
        measured_terms = fit_card_terms(model, args.realdata, work / "measured_terms", seed=args.seed)
        model.measured_terms = MeasuredTerms.from_card({"measured_terms": measured_terms})
        log(f"measured terms in {time.time() - t:.0f} s: weights {measured_terms['weights']}, "
            f"pair accuracy {measured_terms['pair_accuracy_network']:.3f} -> {measured_terms['pair_accuracy']:.3f}")
    else:
        model.measured_terms = None
    # the severities this network gives clean training references: reported severities are
    # measured from them (tomoqc.models.tiqa.TiqaModel.severity_baseline)
    t = time.time()
    clean = [np.load(d / r["file"]).astype(np.float32) for d in (train_dir, extra_dir)
             for r in read_manifest(d) if r["distortion"] == "none"]
    baseline = severity_baseline(model, clean)
    model.severity_baseline = np.array([baseline[k] for k in HEAD_DISTORTIONS], np.float32)
    log(f"severity baseline from {baseline['n']} clean training references in {time.time() - t:.0f} s: "
        + ", ".join(f"{k} {baseline[k]:.3f}" for k in HEAD_DISTORTIONS))
    t = time.time()
    ev = evaluate_dataset(model, eval_dir, mode="grid")
    log(f"evaluated on fresh phantoms in {time.time() - t:.0f} s\n" + format_table(ev["table"]))
    ev_net = None
    if model.measured_terms is not None:  # the same evaluation with the network's score alone, for the card
        term, model.measured_terms = model.measured_terms, None
        ev_net = evaluate_dataset(model, eval_dir, mode="grid")
        model.measured_terms = term
        log("without the measured terms:\n" + format_table(ev_net["table"]))
    refined_card = _read_card(Path(args.refine_from)) if args.refine_from is not None else {}
    ft_card = json.loads((ft_out / "model_card.json").read_text()) if (ft_out / "model_card.json").exists() else {}
    refine_card = json.loads((final_out / "model_card.json").read_text()) if final_out != ft_out else None
    rank_card = json.loads((rank_out / "model_card.json").read_text()) if (rank_out / "model_card.json").exists() else {}
    if args.refine_from is not None:  # stages 3-4 ran earlier: their record is in the card of the model refined
        earlier = refined_card.get("training") or {}
        rank_card = earlier.get("rank") or rank_card
        ft_card = earlier.get("finetune") or ft_card
    # with --skip-train this run only evaluates: the command that trained the model is the
    # one its last stage recorded
    trained_by = command
    if args.skip_train:
        trained_by = (refine_card or ft_card or {}).get("command") or command
    args.install.mkdir(parents=True, exist_ok=True)
    dest = args.install / "tiqa_default.keras"
    tmp = args.install / ".tiqa_default.partial.keras"
    shutil.copyfile(best, tmp)
    os.replace(tmp, dest)
    sha = file_sha256(dest)
    stages_extra = ["rank", "finetune"] if args.rank_data == "all" else ["finetune"]
    card = {
        "model_id": f"tiqa-default-{sha[:12]}",
        "description": "TIQA network (EfficientNet-B0 from scratch, score and severity heads) ranked on "
                       "domain-randomised electrode phantoms (image- and sinogram-domain distortions and mixtures), "
                       "fine-tuned on those and on crops of scikit-image sample images"
                       + (" and random-ellipse CT-like slices" if args.ellipse_references > 0 else "")
                       + ", distorted the same way.",
        "weights": dest.name,
        "weights_sha256": sha,
        "size_bytes": dest.stat().st_size,
        "command": trained_by,
        "seed": args.seed,
        "data": {
            "train": {"references": args.references, "size": args.size, "seed": args.seed,
                      "manifest_sha256": manifest_sha256(train_dir), "domains": ["image", "physics"],
                      "mixtures": True, "domain_randomisation": "tomoqc.phantom.random_params",
                      "used_by": ["rank", "finetune"]},
            "train_sample_images": {"source": "scikit-image sample images " + ", ".join(SAMPLE_IMAGES),
                                    "crops_per_image": args.sample_crops,
                                    "manifest_sha256": manifest_sha256(extra_dir), "used_by": stages_extra},
            **({"train_ellipses": {"references": args.ellipse_references, "seed": args.seed + 2,
                                   "source": "random-ellipse CT-like slices (ellipse_volume)",
                                   "manifest_sha256": manifest_sha256(ellipse_dir), "used_by": stages_extra}}
               if args.ellipse_references > 0 else {}),
            "labels": {"intensity": args.label_intensity,
                       "anchors": {"worst_goodness": anchors,
                                   "from": "worst observer values of the training phantoms",
                                   "sets_labelled_on_them": anchored_sets}},
            "evaluation": {"references": args.eval_references, "seed": args.eval_seed,
                           "manifest_sha256": manifest_sha256(eval_dir)},
        },
        "training": {"rank": {k: rank_card.get(k) for k in ("hyperparameters", "validation")},
                     "finetune": {k: ft_card.get(k) for k in ("hyperparameters", "validation", "init")},
                     "refine": None if refine_card is None else
                     {k: refine_card.get(k) for k in ("hyperparameters", "validation", "init")},
                     "severity_head": head_record,
                     "series_refine": None if series_record is None else
                     {k: v for k, v in series_record.items() if k != "best"},
                     "score_head": None if score_head_record is None else
                     {k: v for k, v in score_head_record.items() if k != "best"},
                     "refine_from": None if args.refine_from is None else
                     {"path": str(args.refine_from), "sha256": file_sha256(args.refine_from),
                      "model_id": refined_card.get("model_id"),
                      # how that model was made: its command and its own last stage
                      "command": refined_card.get("command"),
                      "refine": (refined_card.get("training") or {}).get("refine"),
                      # and what that model was refined from, so a chain of refines stays traceable
                      "refine_from": (refined_card.get("training") or {}).get("refine_from")}},
        "score_calibration": calibration,
        "measured_terms": measured_terms,
        "severity_baseline": {**baseline, "statistic": "median raw severity over the clean training references "
                                                      "(phantoms and sample-image crops)"},
        "evaluation": {"sampling": "grid", "severity": "measured from severity_baseline", "table": ev["table"],
                       "table_without_measured_terms": None if ev_net is None else ev_net["table"]},
        "test_time_sampling": {"mode": "grid", "patch": 224,
                               "aggregate": "mean of patches inside the field of view and not only air",
                               "alternatives": ["resize_crop (report IV.1)", "random (RankIQA, N=30)"]},
        "score": "1 (bad) to 5 (excellent), clipped",
        "severity": ["noise", "blur", "ring", "streak"],
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(args.install / "tiqa_default.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(work / "evaluation.txt", format_table(ev["table"]) + "\n")
    log(f"installed {dest} ({dest.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
