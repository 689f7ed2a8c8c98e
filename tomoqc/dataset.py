"""Training datasets: reference slices, distorted versions at known levels, ground truth.

A dataset is a folder::

    DIR/manifest.csv
    DIR/references/<ref>_<domain>.npy          float32 reference slices
    DIR/distorted/<ref>_<domain>_<what>.npy    float32 distorted slices
    DIR/labels/<ref>.npy                       uint8 phase labels (phantom sources)

``manifest.csv`` has one row per image with the columns :data:`COLUMNS`:
``reference`` (id shared by a reference and its distorted versions), ``domain``
(``image`` or ``physics``), ``distortion`` (``none``, ``noise``, ``blur``, ``ring`` or
``mixed``), ``level`` (0 for the reference, 1..5; for a mixture the strongest of its
components), ``file`` and ``label_file`` (relative to DIR; ``label_file`` empty for
real-volume sources), ``params`` (JSON: the distortion's parameters, a mixture's
components, where the reference came from) and ``seed`` (the per-reference seed:
everything about that reference is reproducible from it). Later stages may add columns
(``label``, ``obs_<name>``); :func:`read_manifest` and :func:`write_manifest` keep them.

The builder follows the TIQA report (section IV.1: reference slices resized to a short
side of 255 and randomly cropped to 224 x 224, or kept whole) and adds phantom sources
with exact labels and the sinogram-domain impairments of :mod:`tomoqc.distort.physics`.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = [
    "COLUMNS",
    "build_dataset",
    "read_manifest",
    "write_manifest",
    "reference_specs",
    "report_crop",
    "preview",
]

COLUMNS = ("reference", "domain", "distortion", "level", "file", "label_file", "params", "seed")
MANIFEST = "manifest.csv"
_INT_COLUMNS = ("level", "seed")


# ----------------------------------------------------------------------------- manifest
def _convert(key: str, value: str):
    if key in _INT_COLUMNS and value != "":
        return int(value)
    if (key == "label" or key.startswith("obs_")) and value != "":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_manifest(directory) -> list[dict]:
    """Read ``DIR/manifest.csv`` into a list of dicts (one per image).

    ``level`` and ``seed`` become ``int``; ``label`` and ``obs_*`` columns ``float``;
    everything else stays a string (``params`` is JSON text). Empty cells stay ``""``.

    Raises
    ------
    InputError
        When the folder or its manifest is missing or lacks the required columns.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise InputError(d, "no such dataset folder")
    if not path.is_file():
        raise InputError(path, "no manifest.csv (build one with `tomoqc dataset build`)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"manifest lacks column(s) {', '.join(missing)}")
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                rows.append({k: _convert(k, v if v is not None else "") for k, v in row.items()})
            except ValueError as err:
                raise InputError(path, f"line {i}: {err}") from err
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def write_manifest(directory, rows: list[dict]) -> Path:
    """Write ``rows`` to ``DIR/manifest.csv`` atomically (temporary file, then rename).

    The :data:`COLUMNS` come first, then any other keys in order of first appearance.
    Floats are written with ``repr`` so they read back exactly.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InputError(d, "no such dataset folder")
    cols = list(COLUMNS)
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".csv.tmp", dir=d)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
            w.writeheader()
            for row in rows:
                w.writerow({k: _fmt(row.get(k, "")) for k in cols})
        os.replace(tmp, d / MANIFEST)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return d / MANIFEST


# ----------------------------------------------------------------------------- sources
def report_crop(img, rng, *, short=255, crop=224) -> tuple[np.ndarray, dict]:
    """Resize so the short side is ``short`` and take a random ``crop`` x ``crop`` window.

    The TIQA report's section IV.1 recipe. Returns the crop and a dict with the scale and
    the window's corner.
    """
    from skimage.transform import resize

    img = np.asarray(img, np.float32)
    h, w = img.shape
    s = short / min(h, w)
    nh, nw = max(crop, int(round(h * s))), max(crop, int(round(w * s)))
    small = resize(img, (nh, nw), order=1, anti_aliasing=s < 1, preserve_range=True)
    y0 = int(rng.integers(0, nh - crop + 1))
    x0 = int(rng.integers(0, nw - crop + 1))
    return small[y0 : y0 + crop, x0 : x0 + crop].astype(np.float32), {
        "scale": s,
        "crop": [y0, x0, crop],
    }


_VOLUMES: dict = {}


def _volume(path, dataset):
    key = (str(path), dataset)
    if key not in _VOLUMES:
        from tomoqc.io import open_volume

        _VOLUMES[key] = open_volume(path, dataset)
    return _VOLUMES[key]


def reference_specs(n: int, seed: int) -> list[int]:
    """Per-reference integer seeds, children of ``seed`` (independent of worker count)."""
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [int(c.generate_state(1, np.uint32)[0]) for c in children]


def _mixtures(rng, count=3) -> list[dict]:
    from tomoqc.distort import DISTORTIONS

    out = []
    for _ in range(count):
        k = int(rng.integers(2, 4))
        names = sorted(rng.choice(DISTORTIONS, size=k, replace=False).tolist())
        out.append({n: int(rng.integers(1, 6)) for n in names})
    return out


def _build_one(task: dict) -> list[dict]:
    """Make and write one reference with all its distorted versions; return its rows."""
    from tomoqc import distort
    from tomoqc.distort import image as dimage
    from tomoqc.distort import physics
    from tomoqc.phantom import electrode_slice, random_params

    root = Path(task["root"])
    rid = task["reference"]
    ref_seed = task["seed"]
    ss_src, ss_img, ss_phy, ss_mix = np.random.SeedSequence(ref_seed).spawn(4)
    size = task["size"]
    source_info: dict = {}
    label_file = ""
    if task["source"] == "phantom":
        s_par, s_ph = ss_src.spawn(2)
        params = random_params((size, size), seed=s_par)
        img, labels = electrode_slice((size, size), seed=s_ph, **params)
        label_file = f"labels/{rid}.npy"
        np.save(root / label_file, labels)
        source_info = {"source": "phantom", "phantom": params}
    else:
        from tomoqc.preprocess import normalize_slice

        rng_src = np.random.default_rng(ss_src)
        vol = _volume(task["source"], task.get("dataset"))
        z = task["z"]
        raw = np.asarray(vol[z].values, np.float32)
        if not np.isfinite(raw).any():
            raise InputError(task["source"], f"slice {z} holds no finite values")
        img = normalize_slice(raw)
        source_info = {"source": str(vol.attrs.get("source", task["source"])), "z": int(z)}
        if task["fit"] == "report":
            img, crop = report_crop(img, rng_src, crop=size)
            source_info.update(crop)
    rng_mix = np.random.default_rng(ss_mix)
    mixes = _mixtures(rng_mix) if task["mixtures"] else []
    singles = [{d: lv} for d in distort.DISTORTIONS for lv in distort.LEVELS]
    # the physics domain also scans with too few projections (streak)
    singles_physics = singles + [{d: lv} for d in distort.PHYSICS_ONLY for lv in distort.LEVELS]
    rows = []

    def add(domain, spec, arr, params):
        if spec is None:
            distortion, level, fname = "none", 0, f"references/{rid}_{domain}.npy"
        elif len(spec) == 1:
            ((distortion, level),) = spec.items()
            fname = f"distorted/{rid}_{domain}_{distortion}{level}.npy"
        else:
            distortion, level = "mixed", max(spec.values())
            tag = "-".join(f"{k}{v}" for k, v in sorted(spec.items()))
            fname = f"distorted/{rid}_{domain}_mixed_{tag}.npy"
        np.save(root / fname, np.asarray(arr, np.float32))
        rows.append(
            {
                "reference": rid,
                "domain": domain,
                "distortion": distortion,
                "level": level,
                "file": fname,
                "label_file": label_file,
                "params": json.dumps(params, sort_keys=True, default=float),
                "seed": ref_seed,
            }
        )

    if task["domain"] in ("image", "both"):
        rng = np.random.default_rng(ss_img)
        add("image", None, img, source_info)
        for spec in singles + mixes:
            out = distort.apply_mixture(img, spec, domain="image", rng=rng)
            ps = {k: dimage.level_params(k, v) for k, v in spec.items()}
            add("image", spec, out, {"components": spec, **ps} if len(spec) > 1 else ps[next(iter(spec))])
    if task["domain"] in ("physics", "both"):
        ref, outs = physics.apply_many(img, singles + mixes + singles_physics[len(singles):], rng=ss_phy)
        add("physics", None, ref, {**source_info, "attenuation": physics.ATTENUATION,
                                   "n_angles": physics.scanner(img.shape).n_angles})
        for spec, out in zip(singles + mixes + singles_physics[len(singles):], outs):
            ps = {k: physics.level_params(k, v) for k, v in spec.items()}
            add("physics", spec, out, {"components": spec, **ps} if len(spec) > 1 else ps[next(iter(spec))])
    return rows


def _mp_context():
    """Process start method for the workers.

    Forking a process that already runs TensorFlow's (or another runtime's) threads can
    deadlock the child, so such a process starts its workers from a clean server
    process instead; otherwise the platform default is used.
    """
    import multiprocessing as mp
    import sys

    threaded = ("tensorflow", "torch", "jax", "distributed")
    if os.name == "posix" and any(m in sys.modules for m in threaded):
        return mp.get_context("forkserver")
    return None


def build_dataset(
    out,
    *,
    source="phantom",
    references: int = 10,
    domain: str = "both",
    size: int | None = None,
    seed: int = 0,
    mixtures: bool = True,
    workers: int | None = None,
    progress: bool = True,
    dataset: str | None = None,
    fit: str = "report",
    overwrite: bool = False,
) -> Path:
    """Build a dataset of references and their distorted versions.

    Parameters
    ----------
    out : path-like
        Dataset folder to create (written under a temporary name, renamed when complete).
    source : "phantom" or path-like
        ``"phantom"``: domain-randomised electrode phantoms with exact labels
        (:func:`tomoqc.phantom.random_params`). Otherwise a volume readable by
        :func:`tomoqc.io.open_volume`: ``references`` slices are drawn from it
        (without replacement while possible), normalised to ``[0, 1]``
        (:func:`tomoqc.preprocess.normalize_slice`) and fitted as ``fit`` says.
    references : int
        Number of reference slices.
    domain : {"image", "physics", "both"}
        Which distortion domains to produce.
    size : int, optional
        Phantom side (default 256), or the crop side for ``fit="report"`` (default 224,
        as in the report).
    seed : int
        Dataset seed; per-reference child seeds make the result independent of
        ``workers``.
    mixtures : bool
        Also write three random mixtures of two or three impairments per reference
        and domain.
    workers : int, optional
        Worker processes (default: the number of CPUs, at most ``references``); 1 runs
        in this process.
    progress : bool
        Show a progress bar.
    dataset : str, optional
        Array path inside an HDF5 file or zarr group (volume sources).
    fit : {"report", "full"}
        Volume sources: ``"report"`` resizes each slice to a short side of 255 and takes
        a random ``size`` crop (use ``size=224`` for the report's setting); ``"full"``
        keeps the whole slice.
    overwrite : bool
        Replace an existing ``out`` once the new dataset is complete.

    Returns
    -------
    pathlib.Path
        The dataset folder.
    """
    from tomoqc.io import atomic_path

    if domain not in ("image", "physics", "both"):
        raise OptionError(f"domain must be image, physics or both, not {domain!r}")
    if fit not in ("report", "full"):
        raise OptionError(f"fit must be report or full, not {fit!r}")
    references = int(references)
    if size is None:
        size = 256 if str(source) == "phantom" or fit == "full" else 224
    if references < 1:
        raise OptionError(f"references must be at least 1, not {references}")
    size = int(size)
    if size < 16:
        raise OptionError(f"size must be at least 16, not {size}")
    if workers is not None and int(workers) < 1:
        raise OptionError(f"workers must be at least 1, not {workers}")

    seeds = reference_specs(references, seed)
    zs = [None] * references
    src = "phantom"
    if str(source) != "phantom":
        src = os.path.abspath(os.fspath(source))
        if not os.path.exists(src):
            raise InputError(src, "no such file or folder")
        vol = _volume(src, dataset)
        nz = int(vol.sizes["z"])
        if fit == "report" and min(int(vol.sizes["y"]), int(vol.sizes["x"])) < 16:
            raise InputError(src, f"slices too small ({vol.sizes['y']} x {vol.sizes['x']})")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        zs = (
            rng.choice(nz, size=references, replace=False)
            if references <= nz
            else rng.integers(0, nz, references)
        ).tolist()
        if fit == "report" and size > 255:
            raise OptionError(f"with fit='report' the crop size must be <= 255, not {size}")

    final = Path(os.path.abspath(out))
    if os.path.lexists(final) and not overwrite:
        raise InputError(final, "output already exists (use --overwrite to replace it)")
    width = max(5, len(str(references - 1)))
    n_workers = min(int(workers) if workers else (os.cpu_count() or 1), references)
    with atomic_path(final, overwrite=overwrite) as tmp:
        for sub in ("references", "distorted", "labels"):
            (tmp / sub).mkdir(parents=True)
        tasks = [
            {
                "root": str(tmp),
                "reference": f"r{i:0{width}d}",
                "seed": seeds[i],
                "source": src,
                "dataset": dataset,
                "z": zs[i],
                "size": size,
                "fit": fit,
                "domain": domain,
                "mixtures": bool(mixtures),
            }
            for i in range(references)
        ]
        results: list[list[dict] | None] = [None] * references
        bar = _progress(references, f"building {final.name}", progress)
        with bar as update:
            if n_workers <= 1:
                for i, t in enumerate(tasks):
                    results[i] = _build_one(t)
                    update(1)
            else:
                with ProcessPoolExecutor(max_workers=n_workers, mp_context=_mp_context()) as ex:
                    futs = {ex.submit(_build_one, t): i for i, t in enumerate(tasks)}
                    from concurrent.futures import as_completed

                    for f in as_completed(futs):
                        results[futs[f]] = f.result()
                        update(1)
        rows = [r for res in results for r in res]
        write_manifest(tmp, rows)
        with open(tmp / "dataset.json", "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "source": src,
                    "dataset": dataset,
                    "references": references,
                    "domain": domain,
                    "size": size,
                    "seed": int(seed),
                    "mixtures": bool(mixtures),
                    "fit": fit if src != "phantom" else None,
                    "images": len(rows),
                },
                fh,
                indent=2,
            )
    return final


def preview(directory, out=None, *, rows: int = 4, domain: str | None = None) -> Path:
    """Contact sheet of a dataset: references by rows, distortion levels by columns.

    Each row is one reference in one domain: the reference, then noise, blur and ring
    at levels 1..5 (like the TIQA report's Figure S2), all shown with the grey range of
    the reference (0.5 and 99.5 percentiles).

    Parameters
    ----------
    directory : path-like
        Dataset folder.
    out : path-like, optional
        PNG to write (default ``DIR/preview.png``); written atomically.
    rows : int
        Number of references shown (per domain).
    domain : {"image", "physics"}, optional
        Show one domain only (default: every domain in the dataset).

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomoqc.distort import ALL_DISTORTIONS, LEVELS

    d = Path(directory)
    table = read_manifest(d)
    if int(rows) < 1:
        raise OptionError(f"rows must be at least 1, not {rows}")
    if domain is not None and domain not in ("image", "physics"):
        raise OptionError(f"domain must be image or physics, not {domain!r}")
    index = {}
    refs, domains = [], []
    for r in table:
        index[(r["reference"], r["domain"], r["distortion"], int(r["level"]))] = r["file"]
        if r["reference"] not in refs:
            refs.append(r["reference"])
        if r["domain"] not in domains and (domain is None or r["domain"] == domain):
            domains.append(r["domain"])
    if not domains:
        raise InputError(d, f"no {domain or ''} images in the manifest".replace("  ", " "))
    pairs = [(ref, dom) for ref in refs[: int(rows)] for dom in domains]
    present = {r["distortion"] for r in table}
    cols = [("none", 0)] + [(k, lv) for k in ALL_DISTORTIONS if k in present for lv in LEVELS]
    fig, axes = plt.subplots(
        len(pairs), len(cols), figsize=(1.1 * len(cols), 1.15 * len(pairs) + 0.4), squeeze=False
    )
    for i, (ref, dom) in enumerate(pairs):
        rf = index.get((ref, dom, "none", 0))
        base = np.load(d / rf) if rf else None
        lo, hi = (np.percentile(base, [0.5, 99.5]) if base is not None else (0.0, 1.0))
        if hi <= lo:
            hi = lo + 1.0
        for j, (k, lv) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            f = index.get((ref, dom, k, lv))
            if f is not None:
                ax.imshow(np.load(d / f), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            else:
                ax.set_facecolor("0.85")
            if i == 0:
                ax.set_title("reference" if k == "none" else f"{k} {lv}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{ref}\n{dom}", fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.995, top=1 - 0.35 / (1.15 * len(pairs) + 0.4),
                        bottom=0.01, wspace=0.04, hspace=0.06)
    target = Path(out) if out is not None else d / "preview.png"
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class _progress:
    """A rich progress bar (or nothing) yielding an ``update(n)`` callable."""

    def __init__(self, total, label, enabled):
        self.total, self.label, self.enabled = total, label, enabled
        self._p = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.console import Console

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._p.__enter__()
        tid = self._p.add_task(self.label, total=self.total)
        return lambda n: self._p.advance(tid, n)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False
