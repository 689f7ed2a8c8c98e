"""Throughput of :meth:`tomoqc.models.segmenter.SegmentModel.segment_slices` per uncertainty mode.

Builds an untrained D-LinkNet (weights do not change the time a pass takes), segments a
block of phantom slices once to trace the network, then times each uncertainty mode on
the same block and prints one row per mode: seconds per slice, megapixels per second,
network passes per slice, and the tiling overhead (pixels the network sees over pixels
of the slice, for one pass).

Usage::

    python benchmarks/segment_throughput.py [--size 1024] [--slices 2] [--width 0.25]
                                            [--tile 512] [--overlap 64] [--samples 8]
                                            [--batch-size 4] [--modes entropy tta mc]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="slice side in pixels")
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25, help="D-LinkNet width multiplier")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8, help="Monte-Carlo dropout passes")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["entropy", "tta", "mc"])
    args = ap.parse_args(argv)

    import keras
    import numpy as np

    from tomoqc.models.dlinknet import build_dlinknet
    from tomoqc.models.segmenter import SegmentModel, blend_weights
    from tomoqc.phantom import electrode_slice

    keras.utils.set_random_seed(0)
    net = build_dlinknet(args.classes, width=args.width, dropout=0.2 if "mc" in args.modes else 0.0, seed=0)
    sm = SegmentModel(net)
    block = np.stack([electrode_slice((args.size, args.size), seed=i)[0] for i in range(args.slices)])
    side = -(-args.size // 32) * 32
    tiles, (th, tw), _, _ = blend_weights((side, side), args.tile, args.overlap)
    overhead = len(tiles) * th * tw / args.size**2
    kw = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "samples": args.samples}

    print(f"D-LinkNet width {args.width} ({net.count_params():,} parameters), {args.classes} classes; "
          f"{args.slices} slices of {args.size} x {args.size}; tile {args.tile}, overlap {args.overlap}: "
          f"{len(tiles)} tiles per slice")
    print(f"{'mode':<8} {'passes':>6} {'s/slice':>9} {'Mpx/s':>8} {'overhead':>9}")
    for mode in args.modes:
        sm.segment_slices(block[:1], uncertainty=mode, **kw)  # trace the shapes this mode uses
        t0 = time.perf_counter()
        sm.segment_slices(block, uncertainty=mode, **kw)
        dt = time.perf_counter() - t0
        passes = {"entropy": 1, "tta": 8, "mc": args.samples}[mode]
        print(f"{mode:<8} {passes:>6} {dt / args.slices:>9.2f} {args.slices * args.size**2 / dt / 1e6:>8.3f} "
              f"{overhead:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
