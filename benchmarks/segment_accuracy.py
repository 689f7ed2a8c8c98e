"""How well the bundled segmenters segment: F1 per class on unseen clean data, and how F1
falls with each impairment's level.

    python benchmarks/segment_accuracy.py [--realdata ../shared/realdata] [--phantoms 24] [--seed 424242]

Tables printed:

1. ``dlinknet_phases`` on clean phantoms it never saw (seeds disjoint from training):
   domain-randomised ones (as in training) and ones with the default morphology, F1 and
   IoU per phase inside the field of view; each set also with the mean of the 8
   flips/rotations (``tomoqc segment --uncertainty tta``).
2. The same phantoms impaired in the image domain by noise, blur and rings at levels 1-5:
   mean F1 over the phases per level (the F1 of a usable segmenter falls with the level).
3. ``dlinknet_binary`` on the HTC2022 discs with the organisers' ground truth (Helsinki
   Tomography Challenge 2022, Zenodo 6984868, CC-BY 4.0), reconstructed here from the
   full sinogram and from degraded versions of the measured data (fewer photons, fewer
   angles, detector blur). The disc held out of training (``td``, see the model card)
   is marked; the other four were trained on.

Writes ``bench-out/segment_accuracy/table.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _f1_iou(pred, truth, valid, n):
    from tomoqc.metrics.seg import f1_per_class, iou_per_class

    p, t = pred[valid], truth[valid]
    return f1_per_class(p, t, n), iou_per_class(p, t, n)


def _phantoms(n, seed, randomize):
    from tomoqc.phantom import electrode_slice, random_params
    from tomoqc.train.segdata import fov_mask

    out = []
    for ss in np.random.SeedSequence([seed, int(randomize)]).spawn(n):
        s_par, s_img = ss.spawn(2)
        params = random_params((256, 256), seed=s_par) if randomize else {}
        img, lab = electrode_slice((256, 256), seed=s_img, **params)
        valid = fov_mask(lab.shape, params.get("fov"))
        out.append((img, lab, np.ones(lab.shape, bool) if valid is None else valid))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"))
    ap.add_argument("--phantoms", type=int, default=24)
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "segment_accuracy"))
    args = ap.parse_args(argv)
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs()
    from tomoqc.distort import apply
    from tomoqc.models.segmenter import load_segment_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    phases = load_segment_model(kind="phases")
    names = phases.class_names

    def seg(model, img, mode="entropy"):
        return model.segment_slices(np.asarray(img, np.float32)[None], uncertainty=mode)

    print(f"1. {phases.model_id} on {args.phantoms} clean unseen phantoms per kind (F1 / IoU inside the field of view)")
    print(f"   {'phantoms':<22}" + "".join(f"{c:>22}" for c in names) + f"{'mean unc. (bits)':>18}")
    sets = {"domain-randomised": _phantoms(args.phantoms, args.seed, True),
            "default morphology": _phantoms(args.phantoms, args.seed, False)}
    # one pass (the default), and the mean of the 8 flips/rotations (--uncertainty tta)
    for kind, items in sets.items():
        for mode in ("entropy", "tta"):
            preds, truths, valids, unc = [], [], [], []
            for img, lab, valid in items:
                r = seg(phases, img, mode)
                preds.append(r["label"][0]), truths.append(lab), valids.append(valid)
                unc.append(float(r["uncertainty"][0][valid].mean()))
            f1, iou = _f1_iou(np.stack(preds), np.stack(truths), np.stack(valids), 3)
            name = kind if mode == "entropy" else "  with 8-view TTA"
            print(f"   {name:<22}" + "".join(f"{a:>13.3f} / {b:.3f}" for a, b in zip(f1, iou))
                  + f"{np.mean(unc):>18.3f}")
            for c, a, b in zip(names, f1, iou):
                rows.append({"table": "clean phantoms", "set": kind, "condition": "clean" if mode == "entropy"
                             else "clean, 8-view TTA", "class": c, "f1": round(float(a), 4), "iou": round(float(b), 4)})

    print("\n2. mean F1 over the phases vs impairment level (image domain, domain-randomised phantoms)")
    print(f"   {'impairment':<12}" + "".join(f"{'level ' + str(lv):>10}" for lv in range(0, 6)))
    items = sets["domain-randomised"][: max(8, args.phantoms // 2)]
    for dist in ("noise", "blur", "ring"):
        line = []
        for lv in range(0, 6):
            preds, truths, valids = [], [], []
            for i, (img, lab, valid) in enumerate(items):
                x = img if lv == 0 else apply(img, dist, lv, rng=args.seed + i)
                preds.append(seg(phases, x)["label"][0]), truths.append(lab), valids.append(valid)
            f1, _ = _f1_iou(np.stack(preds), np.stack(truths), np.stack(valids), 3)
            line.append(float(np.mean(f1)))
            rows.append({"table": "impairment", "set": "domain-randomised", "condition": f"{dist} {lv}",
                         "class": "mean", "f1": round(line[-1], 4), "iou": ""})
        falls = all(b <= a + 0.01 for a, b in zip(line, line[1:]))
        print(f"   {dist:<12}" + "".join(f"{v:>10.3f}" for v in line) + ("   falls" if falls else "   NOT monotone"))

    real = Path(args.realdata)
    if not (real / "htc2022").is_dir():
        print(f"\n3. skipped: no HTC2022 data under {real}")
    else:
        from tomoqc.train.segdata import HTC2022_VARIANTS, htc2022_files, htc2022_ground_truth, htc2022_recon

        binary = load_segment_model(kind="binary")
        held = str(binary.card.get("hyperparameters", {}).get("val_disc") or "td")
        print(f"\n3. {binary.model_id} on the HTC2022 discs (material F1 / IoU; * held out of training)")
        files = htc2022_files(real)
        print(f"   {'variant':<22}" + "".join(f"{d + ('*' if d == held else ''):>16}" for d in files))
        gts = {d: htc2022_ground_truth(seg_path) for d, (_, seg_path) in files.items()}
        for vname, opts in HTC2022_VARIANTS:
            line = []
            for d, (sino, _) in files.items():
                rec = htc2022_recon(sino, rng=np.random.default_rng(args.seed), **opts)
                pred = seg(binary, rec)["label"][0]
                f1, iou = _f1_iou(pred, gts[d], np.ones(pred.shape, bool), 2)
                line.append((f1[1], iou[1]))
                rows.append({"table": "htc2022", "set": d + (" (held out)" if d == held else ""),
                             "condition": vname, "class": "material", "f1": round(float(f1[1]), 4),
                             "iou": round(float(iou[1]), 4)})
            print(f"   {vname:<22}" + "".join(f"{a:>9.3f}/{b:.3f}" for a, b in line))
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["table", "set", "condition", "class", "f1", "iou"])
        w.writeheader()
        w.writerows(rows)
    print(f"\ntable: {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
