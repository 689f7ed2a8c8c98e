#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""Does ``tomoqc compare`` pick the reconstruction filter that a ground truth picks?

Usage::

    python benchmarks/compare_filters.py --realdata ../shared/realdata [--work DIR] [--plot P]

Choosing the filter of a filtered back-projection is a processing choice users make every
day, and no physics fixes its order without a truth: a smoother filter trades resolution
for noise, and which wins depends on the scan. The HTC2022 discs with the organisers'
segmentation (Finnish Inverse Problems Society, CC-BY-4.0; ``../shared/realdata/README.md``)
give that truth. Each measured sinogram is degraded to four acquisitions
(``tomoqc.train.segdata.htc2022_recon``):

==================  ===========================================================
full                all 360 views of the half turn, the measured dose
dose 1/16           the noise of 1/16 of the photons
views 1/8           every 8th view (45)
dose 1/8, views 1/4 both
==================  ===========================================================

and each is reconstructed with the four filters of :func:`tomoqc.realdata.fbp` (ramp,
Shepp-Logan, cosine, Hann: sharpest to smoothest), and the Hann reconstruction is also
smoothed further by a Gaussian of 2, 4 and 8 px, as a denoising step after reconstruction
would: past some width the smoothing costs more edge than it saves noise, and a score that
only rewarded smoothness would not see it. The discs are the slices of one volume
per variant, and ``tomoqc.compare`` ranks the seven variants of each acquisition exactly as
``tomoqc compare`` does (paired over the discs).

The truth of a variant is how well a segmentation of it matches the organisers' ground
truth, mean over the discs, by two segmenters a user would use: Otsu's threshold, scored
by the Matthews correlation coefficient (the measure HTC2022 ranked its entries by), and
the bundled binary D-LinkNet (F1 of the material; it was trained on ramp-filtered HTC2022
reconstructions, so it leans to the ramp filter). The benchmark prints, per acquisition,
each variant's compare score (median over the discs), its place in the ranking and its two
truths; whether compare's best is the truth's best (or compare finds the truth's best tied
with it, or their truths differ by less than 0.002); and
the share of variant pairs that compare and each truth order alike (pairs whose truths
differ by less than 0.002 left out as ties).

Variants, scores and truths are cached in ``--work`` (default ``bench-out/compare_filters``).
About 6 minutes on 2 cores the first time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
#: Gaussian smoothing (sigma, px) of the Hann reconstruction: denoising past the best trade-off.
SMOOTHING = (2.0, 4.0, 8.0)
VARIANTS = FILTERS + tuple(f"hann+gauss{s:g}" for s in SMOOTHING)
ACQUISITIONS = {"full": {}, "dose 1/16": {"dose": 1 / 16}, "views 1/8": {"angles": 8},
                "dose 1/8, views 1/4": {"dose": 1 / 8, "angles": 4}}
#: Truth differences below this count as ties in the pair agreement.
TIE = 0.002


def build(realdata: Path, work: Path, seed: int) -> dict:
    """Reconstruct every (acquisition, filter) variant of every disc; ``{acq: {filter: (discs, y, x)}}``
    and the ground truths, cached in ``work/variants.npz``."""
    from scipy import ndimage

    from tomoqc.train.segdata import htc2022_files, htc2022_ground_truth, htc2022_recon

    cache = work / "variants.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    files = htc2022_files(realdata)
    discs = sorted(files)
    out = {"truth": np.stack([htc2022_ground_truth(files[d][1]) for d in discs]).astype(np.uint8)}
    for a, (acq, opts) in enumerate(ACQUISITIONS.items()):
        for f in FILTERS:
            # the same noise for every filter of an acquisition: only the filter differs
            out[f"{acq}|{f}"] = np.stack([
                htc2022_recon(files[d][0], filter=f, rng=np.random.default_rng([seed, a, i]), **opts)
                for i, d in enumerate(discs)]).astype(np.float32)
        for s in SMOOTHING:
            out[f"{acq}|hann+gauss{s:g}"] = np.stack([ndimage.gaussian_filter(v, s) for v in out[f"{acq}|hann"]])
        print(f"  reconstructed {acq}", file=sys.stderr, flush=True)
    out["discs"] = np.array(discs)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "variants.tmp.npz"
    np.savez(tmp, **out)
    tmp.replace(cache)
    return out


def truths(data: dict, work: Path) -> dict:
    """``{acq|filter: (otsu MCC per disc, segmenter F1 per disc)}``, cached in ``work/truths.json``."""
    cache = work / "truths.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from skimage.filters import threshold_otsu

    from tomoqc.metrics.seg import f1_per_class, matthews_corrcoef
    from tomoqc.models.segmenter import load_segment_model

    seg = load_segment_model(kind="binary")
    gt = data["truth"]
    out = {}
    for key in (k for k in data if "|" in k):
        vol = data[key]
        otsu = [matthews_corrcoef((v > threshold_otsu(v)).astype(np.uint8), t, 2) for v, t in zip(vol, gt)]
        lab = seg.segment_slices(vol, uncertainty="entropy")["label"]
        f1 = [float(f1_per_class(p, t, 2)[1]) for p, t in zip(lab, gt)]
        out[key] = (otsu, f1)
    cache.write_text(json.dumps(out))
    return out


