"""A small labelled phantom dataset for the benchmarks that read one when none is given.

Not a benchmark itself (``make bench`` runs ``benchmarks/[!_]*.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def labelled_sample(references: int = 6, seed: int = 777, size: int = 256) -> Path:
    """Build ``references`` fresh phantoms in both domains (with mixtures), label them; return the folder.

    The folder is a new temporary directory; it is left for the caller to look at.
    """
    from tomoqc.dataset import build_dataset
    from tomoqc.labels import project_dataset

    out = Path(tempfile.mkdtemp(prefix="tomoqc-bench-")) / "data"
    print(f"no dataset given: building {references} phantom references (seed {seed}) in {out}", flush=True)
    build_dataset(out, references=references, domain="both", size=size, seed=seed, workers=1, progress=False)
    project_dataset(out, progress=False)
    return out
