"""The study: the TIQA report's Tables 1-3 and Figures 4 and 7, measured end to end.

:func:`run_study` runs the report's evaluation protocol on data whose truth is known and
writes every table (CSV and Markdown) and figure (PNG, with the data behind Figure 7 as
CSV) into one folder:

* **Table 1** (label projection, report II.1): the projected label of every phantom
  image against the best truth there is, per distortion: the distortion level (exact),
  the segmentation F1 of the phases segmenter against the phantom's exact phase map,
  and the human mean opinion score when an annotation file is given. With real data,
  also the HTC2022 reconstructions of Table 3, each labelled by projection against its
  disc's full-data reconstruction (the same observers and anchors as the phantoms), against
  the impairment level and the binary segmenter's F1 against the organisers' ground truth.
* **Table 2** (methods, report II.2): TIQA against BRISQUE-SVR, RankIQA and the
  noise estimator, per distortion and over all images of the test references: SROCC and
  PLCC (after a logistic map, as in the report; the VQEG's monotone four-parameter
  one, :data:`LOGISTIC_KIND`) with percentile
  bootstrap 95 % confidence intervals. With real data, also on the real series of known
  quality order of ``benchmarks/real_orderings.py`` (:data:`tomoqc.realdata.ORDERING_GROUPS`,
  float images): pairwise ordering accuracy and within-series SROCC per kind and over all.
  When the TIQA card has measured terms, a second TIQA row (``tiqa_fitted``) refits its
  last stage, the terms, to the train references' labels
  (:func:`tomoqc.models.measured.fit_to_labels`), as the baselines are trained on them;
  the network and its indicators are those of the first row, so it costs no scoring.
  Each TIQA row minus each baseline (``table2_differences.csv``) is bootstrapped on the
  same resamples for both, resampling whole test references or whole series
  (:func:`tomoqc.metrics.stats.cluster_bootstrap`): it says whether the split can tell
  the two apart.
* **Table 3** (quality vs segmentation, report II.3): TIQA's score against the
  segmentation F1 per impairment, on phantoms (mean F1 over the three phases, exact
  labels) and, with real data, on HTC2022 discs reconstructed from degraded measured
  sinograms (fewer angles, limited angle, fewer photons, detector blur) segmented by the
  bundled binary segmenter against the organisers' ground truth.
* **Figure 4**: predicted score against label with the logistic fit, per method.
* **Figure 7**: two-point correlation ``S2(r)`` along x and y of the predicted and the
  true active-material phase per distortion level (:mod:`tomoqc.metrics.morphology`).

Protocol
--------
1. A phantom dataset of ``references`` references (:func:`tomoqc.dataset.build_dataset`,
   both domains, levels 1-5 of every impairment, optionally mixtures), labelled by
   projection (:func:`tomoqc.labels.project_dataset`) with the TIQA model card's label
   anchors when it has them, so that labels are on the scale the model was trained on.
   **Never used in training**: the study seed must differ from every seed in the TIQA
   and segmenter model cards, and the study's per-reference seeds
   (:func:`tomoqc.dataset.reference_specs`) must not meet those of any dataset a card
   names (seed and number of references); both are checked before anything is built and
   recorded in ``study.json``. With ``source`` the references are slices of a user's
   volume instead (cropped as the report prepared its images); the segmentation truth is
   then the segmenter's own reading of each undistorted slice, and the images keep the set
   name ``phantom`` in every table and prediction file.
2. References are split into train and test sets (grouped by reference,
   :func:`tomoqc.train.data.split_references`, ``test_fraction`` of them held out).
   BRISQUE-SVR and RankIQA are trained on the train references with the same projected
   labels (BRISQUE-SVR's C and gamma chosen by cross-validation grouped by reference),
   and so are the measured terms of the ``tiqa_fitted`` row; every method is evaluated on
   the same test images.
3. Each distortion's set holds its levels 1-5 and the undistorted references they were
   made from (level 0); ``ALL`` holds every image (mixtures included).

Folder layout and resuming
--------------------------
A study folder is bound to the parameters it was started with (``study_params.json``);
a rerun with other parameters is refused. Each stage writes its outputs under temporary
names, renames them, and then writes its done marker ``stages/<stage>.json``; a rerun
skips every stage with a marker and redoes an interrupted one from its start. Only the
report stage depends on the annotation file: it reruns when that file changes, or when a
stage before it ran again.

==============================  =========================================================
``data/``                       the phantom (or ``source``) dataset (``manifest.csv`` with ``label``)
``real/``                       real images (``orderings.csv``, ``htc.csv`` and ``.npy``;
                                ``htc_labels.csv``: the HTC2022 images' projected labels)
``predictions/<method>.csv``    scores: ``set`` (phantom, ordering, htc), ``file``, ``score``
                                (TIQA also ``network`` and the measured indicators)
``segmentation/``               F1 per image, two-point correlations (with ``source``: the
                                truth maps in ``reference_labels/``)
``models/rankiqa.keras``        the RankIQA network trained here
``table*.csv``, ``table*.md``   Tables 1-3 (and ``table2_differences.csv``)
``fig4_*.png``, ``fig7_*``      Figures 4 and 7
``study.json``, ``summary.md``  every number, seeds, parameters, versions; the tables
==============================  =========================================================
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "STAGES",
    "STUDY_SEED",
    "ORDERING_SEED",
    "HTC_IMPAIRMENTS",
    "REPORT",
    "StudyParams",
    "run_study",
    "pair_accuracy",
    "training_disjointness",
]

#: Methods compared in Table 2 (``tiqa`` is always needed: Tables 3 and 1's F1 use it).
METHODS = ("tiqa", "brisque", "rankiqa", "noise")
METHOD_NAMES = {"tiqa": "TIQA", "brisque": "BRISQUE-SVR", "rankiqa": "RankIQA", "noise": "noise estimator",
                "tiqa_fitted": "TIQA, terms fitted on the train split"}
#: Rows of Table 2 that are TIQA (the bundled card, and its terms refitted on the study's train
#: references as the baselines are trained on them: :func:`_tiqa_fitted`).
TIQA_ROWS = ("tiqa", "tiqa_fitted")
#: Stages in the order they run (``real`` and ``segment_real`` only with real data).
STAGES = ("dataset", "real", "label_real", "tiqa", "noise", "brisque", "rankiqa", "segment_phantom", "segment_real",
          "report")
#: Default study seed (issue 18); the dataset seeds of the bundled models are 2026, 2028, 9001 and
#: 20261130 (TIQA) and 0, 7919 (segmenters), and every one a card names is checked anyway.
STUDY_SEED = 1818
#: Seed of the real ordering series: that of ``benchmarks/real_orderings.py``, so that the images
#: are the benchmark's float images.
ORDERING_SEED = 2026
#: HTC2022 impairments of Table 3: (option of :func:`tomoqc.train.segdata.htc2022_recon`, levels
#: from mild to severe). Level 0 is the full-data reconstruction, shared by all four series.
HTC_IMPAIRMENTS = {
    "angles": ("angles", (2, 4, 8, 16)),  # every k-th of 360 parallel projections
    "limited angle": ("arc", (150.0, 120.0, 90.0, 60.0)),  # degrees of the half turn kept
    "dose": ("dose", (0.5, 0.25, 0.125, 0.0625)),  # fraction of the photons
    "blur": ("blur", (1.0, 2.0, 4.0, 8.0)),  # detector PSF sigma (detector pixels)
}
#: Logistic map before the PLCC of Table 2 (:func:`tomoqc.metrics.stats.logistic_fit`): the VQEG's
#: monotone four-parameter one.
LOGISTIC_KIND = 4
#: Phantom phase whose two-point correlation Figure 7 shows (2: active material).
S2_PHASE = 2
PHASE_NAMES = ("pore", "carbon-binder", "active material")
_DISTORTION_ORDER = ("noise", "blur", "ring", "streak", "mixed")

#: The report's numbers (Tables 1-3), shown beside the measured ones.
REPORT = {
    "table1": {"ring": (0.655, 0.641), "noise": (0.813, 0.858), "blur": (0.852, 0.846)},
    "table2": {
        "srocc": {"brisque": {"ring": 0.785, "noise": 0.737, "blur": 0.861, "ALL": 0.794},
                  "rankiqa": {"ring": 0.761, "noise": 0.769, "blur": 0.897, "ALL": 0.809},
                  "tiqa": {"ring": 0.839, "noise": 0.778, "blur": 0.895, "ALL": 0.837}},
        "plcc": {"brisque": {"ring": 0.450, "noise": 0.757, "blur": 0.849, "ALL": 0.685},
                 "rankiqa": {"ring": 0.758, "noise": 0.768, "blur": 0.879, "ALL": 0.801},
                 "tiqa": {"ring": 0.871, "noise": 0.799, "blur": 0.854, "ALL": 0.841}},
    },
    "table3": {"ring": (0.925, 0.887), "noise": (0.829, 0.877), "blur": (0.928, 0.952)},
}


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------

@dataclass
class StudyParams:
    """What a study folder is bound to (``study_params.json``); see :func:`run_study`."""

    references: int = 24
    size: int = 256
    seed: int = STUDY_SEED
    test_fraction: float = 0.5
    mixtures: bool = True
    model: str | None = None
    model_sha256: str = ""
    model_card_sha256: str = ""
    real: str | None = None
    source: str | None = None
    source_dataset: str | None = None
    real_limit: int | None = None
    real_bin: int = 1
    real_levels: int = 4
    methods: list = field(default_factory=lambda: list(METHODS))
    rankiqa_size: int = 64
    rankiqa_width: float = 1.0
    rankiqa_rank_epochs: int = 6
    rankiqa_finetune_epochs: int = 6
    rankiqa_steps: int | None = 40
    bootstrap: int = 1000


def _check_int(name, value, low, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise OptionError(f"{name} must be {'at least ' + str(low) if high is None else f'from {low} to {high}'}, "
                          f"got {v}")
    return v


def _sha256(path) -> str:
    from tomoqc.models.tiqa import file_sha256

    return file_sha256(path)


# ---------------------------------------------------------------------------------------
# writing: temporary name, then rename
# ---------------------------------------------------------------------------------------

def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary sibling of ``path`` and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda t: t.write_text(text, encoding="utf-8"))


def _write_json(path: Path, obj) -> Path:
    return _write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k, "")) for k in columns})
    return _write_text(path, buf.getvalue())


def _write_npy(path: Path, arr) -> Path:
    def write(t):
        with open(t, "wb") as fh:
            np.save(fh, np.asarray(arr, np.float32))

    return _atomic(path, write)


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _jsonable(o):
    """NaN and infinities as None, numpy scalars and arrays as Python ones."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------
