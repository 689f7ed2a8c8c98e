"""Installing a network that a later training stage changed, with its card.

A stage that goes on from an installed model (the series refinement,
:mod:`tomoqc.train.series_refine`; the score-head refit, :mod:`tomoqc.train.score_head`)
writes a new ``.keras`` file. :func:`install_stage` copies it to ``DIR/tiqa_default.keras``
and writes its card from the parent's: the new weights' hash and id, the stage's record
(with its parent's id, command and evaluation) under ``training[stage]``, and without what
was fitted on the parent's outputs and no longer holds (the measured terms, the trust
statistics, the evaluation tables): those are refitted on the installed network
(``scripts/fit_measured_terms.py``, ``scripts/fit_trust.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tomoqc.errors import InputError

__all__ = ["install_stage", "STALE_AFTER_STAGE"]

#: Card entries fitted on the parent network's outputs, dropped on install.
STALE_AFTER_STAGE = ("measured_terms", "evaluation_measured_terms", "trust", "evaluation")


def install_stage(network, parent, dest_dir, *, stage: str, record: dict, command: str, description: str,
                  card_updates: dict | None = None, evaluate=None, log=print) -> Path:
    """Write ``dest_dir/tiqa_default.{keras,json}`` from ``network`` and the card of ``parent``.

    ``description`` is appended to the parent's description; ``card_updates`` replaces
    top-level card entries (e.g. a refitted ``score_calibration``); ``evaluate`` (a labelled
    dataset) adds the card's evaluation table of the installed network without measured terms.
    """
    from tomoqc.models.tiqa import _read_card, file_sha256
    from tomoqc.train.common import atomic_write_text, versions

    card = _read_card(Path(parent))
    if not card:
        raise InputError(Path(parent).with_suffix(".json"), "no model card beside the parent model")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / "tiqa_default.keras"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(network, tmp)
    os.replace(tmp, dest)
    sha = file_sha256(dest)
    parent_entry = {"model_id": card.get("model_id"), "sha256": card.get("weights_sha256"),
                    "command": card.get("command"), "evaluation": card.get("evaluation")}
    for stale in STALE_AFTER_STAGE:
        card.pop(stale, None)
    card.update(card_updates or {})
    card.update({
        "model_id": f"tiqa-default-{sha[:12]}",
        "weights": dest.name,
        "weights_sha256": sha,
        "size_bytes": dest.stat().st_size,
        "description": card.get("description", "").rstrip(".") + "; then " + description.rstrip(".") + ".",
        "command": command,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    card.setdefault("training", {})[stage] = {**record, "parent": parent_entry}
    if evaluate is not None:
        from tomoqc.models.tiqa import TiqaModel, load_model
        from tomoqc.train.finetune import evaluate_dataset, format_table

        model = TiqaModel(load_model(dest).model, path=dest, card=card)  # the new card, before it is written
        ev = evaluate_dataset(model, evaluate)
        card["evaluation"] = {"sampling": "grid", "severity": "measured from severity_baseline",
                              "data": str(evaluate), "table": ev["table"],
                              "note": "the network before the measured terms are refitted"}
        log("evaluation on " + str(evaluate) + "\n" + format_table(ev["table"]))
    atomic_write_text(dest.with_suffix(".json"), json.dumps(card, indent=2, default=float) + "\n")
    log(f"installed {dest} ({dest.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]})")
    return dest
