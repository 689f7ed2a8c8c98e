#!/usr/bin/env python
"""The missing-wedge indicator and the bundled score on real limited-angle reconstructions.

Usage::

    python benchmarks/missing_wedge.py --realdata ../shared/realdata [--bin 1]

For each HTC2022 disc of the real-data folder (measured fan-beam sinograms, rebinned to
parallel beam, :func:`tomoqc.train.segdata.htc2022_recon`) it reconstructs the complete
half turn and arcs of 150, 120, 90 and 60 degrees, and prints per arc: the
:func:`tomoqc.metrics.nr.missing_wedge` reading (truth ``180 - arc``), and the bundled
model's score with its measured terms and with the wedge term's weight set to 0 (what the
score was before the term). Then it reads every complete real reconstruction of the
benchmark series (``benchmarks/real_orderings.py``'s sources: dose, angles, stripes, blur,
gain) and up to 7 slices along each axis of every other real volume of the folder, and
counts how many read a wedge at all. Prints tables; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCS = (180.0, 150.0, 120.0, 90.0, 60.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, required=True, help="the real-data folder (../shared/realdata)")
    ap.add_argument("--bin", type=int, default=1, help="detector binning of the HTC2022 reconstructions")
    args = ap.parse_args(argv)
    if not args.realdata.is_dir():
        print(f"error: {args.realdata}: real-data folder not found", file=sys.stderr)
        return 1

    from tomoqc.metrics.nr import missing_wedge
    from tomoqc.models.tiqa import load_model
    from tomoqc.realdata import ORDERING_GROUPS, RealSources, degraded_series
    from tomoqc.train.segdata import htc2022_files, htc2022_recon

    model = load_model(None)
    t = model.measured_terms
    without = t.with_term("wedge", 0.0)
    print(f"model {model.model_id}; wedge term weight {t.weights.get('wedge', 0.0):.3f}, "
          f"onset {t.typical.get('wedge', float('nan')):g} degrees")
    print()
    print("| disc | arc | missing | reading | score | score without the term |")
    print("|---|---|---|---|---|---|")
    files = htc2022_files(args.realdata)
    errors = []
    for disc, (sino, _) in sorted(files.items()):
        for arc in ARCS:
            rec = htc2022_recon(sino, bin=args.bin, arc=None if arc >= 180 else arc)
            res = model.score_slices(rec[None], tta=1, ood=False, measure=True)
            ind = {k: v[:1] for k, v in res["indicators"].items()}
            before = float(without.combine(res["network_score"][:1], ind)[0])
            reading = float(res["indicators"]["wedge"][0])
            errors.append(reading - (180.0 - arc))
            print(f"| {disc} | {arc:g} | {180 - arc:g} | {reading:.0f} | {res['score'][0]:.2f} | {before:.2f} |")
    e = np.array(errors)
    print()
    print(f"reading - truth over {e.size} reconstructions: mean {e.mean():+.1f}, range {e.min():+.0f} to {e.max():+.0f} degrees")
    print()
    src = RealSources(args.realdata)
    counts: dict = {}
    for gi, (kind, sample) in enumerate(ORDERING_GROUPS):
        for _, img in degraded_series(src, kind, sample, 1000 + gi):
            n, k = counts.get(kind, (0, 0))
            counts[kind] = (n + 1, k + int(missing_wedge(img) > 0))
    print("| benchmark series kind | images | reading a wedge |")
    print("|---|---|---|")
    for kind, (n, k) in counts.items():
        print(f"| {kind} | {n} | {k} |")
    print()
    # every other real reconstruction of the folder, sliced along each axis (fibres, wood and
    # layered samples are the anisotropic ones)
    import tomoqc

    print("| real volume | axis | slices read | reading a wedge | readings |")
    print("|---|---|---|---|---|")
    r = args.realdata
    paths = [*sorted(r.glob("battery_xct/im_*.tif")), *sorted(r.glob("imars3d/*.npy")), *sorted(r.glob("psi_shell/*.npy")),
             *sorted(r.glob("qbi/*.tif")), *sorted(r.glob("qim3d/*.tif"))]
    for p in paths:
        for axis in ("z", "y", "x"):
            v = tomoqc.open_volume(p, axis=axis)
            idx = sorted(set(np.linspace(0, v.shape[0] - 1, min(v.shape[0], 7)).astype(int)))
            w = np.array([missing_wedge(np.asarray(v[i].values)) for i in idx])
            ok = w[np.isfinite(w)]
            print(f"| {p.relative_to(r)} | {axis} | {ok.size} | {int((ok > 0).sum())} | "
                  f"{', '.join(f'{x:.0f}' for x in ok)} |")
            if v.shape[0] == 1:  # a single slice has one plane
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