# progress and stage markers
# ---------------------------------------------------------------------------------------

class _Progress:
    """Rich progress bars on stderr, one per stage (or nothing)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None
        self._console = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._console = Console(stderr=True)
            self._p = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=self._console)
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False

    def task(self, label: str, total: int) -> Callable[[int], None]:
        if self._p is None:
            return lambda n=1: None
        tid = self._p.add_task(label, total=max(1, int(total)))
        return lambda n=1: self._p.advance(tid, n)

    def log(self, text: str) -> None:
        if self._p is not None:
            self._p.console.print(text, highlight=False)


class _Stages:
    """Done markers ``stages/<name>.json``: what finished, when, in how long, with which key."""

    def __init__(self, root: Path):
        self.dir = root / "stages"

    def done(self, name: str, key: str = "") -> bool:
        p = self.dir / f"{name}.json"
        if not p.is_file():
            return False
        try:
            info = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and info.get("key", "") == key

    def mark(self, name: str, seconds: float, key: str = "", **info) -> None:
        import uuid

        _write_json(self.dir / f"{name}.json", {"stage": name, "key": key, "run_id": uuid.uuid4().hex,
                                                "seconds": round(seconds, 2),
                                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})

    def info(self, name: str) -> dict:
        p = self.dir / f"{name}.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


# ---------------------------------------------------------------------------------------
# "never used in training"
# ---------------------------------------------------------------------------------------

def _card_of(weights: Path) -> dict:
    p = Path(weights).with_suffix(".json")
    try:
        c = json.loads(p.read_text(encoding="utf-8"))
        return c if isinstance(c, dict) else {}
    except (OSError, ValueError):
        return {}


def card_terms(model):
    """The measured terms of the card beside TIQA weights ``model`` (None: the bundled ones),
    or None for a card without them."""
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.models.tiqa import default_weights_path

    return MeasuredTerms.from_card(_card_of(Path(model) if model else default_weights_path()))


def _card_seeds(card: dict, where: str) -> tuple[set, list]:
    """Every integer under a key named ``seed``/``*_seed`` in a card, and the datasets it names
    (a dict holding an integer ``seed`` and an integer ``references``)."""
    seeds: set[int] = set()
    sets: list[dict] = []

    def walk(o, path):
        if isinstance(o, dict):
            s, n = o.get("seed"), o.get("references")
            if isinstance(s, int) and not isinstance(s, bool) and isinstance(n, int) and not isinstance(n, bool):
                sets.append({"card": where, "at": path or ".", "seed": s, "references": n})
            for k, v in o.items():
                if (k == "seed" or k.endswith("_seed")) and isinstance(v, int) and not isinstance(v, bool):
                    seeds.add(v)
                walk(v, f"{path}.{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(card, "")
    return seeds, sets


def training_disjointness(seed: int, references: int, cards: dict[str, dict]) -> dict:
    """Check that a study's phantoms were never used to train the models of ``cards``.

    Parameters
    ----------
    seed, references : int
        The study dataset's seed and size.
    cards : dict
        ``{name: model card}`` (TIQA, segmenters).

    Returns
    -------
    dict
        ``card_seeds`` (sorted), ``datasets`` (every dataset a card names) and
        ``shared_reference_seeds`` (0).

    Raises
    ------
    OptionError
        The study seed is a seed of a card, or one of the study's per-reference seeds is one
        of a named training dataset's.
    """
    from tomoqc.dataset import reference_specs

    all_seeds: set[int] = set()
    datasets: list[dict] = []
    for name, card in cards.items():
        s, d = _card_seeds(card, name)
        all_seeds |= s
        datasets += d
    if int(seed) in all_seeds:
        raise OptionError(f"seed {seed} is a seed of the models' training (model cards: {', '.join(cards)}); the study "
                          "must use references never used in training: choose another --seed")
    mine = set(reference_specs(int(references), int(seed)))
    for d in datasets:
        theirs = set(reference_specs(int(d["references"]), int(d["seed"])))
        common = mine & theirs
        if common:
            raise OptionError(f"seed {seed} gives {len(common)} reference(s) of the training set {d['card']}{d['at']} "
                              f"(seed {d['seed']}); choose another --seed")
    return {"card_seeds": sorted(all_seeds), "datasets": datasets, "shared_reference_seeds": 0}


# ---------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------

def _finite_pairs(x, y):
    a = np.asarray(x, np.float64)
    b = np.asarray(y, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def _correlate(pred, truth, *, logistic: bool = False, boot: int = 0, seed: int = 0) -> dict:
    """n, SROCC and PLCC (plain, or after the monotone logistic map) with bootstrap CIs.

    The map is the four-parameter logistic of the VQEG (:data:`LOGISTIC_KIND`): it is
    monotone, so it cannot lift the PLCC of a score that orders the images wrongly (the
    five-parameter one's linear term can bend it back, and on phantoms it gave a negatively
    ranked baseline a PLCC of 0.8).

    The PLCC interval after the logistic resamples the pairs with the map fixed at its fit
    on all of them (refitting the logistic on every resample costs a nonlinear fit each and
    mostly measures the optimiser); pairs with a non-finite value are left out.
    """
    from tomoqc.metrics import stats

    a, b = _finite_pairs(pred, truth)
    out = {"n": int(a.size), "srocc": math.nan, "plcc": math.nan}
    if boot:
        out.update(srocc_ci_low=math.nan, srocc_ci_high=math.nan, plcc_ci_low=math.nan, plcc_ci_high=math.nan)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    plcc_fn = stats.plcc
    if logistic:
        if a.size < LOGISTIC_KIND + 1:  # the logistic needs kind + 1 pairs
            plcc_fn = None
        else:
            fit = stats.logistic_fit(a, b, kind=LOGISTIC_KIND)
            plcc_fn = lambda x, y: stats.plcc(fit(x), y)  # noqa: E731
    out["srocc"] = stats.srocc(a, b)
    out["plcc"] = plcc_fn(a, b) if plcc_fn else math.nan
    if boot:
        _, lo, hi = stats.bootstrap_ci(stats.srocc, a, b, n=boot, seed=seed)
        out.update(srocc_ci_low=lo, srocc_ci_high=hi)
        if plcc_fn:
            _, lo, hi = stats.bootstrap_ci(plcc_fn, a, b, n=boot, seed=seed + 1)
            out.update(plcc_ci_low=lo, plcc_ci_high=hi)
    return out


def _within_srocc(groups: dict) -> float:
    """Mean SROCC over groups ``{key: (pred list, truth list)}`` that have any spread."""
    from tomoqc.metrics import stats

    vals = []
    for p, t in groups.values():
        a, b = _finite_pairs(p, t)
        if a.size >= 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
            vals.append(stats.srocc(a, b))
    return float(np.mean(vals)) if vals else math.nan


def pair_accuracy(scores, ranks, series) -> tuple[float, int]:
    """Share of within-series pairs that a score orders right (rank 0 is best).

    Parameters
    ----------
    scores : sequence of float
        Higher is better; NaN and ties count half.
    ranks : sequence of int
        Known quality rank in the series (0 best).
    series : sequence of hashable
        Series of each image; only pairs within one series (and different ranks) count.

    Returns
    -------
    (accuracy, pairs)
        ``nan`` accuracy when there is no pair.
    """
    by: dict = {}
    for s, r, g in zip(scores, ranks, series):
        by.setdefault(g, []).append((int(r), float(s)))
    good, n = 0.0, 0
    for members in by.values():
        members.sort()
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (ri, a), (rj, b) = members[i], members[j]
                if ri == rj:
                    continue
                n += 1
                if not (math.isfinite(a) and math.isfinite(b)) or a == b:
                    good += 0.5
                elif a > b:
                    good += 1.0
    return (good / n if n else math.nan), n


def _pair_accuracy_ci(scores, ranks, series, boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95 % CI of :func:`pair_accuracy`, resampling whole series."""
    from tomoqc.metrics import stats

    if boot < 1 or len(set(series)) < 2:
        return math.nan, math.nan
    sc = np.asarray(scores, np.float64)
    rk = np.asarray(ranks)
    res = stats.cluster_bootstrap(lambda i, g: pair_accuracy(sc[i], rk[i], g)[0], series, n=boot, seed=seed)
    return res.low, res.high


# ---------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------

def _label_settings(model: str | None) -> dict:
    """Label anchors and intensity mode of the TIQA model's card (if it names them)."""
    from tomoqc.models.tiqa import default_weights_path

    card = _card_of(Path(model) if model else default_weights_path())
    lab = (card.get("data") or {}).get("labels") if isinstance(card.get("data"), dict) else None
    out = {"anchors": None, "intensity": "absolute", "from": "the study dataset's own worst values"}
    if isinstance(lab, dict):
        anchors = (lab.get("anchors") or {}).get("worst_goodness") if isinstance(lab.get("anchors"), dict) else None
        if isinstance(anchors, dict) and anchors:
            out["anchors"] = {k: float(v) for k, v in anchors.items()}
            out["from"] = "the TIQA model card (data.labels.anchors)"
        if lab.get("intensity") in ("absolute", "reference"):
            out["intensity"] = lab["intensity"]
    return out


def _stage_dataset(root: Path, p: StudyParams, prog: _Progress, workers) -> dict:
    from tomoqc.dataset import build_dataset
    from tomoqc.labels import project_dataset

    data = root / "data"
    prog.log(f"building {p.references} " + (f"references from slices of {p.source} ({p.size} px crops" if p.source
                                             else f"phantom references ({p.size} px") + ", both domains)")
    # a phantom source ignores fit; a volume's slices are resized and cropped as the report did
    build_dataset(data, source=p.source or "phantom", dataset=p.source_dataset, fit="report", references=p.references,
                  domain="both", size=p.size, seed=p.seed, mixtures=p.mixtures, workers=workers,
                  progress=prog.enabled, overwrite=True)
    ls = _label_settings(p.model)
    observers = ("mse", "psnr", "ssim", "ms_ssim", "gmsd", "mdsi")
    anchors = ls["anchors"]
    if anchors is not None:
        observers = tuple(o for o in observers if o in anchors)
        anchors = {k: anchors[k] for k in observers}
    summary = project_dataset(data, observers=observers, anchors=anchors, intensity=ls["intensity"],
                              progress=prog.enabled)
    return {"labels": {"anchors_from": ls["from"], "intensity": ls["intensity"],
                       "observers": summary.get("observers"), "skipped": summary.get("skipped"),
                       "anchors": summary.get("anchors")}}


