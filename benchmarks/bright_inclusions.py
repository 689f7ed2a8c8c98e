#!/usr/bin/env python
"""What a few small, very dense inclusions do to the measured indicators and the score.

Usage::

    python benchmarks/bright_inclusions.py [--realdata ../shared/realdata] [--model M.keras]

Real samples hold things far denser than their matrix: metal particles, a current collector's
fragments, high-Z minerals, a screw. Such an inclusion is structure, not an impairment: the
slice is no noisier, blurrier or more ringed for it. This benchmark draws small discs into
real slices (``tests/data/real`` always; with ``--realdata`` also the QBI wood and NMC cathode
and a PSI shell slice) at a level of ``L`` times the slice's robust range (its 0.5-99.5
percentile span) above the lower percentile, with a partial-volume edge seen through a 0.7 px
Gaussian, and prints, per setting, each indicator and the
score against the clean slice's: the mean absolute change over the slices (for the score also the
mean signed change), the share of slices whose score moved by more than 0.5, how many of those
the scorer flags out of distribution (for any reason: the two test slices under 224 px are
flagged for their padding already), and the share of slices the dense-minority rule flags
(``tomoqc.preprocess.tail_stretch`` above ``TAIL_STRETCH_LIMIT``). Every setting is drawn with the same seed on every
slice; inclusions avoid the outer fifth of the slice.

Each image is scored twice: as ``tomoqc score`` does, with its dense inclusions filled by their
surroundings' texture (``tomoqc.inclusions``; the table's "filled" columns, with the share of
pixels drawn and filled), and with ``--keep-inclusions`` (the "kept" columns: the score as it
was before the fill).
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

#: (count, radius px, level in robust ranges)
SETTINGS = ((5, 2, 3.0), (5, 2, 10.0), (10, 3, 10.0), (10, 3, 30.0), (5, 4, 5.0), (20, 2, 3.0), (3, 6, 20.0))
EXTRA = (("qbi/wood.tif", None), ("qbi/NMC_90wt_2000bar_115.tif", None), ("psi_shell/shellX.npy", None))
SHOWN = ("noise", "blur", "ring", "streak", "spacing")


def real_slices(realdata: Path | None) -> list[tuple[str, np.ndarray]]:
    from _real_slices import real_slices as test_and_named

    return test_and_named(realdata, EXTRA, dtype=np.float64)


def with_inclusions(img: np.ndarray, count: int, radius: float, level: float, seed: int) -> np.ndarray:
    """``img`` with ``count`` discs of ``radius`` px at ``lo + level (hi - lo)`` (0.5 and 99.5 percentiles).

    Each disc is drawn with its partial-volume edge (the share of each pixel it covers, on a 4 x 4
    subpixel grid) and seen through a Gaussian of 0.7 px, as a scanner would image it; it replaces
    the sample where it lies.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = img.shape
    lo, hi = np.percentile(img[np.isfinite(img)], [0.5, 99.5])
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cover = np.zeros((h, w))
    for _ in range(count):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        disc = np.zeros((h, w))
        for dy in sub:
            for dx in sub:
                disc += np.hypot(yy + dy - cy, xx + dx - cx) <= radius
        cover = np.maximum(cover, disc / sub.size)
    cover = ndimage.gaussian_filter(cover, 0.7)
    return img * (1 - cover) + (lo + level * (hi - lo)) * cover


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (default: the bundled one)")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args(argv)

    from tomoqc.logs import quiet_native_logs
    from tomoqc.models.tiqa import FLAG_OOD, TAIL_STRETCH_LIMIT, load_model
    from tomoqc.preprocess import tail_stretch

    quiet_native_logs()
    model = load_model(a.model)
    slices = real_slices(a.realdata)

    def read(img, fill):
        r = model.score_slices(img[None], tta=1, fill_inclusions=fill)
        return {"score": float(r["score"][0]), "network": float(r["network_score"][0]),
                "flagged": bool(r["flags"][0] & FLAG_OOD), "stretched": bool(tail_stretch(img) > TAIL_STRETCH_LIMIT),
                "filled": float(r["inclusion_fraction"][0]),
                **{k: float(r["indicators"][k][0]) for k in SHOWN}}

    clean = {fill: {n: read(img, fill) for n, img in slices} for fill in (False, True)}
    for n, v in clean[True].items():
        print(f"  {n}: " + " ".join(f"{k} {v[k]:.4g}" for k in ("score", *SHOWN))
              + (" (flagged out of distribution)" if v["flagged"] else "")
              + (f" (filled {v['filled']:.2%} of it as dense inclusions)" if v["filled"] else ""),
              file=sys.stderr, flush=True)
    big = [n for n, img in slices if min(img.shape) >= 224]
    print(f"\nSmall dense inclusions in {len(slices)} real slices ({len(big)} of them at least a patch wide): change "
          "against the clean slice, scored as `tomoqc score` does (inclusions filled, `tomoqc.inclusions`) and with "
          "--keep-inclusions (NaN readings: how many turn NaN or finite)\n")
    print("| inclusions | drawn share | filled share | kept: mean abs change | kept: signed | kept: moved > 0.5 "
          "| kept: of those, flagged | dense minority rule | filled: mean abs change | filled: signed "
          "| filled: moved > 0.5 | filled, slices >= a patch: max abs change | filled: network alone | "
          + " | ".join(f"filled: {k}" for k in SHOWN) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(SHOWN))
    for count, radius, level in SETTINGS:
        drawn = {n: with_inclusions(img, count, radius, level, a.seed) for n, img in slices}
        share = np.mean([np.mean(np.abs(drawn[n] - img) > 0.05 * np.subtract(*np.percentile(img, [99.5, 0.5])))
                         for n, img in slices])
        got = {fill: {n: read(drawn[n], fill) for n, _ in slices} for fill in (False, True)}
        for fill in (False, True):
            print(f"  {count} x r{radius} at {level:g}, {'filled' if fill else 'kept'}: " + ", ".join(
                f"{n} {got[fill][n]['score'] - clean[fill][n]['score']:+.2f}"
                f"{' flagged' if got[fill][n]['flagged'] else ''}" for n in got[fill]), file=sys.stderr, flush=True)
        cells = [f"{share:.2%}", f"{np.mean([got[True][n]['filled'] for n in got[True]]):.2%}"]
        for fill in (False, True):
            d = np.array([got[fill][n]["score"] - clean[fill][n]["score"] for n, _ in slices])
            moved = np.abs(np.nan_to_num(d)) > 0.5
            cells += [f"{np.nanmean(np.abs(d)):.3g}", f"{np.nanmean(d):+.3g}", f"{np.mean(moved):.2f}"]
            if not fill:
                flagged = np.array([got[fill][n]["flagged"] for n, _ in slices])
                cells.append(f"{int((moved & flagged).sum())} of {int(moved.sum())}")
                cells.append(f"{np.mean([got[fill][n]['stretched'] for n, _ in slices]):.2f}")
            else:
                cells.append(f"{np.nanmax(np.abs([got[fill][n]['score'] - clean[fill][n]['score'] for n in big])):.3g}"
                             if big else "-")
        for k in ("network", *SHOWN):
            d = np.array([got[True][n][k] - clean[True][n][k] for n, _ in slices])
            flips = sum(np.isfinite(got[True][n][k]) != np.isfinite(clean[True][n][k]) for n, _ in slices)
            cell = f"{np.nanmean(np.abs(d)):.3g}" if np.isfinite(d).any() else "-"
            cells.append(cell + (f" ({flips} NaN<->finite)" if flips else ""))
        print(f"| {count} x r{radius} px at {level:g} ranges | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
