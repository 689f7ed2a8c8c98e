#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""Does the score order real scans by impairments no stage of the model was trained or fitted on?

Usage::

    python benchmarks/unseen_impairments.py --realdata ../shared/realdata [--plot unseen.png]

Every training stage, measured term and benchmark of the bundled model degrades scans by dose,
fewer or fewer-than-half-turn views, detector blur, detector gain and rings, the axis. Real
scans suffer more. This benchmark degrades the *measured* sinograms of the real-orderings
samples (Savu 24737 rows 72, 88, 104, 120, reconstructed about the scan's axis; HTC2022 discs
ta, 01a, 03b, 05c, rebinned to parallel beam; none used in training) by five impairments
the model never saw, each at four levels (best first), reconstructs them by filtered
back-projection and scores them in-process:

=============  ================================================================================
zingers        direct hits on the detector (:func:`tomoqc.realdata.zingers`): 0, 0.03 %, 0.1 %,
               0.3 % of the readings gain 0.5-1.5 of the open beam; lines across the slice
jitter         a wobbling stage (:func:`tomoqc.realdata.projection_jitter`): each projection
               moved by a normal shift of sd 0, 0.5, 1, 2 px
motion         the sample slips once, half-way through the scan
               (:func:`tomoqc.realdata.sample_motion`): 0, 1, 2, 4 px
lag            scintillator afterglow (:func:`tomoqc.realdata.detector_lag`): each reading
               keeps 0, 20, 40, 70 % of the one before it in time
hardening      a polychromatic beam (:func:`tomoqc.realdata.beam_hardening`): two halves of
               the spectrum attenuated 1 -+ 0, 0.3, 0.5, 0.7 times as much; cupping and dark
               streaks between dense regions
=============  ================================================================================