def _phantom_rows(root: Path) -> list[dict]:
    from tomoqc.dataset import read_manifest

    return read_manifest(root / "data")


def _split(rows: list[dict], p: StudyParams) -> tuple[list[str], list[str]]:
    from tomoqc.train.data import split_references

    refs = sorted({r["reference"] for r in rows})
    return split_references(refs, val_fraction=p.test_fraction, seed=p.seed)


def _htc_discs(real: Path, limit: int | None, held: Sequence[str]) -> dict:
    from tomoqc.train.segdata import htc2022_files

    files = htc2022_files(real)
    order = sorted(files, key=lambda d: (d not in held, d))
    if limit is not None:
        order = order[:limit]
    return {d: files[d] for d in order}


def _segmenter_training_discs() -> tuple[list[str], list[str]]:
    from tomoqc.models.segmenter import default_segment_weights

    card = _card_of(default_segment_weights("binary"))
    h = ((card.get("data") or {}).get("htc2022") or {}) if isinstance(card.get("data"), dict) else {}
    train = [str(d) for d in h.get("train_discs", [])]
    val = h.get("val_disc")
    return train, ([str(val)] if val else [])


def _ordering_groups(limit: int | None) -> list[tuple[int, str, str]]:
    from tomoqc.realdata import ORDERING_GROUPS

    seen: dict = {}
    out = []
    for gi, (kind, sample) in enumerate(ORDERING_GROUPS):
        seen[kind] = seen.get(kind, 0) + 1
        if limit is None or seen[kind] <= limit:
            out.append((gi, kind, sample))
    return out


def _stage_real(root: Path, p: StudyParams, prog: _Progress) -> dict:
    from tomoqc.realdata import RealSources, degraded_series
    from tomoqc.train.segdata import htc2022_ground_truth, htc2022_recon

    real = Path(p.real)
    rdir = root / "real"
    if rdir.exists():  # a previous attempt that did not finish
        shutil.rmtree(rdir)
    groups = _ordering_groups(p.real_limit)
    src = RealSources(real)
    rows = []
    tick = prog.task("real: ordering series", len(groups))
    for gi, kind, sample in groups:
        group = f"{kind}-{sample.replace(':', '-').replace('/', '-')}"
        for rank, (param, img) in enumerate(degraded_series(src, kind, sample, ORDERING_SEED + gi * 101)):
            f = f"real/orderings/{group}_r{rank}.npy"
            _write_npy(root / f, img)
            rows.append({"group": group, "sample": sample, "kind": kind, "rank": rank, "parameter": param, "file": f})
        tick(1)
    _write_csv(rdir / "orderings.csv", rows, ["group", "sample", "kind", "rank", "parameter", "file"])

    train_discs, held = _segmenter_training_discs()
    discs = _htc_discs(real, p.real_limit, held)
    levels = {k: (opt, vals[: p.real_levels]) for k, (opt, vals) in HTC_IMPAIRMENTS.items()}
    n_img = len(discs) * (1 + sum(len(v) for _, v in levels.values()))
    tick = prog.task("real: HTC2022 reconstructions", n_img)
    hrows = []
    for disc, (sino, seg) in discs.items():
        gt = htc2022_ground_truth(seg, bin=p.real_bin)
        gt_file = f"real/htc/{disc}_truth.npy"
        _write_npy(root / gt_file, gt)
        variants = [("none", 0, "full data", {})]
        for kind, (opt, vals) in levels.items():
            variants += [(kind, i + 1, f"{opt}={v:g}", {opt: v}) for i, v in enumerate(vals)]
        for vi, (kind, level, param, opts) in enumerate(variants):
            rng = np.random.default_rng([p.seed, vi, *disc.encode()])
            rec = htc2022_recon(sino, bin=p.real_bin, size=gt.shape[0], rng=rng, **opts)
            f = f"real/htc/{disc}_{kind.replace(' ', '-')}{level}.npy"
            _write_npy(root / f, rec)
            hrows.append({"disc": disc, "impairment": kind, "level": level, "parameter": param, "file": f,
                          "truth_file": gt_file, "segmenter_trained_on_disc": disc in train_discs})
            tick(1)
    _write_csv(rdir / "htc.csv", hrows, ["disc", "impairment", "level", "parameter", "file", "truth_file",
                                         "segmenter_trained_on_disc"])
    return {"ordering_series": len(groups), "ordering_images": len(rows), "htc_discs": list(discs),
            "htc_images": len(hrows), "segmenter_training_discs": train_discs, "segmenter_held_out": held}


def _stage_label_real(root: Path, p: StudyParams, prog: _Progress, anchors: dict, intensity: str) -> dict:
    """Projected labels of the HTC2022 images (Table 1's real rows): every reconstruction of a
    disc against its full-data one (level 0, which labels ``5``), by the observers and worst
    anchors that labelled the phantoms (``anchors``: ``{observer: {"worst": goodness}}``, the
    dataset stage's) in the same intensity mode. In absolute units the data range is the full-data
    reconstruction's ``max - min``: attenuation values lie inside [0, 1] without that being
    their range, which is what :func:`tomoqc.labels.data_range_of` would take."""
    from tomoqc.labels import project_labels

    rows = _read_csv(root / "real" / "htc.csv")
    by_disc: dict[str, list[dict]] = {}
    for r in rows:
        by_disc.setdefault(r["disc"], []).append(r)
    worst = {n: float(a["worst"]) for n, a in anchors.items()}
    out = []
    tick = prog.task("labels: HTC2022", len(rows))
    for disc, members in by_disc.items():
        ref_row = next(r for r in members if r["impairment"] == "none")
        ref = np.load(root / ref_row["file"]).astype(np.float64)
        others = [r for r in members if r is not ref_row]
        stack = np.stack([np.load(root / r["file"]).astype(np.float64) for r in others])
        labels, used = project_labels(ref, stack, worst=worst, intensity=intensity,
                                      data_range=(float(np.ptp(ref)) or 1.0) if intensity == "absolute" else None)
        out.append({"file": ref_row["file"], "label": 5.0, "observers": "+".join(used)})
        out += [{"file": r["file"], "label": float(v), "observers": "+".join(used)} for r, v in zip(others, labels)]
        tick(len(members))
    _write_csv(root / "real" / "htc_labels.csv", out, ["file", "label", "observers"])
    return {"images": len(out), "intensity": intensity, "observers": list(worst)}


def _images_to_score(root: Path, p: StudyParams, method: str, test_refs: set) -> list[tuple[str, str]]:
    """``(set, file)`` of every image ``method`` scores: all phantoms (TIQA, noise) or the test
    references' (trained baselines); the real ordering images; TIQA also the HTC2022 ones."""
    rows = _phantom_rows(root)
    trained = method in ("brisque", "rankiqa")
    out = [("phantom", r["file"]) for r in rows if not trained or r["reference"] in test_refs]
    if p.real:
        out += [("ordering", r["file"]) for r in _read_csv(root / "real" / "orderings.csv")]
        if method == "tiqa":
            out += [("htc", r["file"]) for r in _read_csv(root / "real" / "htc.csv")]
    return out


def _load(root: Path, set_name: str, f: str) -> np.ndarray:
    base = root / "data" if set_name == "phantom" else root
    return np.load(base / f)


def _stage_scores(root: Path, p: StudyParams, method: str, prog: _Progress, test_refs: set,
                  train_refs: list) -> dict:
    """Score the images of one method and write ``predictions/<method>.csv``.

    Every method gets the same float images; each normalises them its own documented way
    (TIQA, RankIQA and BRISQUE by :func:`tomoqc.preprocess.normalize_slice`, the noise
    estimator by its percentiles)."""
    items = _images_to_score(root, p, method, test_refs)
    scores = np.full(len(items), np.nan)
    parts: list[dict] = [{} for _ in items]  # TIQA: the network's score and the indicators it combines
    info: dict = {}
    if method == "tiqa":
        from tomoqc.models.tiqa import load_model

        model = load_model(p.model)
        info = {"model_id": getattr(model, "model_id", None), "model_sha256": p.model_sha256 or None}
        # the score is the same with one test-time view and without the out-of-distribution
        # test (they only feed the uncertainty and the flags); the measured indicators count
        # only for a model that combines them with the network
        measure = getattr(model, "measured_terms", None) is not None or getattr(model, "ring_term", None) is not None
        tick = prog.task("TIQA scores", len(items))
        # one call per image: the slices of one call are one volume to the measured terms
        # (one rotation axis for the ring index and the axis error), and these images are not
        for i, (s_, f) in enumerate(items):
            res = model.score_slices(_load(root, s_, f)[None], tta=1, ood=False, measure=measure)
            scores[i] = res["score"][0]
            parts[i] = {"network": float(res["network_score"][0]),
                        **{k: float(np.asarray(v)[0]) for k, v in (res.get("indicators") or {}).items()}}
            tick(1)
    elif method == "noise":
        from tomoqc.metrics.nr import noise_estimator_score

        tick = prog.task("noise estimator", len(items))
        for i, (s, f) in enumerate(items):
            scores[i] = noise_estimator_score(_load(root, s, f))
            tick(1)
    elif method == "brisque":
        from tomoqc.metrics.brisque import BrisqueSVR

        rows = _phantom_rows(root)
        train = [r for r in rows if r["reference"] in set(train_refs)]
        tick = prog.task("BRISQUE-SVR: fit", 1)
        model = BrisqueSVR(search=True, seed=p.seed)
        model.fit([np.load(root / "data" / r["file"]) for r in train],
                  np.array([float(r["label"]) for r in train]), groups=[r["reference"] for r in train])
        tick(1)
        tick = prog.task("BRISQUE-SVR: predict", len(items))
        for k in range(0, len(items), 32):
            part = list(range(k, min(len(items), k + 32)))
            scores[part] = model.predict([_load(root, *items[i]) for i in part])
            tick(len(part))
        info = {"train_images": len(train), "svr": getattr(model, "params_", None)}
    elif method == "rankiqa":
        from tomoqc.models.rankiqa import load_rankiqa, train_rankiqa

        out_path = root / "models" / "rankiqa.keras"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # one tick per training step when the steps per epoch are fixed (the default),
        # else one for the whole training
        steps = (p.rankiqa_rank_epochs + p.rankiqa_finetune_epochs) * p.rankiqa_steps if p.rankiqa_steps else 0
        tick = prog.task("RankIQA: train", steps or 1)
        t0 = time.time()
        train_rankiqa(root / "data", out_path, size=p.rankiqa_size, width=p.rankiqa_width,
                      rank_epochs=p.rankiqa_rank_epochs, finetune_epochs=p.rankiqa_finetune_epochs,
                      steps_per_epoch=p.rankiqa_steps, references=list(train_refs), seed=p.seed, progress=False,
                      on_step=tick if steps else None)
        if not steps:
            tick(1)
        info = {"train_seconds": round(time.time() - t0, 1), "weights": str(out_path.relative_to(root)),
                "weights_sha256": _sha256(out_path)}
        model = load_rankiqa(out_path)
        tick = prog.task("RankIQA: predict", len(items))
        for k in range(0, len(items), 16):
            part = list(range(k, min(len(items), k + 16)))
            scores[part] = model.predict([_load(root, *items[i]) for i in part])
            tick(len(part))
    else:  # pragma: no cover - methods are checked up front
        raise OptionError(f"unknown method {method!r}")
    extra = list(dict.fromkeys(k for d in parts for k in d))
    _write_csv(root / "predictions" / f"{method}.csv",
               [{"set": s, "file": f, "score": float(v), **d} for (s, f), v, d in zip(items, scores, parts)],
               ["set", "file", "score", *extra])
    return {"images": len(items), "scored": int(np.isfinite(scores).sum()), **info}


