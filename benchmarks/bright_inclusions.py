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
was before the fill). A second table scans the slices again through inclusions of rising
density (:func:`scanned_through`): the streaks those draw are an impairment, and filling the
inclusions must not hide them.
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


def disc_cover(shape, centres, radius: float) -> np.ndarray:
    """The share of each pixel that discs of ``radius`` px about ``centres`` (row, col) cover, on a
    4 x 4 subpixel grid (1 inside, 0 outside, the partial-volume share on their edge)."""
    h, w = shape
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cover = np.zeros((h, w))
    for cy, cx in centres:
        disc = sum((np.hypot(yy + dy - cy, xx + dx - cx) <= radius).astype(np.float64) for dy in sub for dx in sub)
        cover = np.maximum(cover, disc / sub.size ** 2)
    return cover


def with_inclusions(img: np.ndarray, count: int, radius: float, level: float, seed: int) -> np.ndarray:
    """``img`` with ``count`` discs of ``radius`` px at ``lo + level (hi - lo)`` (0.5 and 99.5 percentiles).

    Each disc is drawn with its partial-volume edge (:func:`disc_cover`) and seen through a
    Gaussian of 0.7 px, as a scanner would image it; it replaces the sample where it lies.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = img.shape
    lo, hi = np.percentile(img[np.isfinite(img)], [0.5, 99.5])
    centres = [(rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w) for _ in range(count)]
    cover = ndimage.gaussian_filter(disc_cover((h, w), centres, radius), 0.7)
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
    scanned_through(slices, read, a.seed)
    return 0


#: attenuation of the scanned inclusions, in units of the slice's own range (0: none)
SCAN_LEVELS = (0.0, 10.0, 30.0, 100.0)
#: incident counts per ray and detector PSF (px) of the scan through them
SCAN_FLUX, SCAN_PSF = 2e4, 0.5


def scanned_through(slices, read, seed: int) -> None:
    """Second table: does filling hide the artefacts that dense inclusions bring into a scan?

    Each slice (scaled to [0, 1] between its 0.5 and 99.5 percentiles, at most 320 px) gets five
    discs of 3 px at attenuation ``L`` times the sample's range and is scanned again
    (``tomoqc.distort.physics.simulate_scan``: Poisson counts of ``SCAN_FLUX`` per ray, a
    ``SCAN_PSF`` px detector PSF, so photon starvation and the exponential edge-gradient effect
    draw streaks from the discs). The truth orders the levels by the reconstruction's RMS error
    against the same slice scanned without noise or PSF, outside the discs (and 3 px around
    them); it rises with ``L``. Pairs are counted within each slice (ties half)."""
    from scipy import ndimage

    from tomoqc.distort import physics
    from tomoqc.realdata import _unit

    print(f"\nScanned through the inclusions: five 3 px discs at 0, 10, 30, 100 times the sample's range, "
          f"{SCAN_FLUX:g} counts per ray, {SCAN_PSF:g} px PSF; score (RMS error outside the discs)\n")
    print("| slice | " + " | ".join(f"L = {lv:g}" for lv in SCAN_LEVELS) + " | pairs ordered, filled | kept |")
    print("|---|" + "---|" * len(SCAN_LEVELS) + "---|---|")
    totals = {True: [0.0, 0], False: [0.0, 0], "big_True": [0.0, 0], "big_False": [0.0, 0]}
    for name, img in slices:
        x0 = _unit(img)
        if max(x0.shape) > 320:
            x0 = ndimage.zoom(x0, 320 / max(x0.shape), order=1)
        h, w = x0.shape
        rng = np.random.default_rng(seed)
        centres = []
        while len(centres) < 5:
            c = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
            if np.hypot(c[0] - (h - 1) / 2, c[1] - (w - 1) / 2) < 24 or any(
                    np.hypot(c[0] - o[0], c[1] - o[1]) < 14 for o in centres):
                continue
            centres.append(c)
        cover = disc_cover((h, w), centres, 3)
        away = ~ndimage.binary_dilation(cover > 0.01, iterations=3)
        errs, got = [], {True: [], False: []}
        for lv in SCAN_LEVELS:
            x = x0 * (1 - cover) + lv * cover
            rec = physics.simulate_scan(x, flux=SCAN_FLUX, psf_sigma=SCAN_PSF, rng=seed + 2)
            ideal = physics.simulate_scan(x)
            errs.append(float(np.sqrt(np.mean((rec - ideal)[away] ** 2))))
            for fill in (True, False):
                got[fill].append(read(np.asarray(rec, np.float64), fill))
        cells = []
        for k, lv in enumerate(SCAN_LEVELS):
            f, kept = got[True][k], got[False][k]
            cells.append(f"{f['score']:.2f} / {kept['score']:.2f} ({errs[k]:.3f})"
                         + (f", {f['filled']:.2%} filled" if f["filled"] else ""))
        big = min(h, w) >= 224
        ordered = {}
        for fill in (True, False):
            sc = [g["score"] for g in got[fill]]
            ok = n = 0
            for i in range(len(sc)):
                for j in range(len(sc)):
                    if errs[i] < errs[j]:
                        n += 1
                        ok += 1.0 if sc[i] > sc[j] else 0.5 if sc[i] == sc[j] else 0.0
            ordered[fill] = f"{ok:g}/{n}"
            for key in ([fill, f"big_{fill}"] if big else [fill]):
                totals[key][0] += ok
                totals[key][1] += n
        print(f"| {name} ({h} x {w}) | " + " | ".join(cells) + f" | {ordered[True]} | {ordered[False]} |", flush=True)
    acc = {k: v[0] / v[1] if v[1] else float("nan") for k, v in totals.items()}
    print(f"\n(score filled / kept, and the RMS error.) Pairs ordered: filled {acc[True]:.3f}, kept {acc[False]:.3f}; "
          f"slices at least a patch wide: filled {acc['big_True']:.3f}, kept {acc['big_False']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