It prints, per impairment, the share of within-series pairs ordered right (ties half) by the
score as reported (bundled card, measured terms), by the score as ``tomoqc compare`` reports
it (each image on its own, with the card's relative term for the rotation-axis error), by
the network alone, and by the noise
estimator (minus the robust sigma of the finest wavelet band), and the share of images the
scorer flags; then every series' scores. ``--plot`` draws score against level per sample.
``--formats float png jpeg`` also scores 8-bit exports (quality 90 for JPEG) windowed at the
0.5/99.5 percentiles of each series' best image, as ``benchmarks/real_orderings.py`` does.
About 2.5 minutes per format on 2 cores.

Sources: Savu test data ``savu_24737`` (Diamond Light Source, Apache-2.0/GPL-3.0) and
HTC2022 (Finnish Inverse Problems Society, CC-BY-4.0); see ``../shared/realdata/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES = ("savu:72", "savu:88", "savu:104", "savu:120", "htc:ta", "htc:01a", "htc:03b", "htc:05c")
LEVELS = {"zingers": (0.0, 3e-4, 1e-3, 3e-3), "jitter": (0.0, 0.5, 1.0, 2.0), "motion": (0.0, 1.0, 2.0, 4.0),
          "lag": (0.0, 0.2, 0.4, 0.7), "hardening": (0.0, 0.3, 0.5, 0.7)}


def impaired(kind: str, sino, level: float, seed: int):
    from tomoqc import realdata as rd

    if kind == "zingers":
        return rd.zingers(sino, level, seed)
    if kind == "jitter":
        return rd.projection_jitter(sino, level, seed)
    if kind == "lag":
        return rd.detector_lag(sino, level)
    if kind == "hardening":
        return rd.beam_hardening(sino, level)
    return rd.sample_motion(sino, level)


def series(src, sample: str, kind: str, seed: int) -> list[np.ndarray]:
    """The four reconstructions of ``sample`` under ``kind``, best first."""
    from tomoqc.realdata import fbp, savu_sinogram

    fam, _, name = sample.partition(":")
    if fam == "savu":
        d = src.savu()
        base, th = savu_sinogram(d, int(name)), d["angles"]

        def rec(s):
            return src.savu_recon(s, th)
    else:
        base, th, c = src.htc(name)

        def rec(s):
            return fbp(s, th, center=c, size=512)
    return [np.asarray(rec(impaired(kind, base, lv, seed)), np.float32) for lv in LEVELS[kind]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (.keras); default the bundled one")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of score against level per sample (float images)")
    ap.add_argument("--kinds", nargs="+", default=list(LEVELS), choices=list(LEVELS),
                    help="impairments to run (default all)")
    ap.add_argument("--formats", nargs="+", default=["float"], choices=["float", "png", "jpeg"],
                    help="also score 8-bit PNG / JPEG (quality 90) exports, windowed on each series' best image")
    args = ap.parse_args(argv)
    if not args.realdata.is_dir():
        raise SystemExit(f"error: {args.realdata}: real-data folder not found")

    from tomoqc.logs import quiet_native_logs
    from tomoqc.metrics.nr import noise_estimator_score
    from tomoqc.models.tiqa import load_model
    from tomoqc.realdata import RealSources
    from tomoqc.study import pair_accuracy
    from tomoqc.train.measured import export_roundtrip

    quiet_native_logs()
    model = load_model(args.model)
    src = RealSources(args.realdata)
    rows = []  # (kind, sample, rank, score, network, noise estimator, flagged, compare score, format)
    for sample in SAMPLES:
        for kind in args.kinds:
            floats = series(src, sample, kind, args.seed)
            window = tuple(float(v) for v in np.percentile(floats[0], [0.5, 99.5]))
            for fmt in args.formats:
                imgs = floats if fmt == "float" else [export_roundtrip(a, window, fmt) for a in floats]
                res = model.score_slices(np.stack(imgs), tta=1, ood=True)
                for r, img in enumerate(imgs):
                    # as tomoqc compare scores each variant: its own axis error, the relative term on
                    rel = model.score_slices(img[None], tta=1, ood=False, relative_terms=True)
                    rows.append((kind, sample, r, float(res["score"][r]), float(res["network_score"][r]),
                                 noise_estimator_score(img), int(res["flags"][r]) != 0, float(rel["score"][0]), fmt))
        print(f"  {sample} done", file=sys.stderr, flush=True)

    print(f"\nReal scans under impairments the model never saw ({model.model_id}; {len(SAMPLES)} samples x 4 levels; "
          "pair accuracy within each series, ties half)\n")
    print("| impairment | levels | format | TIQA | TIQA with the axis term (compare) | network alone | noise estimator "
          "| flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, levels in ((k, LEVELS[k]) for k in args.kinds):
        for fmt in args.formats:
            sub = [r for r in rows if r[0] == kind and r[8] == fmt]
            ranks, groups = [r[2] for r in sub], [r[1] for r in sub]
            acc = [pair_accuracy([r[i] for r in sub], ranks, groups)[0] for i in (3, 7, 4, 5)]
            flagged = np.mean([r[6] for r in sub])
            print(f"| {kind} | {', '.join(f'{v:g}' for v in levels)} | {fmt} | "
                  + " | ".join(f"{a:.3f}" for a in acc) + f" | {flagged:.2f} |")
    rows = [r for r in rows if r[8] == args.formats[0]]  # the per-series table and the plot: the first format
    print(f"\n{args.formats[0]} images\n")
    print("| impairment | sample | TIQA by level | network alone by level |")
    print("|---|---|---|---|")
    for kind in args.kinds:
        for sample in SAMPLES:
            sub = [r for r in rows if r[0] == kind and r[1] == sample]
            print(f"| {kind} | {sample} | {' '.join(f'{r[3]:.2f}' for r in sub)} "
                  f"| {' '.join(f'{r[4]:.2f}' for r in sub)} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.kinds), figsize=(4 * len(args.kinds), 3.4), sharey=True, squeeze=False)
        axes = axes[0]
        for ax, (kind, levels) in zip(axes, ((k, LEVELS[k]) for k in args.kinds)):
            for sample in SAMPLES:
                sub = [r for r in rows if r[0] == kind and r[1] == sample]
                ax.plot(range(len(levels)), [r[3] for r in sub], "o-", label=sample)
            ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
            ax.set_title(kind)
            ax.set_xlabel("level")
        axes[0].set_ylabel("TIQA score")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