def _fov(row_params: str):
    try:
        p = json.loads(row_params or "{}")
    except ValueError:
        return None
    ph = p.get("phantom") if isinstance(p, dict) else None
    return ph.get("fov") if isinstance(ph, dict) else None


def _reference_segmentations(root: Path, rows: list[dict], model, prog: _Progress) -> dict:
    """The truth each reference's images are segmented against, as a path under ``root``.

    A phantom's is its exact phase map (``label_file``). Slices of a user's volume have none:
    their truth is the segmenter's own segmentation of the undistorted slice (the image-domain
    reference), written to ``segmentation/reference_labels/``. F1 then measures how far an
    impairment moves the segmentation from what the clean slice gives."""
    out = {r["reference"]: f"data/{r['label_file']}" for r in rows if r["distortion"] == "none" and r["label_file"]}
    todo = [r for r in rows if r["distortion"] == "none" and r["domain"] == "image" and r["reference"] not in out]
    if todo:
        tick = prog.task("segmentation: the undistorted references", len(todo))
        for r in todo:
            seg = model.segment_slices(np.load(root / "data" / r["file"])[None])["label"][0]
            f = f"segmentation/reference_labels/{r['reference']}.npy"
            _write_npy(root / f, np.asarray(seg, np.uint8))
            out[r["reference"]] = f
            tick(1)
    return out


def _inside_of(img: np.ndarray) -> np.ndarray | None:
    """Pixels of a real slice inside its field of view: not at the value that fills the
    outside (:func:`tomoqc.preprocess.outside_values`), when that value covers a region (1-90 %
    of the slice); None (every pixel) otherwise."""
    from tomoqc.preprocess import normalize_slice, outside_values

    a = normalize_slice(img)
    out = np.isin(a, outside_values(a))
    return ~out if 0.01 <= out.mean() <= 0.9 else None


