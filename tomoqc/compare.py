"""Rank processing variants of the same slices with paired statistics (``tomoqc compare``).

Which ring-removal strength, which filter, which centre of rotation gives the best
image? :func:`compare` scores every variant of the same slices with the quality model
(:func:`tomoqc.pipeline.score`, all variants on one dask cluster), pairs slice ``j`` of
each variant with slice ``j`` of the others, and ranks the variants by their median
paired difference to the best with a paired test (:mod:`tomoqc.metrics.paired`: the
Wilcoxon signed-rank test over slices, or a paired bootstrap with fewer than 10
slices), the share of slices each one wins, whether its distance to the best is
inside the uncertainty (then it is *tied* with the best, not beaten by it), and the
impairment that separates it from the best.

Variants
--------
Each variant is a volume or a single slice (any input of :func:`tomoqc.io.open_volume`),
one entry of a parameter sweep (``PATH::VALUE``, :mod:`tomoqc.sweep`), an array, or
every entry of a sweep (``sweep=``). All must have the same slice geometry and the
same number of slices; ``slices`` chooses which are compared. Slices that could not be
scored in every variant (NaN score) are left out of the statistics.

The result
----------
An :class:`xarray.Dataset` with dims ``variant`` (the labels) and ``z`` (the slice
indices):

``score``, ``score_uncertainty``, ``flag``, ``valid_fraction`` (variant, z), ``severity``
(variant, z, distortion), the indicators ``noise_index``, ``blur_index``, ``ring_index``,
``streak_index``, ``missing_wedge``, ``view_spacing`` and ``inclusion_fraction`` (variant, z)
    The quality outputs of the variants (see :mod:`tomoqc.pipeline`).
``paired`` (z)
    True where every variant has a score: the slices the statistics use.
``path``, ``parameter`` (variant)
    Where the variant comes from; its parameter value (NaN outside a sweep).
``rank``, ``median_score``, ``uncertainty``, ``slice_uncertainty``, ``median_difference``,
``ci_low``, ``ci_high``, ``difference_uncertainty``, ``p_value``, ``test``, ``wins``,
``tied_with_best`` (variant)
    From :func:`tomoqc.metrics.paired.rank_variants` over the paired slices: rank 1 is
    the best; ``uncertainty`` is that of the median score, ``slice_uncertainty`` the
    median of the slices' own; ``median_difference`` and its 95 % interval are to the
    best; ``tied_with_best`` is True for the best itself and for every variant whose
    distance to it is inside the uncertainty or not significant (the rule is spelled out
    in :mod:`tomoqc.metrics.paired` and in the ``tie_rule`` attribute).
``separating_impairment``, ``impairment_cost``, ``severity_difference``, ``reason`` (variant)
    The impairment (noise, blur, ring, streak) that separates the variant from the best:
    the one whose measured term takes the most score off it beyond what it takes off the
    best (median over the paired slices, in score units: ``impairment_cost``; without
    measured terms, the one whose severity exceeds the best's most), its median paired
    severity difference, and a sentence saying why the variant is where it is.
``preview`` (variant, preview_y, preview_x)
    The same slice (attribute ``preview_z``) of every variant, at most
    :data:`PREVIEW_SIDE` pixels a side.

attrs: ``best``, ``winner`` (the best, or ``""`` when another variant is tied with it),
``tied`` (JSON list of the labels tied with the best, itself included), ``n_paired``,
``alpha``, ``tie_rule``, ``model_id``, ``model_sha256``, ``parameter_name``,
``best_parameter`` and ``peak_parameter`` (for sweeps: the best entry's value, and the
vertex of a parabola through it and its two neighbours), ``created``,
``tomoqc_version``.

With ``out``, :func:`write_outputs` writes ``compare.json``, ``compare.csv`` and
``compare.html`` (:mod:`tomoqc.compare_html`) there, and every variant's quality output
goes to ``out/quality/``, where a rerun finds and reuses it (a run that was stopped
resumes inside the interrupted variant).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import types
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.paired import ALPHA, MIN_WILCOXON, N_BOOTSTRAP, rank_variants

__all__ = ["compare", "parse_slices", "summary", "write_outputs", "COMPARE_FILES", "SEVERITY_STEP", "PREVIEW_SIDE",
           "TIE_RULE"]

#: Files :func:`write_outputs` writes (besides the PNGs of :mod:`tomoqc.compare_html`).
COMPARE_FILES = ("compare.json", "compare.csv", "compare.html")
#: Smallest median paired cost (score units) or severity difference named as the impairment
#: separating two variants.
SEVERITY_STEP = 0.02
#: Longest side of the preview slices kept in the result.
PREVIEW_SIDE = 512
#: The tie rule in words (also in the result's attrs and compare.json).
TIE_RULE = ("tied with the best when |median paired difference| <= its combined uncertainty "
            "(sqrt(pi/2) * RMS of sqrt(u_v^2 + u_best^2) / sqrt(n) over the n paired slices; factor 1 "
            "for n <= 2) or the paired test gives p > alpha")

#: Per-slice variables copied from each variant's quality output.
_SLICE_VARS = ("score", "score_uncertainty", "flag", "valid_fraction", "noise_index", "blur_index", "ring_index",
               "streak_index", "missing_wedge", "view_spacing", "inclusion_fraction")
#: Per-variant statistics, in the order of compare.csv.
_RANK_FIELDS = ("rank", "label", "path", "parameter", "median_score", "uncertainty", "slice_uncertainty",
                "median_difference", "ci_low", "ci_high", "difference_uncertainty", "p_value", "test", "wins",
                "tied_with_best", "separating_impairment", "impairment_cost", "severity_difference", "reason")


@dataclass
class _Variant:
    label: str
    display: str  # the path (or a description of an array)
    data: object  # xarray.DataArray (z, y, x), lazy
    file: str | None  # readable by open_volume: the engine's workers read it themselves
    dataset: str | None
    parameter: float
    parameter_name: str
    stamp: list  # identifies the input's content for reusing a quality output ([]: never reuse)


# ----------------------------------------------------------------------------- selection


def parse_slices(selection, n: int) -> np.ndarray:
    """Slice indices chosen by ``selection`` out of ``n``.

    Parameters
    ----------
    selection : None, str, int or sequence of int
        None, ``""`` or ``"all"``: every slice. ``"START:STOP[:STEP]"``: Python slice
        semantics (``"::4"`` every 4th, ``"10:20"`` slices 10-19, negative values count
        from the end). ``"3,8,20-25"``: single indices and inclusive ranges. A sequence
        of integers: those indices.
    n : int
        Number of slices.

    Returns
    -------
    ndarray of int64
        Sorted, unique, at least one.

    Raises
    ------
    OptionError
        Unreadable selection, an index outside ``0 .. n-1``, or nothing selected.
    """
    if selection is None or (isinstance(selection, str) and selection.strip().lower() in ("", "all")):
        return np.arange(n, dtype=np.int64)
    if isinstance(selection, (int, np.integer)):
        items = [int(selection)]
    elif isinstance(selection, str):
        text = selection.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise OptionError(f"--slices {selection!r}: use START:STOP[:STEP]")
            try:
                nums = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise OptionError(f"--slices {selection!r}: START, STOP and STEP must be integers") from None
            if len(nums) == 3 and nums[2] is not None and nums[2] < 1:
                raise OptionError(f"--slices {selection!r}: STEP must be >= 1")
            idx = np.arange(n, dtype=np.int64)[slice(*nums)]
            if idx.size == 0:
                raise OptionError(f"--slices {selection!r} selects no slice of {n}")
            return idx
        items = []
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            try:
                if m:
                    a, b = int(m.group(1)), int(m.group(2))
                    if b < a:
                        raise OptionError(f"--slices {selection!r}: range {part} runs backwards")
                    items.extend(range(a, b + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise OptionError(f"--slices {selection!r}: use START:STOP[:STEP] or a list like 3,8,20-25") from None
    else:
        try:
            items = [int(i) for i in selection]
        except (TypeError, ValueError):
            raise OptionError(f"slices must be a string or integers, got {selection!r}") from None
    bad = [i for i in items if not 0 <= i < n]
    if bad:
        raise OptionError(f"--slices: index {bad[0]} is outside the {n} slices (0-{n - 1})")
    if not items:
        raise OptionError("--slices selects no slice")
    return np.unique(np.asarray(items, dtype=np.int64))


# ----------------------------------------------------------------------------- variants


#: Most files of a folder input looked at for its stamp.
_STAMP_FILES = 100_000


def _stamp(path) -> list:
    """Size and modification time of a file; for a folder (zarr, TIFF stack), the number,
    total size and latest modification time of the files in it (up to :data:`_STAMP_FILES`)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    if not Path(path).is_dir():
        return [int(st.st_size), int(st.st_mtime_ns)]
    count, size, latest = 0, 0, int(st.st_mtime_ns)
    for root, dirs, files in os.walk(path):
        for f in files:
            try:
                fs = os.stat(os.path.join(root, f))
            except OSError:
                continue
            count, size, latest = count + 1, size + int(fs.st_size), max(latest, int(fs.st_mtime_ns))
            if count >= _STAMP_FILES:
                return [count, size, latest]
    return [count, size, latest]


