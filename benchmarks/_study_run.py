"""A finished ``tomoqc study`` run, read for the benchmarks that re-score its TIQA rows.

Not a benchmark itself (``make bench`` runs ``benchmarks/[!_]*.py``). It lines up, one row
per image of ``predictions/tiqa.csv``, the stored scores, network scores and indicators with
the labels of the phantom references, the train/test split and the real series of known
order, and evaluates any score vector as Table 2 does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class StudyRun:
    root: Path
    pred: list[dict]  # predictions/tiqa.csv
    manifest: dict  # file -> manifest row (phantom images)
    train: list[str]
    test: list[str]
    model: str | None  # the run's TIQA weights (None: the bundled model)
    reference: list  # per row: its phantom reference, or None
    label: np.ndarray  # per row: the projected label (phantom images), else NaN
    tr: np.ndarray  # rows of the train references
    te: np.ndarray  # rows of the test references
    orderings: dict = field(default_factory=dict)  # file -> real ordering row
    od: list = field(default_factory=list)  # rows that are real ordering images

    def column(self, name: str) -> np.ndarray:
        from tomoqc.study import _float

        return np.array([_float(r.get(name)) for r in self.pred])

    def terms(self):
        """The measured terms of the run's TIQA card (None: a card without them)."""
        from tomoqc.study import card_terms

        return card_terms(self.model)

    def indicators(self) -> dict:
        from tomoqc.models.measured import INDICATORS

        return {k: self.column(k) for k in INDICATORS if k in self.pred[0]}

    def image(self, i: int) -> np.ndarray:
        from tomoqc.study import _load

        return _load(self.root, self.pred[i]["set"], self.pred[i]["file"])

    def cache_key(self, model) -> str:
        """What a cache of per-image readings by ``model`` (a loaded TIQA model) depends on."""
        from tomoqc.models.tiqa import file_sha256

        return f"{file_sha256(model.path)}:{len(self.pred)}:{self.pred[0]['file']}:{self.pred[-1]['file']}"

    def method(self, name: str) -> np.ndarray | None:
        """Another method's stored scores (``predictions/<name>.csv``) in this run's row order."""
        from tomoqc.study import _float, _read_csv

        path = self.root / "predictions" / f"{name}.csv"
        if not path.is_file():
            return None
        by = {(r["set"], r["file"]): _float(r["score"]) for r in _read_csv(path)}
        return np.array([by.get((r["set"], r["file"]), np.nan) for r in self.pred])

    def evaluate(self, scores) -> tuple[float, float, float]:
        """ALL SROCC and PLCC (after the VQEG logistic) on the test references, as Table 2
        (:func:`tomoqc.study._correlate`: images without a finite score left out), and the pair
        accuracy on the real series of known order (NaN without them)."""
        from tomoqc.study import _correlate, _float, pair_accuracy

        s = np.asarray(scores, np.float64)
        c = _correlate(s[self.te], self.label[self.te], logistic=True)
        acc = float("nan")
        if self.od:
            o = [self.orderings[self.pred[i]["file"]] for i in self.od]
            acc = pair_accuracy(s[self.od], [int(_float(r["rank"])) for r in o], [r["group"] for r in o])[0]
        return c["srocc"], c["plcc"], acc

    def fitted(self, network=None) -> np.ndarray | None:
        """Table 2's row "TIQA, terms fitted on the train split", on the stored network scores
        or on ``network`` (one per row); None when the card has no measured terms."""
        from tomoqc.study import _tiqa_fitted

        out = _tiqa_fitted(self.root, list(self.manifest.values()), self.train, self.model, network=network)
        if out is None:
            return None
        return np.array([out["scores"][(r["set"], r["file"])] for r in self.pred])


def load_study(root: Path) -> StudyRun:
    """Read a finished study run; ``SystemExit`` with one line naming what is missing."""
    from tomoqc.dataset import read_manifest
    from tomoqc.study import _float, _read_csv

    root = Path(root)
    pred_path = root / "predictions" / "tiqa.csv"
    if not pred_path.is_file() or not (root / "study.json").is_file():
        raise SystemExit(f"error: {root}: not a finished tomoqc study run (no predictions/tiqa.csv or study.json)")
    pred = _read_csv(pred_path)
    if not pred or "network" not in pred[0]:
        raise SystemExit(f"error: {pred_path}: no network scores stored (rerun the study with this version)")
    info = json.loads((root / "study.json").read_text())
    train, test = list(info["split"]["train"]), list(info["split"]["test"])
    train_set, test_set = set(train), set(test)
    manifest = {r["file"]: r for r in read_manifest(root / "data")}
    ref = [manifest[r["file"]]["reference"] if r["set"] == "phantom" else None for r in pred]
    label = np.array([_float(manifest[r["file"]]["label"]) if g else np.nan for r, g in zip(pred, ref)])
    ordering_path = root / "real" / "orderings.csv"
    orderings = {r["file"]: r for r in _read_csv(ordering_path)} if ordering_path.is_file() else {}
    od = [i for i, r in enumerate(pred) if r["set"] == "ordering" and r["file"] in orderings]
    return StudyRun(root=root, pred=pred, manifest=manifest, train=train, test=test,
                    model=info["parameters"].get("model"), reference=ref, label=label,
                    tr=np.array([g in train_set for g in ref]), te=np.array([g in test_set for g in ref]),
                    orderings=orderings, od=od)


def read_cache(path: Path, key: str, name: str) -> np.ndarray | None:
    """The array ``name`` cached in ``path`` under ``key``, or None (no cache, or another key)."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z[name] if str(z["key"]) == key else None


def write_cache(path: Path, key: str, name: str, array) -> None:
    """Cache ``array`` as ``name`` in ``path`` under ``key``, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{name: np.asarray(array)}, key=np.array(key))
    tmp.replace(path)