def _stage_segment_phantom(root: Path, p: StudyParams, prog: _Progress) -> dict:
    from tomoqc.metrics.morphology import two_point_correlation
    from tomoqc.metrics.seg import f1_per_class
    from tomoqc.models.segmenter import load_segment_model
    from tomoqc.train.segdata import fov_mask

    rows = _phantom_rows(root)
    model = load_segment_model(kind="phases")
    fovs = {r["reference"]: _fov(r["params"]) for r in rows if r["distortion"] == "none"}
    truth_files = _reference_segmentations(root, rows, model, prog)
    references = {r["reference"]: r["file"] for r in rows if r["distortion"] == "none" and r["domain"] == "image"}
    truths: dict = {}
    max_r = max(1, p.size // 4)
    out, s2_pred, s2_true = [], {}, {}
    tick = prog.task("segmentation: phantoms", len(rows))
    for k in range(0, len(rows), 8):
        part = rows[k : k + 8]
        res = model.segment_slices(np.stack([np.load(root / "data" / r["file"]) for r in part]), uncertainty="entropy")
        for r, pred in zip(part, res["label"]):
            ref = r["reference"]
            if ref not in truths:
                t = np.load(root / truth_files[ref])
                valid = (fov_mask(t.shape, fovs.get(ref)) if not p.source
                         else _inside_of(np.load(root / "data" / references[ref])))
                truths[ref] = (t, np.ones(t.shape, bool) if valid is None else valid)
                for axis in (1, 0):
                    s2_true.setdefault(axis, []).append(
                        two_point_correlation(t == S2_PHASE, axis=axis, max_r=max_r, within=truths[ref][1]))
            t, valid = truths[ref]
            f1 = f1_per_class(pred[valid], t[valid], 3)
            out.append({"file": r["file"], "f1_mean": float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan,
                        **{f"f1_{n.replace(' ', '_').replace('-', '_')}": float(v) for n, v in zip(PHASE_NAMES, f1)}})
            if r["distortion"] != "mixed":
                kinds = [r["distortion"]] if r["distortion"] != "none" else list(_DISTORTION_ORDER[:4])
                for kind in kinds:
                    if kind == "streak" and r["domain"] != "physics":
                        continue
                    for axis in (1, 0):
                        s2_pred.setdefault((kind, int(r["level"]), axis), []).append(
                            two_point_correlation(pred == S2_PHASE, axis=axis, max_r=max_r, within=valid))
        tick(len(part))
    cols = ["file", "f1_mean"] + [f"f1_{n.replace(' ', '_').replace('-', '_')}" for n in PHASE_NAMES]
    _write_csv(root / "segmentation" / "phantom.csv", out, cols)
    s2rows = []
    present = [d for d in _DISTORTION_ORDER[:4] if any((d, 1, 1) == k for k in s2_pred)]
    for kind in present:
        for axis in (1, 0):
            curve = np.mean(s2_true[axis], axis=0)
            for r, v in enumerate(curve):
                s2rows.append({"distortion": kind, "level": "", "source": "true", "axis": "xy"[1 - axis], "r": r,
                               "s2": float(v)})
            for level in range(0, 6):
                got = s2_pred.get((kind, level, axis))
                if not got:
                    continue
                for r, v in enumerate(np.mean(got, axis=0)):
                    s2rows.append({"distortion": kind, "level": level, "source": "predicted", "axis": "xy"[1 - axis],
                                   "r": r, "s2": float(v)})
    _write_csv(root / "segmentation" / "s2_phantom.csv", s2rows, ["distortion", "level", "source", "axis", "r", "s2"])
    return {"images": len(out), "model_id": model.model_id, "phase_of_s2": PHASE_NAMES[S2_PHASE], "max_r": max_r,
            "truth": "exact phase maps" if not p.source else "the segmentation of each undistorted reference slice"}


def _stage_segment_real(root: Path, p: StudyParams, prog: _Progress) -> dict:
    from tomoqc.metrics.seg import f1_per_class
    from tomoqc.models.segmenter import load_segment_model

    rows = _read_csv(root / "real" / "htc.csv")
    model = load_segment_model(kind="binary")
    out = []
    tick = prog.task("segmentation: HTC2022", len(rows))
    for r in rows:
        pred = model.segment_slices(np.load(root / r["file"])[None], uncertainty="entropy")["label"][0]
        truth = np.load(root / r["truth_file"]).astype(np.uint8)
        out.append({"file": r["file"], "f1": float(f1_per_class(pred, truth, 2)[1])})
        tick(1)
    _write_csv(root / "segmentation" / "htc.csv", out, ["file", "f1"])
    return {"images": len(out), "model_id": model.model_id}


# ---------------------------------------------------------------------------------------
# the report: tables, figures, study.json, summary.md
# ---------------------------------------------------------------------------------------

def _subset(rows: list[dict], distortion: str) -> list[dict]:
    if distortion == "ALL":
        return list(rows)
    doms = {r["domain"] for r in rows if r["distortion"] == distortion}
    return [r for r in rows if r["distortion"] == distortion or (r["distortion"] == "none" and r["domain"] in doms)]


def _fmt(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _ci(v, lo, hi) -> str:
    if not (isinstance(v, float) and math.isfinite(v)):
        return "–"
    if isinstance(lo, float) and math.isfinite(lo) and isinstance(hi, float) and math.isfinite(hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{v:.3f}"


def _md(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _predictions(root: Path, method: str) -> dict:
    p = root / "predictions" / f"{method}.csv"
    return {(r["set"], r["file"]): _float(r["score"]) for r in _read_csv(p)}


def _tiqa_fitted(root: Path, rows: list[dict], train: list, model, network=None) -> dict | None:
    """TIQA with its card's measured terms refitted to the labels of the train references
    (:func:`tomoqc.models.measured.fit_to_labels`), from the network scores and indicators of
    ``predictions/tiqa.csv``: ``{"scores": {(set, file): score}, "fit": ..., "train_references": n}``,
    or None for a model without measured terms or predictions without the network's score.
    ``network`` (one score per row of ``predictions/tiqa.csv``) replaces the stored network
    scores, to refit the terms on another reading of the same images."""
    from tomoqc.models.measured import INDICATORS, fit_to_labels

    terms = card_terms(model)
    pred = _read_csv(root / "predictions" / "tiqa.csv")
    if terms is None or not pred or "network" not in pred[0]:
        return None
    train_refs = set(train)
    label = {r["file"]: float(r["label"]) for r in rows if r["reference"] in train_refs}
    net = np.array([_float(r["network"]) for r in pred]) if network is None else np.asarray(network, np.float64)
    if net.shape != (len(pred),):
        raise OptionError(f"network scores of shape {net.shape} for the {len(pred)} rows of predictions/tiqa.csv")
    ind = {k: np.array([_float(r.get(k, "")) for r in pred]) for k in INDICATORS if k in pred[0]}
    y = np.array([label.get(r["file"], math.nan) if r["set"] == "phantom" else math.nan for r in pred])
    try:
        fit = fit_to_labels(terms, net, ind, y)
    except OptionError:  # too few labelled train images for the fit: no row
        return None
    scores = fit.combine(net, ind)
    return {"scores": {(r["set"], r["file"]): float(v) for r, v in zip(pred, scores)}, "fit": fit.to_dict(),
            "train_references": len(train)}


def _annotation_truth(annotations: str | None, rows: list[dict]) -> tuple[dict, int]:
    if not annotations:
        return {}, 0
    import importlib

    ann = importlib.import_module("tomoqc.annotations")
    table = ann.read_annotations(annotations)
    matched = ann.match_images(table, [r["file"] for r in rows])
    return {f: m.mos for f, m in matched.items()}, len(table)


def _label_agreement(sub: list[dict], label_of, truths) -> list[tuple[str, dict]]:
    """``[(truth name, _correlate(labels, truth))]`` over the rows ``sub`` for each ``(name, get)`` of
    ``truths``; rows whose truth is None (none there) are left out, and :func:`_correlate` leaves
    out non-finite pairs."""
    out = []
    for name, get in truths:
        t = [get(r) for r in sub]
        keep = [i for i, v in enumerate(t) if v is not None]
        out.append((name, _correlate([label_of(sub[i]) for i in keep], [float(t[i]) for i in keep])))
    return out


def _table1(rows, f1, mos, kinds, what: str = "phantom", htc_rows=(), htc_labels=None,
            htc_f1=None) -> tuple[list[dict], str]:
    out = []
    truths = [("distortion level", lambda r: -float(r["level"])), ("segmentation F1", lambda r: f1.get(r["file"]))]
    if mos:
        truths.insert(0, ("human MOS", lambda r: mos.get(r["file"])))
    for kind in kinds + ["ALL"]:
        for name, c in _label_agreement(_subset(rows, kind), lambda r: float(r["label"]), truths):
            rep = REPORT["table1"].get(kind) if name == "human MOS" else None
            out.append({"set": "phantom", "distortion": kind, "truth": name, **c,
                        "report_srocc": rep[0] if rep else None, "report_plcc": rep[1] if rep else None})
    names = [n for n, _ in truths]
    header = ["distortion"] + [f"{n} SROCC / PLCC (n)" for n in names] + ["report (vs human) SROCC / PLCC"]
    body = []
    for kind in kinds + ["ALL"]:
        cells = [kind]
        for n in names:
            r = next(x for x in out if x["distortion"] == kind and x["truth"] == n)
            cells.append(f"{_fmt(r['srocc'])} / {_fmt(r['plcc'])} ({r['n']})")
        rep = REPORT["table1"].get(kind)
        cells.append(f"{rep[0]:.3f} / {rep[1]:.3f}" if rep else "–")
        body.append(cells)
    md = ("## Table 1 analog: label projection against the truth\n\n"
          f"Projected label of every {what} image against each truth (SROCC; PLCC without fitting); the level enters "
          "as minus the level. Each distortion's set holds levels 1-5 and the references they came from.\n\n"
          + _md(header, body))
    labels = htc_labels or {}
    real = [r for r in htc_rows if math.isfinite(labels.get(r["file"], math.nan))]
    if real:
        imps = [k for k in HTC_IMPAIRMENTS if any(r["impairment"] == k for r in real)]
        f1_of = htc_f1 or {}
        loss = dict(zip([r["file"] for r in real], _f1_loss(real, [f1_of.get(r["file"], math.nan) for r in real],
                                                            lambda r: r["disc"], lambda r: r["impairment"] == "none")))
        real_truths = [("distortion level", lambda r: -float(r["level"])),
                       ("segmentation F1", lambda r: f1_of.get(r["file"])),
                       ("segmentation F1 loss", lambda r: loss.get(r["file"]))]
        body = []
        for kind in imps + ["ALL"]:
            sub = [r for r in real if kind == "ALL" or r["impairment"] in (kind, "none")]
            cells = [kind]
            for name, c in _label_agreement(sub, lambda r: labels[r["file"]], real_truths):
                out.append({"set": "real", "distortion": kind, "truth": name, **c,
                            "report_srocc": None, "report_plcc": None})
                cells.append(f"{_fmt(c['srocc'])} / {_fmt(c['plcc'])} ({c['n']})")
            body.append(cells)
        md += ("\nReal: HTC2022 discs reconstructed from degraded measured sinograms (Table 3's images), each "
               "labelled by projection against its disc's full-data reconstruction with the phantoms' observers and "
               "anchors; truths: minus the impairment level, the bundled binary segmenter's material F1 against "
               "the organisers' ground truth, and that F1 minus the same disc's full-data F1 (the accuracy the "
               "impairment cost, which a label relative to the disc's own reconstruction measures). Each impairment's "
               "set holds its levels and the full-data images.\n\n"
               + _md(["impairment"] + [f"{n} SROCC / PLCC (n)" for n, _ in real_truths], body))
    return out, md


def _table2(rows, test, preds, methods, kinds, boot, seed, real_rows,
            what: str = "phantom") -> tuple[list[dict], str, dict]:
    out = []
    test_rows = [r for r in rows if r["reference"] in test]
    for m in methods:
        for kind in kinds + ["ALL"]:
            sub = _subset(test_rows, kind)
            c = _correlate([preds[m].get(("phantom", r["file"]), math.nan) for r in sub],
                           [float(r["label"]) for r in sub], logistic=True, boot=boot, seed=seed)
            out.append({"set": "phantom", "method": m, "group": kind, **c,
                        "report_srocc": REPORT["table2"]["srocc"].get(m, {}).get(kind),
                        "report_plcc": REPORT["table2"]["plcc"].get(m, {}).get(kind)})
    header = ["method"] + [f"{k} SROCC" for k in kinds + ["ALL"]] + [f"{k} PLCC" for k in kinds + ["ALL"]]
    body = []
    for m in methods:
        get = {(r["group"]): r for r in out if r["method"] == m and r["set"] == "phantom"}
        body.append([METHOD_NAMES[m]] + [_ci(get[k]["srocc"], get[k].get("srocc_ci_low"), get[k].get("srocc_ci_high"))
                                         for k in kinds + ["ALL"]]
                    + [_ci(get[k]["plcc"], get[k].get("plcc_ci_low"), get[k].get("plcc_ci_high"))
                       for k in kinds + ["ALL"]])
    n_test = sum(1 for _ in test_rows)
    md = ("## Table 2 analog: TIQA against the baselines\n\n"
          f"Test references ({what}s: {len(test)} references, {n_test} images): SROCC, and PLCC after the "
          "monotone 4-parameter logistic map of the VQEG, against the projected label, with percentile bootstrap 95 % "
          "intervals (images resampled; for PLCC with the map fitted once on all images).\n\n"
          + _md(header, body))
    rep = REPORT["table2"]
    md += ("\nThe report's Table 2 (its own test set): "
           + "; ".join(f"{METHOD_NAMES[m]} ALL SROCC {rep['srocc'][m]['ALL']:.3f}, PLCC {rep['plcc'][m]['ALL']:.3f}"
                       for m in ("brisque", "rankiqa", "tiqa")) + ".\n")
    checks = {}
    alls = {m: next(r for r in out if r["method"] == m and r["group"] == "ALL") for m in methods}
    baselines = [m for m in alls if m not in TIQA_ROWS]
    for t in (m for m in TIQA_ROWS if m in alls and baselines):
        for stat in ("srocc", "plcc"):
            others = [alls[m][stat] for m in baselines]
            checks[f"phantom_{t}_best_all_{stat}"] = bool(
                math.isfinite(alls[t][stat]) and all(not math.isfinite(o) or alls[t][stat] > o for o in others))
    if real_rows:
        kinds_r = list(dict.fromkeys(r["kind"] for r in real_rows))
        body = []
        for m in methods:
            cells = [METHOD_NAMES[m]]
            for kind in kinds_r + ["ALL"]:
                sub = [r for r in real_rows if kind == "ALL" or r["kind"] == kind]
                sc = [preds[m].get(("ordering", r["file"]), math.nan) for r in sub]
                rk = [int(r["rank"]) for r in sub]
                sr = [r["group"] for r in sub]
                acc, n = pair_accuracy(sc, rk, sr)
                lo, hi = _pair_accuracy_ci(sc, rk, sr, boot, seed)
                groups = {}
                for s, k, g in zip(sc, rk, sr):
                    groups.setdefault(g, ([], []))
                    groups[g][0].append(s), groups[g][1].append(-k)
                w = _within_srocc(groups)
                out.append({"set": "real", "method": m, "group": kind, "n": len(sub), "series": len(set(sr)),
                            "pairs": n, "pair_accuracy": acc, "pair_accuracy_ci_low": lo,
                            "pair_accuracy_ci_high": hi, "srocc_within": w})
                cells.append(f"{_ci(acc, lo, hi)} / {_fmt(w)}")
            body.append(cells)
        alls_r = {m: next(r for r in out if r["set"] == "real" and r["method"] == m and r["group"] == "ALL")
                  for m in methods}
        for t in (m for m in TIQA_ROWS if m in alls_r and baselines):
            for stat in ("pair_accuracy", "srocc_within"):
                v = alls_r[t][stat]
                checks[f"real_{t}_best_all_{stat}"] = bool(math.isfinite(v) and all(
                    not math.isfinite(alls_r[m][stat]) or v > alls_r[m][stat] for m in baselines))
        npairs = next(r["pairs"] for r in out if r["set"] == "real" and r["group"] == "ALL")
        md += ("\nReal series of known quality order (float images; "
               f"{len({r['group'] for r in real_rows})} series, {npairs} pairs): pair accuracy [bootstrap 95 % "
               "interval, series resampled] / mean within-series SROCC.\n\n"
               + _md(["method"] + kinds_r + ["ALL"], body))
    return out, md, checks


def _logistic_mapped(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x`` through the VQEG logistic fitted from ``x`` to ``y`` once (Table 2's PLCC map)."""
    from tomoqc.metrics import stats

    return np.asarray(stats.logistic_fit(x, y, kind=LOGISTIC_KIND)(x), np.float64)


def _table2_differences(rows, test, preds, methods, boot, seed, real_rows) -> tuple[list[dict], str]:
    """Each TIQA row minus each baseline, both scored on the same resamples.

    The intervals of Table 2 are each method's own; two overlapping intervals do not say
    whether one method is ahead. Here the statistic is the difference, bootstrapped by
    resampling whole test references (a reference's distorted images are not
    independent) or whole series (real orderings), with both methods on every resample.
    ``share_better`` is the share of resamples in which the TIQA row is ahead."""
    from tomoqc.metrics import stats

    tiqa = [m for m in TIQA_ROWS if m in methods]
    base = [m for m in methods if m not in TIQA_ROWS]
    out: list[dict] = []
    test_rows = [r for r in rows if r["reference"] in test]
    y_all = np.array([float(r["label"]) for r in test_rows])

    def record(set_name, t, b, statistic, fn, clusters):
        res = (stats.cluster_bootstrap(fn, clusters, n=boot, seed=seed) if boot >= 1 and len(set(clusters)) > 1
               else None)
        everything = np.arange(len(clusters))
        out.append({"set": set_name, "method": t, "baseline": b, "statistic": statistic,
                    "difference": res.estimate if res else float(fn(everything, stats.cluster_index(clusters))),
                    "ci_low": res.low if res else math.nan, "ci_high": res.high if res else math.nan,
                    "share_better": res.share_positive if res else math.nan,
                    "clusters": len(set(clusters)), "resamples": res.resamples if res else 0})

    rk = np.array([int(r["rank"]) for r in real_rows])
    series = [r["group"] for r in real_rows]
    for t in tiqa:
        st = np.array([preds[t].get(("phantom", r["file"]), math.nan) for r in test_rows])
        rt = np.array([preds[t].get(("ordering", r["file"]), math.nan) for r in real_rows])
        for b in base:
            sb = np.array([preds[b].get(("phantom", r["file"]), math.nan) for r in test_rows])
            ok = np.isfinite(st) & np.isfinite(sb) & np.isfinite(y_all)
            if ok.sum() < LOGISTIC_KIND + 1 or np.ptp(st[ok]) == 0 or np.ptp(sb[ok]) == 0:
                continue
            a, c, y = st[ok], sb[ok], y_all[ok]
            refs = [r["reference"] for r, k in zip(test_rows, ok) if k]
            record("phantom", t, b, "srocc",
                   lambda i, g: stats.srocc(a[i], y[i]) - stats.srocc(c[i], y[i]), refs)
            ma, mc = _logistic_mapped(a, y), _logistic_mapped(c, y)
            record("phantom", t, b, "plcc",
                   lambda i, g: stats.plcc(ma[i], y[i]) - stats.plcc(mc[i], y[i]), refs)
            if real_rows:
                rb = np.array([preds[b].get(("ordering", r["file"]), math.nan) for r in real_rows])
                record("real", t, b, "pair_accuracy",
                       lambda i, g: pair_accuracy(rt[i], rk[i], g)[0] - pair_accuracy(rb[i], rk[i], g)[0], series)
    if not out:
        return out, ""

    def cell(set_name, t, b, statistic):
        r = next((r for r in out if (r["set"], r["method"], r["baseline"], r["statistic"])
                  == (set_name, t, b, statistic)), None)
        if r is None:
            return ""
        d = f"{r['difference']:+.3f}"
        if math.isfinite(r["ci_low"]):
            d += f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] ({r['share_better']:.0%})"
        return d

    body = [[METHOD_NAMES[t], METHOD_NAMES[b], cell("phantom", t, b, "srocc"), cell("phantom", t, b, "plcc")]
            + ([cell("real", t, b, "pair_accuracy")] if real_rows else [])
            for t in tiqa for b in base if any(r["method"] == t and r["baseline"] == b for r in out)]
    header = (["TIQA row", "baseline", "ALL SROCC", "ALL PLCC"]
              + (["real pair accuracy"] if real_rows else []))
    md = ("\nEach TIQA row minus each baseline, both on the same bootstrap resamples "
          f"({boot} resamples of whole test references" + (", and of whole series on the real orderings" if real_rows
                                                          else "") + "): "
          "difference [95 % interval] (share of resamples in which the TIQA row is ahead). "
          "An interval that holds 0 means this split cannot tell the two apart.\n\n" + _md(header, body))
    return out, md


def _f1_loss(sub: list[dict], f1s: list[float], key, clean) -> list[float]:
    """F1 of each row minus the F1 of its own sample's unimpaired image (``key(row)`` names the
    sample, ``clean(row)`` is True for the unimpaired image): the accuracy the impairment cost,
    free of what the sample's own geometry does to F1. NaN where the sample has no clean image."""
    base = {key(r): v for r, v in zip(sub, f1s) if clean(r)}
    return [v - base.get(key(r), math.nan) for r, v in zip(sub, f1s)]


def _level_srocc(sub: list[dict], f1s: list[float], kind: str) -> float:
    """Pooled SROCC of minus the impairment level against F1: how far the exact level itself,
    known without error, predicts the segmentation across samples. No score that ranks images by
    how impaired they are can do much better pooled (it can only add what it sees of each
    sample's own difficulty), so this is the ceiling the pooled column is read against. NaN for
    ALL, whose levels belong to different impairments."""
    if kind == "ALL":
        return math.nan
    return _correlate([-float(r["level"]) for r in sub], f1s)["srocc"]


def _table3(rows, tiqa, f1, real_rows, htc_f1, source: str | None = None) -> tuple[list[dict], str, dict]:
    out = []
    kinds = [k for k in _DISTORTION_ORDER[:4] if any(r["distortion"] == k for r in rows)]
    for kind in kinds + ["ALL"]:
        sub = [r for r in _subset(rows, kind) if kind != "ALL" or r["distortion"] != "mixed"]
        s = [tiqa.get(("phantom", r["file"]), math.nan) for r in sub]
        t = [f1.get(r["file"], math.nan) for r in sub]
        groups: dict = {}
        for r, a, b in zip(sub, s, t):
            g = groups.setdefault((r["reference"], r["domain"]), ([], []))
            g[0].append(a), g[1].append(b)
        c = _correlate(s, t)
        rep = REPORT["table3"].get(kind)
        loss = _f1_loss(sub, t, lambda r: (r["reference"], r["domain"]), lambda r: r["distortion"] == "none")
        out.append({"set": "phantom", "impairment": kind, **c, "srocc_within": _within_srocc(groups),
                    "srocc_loss": _correlate(s, loss)["srocc"], "srocc_level": _level_srocc(sub, t, kind),
                    "report_srocc": rep[0] if rep else None, "report_plcc": rep[1] if rep else None})
    if real_rows:
        imps = [k for k in HTC_IMPAIRMENTS if any(r["impairment"] == k for r in real_rows)]
        for kind in imps + ["ALL"]:
            sub = [r for r in real_rows if kind == "ALL" or r["impairment"] in (kind, "none")]
            s = [tiqa.get(("htc", r["file"]), math.nan) for r in sub]
            t = [htc_f1.get(r["file"], math.nan) for r in sub]
            groups = {}
            for r, a, b in zip(sub, s, t):
                g = groups.setdefault((r["disc"], r["impairment"] if kind == "ALL" else kind), ([], []))
                g[0].append(a), g[1].append(b)
            if kind == "ALL":  # the full-data image belongs to every disc's series
                for r, a, b in zip(sub, s, t):
                    if r["impairment"] == "none":
                        for key, g in groups.items():
                            if key[0] == r["disc"] and key[1] != "none":
                                g[0].append(a), g[1].append(b)
                groups = {k: v for k, v in groups.items() if k[1] != "none"}
            loss = _f1_loss(sub, t, lambda r: r["disc"], lambda r: r["impairment"] == "none")
            out.append({"set": "real", "impairment": kind, **_correlate(s, t), "srocc_within": _within_srocc(groups),
                        "srocc_loss": _correlate(s, loss)["srocc"], "srocc_level": _level_srocc(sub, t, kind)})
    body = [[r["set"], r["impairment"], str(r["n"]), _fmt(r["srocc"]), _fmt(r["plcc"]), _fmt(r["srocc_within"]),
             _fmt(r["srocc_loss"]), _fmt(r["srocc_level"]),
             (f"{r['report_srocc']:.3f} / {r['report_plcc']:.3f}" if r.get("report_srocc") else "–")] for r in out]
    md = ("## Table 3 analog: predicted quality against segmentation accuracy\n\n"
          "TIQA score against segmentation F1 (SROCC; PLCC without fitting) per impairment, pooled over references "
          "(and, within-series, the mean SROCC along each reference's own series). "
          + ("Phantoms: the bundled phases segmenter, mean F1 over the three phases against the exact phase map "
             "(inside the field of view), both domains, levels 0-5. " if not source else
             f"Slices of {source} (rows 'phantom'): the bundled phases segmenter, mean F1 over the three phases "
             "against its own segmentation of the undistorted slice (there is no exact phase map; inside the field of "
             "view when the slice has a constant outside), both domains, "
             "levels 0-5. ")
          + ("Real: HTC2022 discs reconstructed from degraded measured sinograms, the bundled "
             "binary segmenter's material F1 against the organisers' ground truth. " if real_rows else "")
          + "SROCC vs F1 loss: pooled "
          "against the F1 the impairment cost (F1 minus the same reference's or disc's unimpaired F1), free of "
          "what each sample's own geometry does to F1. Level SROCC: minus the exact impairment level "
          "against F1, pooled the same way: what a score that knew each image's level without error would "
          "reach, the ceiling for a score that ranks images by how impaired they are.\n\n"
          + _md(["set", "impairment", "n", "SROCC", "PLCC", "within-series SROCC", "SROCC vs F1 loss",
                 "level SROCC", "report SROCC / PLCC"], body))
    checks = {}
    ph = [r for r in out if r["set"] == "phantom" and r["impairment"] != "ALL"]
    if ph:
        checks["phantom_table3_min_srocc"] = min((r["srocc"] for r in ph if math.isfinite(r["srocc"])),
                                                 default=math.nan)
    rr = [r for r in out if r["set"] == "real" and r["impairment"] != "ALL"]
    if rr:
        checks["real_table3_min_srocc"] = min((r["srocc"] for r in rr if math.isfinite(r["srocc"])), default=math.nan)
    for name, part in (("phantom", ph), ("real", rr)):
        if part:  # the ceiling the pooled figures are read against (_level_srocc)
            checks[f"{name}_table3_min_level_srocc"] = min(
                (r["srocc_level"] for r in part if math.isfinite(r["srocc_level"])), default=math.nan)
    return out, md, checks


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        _atomic(path, lambda t: fig.savefig(t, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _fig4(path: Path, rows, test, preds, methods) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomoqc.metrics.stats import logistic_fit, srocc

    test_rows = [r for r in rows if r["reference"] in test]
    kinds = [k for k in ("none",) + _DISTORTION_ORDER if any(r["distortion"] == k for r in test_rows)]
    colours = dict(zip(kinds, plt.cm.tab10.colors))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        x = np.array([preds[m].get(("phantom", r["file"]), math.nan) for r in test_rows])
        y = np.array([float(r["label"]) for r in test_rows])
        for k in kinds:
            sel = np.array([r["distortion"] == k for r in test_rows])
            ax.scatter(x[sel], y[sel], s=9, alpha=0.7, color=colours[k], label=k)
        a, b = _finite_pairs(x, y)
        title = METHOD_NAMES[m]
        if a.size > LOGISTIC_KIND and np.ptp(a) > 0 and np.ptp(b) > 0:
            fit = logistic_fit(a, b, kind=LOGISTIC_KIND)
            xs = np.linspace(a.min(), a.max(), 200)
            ax.plot(xs, fit(xs), color="k", lw=1.5)
            title += f"\nSROCC {srocc(a, b):.3f}, PLCC {fit.plcc:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted score", fontsize=8)
        ax.set_ylabel("projected label", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    _save_png(fig, path)


def _fig7(path: Path, s2rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in _DISTORTION_ORDER[:4] if any(r["distortion"] == k for r in s2rows)]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(3.6 * max(1, len(kinds)), 3.3), squeeze=False)
    cmap = plt.cm.viridis
    for ax, kind in zip(axes[0], kinds):
        for axis, style in (("x", "-"), ("y", "--")):
            sel = [r for r in s2rows if r["distortion"] == kind and r["axis"] == axis]
            for level in range(0, 6):
                pts = [r for r in sel if r["source"] == "predicted" and str(r["level"]) == str(level)]
                if pts:
                    ax.plot([int(r["r"]) for r in pts], [float(r["s2"]) for r in pts], style, color=cmap(level / 5),
                            lw=1.1, label=f"level {level}" if axis == "x" else None)
            tr = [r for r in sel if r["source"] == "true"]
            ax.plot([int(r["r"]) for r in tr], [float(r["s2"]) for r in tr], style, color="k", lw=1.8,
                    label="truth" if axis == "x" else None)
        ax.set_title(f"{kind} (solid x, dashed y)", fontsize=9)
        ax.set_xlabel("r (px)", fontsize=8)
        ax.set_ylabel(f"S2(r), {PHASE_NAMES[S2_PHASE]}", fontsize=8)
        ax.tick_params(labelsize=7)
    if kinds:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    _save_png(fig, path)


def _versions() -> dict:
    import importlib.metadata as md

    from tomoqc import __version__

    out = {"tomoqc": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-image", "scikit-learn", "tensorflow", "keras"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _stage_report(root: Path, p: StudyParams, annotations: str | None, train: list, test: list,
                  stages: _Stages, extra: dict) -> dict:
    rows = _phantom_rows(root)
    mos, n_annotated = _annotation_truth(annotations, rows)
    if annotations and not mos:
        raise InputError(annotations, "no annotated image is in the study dataset (name images as the file column of "
                         f"{root / 'data' / 'manifest.csv'} does)")
    preds = {m: _predictions(root, m) for m in p.methods}
    methods = list(p.methods)
    fitted = _tiqa_fitted(root, rows, train, p.model) if "tiqa" in preds else None
    if fitted is not None:
        preds["tiqa_fitted"] = fitted.pop("scores")
        methods.insert(methods.index("tiqa") + 1, "tiqa_fitted")
    f1 = {r["file"]: _float(r["f1_mean"]) for r in _read_csv(root / "segmentation" / "phantom.csv")}
    kinds = [k for k in _DISTORTION_ORDER if any(r["distortion"] == k for r in rows)]
    real_rows = _read_csv(root / "real" / "orderings.csv") if p.real else []
    htc_rows = _read_csv(root / "real" / "htc.csv") if p.real else []
    htc_f1 = {r["file"]: _float(r["f1"]) for r in _read_csv(root / "segmentation" / "htc.csv")} if p.real else {}

    what = "phantom" if not p.source else f"{Path(p.source).name} slice"  # what the generated images are made of
    htc_labels = ({r["file"]: _float(r["label"]) for r in _read_csv(root / "real" / "htc_labels.csv")}
                  if p.real and (root / "real" / "htc_labels.csv").is_file() else {})
    t1, md1 = _table1(rows, f1, mos, kinds, what, htc_rows, htc_labels, htc_f1)
    t2, md2, checks2 = _table2(rows, set(test), preds, methods, kinds, p.bootstrap, p.seed, real_rows, what)
    t2d, md2d = _table2_differences(rows, set(test), preds, methods, p.bootstrap, p.seed, real_rows)
    md2 += md2d
    t3, md3, checks3 = _table3(rows, preds["tiqa"], f1, htc_rows, htc_f1, p.source)
    s2rows = _read_csv(root / "segmentation" / "s2_phantom.csv")

    c1 = ["set", "distortion", "truth", "n", "srocc", "plcc", "report_srocc", "report_plcc"]
    _write_csv(root / "table1_label_projection.csv", t1, c1)
    _write_text(root / "table1_label_projection.md", md1)
    c2 = ["set", "method", "group", "n", "srocc", "srocc_ci_low", "srocc_ci_high", "plcc", "plcc_ci_low",
          "plcc_ci_high", "series", "pairs", "pair_accuracy", "pair_accuracy_ci_low", "pair_accuracy_ci_high",
          "srocc_within", "report_srocc", "report_plcc"]
    _write_csv(root / "table2_methods.csv", t2, c2)
    _write_text(root / "table2_methods.md", md2)
    _write_csv(root / "table2_differences.csv", t2d, ["set", "method", "baseline", "statistic", "difference", "ci_low",
                                                     "ci_high", "share_better", "clusters", "resamples"])
    c3 = ["set", "impairment", "n", "srocc", "plcc", "srocc_within", "srocc_loss", "srocc_level", "report_srocc", "report_plcc"]
    _write_csv(root / "table3_quality_vs_segmentation.csv", t3, c3)
    _write_text(root / "table3_quality_vs_segmentation.md", md3)
    _write_csv(root / "fig7_two_point_correlation.csv", s2rows, ["distortion", "level", "source", "axis", "r", "s2"])
    _fig7(root / "fig7_two_point_correlation.png", s2rows)
    _fig4(root / "fig4_pred_vs_label.png", rows, set(test), preds, methods)

    checks = {**checks2, **checks3}
    study = {
        "parameters": asdict(p),
        "annotations": ({"file": str(annotations), "sha256": _sha256(annotations), "images": n_annotated,
                         "matched": len(mos)} if annotations else None),
        "seeds": {"study": p.seed, "reference_seeds": [int(r["seed"]) for r in rows if r["distortion"] == "none"
                                                       and r["domain"] == "image"],
                  "ordering_series": ORDERING_SEED, "bootstrap": p.seed},
        "split": {"train": train, "test": test, "test_fraction": p.test_fraction},
        "never_used_in_training": extra.get("disjoint"),
        "stages": {s: stages.info(s) for s in STAGES if stages.info(s)},
        "table1": t1, "table2": t2, "table2_differences": t2d, "table3": t3, "checks": checks, "tiqa_fitted": fitted,
        "report": REPORT,
        "versions": _versions(),
        "command": extra.get("command"),
        "files": ["table1_label_projection.csv", "table1_label_projection.md", "table2_methods.csv",
                  "table2_methods.md", "table2_differences.csv", "table3_quality_vs_segmentation.csv",
                  "table3_quality_vs_segmentation.md",
                  "fig4_pred_vs_label.png", "fig7_two_point_correlation.png", "fig7_two_point_correlation.csv",
                  "summary.md"],
    }
    _write_json(root / "study.json", study)
    lines = ["# tomoqc study: the TIQA report's tables, measured", ""]
    if extra.get("command"):
        lines += ["Regenerate with:", "", "```", extra["command"], "```", ""]
    made = (f"{p.references} phantom references ({p.size} px" if not p.source else
            f"{p.references} references from slices of {p.source}" + (f" ({p.source_dataset})" if p.source_dataset else "")
            + f" ({p.size} px crops")
    lines += [f"{made}, seed {p.seed}; train {len(train)}, test {len(test)} "
              f"references), TIQA model {p.model or 'bundled'}"
              + (f", real data {p.real}" + (f" (first {p.real_limit} series per kind / discs)" if p.real_limit else "")
                 if p.real else "") + ".", "", md1, md2, md3]
    lines += ["## Figures", "", "![Figure 4 analog](fig4_pred_vs_label.png)", "",
              "![Figure 7 analog](fig7_two_point_correlation.png)", ""]
    if checks:
        lines += ["## Checks", ""] + [f"- {k}: {_fmt(v) if isinstance(v, float) else v}" for k, v in checks.items()]
        lines.append("")
    _write_text(root / "summary.md", "\n".join(lines))
    return study


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

def _check_real(real) -> Path:
    from tomoqc.train.segdata import htc2022_files

    r = Path(real)
    if not r.is_dir():
        raise InputError(r, "no such real-data folder (expected the shared realdata folder: htc2022/, savu_24737/, "
                         "...)")
    htc2022_files(r)  # raises when there is no disc with ground truth
    for sub in ("savu_24737", "qim3d", "battery_xct", "psi_shell"):
        if not (r / sub).is_dir():
            raise InputError(r, f"no {sub}/ folder: the real ordering series need it (see realdata/README.md)")
    return r.resolve()


def run_study(
    out,
    *,
    references: int = 24,
    size: int | None = None,
    seed: int = STUDY_SEED,
    annotations=None,
    real=None,
    source=None,
    source_dataset: str | None = None,
    model=None,
    methods: Sequence[str] = METHODS,
    test_fraction: float = 0.5,
    mixtures: bool = True,
    real_limit: int | None = None,
    real_bin: int = 1,
    real_levels: int = 4,
    rankiqa_size: int = 64,
    rankiqa_width: float = 1.0,
    rankiqa_rank_epochs: int = 6,
    rankiqa_finetune_epochs: int = 6,
    rankiqa_steps: int | None = 40,
    bootstrap: int = 1000,
    workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run (or resume) the study in folder ``out`` and return the contents of ``study.json``.

    Parameters
    ----------
    out : path-like
        The study folder (created; a rerun resumes it, see the module doc).
    references, size, seed : int
        Phantom references, their side in pixels (default 256) and the study seed (must
        differ from every seed of the models' training, checked against their cards).
    source : path-like, optional
        A volume of the user's (any format :func:`tomoqc.io.open_volume` reads) to take the
        references from instead of phantoms: ``references`` slices drawn from it, each
        resized to a short side of 255 and cropped to ``size`` (default 224, at most 255),
        as the report prepared its images (:func:`tomoqc.dataset.build_dataset`,
        ``fit="report"``). Its slices get both domains' impairments and projected labels
        like phantoms; with no exact phase map, segmentation F1 (Tables 1 and 3, Figure 7)
        is measured against the segmenter's own segmentation of each undistorted slice. The
        tables keep the set name ``phantom`` for these images. Nothing checks whether the
        volume was used to train the models.
    source_dataset : str, optional
        Array path inside an HDF5 file or zarr group ``source``.
    annotations : path-like, optional
        Human ratings (:mod:`tomoqc.annotations` CSV: ``image,rater,score`` or
        ``image,mos,std,n``; ``image`` as the study's ``data/manifest.csv`` ``file`` column
        names it). Adds the human MOS as a truth of Table 1; the labels stay the plain
        projection.
    real : path-like, optional
        The real-data folder (``../shared/realdata``): real orderings (Table 2) and HTC2022
        discs (Table 3).
    model : path-like, optional
        TIQA weights (default: the bundled model).
    methods : sequence of str
        Subset of :data:`METHODS`; ``tiqa`` is required.
    test_fraction : float
        Share of the references held out for testing.
    mixtures : bool
        Add the dataset's mixtures of impairments (they count in ``ALL``).
    real_limit : int, optional
        At most this many ordering series per kind and HTC2022 discs (held-out disc first).
    real_bin : int
        Detector binning of the HTC2022 reconstructions (``512 / bin`` pixels).
    real_levels : int
        Levels per HTC2022 impairment (1-4, mild first).
    rankiqa_size, rankiqa_width, rankiqa_rank_epochs, rankiqa_finetune_epochs, rankiqa_steps
        RankIQA's training crop side, VGG16 width multiplier, epochs of each phase and
        steps per epoch (None: one pass over the data), as
        :func:`tomoqc.models.rankiqa.train_rankiqa` takes them; the defaults are its own
        (64-pixel crops, the full-width VGG16: what this 2-core machine trains in
        reasonable time, see that module).
    bootstrap : int
        Bootstrap resamples of the confidence intervals (0: none).
    workers : int, optional
        Processes building the dataset.
    progress : bool
        Rich progress bars on stderr.
    command : str, optional
        The command line, recorded in ``study.json`` and ``summary.md``.

    Raises
    ------
    InputError
        A missing or malformed input (real-data folder, annotation file, model), or a
        folder that holds a study with other parameters or is not a study; nothing is
        written then.
    OptionError
        A bad parameter.
    """
    # ---- every check before anything is written
    references = _check_int("references", references, 2)
    size = _check_int("size", (224 if source is not None else 256) if size is None else size, 32,
                      255 if source is not None else None)
    source_path = None
    if source is not None:
        from tomoqc.io import open_volume

        source_path = str(Path(source).resolve())
        vol = open_volume(source_path, source_dataset)  # raises InputError naming the file on a bad one
        if min(int(vol.sizes["y"]), int(vol.sizes["x"])) < 16:
            raise InputError(source_path, f"slices too small for a study ({vol.sizes['y']} x {vol.sizes['x']})")
    elif source_dataset is not None:
        raise OptionError("source_dataset needs a source volume")
    seed = _check_int("seed", seed, 0)
    real_bin = _check_int("real_bin", real_bin, 1, 16)
    real_levels = _check_int("real_levels", real_levels, 1, 4)
    if real_limit is not None:
        real_limit = _check_int("real_limit", real_limit, 1)
    for name, v, low in (("rankiqa_size", rankiqa_size, 32), ("rankiqa_rank_epochs", rankiqa_rank_epochs, 0),
                         ("rankiqa_finetune_epochs", rankiqa_finetune_epochs, 0), ("bootstrap", bootstrap, 0)):
        _check_int(name, v, low)
    if rankiqa_steps is not None:
        rankiqa_steps = _check_int("rankiqa_steps", rankiqa_steps, 1)
    if not 0.0 < float(test_fraction) < 1.0:
        raise OptionError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if not 0 < float(rankiqa_width) <= 1:
        raise OptionError(f"rankiqa_width must be in (0, 1], got {rankiqa_width}")
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise OptionError(f"unknown method(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
    if "tiqa" not in methods:
        raise OptionError("the study needs the tiqa method (Tables 1 and 3 and the comparison are about it)")
    methods = [m for m in METHODS if m in methods]
    model_path, model_sha = None, ""
    if model is not None:
        import zipfile

        mp = Path(model)
        if not mp.is_file() or not zipfile.is_zipfile(mp):
            raise InputError(mp, "no TIQA model file (.keras archive) there")
        model_path, model_sha = str(mp.resolve()), _sha256(mp)
    real_path = str(_check_real(real)) if real is not None else None
    if annotations is not None:
        import importlib

        importlib.import_module("tomoqc.annotations").read_annotations(annotations)  # raises on a bad file
        annotations = str(Path(annotations).resolve())
    from tomoqc.models.segmenter import default_segment_weights
    from tomoqc.models.tiqa import card_sha256, default_weights_path

    if model_path is None and default_weights_path().is_file():
        model_sha = _sha256(default_weights_path())  # a study is resumed only with the model it began with
    # and with its card: the card's measured terms and calibration are part of every score
    card_sha = card_sha256(Path(model_path) if model_path else default_weights_path())
    cards = {"tiqa": _card_of(Path(model_path) if model_path else default_weights_path()),
             "dlinknet_phases": _card_of(default_segment_weights("phases")),
             "dlinknet_binary": _card_of(default_segment_weights("binary"))}
    disjoint = training_disjointness(seed, references, cards)

    p = StudyParams(references=references, size=size, seed=seed, test_fraction=float(test_fraction),
                    mixtures=bool(mixtures), model=model_path, model_sha256=model_sha,
                    model_card_sha256=card_sha, real=real_path, source=source_path,
                    source_dataset=source_dataset if source_path else None,
                    real_limit=real_limit, real_bin=real_bin, real_levels=real_levels, methods=methods,
                    rankiqa_size=int(rankiqa_size), rankiqa_width=float(rankiqa_width),
                    rankiqa_rank_epochs=int(rankiqa_rank_epochs), rankiqa_finetune_epochs=int(rankiqa_finetune_epochs),
                    rankiqa_steps=rankiqa_steps, bootstrap=int(bootstrap))
    root = Path(os.path.abspath(out))
    params_file = root / "study_params.json"
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a folder")
    if root.is_dir():
        if params_file.is_file():
            try:
                old = json.loads(params_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise InputError(params_file, "unreadable study parameters; start the study in a new folder") from None
            mine = _jsonable(asdict(p))
            diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
            if diff:
                shown = ", ".join(f"{k} {old.get(k)!r} -> {mine.get(k)!r}" for k in diff[:4])
                raise InputError(root, f"holds a study with other parameters ({shown}); resume it with its own "
                                 "parameters or use another --out")
        elif any(root.iterdir()):
            raise InputError(root, "exists and is not a tomoqc study folder (no study_params.json); use another --out")

    from tomoqc.locks import OutputLock

    root.mkdir(parents=True, exist_ok=True)
    with OutputLock(root):
        if not params_file.is_file():
            _write_json(params_file, asdict(p))
        stages = _Stages(root)
        with _Progress(progress) as prog:
            def run(name, fn, key=""):
                if stages.done(name, key):
                    prog.log(f"[dim]{name}: done before, skipped[/dim]")
                    return stages.info(name)
                t0 = time.time()
                info = fn() or {}
                stages.mark(name, time.time() - t0, key=key, **info)
                prog.log(f"{name}: done in {time.time() - t0:.1f} s")
                return info

            run("dataset", lambda: _stage_dataset(root, p, prog, workers))
            rows = _phantom_rows(root)
            train, test = _split(rows, p)
            if p.real:
                run("real", lambda: _stage_real(root, p, prog))
                lab = stages.info("dataset").get("labels") or {}
                run("label_real", lambda: _stage_label_real(root, p, prog, lab.get("anchors") or {},
                                                            lab.get("intensity", "absolute")))
            for m in p.methods:
                run(m, lambda m=m: _stage_scores(root, p, m, prog, set(test), train))
            run("segment_phantom", lambda: _stage_segment_phantom(root, p, prog))
            if p.real:
                run("segment_real", lambda: _stage_segment_real(root, p, prog))
            # the report reruns when a stage before it ran again, or the annotations changed
            key = hashlib.sha256(json.dumps([_sha256(annotations) if annotations else ""] + [
                stages.info(s).get("run_id") for s in STAGES[:-1]]).encode()).hexdigest()
            if stages.done("report", key) and (root / "study.json").is_file():
                prog.log("[dim]report: done before, skipped[/dim]")
                return json.loads((root / "study.json").read_text(encoding="utf-8"))
            t0 = time.time()
            study = _stage_report(root, p, annotations, train, test, stages, {"disjoint": disjoint, "command": command})
            stages.mark("report", time.time() - t0, key=key)
            prog.log(f"report: done in {time.time() - t0:.1f} s; tables and figures in {root}")
    return _jsonable(study)