def _as_3d(data, what: str):
    import xarray as xr

    da_ = data if isinstance(data, xr.DataArray) else xr.DataArray(np.asarray(data))
    if da_.ndim == 2:
        da_ = da_.expand_dims("z" if "z" not in da_.dims else "_slice")
    if da_.ndim != 3:
        raise InputError(None, f"{what} must be a 2-D slice or a 3-D volume (z, y, x), got shape {da_.shape}")
    dims = tuple(da_.dims)
    if dims != ("z", "y", "x"):
        da_ = da_.rename(dict(zip(dims, ("z", "y", "x")))) if set(dims) != {"z", "y", "x"} else \
            da_.transpose("z", "y", "x")
    if da_.dtype.kind not in "biuf":
        raise InputError(None, f"{what} must hold real numbers, got dtype {da_.dtype}")
    return da_


def _resolve(variants, sweep, *, dataset, sweep_dataset, axis) -> list[_Variant]:
    """Open every variant lazily; sweep entries first, in order of value."""
    import xarray as xr

    from tomoqc.io import open_volume
    from tomoqc.sweep import SweepEntry, read_sweep, split_entry, sweep_entry

    out: list[_Variant] = []

    def from_entry(e: SweepEntry) -> _Variant:
        return _Variant(label=e.label, display=f"{e.source}::{e.value:g}", data=e.open(axis),
                        file=e.path if e.readable_file else None, dataset=e.dataset or None,
                        parameter=float(e.value), parameter_name=e.name,
                        stamp=[e.source, e.path, e.dataset, e.index, *_stamp(e.path)])

    if sweep is not None:
        for e in read_sweep(sweep, dataset=sweep_dataset):
            out.append(from_entry(e))
    if isinstance(variants, (str, os.PathLike)) or not hasattr(variants, "__iter__") or hasattr(variants, "dims"):
        variants = [variants]
    for i, v in enumerate(variants):
        if isinstance(v, SweepEntry):
            out.append(from_entry(v))
        elif isinstance(v, (str, os.PathLike)):
            if isinstance(v, str) and split_entry(v) is not None:
                out.append(from_entry(sweep_entry(v, dataset=sweep_dataset)))
                continue
            p = Path(v)
            if not p.exists():
                raise InputError(p, "no such file or folder")
            vol = open_volume(p, dataset=dataset, axis=axis)
            out.append(_Variant(label="", display=str(p.resolve()), data=vol, file=str(p.resolve()),
                                dataset=dataset, parameter=float("nan"), parameter_name="",
                                stamp=[str(p.resolve()), dataset or "", *_stamp(p)]))
        else:
            name = f"variant{len(out) + 1}"
            vol = _as_3d(v, f"variant {len(out) + 1}")
            if isinstance(v, xr.DataArray) and isinstance(v.name, str) and v.name:
                name = v.name
            if axis != "z":
                from tomoqc.sweep import _orient

                vol = _orient(vol, axis, name)
            out.append(_Variant(label=name, display=f"<array {name}>", data=vol, file=None, dataset=None,
                                parameter=float("nan"), parameter_name="", stamp=[]))
    return out


