"""Does ``tomoqc compare`` pick the physically better reconstruction of a real scan?

Variants of real scans from ``../shared/realdata`` whose quality order physics fixes are
written as sweeps (folders of float32 TIFF stacks named with their parameter value) and
ranked with :func:`tomoqc.compare` exactly as a user would (``tomoqc compare --sweep``):

=========  ==========================================================================
group      variants (what is physically better)
=========  ==========================================================================
stripes    sorting-based stripe removal (Vo et al. 2018) of strength 0 (none), 1, 2,
           3, 5, 8, 12 px: the strongest removal that leaves no ring (median ring
           severity 0) must not lose to none (the head-to-head paired test finds it
           ahead of none or tied with it, p > alpha; whether the ranking by median
           difference to the best puts it ahead is printed too)
photons    1, 1/2, 1/4, 1/8 of the photons: more is better
angles     all, 1/2, 1/4 of the projections: more is better
center     centre of rotation at the value found by a standard method and offset by
           +-1, 2, 4, 8 detector pixels: the found centre is best; the sweep must peak
           within 1 px of it
copies     the same reconstruction twice: tied
=========  ==========================================================================

Two real data sets:

* **savu**: Diamond Light Source I13 scan 24737 (``savu_24737``, raw counts with flat and
  dark, 91 projections over 180 degrees, 160 px detector): one real scan, its detector
  rows ``--rows`` (default every 4th of the rows that hold the sample, 58-134) are the
  slices. Its own detector defects make the rings; fewer photons are the raw counts
  binomially thinned (:func:`tomoqc.realdata.thin_counts`). Reconstructed with
  :func:`tomoqc.realdata.fbp` on a 320 px grid (0.5 detector px).
* **htc**: HTC2022 discs (``--discs``, fan beam rebinned to 360 parallel angles over
  180 degrees, 560 px detector, 512 px slices): one slice per disc, the discs stacked as
  the slices of one volume (same scanner and geometry; every variant processes every
  disc alike). The rings come from a gain mismatch injected on the measured sinogram
  (:func:`tomoqc.realdata.gain_mismatch`, full, level 2, 6 % of the columns); fewer
  photons are noise added to the measured level (:func:`tomoqc.realdata.add_dose_noise`).
  The centre sweep is in offsets from each disc's own centre.

Centre of rotation, two standard methods: :func:`tomoqc.realdata.find_center` (mirrored
0/180 degree rows, Vo et al. 2014's principle; on HTC's [0, 180) set the mirrored seam)
and, for Savu, phase correlation of the whole 0 degree projection with the mirrored 180
degree one (:func:`skimage.registration.phase_cross_correlation`, 1/100 px, as TomoPy's
``find_center_pc``); for HTC the geometric centre of the calibrated fan-beam geometry.

A diagnosis row (not counted) ranks the centre sweep with the network alone
(``measured_terms=False``, ``tomoqc compare --no-measured-terms``), and the centre rows
say on how many slices the score alone peaks within 1 px, for slices with and without
rings.

Output: a table per data set, ``bench-out/compare_real/summary.json``, and each group's
``compare.html`` under ``bench-out/compare_real/<set>/<group>/result/``. Variants and
scores are cached there; ``--fresh`` rebuilds.

Run: ``.venv/bin/python benchmarks/compare_real.py`` (about 20 minutes on 2 cores the first time,
most of it the HTC reconstructions; about 30 s from the cache).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRENGTHS = (0, 1, 2, 3, 5, 8, 12)
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
ANGLE_FACTORS = (1, 2, 4)
OFFSETS = (-8, -4, -2, -1, 0, 1, 2, 4, 8)
SAVU_PIXEL = 0.5
HTC_SIZE = 512
DEFAULT_DISCS = "01a,02b,03c,04a,05b,06c,07a,ta"


def _write(folder: Path, name: str, slices) -> None:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tifffile.imwrite(tmp, np.stack(slices).astype(np.float32), photometric="minisblack")
    tmp.replace(folder / name)


def _phase_correlation_center(proj0: np.ndarray, proj180: np.ndarray) -> float:
    """Axis from the shift between a projection and the mirrored one 180 degrees later.

    ``p180(s) = p0(2c - s)``: the mirrored ``f(s) = p180(n - 1 - s)`` equals ``p0(s + d)``
    with ``d = 2c - (n - 1)``, and the registration shift of ``f`` onto ``p0`` is ``d``.
    """
    from skimage.registration import phase_cross_correlation

    mirrored = proj180[:, ::-1]
    shift, _, _ = phase_cross_correlation(proj0, mirrored, upsample_factor=100, normalization=None)
    n = proj0.shape[1]
    return float((shift[1] + n - 1) / 2.0)


# ----------------------------------------------------------------------------- savu


def build_savu(root: Path, rows, out: Path, seed: int) -> dict:
    from tomoqc import realdata as rd

    d = rd.read_savu(root / "savu_24737")
    th = d["angles"]
    nd = d["counts"].shape[2]
    sinos = {r: rd.savu_sinogram(d, r) for r in rows}
    centres = [rd.find_center(sinos[r], th) for r in rows]
    c = float(np.median(centres))
    # phase correlation of the first and last projections (180 degrees apart), flat/dark corrected
    i0, i1 = int(np.argmin(th)), int(np.argmax(th))
    span = math.degrees(th[i1] - th[i0])
    flat = np.maximum(d["flat"] - d["dark"], 1e-6)
    proj = [-np.log(np.clip((d["counts"][i] - d["dark"]) / flat, 1e-6, None)) for i in (i0, i1)]
    c_pc = _phase_correlation_center(proj[0][57:], proj[1][57:])  # rows with sample
    size = int(nd / SAVU_PIXEL)

    def rec(sino, angles=th, center=c):
        return rd.fbp(sino, angles, center=center, size=size, pixel=SAVU_PIXEL)

    groups = {}
    g = out / "stripes"
    for s in STRENGTHS:
        _write(g, f"strength_{s}.tif", [rec(rd.remove_stripes(sinos[r], s)) for r in rows])
    groups["stripes"] = g
    g = out / "photons"
    for i, f in enumerate(FRACTIONS):
        imgs = []
        for r in rows:
            cnt = rd.thin_counts(d["counts"][:, r], f, seed + 1000 * i + r, dark=d["dark"][r])
            imgs.append(rec(rd.savu_sinogram(d, r, counts=cnt, fraction=f)))
        _write(g, f"photons_{f:g}.tif", imgs)
    groups["photons"] = g
    g = out / "angles"
    for k in ANGLE_FACTORS:
        imgs = []
        for r in rows:
            s_, a_ = rd.subsample_angles(sinos[r], th, k)
            imgs.append(rec(s_, a_))
        _write(g, f"angles_{1 / k:g}.tif", imgs)
    groups["angles"] = g
    g = out / "center"
    for off in OFFSETS:
        _write(g, f"center_{c + off:.2f}.tif", [rec(sinos[r], center=c + off) for r in rows])
    groups["center"] = g
    g = out / "copies"
    full = [rec(sinos[r]) for r in rows]
    _write(g, "copy_a.tif", full)
    _write(g, "copy_b.tif", full)
    groups["copies"] = g
    return {"groups": {k: str(v) for k, v in groups.items()}, "center": c, "center_rows": centres,
            "center_pc": c_pc, "span_deg": span, "center_reference": c, "slices": [int(r) for r in rows]}


# ----------------------------------------------------------------------------- htc


def build_htc(root: Path, discs, out: Path, seed: int) -> dict:
    from tomoqc import realdata as rd

    data = {}
    for name in discs:
        sino, th, c_geo = rd.htc2022_parallel(root / "htc2022" / f"htc2022_{name}_full.mat")
        data[name] = (sino, th, c_geo, rd.find_center(sino, th))

    def each(fn):
        return [fn(i, name, *data[name]) for i, name in enumerate(discs)]

    def rec(sino, th, c):
        return rd.fbp(sino, th, center=c, size=HTC_SIZE)

    groups = {}
    g = out / "stripes"
    injected = {}
    for i, name in enumerate(discs):
        sino = data[name][0]
        nd = sino.shape[1]
        injected[name] = rd.gain_mismatch(sino, 2.0, seed + i, kind="full", extent=(nd // 2 - 230, nd // 2 + 230))
    for s in STRENGTHS:
        _write(g, f"strength_{s}.tif",
               each(lambda i, n, sino, th, cg, cf: rec(rd.remove_stripes(injected[n], s), th, cf)))
    groups["stripes"] = g
    g = out / "photons"
    for j, f in enumerate(FRACTIONS):
        _write(g, f"photons_{f:g}.tif",
               each(lambda i, n, sino, th, cg, cf: rec(rd.add_dose_noise(sino, f, rng=seed + 100 * j + i), th, cf)))
    groups["photons"] = g
    g = out / "angles"
    for k in ANGLE_FACTORS:
        _write(g, f"angles_{1 / k:g}.tif",
               each(lambda i, n, sino, th, cg, cf: rec(*rd.subsample_angles(sino, th, k), cf)))
    groups["angles"] = g
    g = out / "center"
    for off in OFFSETS:
        _write(g, f"offset_{off}.tif", each(lambda i, n, sino, th, cg, cf: rec(sino, th, cf + off)))
    groups["center"] = g
    g = out / "copies"
    full = each(lambda i, n, sino, th, cg, cf: rec(sino, th, cf))
    _write(g, "copy_a.tif", full)
    _write(g, "copy_b.tif", full)
    groups["copies"] = g
    found = [data[n][3] for n in discs]
    geo = [data[n][2] for n in discs]
    return {"groups": {k: str(v) for k, v in groups.items()}, "center": found, "center_geometric": geo,
            "center_reference": 0.0, "slices": list(discs),
            "geometric_offset": float(np.median(np.subtract(geo, found)))}


# ----------------------------------------------------------------------------- checks


def _ring_severity(ds):
    import warnings

    paired = np.asarray(ds["paired"].values, bool)
    sev = ds["severity"].sel(distortion="ring").values[:, paired]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(sev, axis=1)


def check_group(group: str, ds, meta: dict) -> dict:
    """What physics expects of this group's ranking, and whether compare delivered it."""
    from tomoqc.metrics.paired import paired_difference

    labels = [str(v) for v in ds["variant"].values]
    rank = {lab: int(r) for lab, r in zip(labels, ds["rank"].values)}
    order = sorted(labels, key=rank.get)
    best = ds.attrs["best"]
    paired = np.asarray(ds["paired"].values, bool)
    row = {"group": group, "best": best, "order": order, "tied": json.loads(ds.attrs["tied"]),
           "median_difference": {lab: float(ds["median_difference"].sel(variant=lab)) for lab in labels},
           "p_value": {lab: (None if not np.isfinite(p) else float(p))
                       for lab, p in zip(labels, ds["p_value"].values)}}
    if group == "stripes":
        sev = dict(zip(labels, _ring_severity(ds)))
        ring = dict(zip(labels, np.nanmedian(ds["ring_index"].values[:, paired], axis=1)))
        row["ring_severity"] = {k: float(v) for k, v in sev.items()}
        row["ring_index"] = {k: float(v) for k, v in ring.items()}
        none = "strength=0"
        clean = [lab for lab in labels if lab != none and sev[lab] == 0]
        strongest = max(clean, key=lambda lab: float(lab.split("=")[1])) if clean else None
        row["strongest_without_ring"] = strongest
        if strongest is None:
            row.update(expected="a removal that leaves no ring", ok=False)
        else:
            s = ds["score"].values
            i, j = labels.index(strongest), labels.index(none)
            r = paired_difference(s[i, paired], s[j, paired])
            # "does not lose": the head-to-head paired test does not find it worse, and it is
            # ranked ahead of none or tied with none in that test (p > alpha)
            alpha = float(ds.attrs["alpha"])
            lost = r["median_difference"] < 0 and r["p_value"] <= alpha
            tied = r["p_value"] is not None and r["p_value"] > alpha
            row["strongest_vs_none"] = {"median_difference": r["median_difference"], "p_value": r["p_value"],
                                        "ranked_ahead": bool(rank[strongest] < rank[none])}
            row.update(expected=f"{strongest} does not lose to {none}",
                       ok=bool(not lost and (rank[strongest] < rank[none] or tied)))
    elif group == "photons":
        row.update(expected="photons=1 best", ok=best == "photons=1",
                   order_ok=order == ["photons=1", "photons=0.5", "photons=0.25", "photons=0.125"])
    elif group == "angles":
        row.update(expected="angles=1 best", ok=best == "angles=1",
                   order_ok=order == ["angles=1", "angles=0.5", "angles=0.25"])
    elif group == "center":
        ref = meta["center_reference"]
        bp = float(ds.attrs["best_parameter"])
        row.update(best_parameter=bp, peak_parameter=float(ds.attrs["peak_parameter"]), reference=ref)
        row["peak_offset"] = bp - ref
        others = {k: v for k, v in meta.items() if k in ("center_pc", "geometric_offset")}
        for k, v in others.items():
            row[f"peak_offset_vs_{k}"] = bp - (v if k == "center_pc" else ref + v)
        within = abs(bp - ref) <= 1.0 + 1e-9
        row.update(expected="peak within 1 px of the found centre", ok=bool(within))
        # diagnosis: where each slice alone peaks, for slices with and without rings (ring
        # index of the reconstruction at the found centre above or below the model's typical
        # clean value)
        params = np.asarray(ds["parameter"].values, np.float64)
        s = ds["score"].values[:, paired]
        at_ref = int(np.argmin(np.abs(params - ref)))
        ring = ds["ring_index"].values[at_ref, paired]
        peak_ok = np.abs(params[np.argmax(s, axis=0)] - ref) <= 1.0 + 1e-9
        t_ring = _typical_ring()
        ringed = ring > t_ring
        row["slices_peaking_within_1px"] = {"with_rings": [int(peak_ok[ringed].sum()), int(ringed.sum())],
                                            "without_rings": [int(peak_ok[~ringed].sum()), int((~ringed).sum())],
                                            "ring_threshold": t_ring}
    elif group == "copies":
        row.update(expected="tied", ok=bool(len(row["tied"]) == 2))
    return row


