#!/usr/bin/env python
"""How far a slice smaller than the network's patch moves its own score: why such slices are flagged.

Usage::

    python benchmarks/small_slices.py [--realdata ../shared/realdata] [--sides 200 160 128 96]

The network scores 224 px patches; a slice smaller than that is padded by reflection
(``FLAG_PADDED``), which no training image ever was. For each real slice of at least 256 px
(``tests/data/real`` always; with ``--realdata`` also the folder's larger reconstructions at
their own resolution), the central 224 px window is scored as it is, and then its central
crops of each side, padded: each crop holds only pixels of the window, so its noise, blur and
rings are the window's. The table gives, per side, the mean and largest change of the score
(and of the network's own score) against the window's, beside the uncertainty the scorer
states for the crop without the out-of-distribution share (``ood=False``), and the share of
crops whose change exceeds twice that uncertainty. Scores are the bundled model's (one view
and the default two for the uncertainty).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Real reconstructions of ``../shared/realdata`` read at their own resolution (path, slice index
#: of a volume or None).
REALDATA_SLICES = (
    ("qbi/wood.tif", None),
    ("qbi/asphalt_gray.tif", None),
    ("qbi/scroll.tif", None),
    ("qbi/NMC_90wt_2000bar_115.tif", None),
    ("qim3d/fly_150x256x256.tif", 75),
    ("battery_xct/cell_vol/im046.tif", None),
    ("imars3d/expected_slice_300.npy", None),
    ("psi_shell/shellX.npy", None),
)


def real_slices(realdata: Path | None) -> list[tuple[str, np.ndarray]]:
    """``[(name, 2-D float slice)]`` of at least 256 px a side."""
    from _real_slices import real_slices as test_and_named

    return [(n, a) for n, a in test_and_named(realdata, REALDATA_SLICES) if a.ndim == 2 and min(a.shape) >= 256]


def centre(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape
    return np.ascontiguousarray(img[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=None)
    ap.add_argument("--sides", type=int, nargs="+", default=[200, 160, 128, 96])
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (default: the bundled one)")
    a = ap.parse_args(argv)

    from tomoqc.logs import quiet_native_logs
    from tomoqc.models.tiqa import FLAG_PADDED, load_model, padded_share

    quiet_native_logs()
    model = load_model(a.model)
    window = model.patch
    if not a.sides or min(a.sides) < 32 or max(a.sides) >= window:
        raise SystemExit(f"error: --sides must lie in 32-{window - 1}, got {a.sides}")
    slices = real_slices(a.realdata)
    rows = {s: [] for s in a.sides}
    for name, img in slices:
        win = centre(img, window)
        ref = model.score_slices(win[None], ood=False)
        for s in a.sides:
            got = model.score_slices(centre(win, s)[None], ood=False)
            assert got["flags"][0] & FLAG_PADDED
            rows[s].append((float(got["score"][0] - ref["score"][0]),
                            float(got["network_score"][0] - ref["network_score"][0]),
                            float(got["score_uncertainty"][0])))
        print(f"  {name}: window {ref['score'][0]:.2f} (network {ref['network_score'][0]:.2f}); "
              + ", ".join(f"{s} px {ref['score'][0] + rows[s][-1][0]:.2f}" for s in a.sides), file=sys.stderr,
              flush=True)

    print(f"\nCentral crops of the central {window} px window of {len(slices)} real slices, padded by reflection "
          f"(bundled model unless --model)\n")
    print("| crop side | padded share | mean abs. change of the score | largest | network alone: mean | largest "
          "| stated uncertainty (mean) | change > 2 x uncertainty |")
    print("|---|---|---|---|---|---|---|---|")
    for s in a.sides:
        d = np.array(rows[s])
        print(f"| {s} | {padded_share((s, s), window):.2f} | {np.mean(np.abs(d[:, 0])):.2f} | {np.max(np.abs(d[:, 0])):.2f} "
              f"| {np.mean(np.abs(d[:, 1])):.2f} | {np.max(np.abs(d[:, 1])):.2f} | {np.mean(d[:, 2]):.2f} "
              f"| {np.mean(np.abs(d[:, 0]) > 2 * d[:, 2]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
