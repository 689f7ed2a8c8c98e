"""Real orderings: does tomoqc order real reconstructions whose quality order is known?

Groups of real images are built from ``../shared/realdata`` only, each a series of one
sample in which physics fixes the quality order (rank 0 = best):

=========  ==========================================================================
kind       members (best first)
=========  ==========================================================================
dose       1, 1/2, 1/4, 1/8 of the photons: Savu raw counts binomially thinned
           (rows 72, 88, 104, 120); HTC2022 discs with noise added to their measured
           level (ta, 01a, 03b, 05c); re-projected real slices scanned at 8000, 4000,
           2000, 1000 counts (battery_xct im_1, qim3d bone, psi_shell shellX)
angles     all, 1/2, 1/4, 1/8 of the projections: Savu rows 88, 104; HTC2022 tb, 02a,
           04b; re-projected battery_xct im_1, qim3d cement, psi_shell shellX
stripes    stripe removal (Vo et al. 2018, sorting-based; median window about 2 % of the
           detector, :func:`tomoqc.realdata.stripe_window`) vs none: Savu rows 88, 104,
           120 (their own rings); HTC2022 ta, 06a and re-projected battery_xct im_1,
           qim3d bone with injected full/partial stripes (removed vs raw)
blur       detector PSF sigma 0, 1, 2, 4 px on the transmission: Savu row 88; HTC2022
           01b, 07a; re-projected qim3d bone, psi_shell shellX
gain       column gain mismatch levels 0, 1, 2, 3 (nested defects of one seed; on the
           measured data each defect deepens its column's own stripe,
           ``gain_mismatch(deepen=True)``): Savu row 104; HTC2022 02b, 05a (partial
           stripes); re-projected battery_xct im_1, qim3d cement
=========  ==========================================================================

Sources (see ``../shared/realdata/README.md`` for commits and licences): Savu test data
``savu_24737`` (Diamond I13 raw projections, Apache-2.0/GPL-3.0), HTC2022 (CC-BY-4.0),
battery_xct ``im_1.tif`` (MIT), qim3d ``bone``/``cement`` (MIT), psi_shell ``shellX``
(CC0-1.0). Savu and HTC2022 are degraded on the *measured* data (counts / -log sinogram,
reconstructed with :func:`tomoqc.realdata.fbp`); the others are real reconstructions
re-projected and scanned again (:func:`tomoqc.realdata.reproject`).

Every image is written as float32 TIFF and as 8-bit PNG and JPEG (quality 90), windowed
at the 0.5/99.5 percentiles of the group's best image. Each is scored with the ``tomoqc``
CLI (``tomoqc score ... --json --workers 0``: one single-slice volume per image; several
images go to one CLI call to save start-up time, each scored on its own) or, with
``--api``, in-process. The baseline is minus the robust noise level of the finest
diagonal Haar band. The *previous* column is the release before the real-data work
(commit ``PREVIOUS_COMMIT``): its own code and bundled model, extracted with ``git archive``
and run through its own CLI. Pair accuracy = share of within-group pairs (same format)
ordered right (ties 0.5). The last line printed is ``real-orderings: <accuracy>`` (tomoqc,
current model, all formats).

None of these samples is used to fit the bundled model's measured terms
(:mod:`tomoqc.train.measured` uses other HTC2022 discs, other Savu rows of the same scan,
and other real slices).

Run: ``.venv/bin/python benchmarks/real_orderings.py`` (about 20 minutes per model on 2
cores; scores are cached in ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tomoqc.metrics.nr import noise_estimator_score as baseline_score  # noqa: E402
from tomoqc.realdata import ORDERING_GROUPS, RealSources as _Sources, degraded_series as _group_images  # noqa: E402

PREVIOUS_COMMIT = "09764fb"
FORMATS = ("float", "png", "jpeg")
KINDS = ("dose", "angles", "stripes", "blur", "gain")


#: (kind, sample) of every group (:data:`tomoqc.realdata.ORDERING_GROUPS`).
GROUPS = ORDERING_GROUPS


def _window(img):
    lo, hi = np.percentile(img, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _export(img, win, path, fmt):
    from PIL import Image

    lo, hi = win
    u8 = (np.clip((img - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(u8)
    if fmt == "png":
        im.save(path, format="PNG")
    else:
        im.save(path, format="JPEG", quality=90)


def build_groups(realdata, out, *, kinds=KINDS, formats=FORMATS, seed=2026, log=print):
    """Build the groups, write their images and ``manifest.csv``; return the manifest rows.

    Parameters
    ----------
    realdata : path
        The ``shared/realdata`` folder.
    out : path
        Output folder (``images/`` and ``manifest.csv`` are written there).
    kinds, formats : sequences
        Kinds of :data:`KINDS` and formats of :data:`FORMATS` to build.

    Returns
    -------
    list of dict
        ``group, sample, kind, rank, format, path, parameter`` per image (rank 0 = best).
    """
    import tifffile

    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    src = _Sources(Path(realdata))
    rows = []
    for gi, (kind, sample) in enumerate(GROUPS):
        if kind not in kinds:
            continue
        group = f"{kind}-{sample.replace(':', '-')}"
        t0 = time.time()
        members = _group_images(src, kind, sample, seed + gi * 101)
        win = _window(members[0][1])
        for rank, (param, img) in enumerate(members):
            stem = f"{group}_r{rank}"
            for fmt in formats:
                ext = {"float": "tif", "png": "png", "jpeg": "jpg"}[fmt]
                path = img_dir / f"{stem}.{ext}"
                if fmt == "float":
                    tifffile.imwrite(path, np.asarray(img, np.float32))
                else:
                    _export(img, win, path, fmt)
                rows.append({"group": group, "sample": sample, "kind": kind, "rank": rank,
                             "format": fmt, "path": str(path), "parameter": param})
        log(f"  {group}: {len(members)} images ({time.time() - t0:.1f} s)")
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["group", "sample", "kind", "rank", "format", "path", "parameter"])
        w.writeheader()
        w.writerows(rows)
    return rows


# ------------------------------------------------------------------------ scoring
def _sha(path) -> str:
    from tomoqc.models.tiqa import file_sha256

    return file_sha256(path)


def _read_image(path):
    p = Path(path)
    if p.suffix == ".tif":
        import tifffile

        return np.asarray(tifffile.imread(p), np.float64)
    from PIL import Image

    return np.asarray(Image.open(p).convert("L"), np.float64)


def _score_cli(paths, model, out_dir, tomoqc_bin, code=None):
    """``tomoqc score`` on ``paths``; ``code``: run the tomoqc of that source tree instead."""
    cmd = [str(tomoqc_bin), "score", *map(str, paths), "--out", str(out_dir), "--json",
           "--workers", "0", "--quiet", "--overwrite"]
    env = None
    if code is not None:
        # -P: no current directory on sys.path, so that this tree, not the checkout, is imported
        cmd[0:1] = [sys.executable, "-P", "-c", "import sys; sys.argv[0] = 'tomoqc'; from tomoqc.cli import entry; entry()"]
        env = {**os.environ, "PYTHONPATH": str(code)}
    if model is not None:
        cmd[cmd.index("score") + 1:cmd.index("score") + 1] = ["--model", str(model)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    scores = {}
    for line in res.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rec = json.loads(line)
            v = rec.get("median_score")
            scores[str(Path(rec["path"]).resolve())] = float("nan") if v is None else float(v)
    missing = [p for p in paths if str(Path(p).resolve()) not in scores]
    if missing:
        raise RuntimeError(f"tomoqc score gave no result for {len(missing)} image(s); "
                           f"rc={res.returncode}; stderr tail: {res.stderr[-2000:]}")
    return scores


def score_images(paths, model, *, out, api=False, jobs=1, cache_path, model_key, code=None, log=print):
    """Scores of ``paths`` by ``model`` (None: bundled), cached by model sha + image sha.

    ``code``: a tomoqc source tree whose own CLI scores (the previous release; never in-process).
    """
    cache = {}
    if cache_path.exists():
        with open(cache_path) as f:
            for r in csv.DictReader(f):
                cache[(r["model"], r["image"])] = float(r["score"])
    keys = {p: f"{Path(p).name}:{_sha(p)[:16]}" for p in paths}
    todo = [p for p in paths if (model_key, keys[p]) not in cache]
    if todo:
        log(f"  scoring {len(todo)} images with {model_key[:12]} ({'api' if api else 'cli'})")
        got = {}
        if api and code is None:
            from tomoqc import load_model

            m = load_model(model)
            for p in todo:
                r = m.score_slices(_read_image(p))
                got[p] = float(np.asarray(r["score"]).ravel()[0])
        else:
            tomoqc_bin = Path(sys.executable).parent / "tomoqc"
            qdir = Path(out) / "quality" / hashlib.sha256(model_key.encode()).hexdigest()[:12]
            per = max(1, math.ceil(len(todo) / max(1, jobs)))
            chunks = [todo[i:i + per] for i in range(0, len(todo), per)]
            with ThreadPoolExecutor(max(1, jobs)) as ex:
                for res in ex.map(lambda ch: _score_cli(ch, model, qdir, tomoqc_bin, code), chunks):
                    got.update(res)
            got = {p: got[str(Path(p).resolve())] for p in todo}
        new = not cache_path.exists()
        with open(cache_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["model", "image", "score"])
            for p in todo:
                w.writerow([model_key, keys[p], repr(got[p])])
                cache[(model_key, keys[p])] = got[p]
    return {p: cache[(model_key, keys[p])] for p in paths}


# ------------------------------------------------------------------------ accuracy
def pair_accuracy(rows, col):
    """(correct, pairs): within-group pairs of one format, better first; ties and NaN 0.5."""
    by = {}
    for r in rows:
        by.setdefault((r["group"], r["format"]), []).append(r)
    good, n = 0.0, 0
    for members in by.values():
        members = sorted(members, key=lambda r: r["rank"])
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = members[i][col], members[j][col]
                n += 1
                if not (np.isfinite(a) and np.isfinite(b)) or a == b:
                    good += 0.5
                elif a > b:
                    good += 1.0
    return good, n


def _previous_tree(out: Path, log=print):
    """The tomoqc source tree of the previous release (``PREVIOUS_COMMIT``), from git; None if unavailable.

    Its own code and its own bundled model score the 'previous' column, so that column is the
    previous release exactly as a user had it (its ring term, its ring index, its patch rules).
    """
    dst = out / "previous_tree"
    if (dst / "tomoqc" / "cli" / "__init__.py").is_file():
        return dst
    tmp = out / "previous_tree.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_COMMIT, "tomoqc"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        log(f"note: previous release not available from git ({type(err).__name__}); column skipped")
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    os.replace(tmp, dst)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--out", type=Path, default=Path("bench-out/real_orderings"))
    ap.add_argument("--model", type=Path, default=None, help="TIQA model (default: the bundled one)")
    ap.add_argument("--previous-model", type=Path, default=None,
                    help="model for the 'previous' column, scored by this checkout's code (default: the release "
                         f"at {PREVIOUS_COMMIT}, its own code and bundled model, from git)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--api", action="store_true", help="score in-process (fast iteration; not the official figure)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel CLI calls")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    kinds = [k for k in args.kinds.split(",") if k]
    for f in formats:
        if f not in FORMATS:
            ap.error(f"unknown format {f!r}")
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    if not args.realdata.is_dir():
        ap.error(f"no realdata folder at {args.realdata}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"building groups from {args.realdata} ...", flush=True)
    rows = build_groups(args.realdata, out, kinds=kinds, formats=formats, seed=args.seed)
    print(f"{len(rows)} images in {len({r['group'] for r in rows})} groups ({time.time() - t0:.0f} s)", flush=True)

    model = args.model
    model_file = model or (REPO / "tomoqc" / "models" / "weights" / "tiqa_default.keras")
    cache_path = out / "scores_cache.csv"
    paths = [r["path"] for r in rows]
    cols = {"tomoqc": (model, model_file, None)}
    if args.previous_model is not None:
        cols["previous"] = (args.previous_model, args.previous_model, None)
    else:
        tree = _previous_tree(out)
        if tree is not None:
            cols["previous"] = (None, tree / "tomoqc" / "models" / "weights" / "tiqa_default.keras", tree)
    for col, (m, mf, code) in cols.items():
        # the weights and their card (calibration, measured terms) make the model; API and CLI cached
        # apart; a previous release's code is part of its key
        card = Path(mf).with_suffix(".json")
        key = (_sha(mf)[:32] + ":" + (_sha(card)[:16] if card.is_file() else "nocard")
               + (f":code-{PREVIOUS_COMMIT}" if code is not None else "") + (":api" if args.api and code is None else ":cli"))
        sc = score_images(paths, m, out=out, api=args.api, jobs=args.jobs, cache_path=cache_path, model_key=key,
                          code=code)
        for r in rows:
            r[col] = sc[r["path"]]
            r[f"{col}_model"] = key[:12] + key[32:41]
    for r in rows:
        r["baseline"] = baseline_score(_read_image(r["path"]))
    fields = ["group", "sample", "kind", "rank", "format", "parameter", "path", "baseline", *[
        x for c in cols for x in (c, f"{c}_model")]]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    methods = ["tomoqc", "baseline"] + (["previous"] if "previous" in cols else [])
    fmt_sets = [("float", ["float"]), ("exports", [f for f in formats if f != "float"])]
    header = f"{'kind':8s} {'pairs':>6s}"
    for m in methods:
        for name, _ in fmt_sets:
            header += f" {m[:8] + '/' + name:>16s}"
    print(f"\npair accuracy ({'api' if args.api else 'CLI'}; model {cols['tomoqc'][0] or 'bundled'}"
          + ("; previous: " + (str(cols["previous"][0]) if cols["previous"][2] is None else
                                 f"release {PREVIOUS_COMMIT} (its code and model)") if "previous" in cols
             else "; previous: not available") + ")")
    print(header)
    for kind in [*kinds, "ALL"]:
        sub = [r for r in rows if kind == "ALL" or r["kind"] == kind]
        _, npairs = pair_accuracy(sub, "baseline")
        line = f"{kind:8s} {npairs:6d}"
        for m in methods:
            for _, fs in fmt_sets:
                g, n = pair_accuracy([r for r in sub if r["format"] in fs], m)
                line += f" {(g / n if n else float('nan')):16.3f}"
        print(line)
    g, n = pair_accuracy(rows, "tomoqc")
    nan = sum(1 for r in rows if not np.isfinite(r["tomoqc"]))
    print(f"\n{n} pairs over {len({r['group'] for r in rows})} groups; {nan} images without a tomoqc score; "
          f"total {time.time() - t0:.0f} s; results: {out / 'results.csv'}")
    print(f"real-orderings: {g / n:.3f}")


if __name__ == "__main__":
    main()