def _default_labels(vs: list[_Variant]) -> list[str]:
    labels = []
    for v in vs:
        if v.label:
            labels.append(v.label)
        else:
            labels.append(Path(v.display).name or v.display)
    # disambiguate equal names by their folder, then by a number
    for i, lab in enumerate(list(labels)):
        same = [j for j, other in enumerate(labels) if other == lab]
        if len(same) > 1:
            for j in same:
                if vs[j].file:
                    p = Path(vs[j].display)
                    labels[j] = f"{p.parent.name}/{p.name}"
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[i] = f"{lab}#{seen[lab]}"
    return labels


def _check_geometry(vs: list[_Variant]) -> None:
    first = vs[0]
    n0, h0, w0 = (int(s) for s in first.data.shape)
    for v in vs[1:]:
        n, h, w = (int(s) for s in v.data.shape)
        where = v.file or v.display
        if (h, w) != (h0, w0):
            raise InputError(where, f"slices are {h} x {w} px but {first.label} has {h0} x {w0} px: variants "
                                    "must have the same slice geometry")
        if n != n0:
            raise InputError(where, f"{n} slice(s) but {first.label} has {n0}: variants are paired slice by slice "
                                    "and need the same number of slices (choose some with --slices)")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)[:80] or "variant"


def _uniform_step(idx: np.ndarray, n: int) -> int | None:
    """``step`` when ``idx`` is ``0, step, 2 step, ...`` up to the end of ``n`` slices."""
    if idx.size == 0 or idx[0] != 0:
        return None
    step = int(idx[1] - idx[0]) if idx.size > 1 else n
    step = max(1, step)
    return step if np.array_equal(idx, np.arange(0, n, step)) else None


