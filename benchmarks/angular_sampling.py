#!/usr/bin/env python
# make bench: skipped (needs inputs on its command line; see --help)
"""The angular-sampling indicators and the bundled score on real limited-angle and sparse-view
reconstructions.

Usage::

    python benchmarks/angular_sampling.py --realdata ../shared/realdata [--bin 1]

For each HTC2022 disc of the real-data folder (measured fan-beam sinograms, rebinned to
parallel beam, :func:`tomoqc.train.segdata.htc2022_recon`) it reconstructs

* the complete half turn and arcs of 150, 120, 90 and 60 degrees, and prints per arc the
  :func:`tomoqc.metrics.nr.missing_wedge` reading (truth ``180 - arc``) and the bundled
  model's score, with its measured terms and with the wedge term's weight set to 0;
* every 1st, 4th, 8th, ..., 90th of the 721 views of the full turn, and prints the
  :func:`tomoqc.metrics.nr.view_spacing` reading (the truth: 180 over the directions those
  views measure) and the score with and without the spacing term (without it, its hold on the
  blur term stays: :meth:`tomoqc.models.measured.MeasuredTerms.held`).

Then it reads every complete real reconstruction of the benchmark series
(``benchmarks/real_orderings.py``'s sources: dose, angles, stripes, blur, gain) and up to 7
slices along each axis of every other real volume of the folder, and counts how many read a
wedge, and a view spacing, at all. Prints tables; about 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCS = (180.0, 150.0, 120.0, 90.0, 60.0)
#: Every how many of the 721 views of the full turn (0.5 degrees apart) are kept.
STRIDES = (1, 4, 8, 16, 24, 36, 60, 90)


def _directions(stride: int) -> int:
    """Directions of the half turn that ``360 / (0.5 stride)`` views over the full turn measure:
    opposite views coincide when the count is even, interleave when odd."""
    views = 720 // stride
    return views // 2 if views % 2 == 0 else views


def _scores(model, rec, name):
    res = model.score_slices(rec[None], tta=1, ood=True, measure=True)
    ind = {k: v[:1] for k, v in res["indicators"].items()}
    before = float(model.measured_terms.with_term(name, 0.0).combine(res["network_score"][:1], ind)[0])
    return res, before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--bin", type=int, default=1, help="detector binning of the HTC2022 reconstructions")
    args = ap.parse_args(argv)
    if not args.realdata.is_dir():
        print(f"error: {args.realdata}: real-data folder not found", file=sys.stderr)
        return 1

    import tomoqc
    from tomoqc.metrics.nr import missing_wedge, view_spacing
    from tomoqc.models.tiqa import FLAG_OOD, load_model
    from tomoqc.realdata import ORDERING_GROUPS, RealSources, degraded_series, reconstructed_volumes
    from tomoqc.train.segdata import htc2022_files, htc2022_recon

    model = load_model(None)
    t = model.measured_terms
    print(f"model {model.model_id}; wedge term weight {t.weights.get('wedge', 0.0):.3f}, onset "
          f"{t.typical.get('wedge', float('nan')):g} degrees; spacing term weight {t.weights.get('spacing', 0.0):.3f}, "
          f"onset {t.typical.get('spacing', float('nan')):g} degrees")
    files = htc2022_files(args.realdata)

    print()
    print("Limited angle")
    print()
    print("| disc | arc | missing | reading | score | score without the term |")
    print("|---|---|---|---|---|---|")
    errors = []
    for disc, (sino, _) in sorted(files.items()):
        for arc in ARCS:
            rec = htc2022_recon(sino, bin=args.bin, arc=None if arc >= 180 else arc)
            res, before = _scores(model, rec, "wedge")
            reading = float(res["indicators"]["wedge"][0])
            errors.append(reading - (180.0 - arc))
            print(f"| {disc} | {arc:g} | {180 - arc:g} | {reading:.0f} | {res['score'][0]:.2f} | {before:.2f} |")
    e = np.array(errors)
    print()
    print(f"reading - truth over {e.size} reconstructions: mean {e.mean():+.1f}, range {e.min():+.0f} to {e.max():+.0f} degrees")

    print()
    print("Sparse views (* out of distribution)")
    print()
    print("| disc | " + " | ".join(f"{720 // s} views" for s in STRIDES) + " |")
    print("|---|" + "---|" * len(STRIDES))
    print("| spacing (truth) | " + " | ".join(
        "0" if _directions(s) >= 180 else f"{180 / _directions(s):.0f}" for s in STRIDES) + " |")
    rises = 0
    for disc, (sino, _) in sorted(files.items()):
        cells, prev = [], None
        for s in STRIDES:
            rec = htc2022_recon(sino, bin=args.bin, angles=s)
            res, before = _scores(model, rec, "spacing")
            score = float(res["score"][0])
            ood = "*" if res["flags"][0] & FLAG_OOD else ""
            cells.append(f"{res['indicators']['spacing'][0]:.0f}: {before:.2f} -> {score:.2f}{ood}")
            rises += prev is not None and score > prev
            prev = score
        print(f"| {disc} | " + " | ".join(cells) + " |")
    print()
    print("(each cell: reading: score without the spacing term, its blur hold kept -> score)")
    print(f"steps to fewer views where the score rises: {rises} of {len(files) * (len(STRIDES) - 1)}")

    print()
    src = RealSources(args.realdata)
    counts: dict = {}
    for gi, (kind, sample) in enumerate(ORDERING_GROUPS):
        for _, img in degraded_series(src, kind, sample, 1000 + gi):
            n, kw, ks, vals = counts.get(kind, (0, 0, 0, set()))
            sp = view_spacing(img)
            if sp > 0:
                vals = vals | {round(float(sp), 1)}
            counts[kind] = (n + 1, kw + int(missing_wedge(img) > 0), ks + int(sp > 0), vals)
    print("| benchmark series kind | images | reading a wedge | reading a view spacing | spacings read |")
    print("|---|---|---|---|---|")
    for kind, (n, kw, ks, vals) in counts.items():
        print(f"| {kind} | {n} | {kw} | {ks} | {', '.join(f'{v:g}' for v in sorted(vals))} |")
    print()
    # every other real reconstruction of the folder, sliced along each axis (fibres, wood and
    # layered samples are the anisotropic ones)
    print("| real volume | axis | slices read | reading a wedge | reading a view spacing | spacings |")
    print("|---|---|---|---|---|---|")
    r = args.realdata
    for p in reconstructed_volumes(r):
        for axis in ("z", "y", "x"):
            v = tomoqc.open_volume(p, axis=axis)
            idx = sorted(set(np.linspace(0, v.shape[0] - 1, min(v.shape[0], 7)).astype(int)))
            sl = [np.asarray(v[i].values) for i in idx]
            w = np.array([missing_wedge(a) for a in sl])
            sp = np.array([view_spacing(a) for a in sl])
            ok = np.isfinite(w) & np.isfinite(sp)
            print(f"| {p.relative_to(r)} | {axis} | {int(ok.sum())} | {int((w[ok] > 0).sum())} | "
                  f"{int((sp[ok] > 0).sum())} | {', '.join(f'{x:.1f}' for x in sp[ok] if x > 0)} |")
            if v.shape[0] == 1:  # a single slice has one plane
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