def _typical_ring() -> float:
    """The bundled model's typical ring index of clean slices (its measured terms)."""
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import default_weights_path

    card = json.loads(default_weights_path().with_suffix(".json").read_text())
    return float(MeasuredTerms.from_card(card).typical["ring"])


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "compare_real")
    ap.add_argument("--rows", default="58:135:4", help="Savu detector rows (START:STOP:STEP)")
    ap.add_argument("--discs", default=DEFAULT_DISCS, help="HTC2022 discs, comma-separated")
    ap.add_argument("--sets", default="savu,htc", help="data sets to run: savu, htc")
    ap.add_argument("--workers", type=int, default=0, help="dask workers (0: in this process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="rebuild the variants and rescore")
    args = ap.parse_args(argv)

    import tomoqc
    from tomoqc.cluster import start_cluster

    if not args.realdata.is_dir():
        print(f"compare_real: no real data at {args.realdata}", file=sys.stderr)
        return 1
    a, b, c = (int(x) for x in args.rows.split(":"))
    rows = list(range(a, b, c))
    discs = [x.strip() for x in args.discs.split(",") if x.strip()]
    sets = [x.strip() for x in args.sets.split(",") if x.strip()]
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    results = {}
    t0 = time.perf_counter()
    with start_cluster("local" if args.workers else "none", workers=args.workers or 0) as client:
        for name in sets:
            folder = args.out / name
            meta_file = folder / "variants.json"
            key = {"rows": rows} if name == "savu" else {"discs": discs}
            key["seed"] = args.seed
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
            if meta is None or meta.get("key") != key:
                t = time.perf_counter()
                if folder.exists():
                    shutil.rmtree(folder)
                build = build_savu if name == "savu" else build_htc
                meta = build(args.realdata, rows if name == "savu" else discs, folder / "variants", args.seed)
                meta["key"] = key
                meta["build_seconds"] = round(time.perf_counter() - t, 1)
                meta_file.write_text(json.dumps(meta, indent=1))
            rows_out = []
            for group, gdir in meta["groups"].items():
                t = time.perf_counter()
                res = folder / group / "result"
                engine = {"client": client} if client is not None else {"workers": 0}
                if group == "copies":
                    ds = tomoqc.compare([str(Path(gdir) / "copy_a.tif"), str(Path(gdir) / "copy_b.tif")],
                                        labels=["copy A", "copy B"], out=res, progress=False, **engine)
                else:
                    ds = tomoqc.compare(sweep=gdir, out=res, progress=False, **engine)
                row = check_group(group, ds, meta)
                row["seconds"] = round(time.perf_counter() - t, 1)
                row["html"] = str(res / "compare.html")
                rows_out.append(row)
                if group == "center":  # diagnosis: the network alone, without the measured terms
                    t = time.perf_counter()
                    res = folder / group / "result-network-alone"
                    ds = tomoqc.compare(sweep=gdir, out=res, progress=False, measured_terms=False, **engine)
                    row = check_group(group, ds, meta)
                    row.update(group="center-net", counted=False, seconds=round(time.perf_counter() - t, 1),
                               html=str(res / "compare.html"))
                    rows_out.append(row)
            results[name] = {"meta": meta, "groups": rows_out}
    elapsed = time.perf_counter() - t0

    for name, r in results.items():
        m = r["meta"]
        print(f"\n== {name}: {len(m['slices'])} slices ==")
        if name == "savu":
            print(f"centre of rotation: find_center {m['center']:.2f} (rows {min(m['center_rows']):.2f}-"
                  f"{max(m['center_rows']):.2f}), phase correlation of the 0/{m['span_deg']:.0f} degree "
                  f"projections {m['center_pc']:.2f}")
        else:
            print(f"centre of rotation: find_center per disc {', '.join(f'{x:.2f}' for x in m['center'])}; "
                  f"geometric {m['center_geometric'][0]:.2f} (median offset {m['geometric_offset']:+.2f} px)")
        print(f"{'group':8s} {'expected':44s} {'result':6s} ranking (median paired difference to the best)")
        for row in r["groups"]:
            order = ", ".join(f"{lab} {row['median_difference'][lab]:+.2f}" + ("*" if lab in row["tied"] and
                                                                                 lab != row["best"] else "")
                              for lab in row["order"])
            verdict = ("PASS" if row["ok"] else "FAIL") if row.get("counted", True) else ("(pass)" if row["ok"]
                                                                                          else "(fail)")
            print(f"{row['group']:8s} {row['expected']:44s} {verdict:6s} {order}")
            if row["group"] == "stripes":
                print(f"{'':8s} ring severity: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ring_severity"].items()))
                if "strongest_vs_none" in row:
                    sv = row["strongest_vs_none"]
                    print(f"{'':8s} {row['strongest_without_ring']} vs strength=0: {sv['median_difference']:+.3f}, "
                          f"p = {sv['p_value']:.2g}; ranked "
                          + ("ahead of" if sv.get("ranked_ahead") else "behind") + " strength=0")
            if row["group"] in ("photons", "angles"):
                print(f"{'':8s} whole order right: {row['order_ok']}")
            if row["group"] in ("center", "center-net"):
                extra = " ".join(f"{k.replace('peak_offset_vs_', 'vs ')}: {v:+.2f} px" for k, v in row.items()
                                 if k.startswith("peak_offset_vs_"))
                print(f"{'':8s} peak at {row['best_parameter']:.2f} (parabola {row['peak_parameter']:.2f}), "
                      f"{row['peak_offset']:+.2f} px from find_center; {extra}")
                w = row["slices_peaking_within_1px"]
                print(f"{'':8s} slices peaking within 1 px on their own: {w['with_rings'][0]}/{w['with_rings'][1]} "
                      f"with rings (ring index > {w['ring_threshold']:.4f} at the found centre), "
                      f"{w['without_rings'][0]}/{w['without_rings'][1]} without")
    print("\n(* tied with the best: difference inside the uncertainty or p > 0.05; "
          "(pass)/(fail): a diagnosis, not counted)")
    n_ok = sum(row["ok"] for r in results.values() for row in r["groups"] if row.get("counted", True))
    n_all = sum(row.get("counted", True) for r in results.values() for row in r["groups"])
    print(f"compare-real: {n_ok}/{n_all} checks pass ({elapsed:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"results": results, "seconds": round(elapsed, 1),
                                                       "command": " ".join(sys.argv)}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