# ----------------------------------------------------------------------------- scoring


def _model_identity(model) -> tuple[str, str]:
    from tomoqc.models import tiqa

    if model is None:
        path = tiqa.default_weights_path()
    elif isinstance(model, tiqa.TiqaModel):
        path = Path(model.path) if model.path else None
    else:
        path = Path(model)
    if path is None or not Path(path).is_file():
        raise InputError(path, "model weights file not found")
    return str(Path(path).resolve()), tiqa.file_sha256(path)


def _score_variant(k: int, v: _Variant, idx: np.ndarray, *, out: Path | None, client, axis: str,
                   score_kwargs: dict, identity: dict):
    """Score one variant's selected slices; returns the quality Dataset and its z indices."""
    from tomoqc.pipeline import open_quality, output_path, score

    nz = int(v.data.shape[0])
    step = _uniform_step(idx, nz)
    run = dict(score_kwargs)
    if client is not None:
        run["client"] = client
    else:
        run["cluster"] = "none"
    path_mode = v.file is not None and step is not None
    if out is None:
        vol = v.data if idx.size == nz else v.data.isel(z=idx)
        ds = score(vol, out=None, **run)
        return ds, idx
    qdir = out / "quality"
    tag = f"{k + 1:02d}-{_safe(v.label)}"
    sidecar = qdir / f"{tag}.json"
    spec = json.dumps({"variant": v.stamp, "axis": axis, "slices": idx.tolist(), **identity},
                      sort_keys=True)
    if path_mode:
        target = qdir / tag
        final = output_path(v.file, target)
    else:
        target = qdir / f"{tag}.quality.zarr"
        final = target
    if final.exists():
        try:
            # arrays in memory have no stamp of their content: never reused
            reuse = bool(v.stamp) and sidecar.read_text() == spec
        except OSError:
            reuse = False
        if reuse:
            try:
                ds = open_quality(final)
                return ds, (np.asarray(ds["z"].values, np.int64) if path_mode else idx)
            except InputError:
                pass
    if sidecar.exists():
        sidecar.unlink()
    run["overwrite"] = True
    if path_mode:
        ds = score(v.file, out=target, dataset=v.dataset, axis=axis, step=step, **run)
        z = np.asarray(ds["z"].values, np.int64)
    else:
        ds = score(v.data.isel(z=idx), out=target, **run)
        z = idx
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(spec)
    os.replace(tmp, sidecar)
    return ds, z


def _collect(results, idx: np.ndarray):
    """(variant, z) arrays of every variant's quality output, aligned on the slice indices."""
    pos = {int(z): i for i, z in enumerate(idx)}
    nv, nz = len(results), idx.size
    distortions = None
    arrays = {name: np.full((nv, nz), np.nan, np.float64) for name in _SLICE_VARS}
    sev = None
    for i, (ds, z) in enumerate(results):
        cols = np.array([pos[int(q)] for q in z])
        if distortions is None:
            distortions = [str(d) for d in ds["distortion"].values] if "distortion" in ds.coords else []
            sev = np.full((nv, nz, len(distortions)), np.nan, np.float64)
        for name in _SLICE_VARS:
            if name in ds:
                arrays[name][i, cols] = np.asarray(ds[name].values, np.float64)
        if "severity" in ds and distortions:
            s = ds["severity"]
            have = [str(d) for d in s["distortion"].values]
            vals = np.asarray(s.values, np.float64)
            for j, d in enumerate(distortions):
                if d in have:
                    sev[i, cols, j] = vals[:, have.index(d)]
    return arrays, sev, distortions or []


def _measured_terms(model_path: str, measured_terms: bool):
    """The model card's measured terms (None when the card has none or they are off)."""
    if not measured_terms:
        return None
    from tomoqc.models.measured import MeasuredTerms

    card = Path(model_path).with_suffix(".json")
    try:
        return MeasuredTerms.from_card(json.loads(card.read_text()))
    except (OSError, ValueError, KeyError, OptionError):
        return None