def agreement(score: dict, truth: dict) -> tuple[int, int]:
    """Pairs of variants that ``score`` and ``truth`` order alike, and pairs counted (truth ties left out)."""
    agree = total = 0
    for a, b in itertools.combinations(score, 2):
        dt = truth[a] - truth[b]
        if abs(dt) < TIE:
            continue
        total += 1
        agree += int(np.sign(score[a] - score[b]) == np.sign(dt))
    return agree, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/compare_filters"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--plot", type=Path, default=None, help="PNG: compare score and truths per filter")
    args = ap.parse_args(argv)
    if not args.realdata.is_dir():
        raise SystemExit(f"error: {args.realdata}: real-data folder not found")

    import tomoqc
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs()
    data = build(args.realdata, args.work, args.seed)
    tr = truths(data, args.work)
    discs = [str(d) for d in data["discs"]]
    print(f"\nFBP filter choice on {len(discs)} HTC2022 discs ({', '.join(discs)}), ranked by tomoqc.compare; "
          "truth: Otsu MCC / D-LinkNet F1 against the organisers' segmentation (mean over the discs)\n")
    print("| acquisition | filter | compare score | place | tied with best | Otsu MCC | D-LinkNet F1 |")
    print("|---|---|---|---|---|---|---|")
    summary, checks = {}, []
    for acq in ACQUISITIONS:
        arrays = [data[f"{acq}|{f}"] for f in VARIANTS]
        ds = tomoqc.compare(arrays, labels=list(VARIANTS), out=args.work / "compare" / acq.replace("/", "_").replace(", ", "_").replace(" ", "_"),
                            workers=0, progress=False)
        rank = tomoqc.compare.summary(ds)["ranking"]
        place = {r["label"]: i + 1 for i, r in enumerate(rank)}
        tied = {r["label"]: bool(r["tied_with_best"]) for r in rank}
        score = {r["label"]: float(r["median_score"]) for r in rank}
        otsu = {f: float(np.mean(tr[f"{acq}|{f}"][0])) for f in VARIANTS}
        f1 = {f: float(np.mean(tr[f"{acq}|{f}"][1])) for f in VARIANTS}
        for f in VARIANTS:
            print(f"| {acq} | {f} | {score[f]:.3f} | {place[f]} | {'yes' if tied[f] or place[f] == 1 else ''} "
                  f"| {otsu[f]:.4f} | {f1[f]:.4f} |")
        best = rank[0]["label"]
        row = {"best": best, "score": score, "place": place, "tied": tied, "otsu_mcc": otsu, "dlinknet_f1": f1}
        for name, t in (("otsu_mcc", otsu), ("dlinknet_f1", f1)):
            tbest = max(t, key=t.get)
            ok = best == tbest or tied[tbest] or t[best] >= t[tbest] - TIE
            a, n = agreement(score, t)
            row[f"{name}_best"], row[f"{name}_pass"], row[f"{name}_pairs"] = tbest, ok, (a, n)
            checks.append(ok)
        summary[acq] = row
    print("\n| acquisition | compare's best | Otsu's best | agrees | pairs alike (Otsu) | D-LinkNet's best | agrees "
          "| pairs alike (D-LinkNet) |")
    print("|---|---|---|---|---|---|---|---|")
    for acq, r in summary.items():
        print(f"| {acq} | {r['best']} | {r['otsu_mcc_best']} | {'yes' if r['otsu_mcc_pass'] else 'no'} "
              f"| {r['otsu_mcc_pairs'][0]}/{r['otsu_mcc_pairs'][1]} | {r['dlinknet_f1_best']} "
              f"| {'yes' if r['dlinknet_f1_pass'] else 'no'} | {r['dlinknet_f1_pairs'][0]}/{r['dlinknet_f1_pairs'][1]} |")
    tot = [sum(r[f"{k}_pairs"][i] for r in summary.values()) for k in ("otsu_mcc", "dlinknet_f1") for i in (0, 1)]
    print(f"\ncompare-filters: best agrees {sum(checks)}/{len(checks)}; pairs alike {tot[0]}/{tot[1]} (Otsu), "
          f"{tot[2]}/{tot[3]} (D-LinkNet)")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot(summary, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(3.4 * len(summary), 3.8), sharey=False)
    x = np.arange(len(VARIANTS))
    for ax, (acq, r) in zip(np.atleast_1d(axes), summary.items()):
        ax.plot(x, [r["score"][f] for f in VARIANTS], "o-", color="C0", label="compare score")
        ax.set_xticks(x, VARIANTS, rotation=60, fontsize=7)
        ax.set_title(acq, fontsize=9)
        ax.set_ylabel("score (1-5)", color="C0", fontsize=8)
        tw = ax.twinx()
        tw.plot(x, [r["otsu_mcc"][f] for f in VARIANTS], "s--", color="C1", label="Otsu MCC")
        tw.plot(x, [r["dlinknet_f1"][f] for f in VARIANTS], "^:", color="C2", label="D-LinkNet F1")
        tw.set_ylabel("truth", fontsize=8)
    fig.legend(*[sum(v, []) for v in zip(np.atleast_1d(axes)[0].get_legend_handles_labels(),
                                         tw.get_legend_handles_labels())], loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