def _separating(arrays, sev, distortions, best: int, paired: np.ndarray, terms):
    """Per variant: the impairment that separates it from the best, what it costs, its severity difference.

    With the model's measured terms, the cost of impairment ``k`` on slice ``j`` is the
    score its term takes off the variant beyond what it takes off the best,
    ``c_k * log((t_k + x_v) / (t_k + x_best))`` in logit units times the slope
    ``4 q (1 - q)`` of the score at the best's slice score (``q = (s - 1) / 4``); the
    impairment with the largest median cost over the paired slices separates them when
    that cost is at least :data:`SEVERITY_STEP`. Without measured terms, the impairment
    whose median paired severity difference is largest (at least :data:`SEVERITY_STEP`).
    """
    import warnings

    nv = arrays["score"].shape[0]
    names, cost, dsev = [""] * nv, np.full(nv, np.nan), np.full(nv, np.nan)
    sb = arrays["score"][best][paired]
    q = np.clip((sb - 1.0) / 4.0, 1e-3, 1 - 1e-3)
    slope = 4.0 * q * (1.0 - q)
    for v in range(nv):
        if v == best:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sd = (np.nanmedian(sev[v][paired] - sev[best][paired], axis=0)
                  if sev is not None and distortions else np.array([]))
        if terms is not None:
            costs = {}
            for k in ("noise", "blur", "ring", "streak"):
                df = (terms.feature(k, arrays[f"{k}_index"][v][paired])
                      - terms.feature(k, arrays[f"{k}_index"][best][paired]))
                costs[k] = float(np.median(slope * terms.weights[k] * df))
            k = max(costs, key=costs.get)
            cost[v] = costs[k]
            if costs[k] >= SEVERITY_STEP:
                names[v] = k
                if k in distortions and sd.size:
                    dsev[v] = float(sd[distortions.index(k)])
            continue
        if sd.size and np.isfinite(sd).any():
            j = int(np.nanargmax(sd))
            dsev[v] = float(sd[j])
            if sd[j] >= SEVERITY_STEP:
                names[v] = distortions[j]
    return names, cost, dsev


def _reason(v: int, best: int, labels, st: dict, imp: list[str], cost: np.ndarray, dsev: np.ndarray,
            arrays, paired, alpha: float) -> str:
    b = labels[best]
    if v == best:
        tied = [labels[i] for i in range(len(labels)) if i != best and st["tied_with_best"][i]]
        return "best" + (f"; tied with {', '.join(tied)}" if tied else "")
    md, ud, p = st["median_difference"][v], st["difference_uncertainty"][v], st["p_value"][v]
    if st["tied_with_best"][v]:
        why = []
        if abs(md) <= ud:
            why.append(f"difference {md:+.2f} inside the uncertainty {ud:.2f}")
        if np.isfinite(p) and p > alpha:
            why.append(f"p = {p:.2g} > {alpha:g}")
        return f"tied with {b}: " + " and ".join(why)
    ptxt = "" if not np.isfinite(p) else f", p = {p:.2g} ({st['test'][v]})"
    text = f"{md:+.2f} against {b}{ptxt}"
    k = imp[v]
    if k and np.isfinite(cost[v]):
        xv = np.nanmedian(arrays[f"{k}_index"][v][paired])
        xb = np.nanmedian(arrays[f"{k}_index"][best][paired])
        text += f"; {k} costs {cost[v]:.2f} more than in {b} ({k} index {xv:.3g} vs {xb:.3g})"
    elif k:
        text += f"; {k} severity {dsev[v]:.2f} higher than in {b}"
    else:
        text += "; no measured impairment explains it (the network's own score is lower)" if md < 0 else ""
    return text


def _peak(params: np.ndarray, order: np.ndarray, med_d: np.ndarray) -> tuple[float, float]:
    """(best entry's value, vertex of a parabola through it and its neighbours) of a sweep."""
    finite = np.isfinite(params)
    if finite.sum() < 2:
        return float("nan"), float("nan")
    best = next(int(v) for v in order if finite[v])
    sweep = np.flatnonzero(finite)
    sweep = sweep[np.argsort(params[sweep], kind="stable")]
    i = int(np.flatnonzero(sweep == best)[0])
    x0 = float(params[best])
    if i == 0 or i == len(sweep) - 1:
        return x0, x0
    tri = sweep[i - 1:i + 2]
    x, y = params[tri], med_d[tri]
    a, bq, _ = np.polyfit(x - x0, y, 2)
    if not a < 0:
        return x0, x0
    vx = float(np.clip(-bq / (2 * a), x[0] - x0, x[2] - x0)) + x0
    return x0, vx


def _preview(data, z: int) -> np.ndarray:
    import dask

    with dask.config.set(scheduler="synchronous"):
        img = np.asarray(data.isel(z=int(z)).values, np.float32)
    f = int(math.ceil(max(img.shape) / PREVIEW_SIDE))
    if f > 1:
        h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
        img = img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return img


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the API


def compare(
    variants=(),
    *,
    sweep=None,
    labels=None,
    parameters=None,
    slices=None,
    dataset: str | None = None,
    sweep_dataset: str | None = None,
    axis: str = "z",
    model=None,
    out=None,
    cluster="local",
    workers: int | None = None,
    client=None,
    cluster_options: dict | None = None,
    batch_size: int = 16,
    measured_terms: bool = True,
    ring_center=None,
    tta: int | None = None,
    fill_inclusions: bool = True,
    alpha: float = ALPHA,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    preview_slice: int | None = None,
    progress: bool = True,
):
    """Score variants of the same slices and rank them with paired statistics.

    Parameters
    ----------
    variants : sequence
        Volumes or single slices (paths :func:`tomoqc.io.open_volume` reads), sweep
        entries (``"PATH::VALUE"`` or :class:`tomoqc.sweep.SweepEntry`), or arrays
        (2-D slices or 3-D ``(z, y, x)`` volumes).
    sweep : path, optional
        A parameter sweep (:func:`tomoqc.sweep.read_sweep`); its entries come first, in
        order of value, then ``variants``.
    labels : sequence of str, optional
        One unique label per variant (default: sweep entries ``name=value``, files their
        name, arrays their name or ``variantN``).
    parameters : sequence of float, optional
        Parameter values of the variants (overrides those of sweep entries; NaN for
        none), for the score-versus-parameter plot.
    slices : str or sequence of int, optional
        Which slices to compare (:func:`parse_slices`); default all.
    dataset : str, optional
        The array inside HDF5 / zarr variants.
    sweep_dataset : str, optional
        The array or group inside an HDF5 / zarr sweep.
    axis : {"z", "y", "x"}
        Axis to slice along.
    model, batch_size, measured_terms, ring_center, tta, fill_inclusions
        As :func:`tomoqc.pipeline.score`.
    out : path, optional
        Folder for ``compare.json``, ``compare.csv``, ``compare.html`` (with its PNGs)
        and the variants' quality outputs (``quality/``; a rerun reuses those made from the
        same input, by path, size and modification time of its files, with the same
        slices, model and options). Without it, nothing is written and scores stay in
        memory.
    cluster, workers, cluster_options
        Start one dask cluster for all the variants (:func:`tomoqc.cluster.start_cluster`;
        ``workers=0``: score in this process). Ignored when ``client`` is given.
    client : distributed.Client, optional
        An existing client to score on.
    alpha : float
        Significance level of the paired tests (and of the tie rule).
    n_boot, seed
        Bootstrap resamples and their seed (:func:`tomoqc.metrics.paired.rank_variants`).
    preview_slice : int, optional
        Slice index shown side by side (default: the paired slice nearest the middle).
    progress : bool
        Progress bars on stderr.

    Returns
    -------
    xarray.Dataset
        See the module documentation. The numbers of ``compare.json`` come from it via
        :func:`summary`.

    Raises
    ------
    InputError
        A missing or unreadable variant, variants of different slice geometry or slice
        counts, or no slice scored in every variant.
    OptionError
        Fewer than two variants, bad labels, slices or options.
    """
    import xarray as xr

    from tomoqc import __version__

    vs = _resolve(variants, sweep, dataset=dataset, sweep_dataset=sweep_dataset, axis=axis)
    if len(vs) < 2:
        raise OptionError(f"compare needs at least two variants, got {len(vs)}")
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != len(vs):
            raise OptionError(f"{len(labels)} labels for {len(vs)} variants")
        if len(set(labels)) != len(labels) or not all(labels):
            raise OptionError("labels must be unique and not empty")
    else:
        labels = _default_labels(vs)
    for v, lab in zip(vs, labels):
        v.label = lab
    if parameters is not None:
        pv = [float(p) for p in parameters]
        if len(pv) != len(vs):
            raise OptionError(f"{len(pv)} parameter values for {len(vs)} variants")
        for v, p in zip(vs, pv):
            v.parameter = p
    _check_geometry(vs)
    nz = int(vs[0].data.shape[0])
    idx = parse_slices(slices, nz)
    if not 0 < float(alpha) < 1:
        raise OptionError(f"alpha must be in (0, 1), got {alpha}")

    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(out_dir, "the output exists and is not a folder")
        # never write into an input folder (a sweep folder would then read the outputs as entries)
        sources = [v.file or v.data.attrs.get("source") for v in vs] + ([str(sweep)] if sweep is not None else [])
        for src in sources:
            if src and Path(src).is_dir() and _inside(out_dir, Path(src)):
                raise InputError(out_dir, f"the output folder is inside the input {src}")

    mpath, msha = _model_identity(model)
    from tomoqc.models.tiqa import DEFAULT_TTA_VIEWS

    from tomoqc.models.tiqa import card_sha256

    identity = {"model_sha256": msha, "model_card_sha256": card_sha256(mpath), "measured_terms": bool(measured_terms),
                "relative_terms": True,
                "ring_center": None if ring_center is None else str(ring_center),
                "tta": DEFAULT_TTA_VIEWS if tta is None else int(tta), "fill_inclusions": bool(fill_inclusions)}
    # variants of one scan: the relative terms (rotation-axis error) join the score
    score_kwargs = dict(model=mpath, batch_size=batch_size, measured_terms=measured_terms, ring_center=ring_center,
                        tta=tta, progress=progress, relative_terms=True, fill_inclusions=fill_inclusions)

    def score_all(cl):
        return [_score_variant(k, v, idx, out=out_dir, client=cl, axis=axis, score_kwargs=score_kwargs,
                               identity=identity) for k, v in enumerate(vs)]

    if client is not None:
        results = score_all(client)
    else:
        from tomoqc.cluster import start_cluster

        opts = dict(cluster_options or {})
        if cluster == "slurm":
            opts.setdefault("n_chunks", len(vs) * max(1, math.ceil(idx.size / 8)))
        with start_cluster(cluster, workers=workers, options=opts) as cl:
            results = score_all(cl)

    arrays, sev, distortions = _collect(results, idx)
    scores = arrays["score"]
    paired = np.isfinite(scores).all(axis=0)
    if not paired.any():
        raise InputError(vs[0].file or vs[0].display, "no slice was scored in every variant (all scores NaN in at "
                                                       "least one); nothing to compare")
    st = rank_variants(scores[:, paired], arrays["score_uncertainty"][:, paired], alpha=alpha,
                       min_wilcoxon=MIN_WILCOXON, n_boot=n_boot, seed=seed)
    best = st["best"]
    terms = _measured_terms(mpath, measured_terms)
    imp, cost, dsev = _separating(arrays, sev, distortions, best, paired, terms)
    reasons = [_reason(v, best, labels, st, imp, cost, dsev, arrays, paired, alpha) for v in range(len(vs))]
    params = np.array([v.parameter for v in vs], np.float64)
    best_param, peak_param = _peak(params, st["order"], st["median_difference"])
    tied = [labels[i] for i in st["order"] if st["tied_with_best"][i]]
    names = {v.parameter_name for v in vs if np.isfinite(v.parameter) and v.parameter_name}
    with np.errstate(all="ignore"):
        slice_u = np.array([np.nanmedian(arrays["score_uncertainty"][v, paired])
                            if np.isfinite(arrays["score_uncertainty"][v, paired]).any() else np.nan
                            for v in range(len(vs))])

    zpaired = idx[paired]
    if preview_slice is None:
        zprev = int(zpaired[np.argmin(np.abs(zpaired - (idx[0] + idx[-1]) / 2.0))])
    else:
        zprev = int(preview_slice)
        if zprev not in set(idx.tolist()):
            raise OptionError(f"preview_slice {zprev} is not among the compared slices")
    previews = [_preview(v.data, zprev) for v in vs]

    model_id = str(results[0][0].attrs.get("model_id", ""))
    dv = ("variant", "z")
    data_vars = {name: (dv, arrays[name].astype(np.float32) if name != "flag" else arrays[name])
                 for name in _SLICE_VARS}
    if sev is not None and distortions:
        data_vars["severity"] = (("variant", "z", "distortion"), sev.astype(np.float32))
    data_vars.update({
        "paired": (("z",), paired),
        "path": (("variant",), np.array([v.display for v in vs], dtype=object)),
        "parameter": (("variant",), params),
        "rank": (("variant",), st["rank"]),
        "median_score": (("variant",), st["median_score"]),
        "uncertainty": (("variant",), st["score_uncertainty"]),
        "slice_uncertainty": (("variant",), slice_u),
        "median_difference": (("variant",), st["median_difference"]),
        "ci_low": (("variant",), st["ci_low"]),
        "ci_high": (("variant",), st["ci_high"]),
        "difference_uncertainty": (("variant",), st["difference_uncertainty"]),
        "p_value": (("variant",), st["p_value"]),
        "test": (("variant",), np.array(st["test"], dtype=object)),
        "wins": (("variant",), st["wins"]),
        "tied_with_best": (("variant",), st["tied_with_best"]),
        "separating_impairment": (("variant",), np.array(imp, dtype=object)),
        "impairment_cost": (("variant",), cost),
        "severity_difference": (("variant",), dsev),
        "reason": (("variant",), np.array(reasons, dtype=object)),
        "preview": (("variant", "preview_y", "preview_x"), np.stack(previews)),
    })
    coords = {"variant": labels, "z": idx}
    if distortions:
        coords["distortion"] = distortions
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        "title": "tomoqc comparison of variants",
        "tomoqc_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "best": labels[best],
        "winner": labels[best] if len(tied) == 1 else "",
        "tied": json.dumps(tied),
        "n_paired": int(paired.sum()),
        "n_slices": int(idx.size),
        "alpha": float(alpha),
        "tie_rule": TIE_RULE,
        "min_wilcoxon": MIN_WILCOXON,
        "model_id": model_id,
        "model_sha256": msha,
        "parameter_name": names.pop() if len(names) == 1 else ("parameter" if np.isfinite(params).any() else ""),
        "best_parameter": best_param,
        "peak_parameter": peak_param,
        "preview_z": zprev,
        "slices": "all" if slices is None else str(slices),
        "axis": axis,
    })
    if out_dir is not None:
        files = write_outputs(ds, out_dir)
        ds.attrs["files"] = json.dumps([str(f) for f in files])
    return ds


# ----------------------------------------------------------------------------- outputs


def _num(x):
    """A JSON-able number (None for NaN)."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    f = float(x)
    return None if not math.isfinite(f) else f


def summary(ds) -> dict:
    """What ``compare.json`` holds: the ranking (best first) and the per-slice scores.

    ``ranking`` is a list of ``{"label", "path", "median_score", "uncertainty", "wins",
    "p_value", "tied_with_best", ...}`` in rank order, with also ``rank``,
    ``parameter``, ``slice_uncertainty``, ``median_difference``, ``ci_low``,
    ``ci_high``, ``difference_uncertainty``, ``test``, ``separating_impairment``,
    ``severity_difference``, ``reason`` and ``severity`` (median over the paired slices
    per distortion). NaN becomes null.
    """
    order = np.argsort(np.asarray(ds["rank"].values))
    paired = np.asarray(ds["paired"].values, bool)
    labels = [str(v) for v in ds["variant"].values]
    ranking = []
    for v in order:
        row = {"label": labels[v]}
        for name in _RANK_FIELDS:
            if name == "label":
                continue
            val = ds[name].values[v]
            row[name] = str(val) if name in ("path", "test", "separating_impairment", "reason") else _num(val)
        if "severity" in ds:
            sev = np.asarray(ds["severity"].values[v][paired], np.float64)
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = np.nanmedian(sev, axis=0) if sev.size else []
            row["severity"] = {str(d): _num(m) for d, m in zip(ds["distortion"].values, med)}
        ranking.append(row)
    attrs = ds.attrs
    return {
        "tomoqc_version": attrs.get("tomoqc_version"),
        "created": attrs.get("created"),
        "model_id": attrs.get("model_id"),
        "model_sha256": attrs.get("model_sha256"),
        "best": attrs.get("best"),
        "winner": attrs.get("winner") or None,
        "tied": json.loads(attrs.get("tied", "[]")),
        "slices": attrs.get("slices"),
        "n_slices": _num(attrs.get("n_slices")),
        "n_paired": _num(attrs.get("n_paired")),
        "alpha": _num(attrs.get("alpha")),
        "tie_rule": attrs.get("tie_rule"),
        "parameter_name": attrs.get("parameter_name") or None,
        "best_parameter": _num(attrs.get("best_parameter")),
        "peak_parameter": _num(attrs.get("peak_parameter")),
        "preview_z": _num(attrs.get("preview_z")),
        "ranking": ranking,
        "z": [int(z) for z in ds["z"].values],
        "slice_scores": {labels[v]: [_num(s) for s in ds["score"].values[v]] for v in range(len(labels))},
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_outputs(ds, out) -> list[Path]:
    """Write ``compare.json``, ``compare.csv`` and ``compare.html`` (with its PNGs) into ``out``.

    Every file is written under a temporary name and renamed when complete.

    Returns
    -------
    list of Path
        The files written.
    """
    from tomoqc.compare_html import write_html

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "the output exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    s = summary(ds)
    files = write_html(ds, s, out)
    buf = io.StringIO()
    fields = [f for f in _RANK_FIELDS]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in s["ranking"]:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    _write_text(out / "compare.csv", buf.getvalue())
    _write_text(out / "compare.json", json.dumps(s, indent=2) + "\n")
    return [out / "compare.json", out / "compare.csv", *files]


class _CallableModule(types.ModuleType):
    """Lets ``tomoqc.compare(...)`` call :func:`compare` while ``tomoqc.compare`` stays this
    module (so ``tomoqc.compare.summary`` and ``import tomoqc.compare`` work)."""

    def __call__(self, variants=(), **kwargs):
        return compare(variants, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
