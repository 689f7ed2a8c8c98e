"""Real slices for the benchmarks that score them: the test slices, and named ones of ``../shared/realdata``.

Not a benchmark itself (``make bench`` runs ``benchmarks/[!_]*.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def real_slices(realdata: Path | None, named=(), *, dtype=np.float32) -> list[tuple[str, np.ndarray]]:
    """``[(name, 2-D slice)]``: the slices of ``tests/data/real`` (named by file stem), then, with
    ``realdata``, each ``(path, z)`` or ``(path, z, name)`` of ``named`` (a path relative to it;
    ``z`` the slice of a volume, None for its middle one; a colour image gives its first channel;
    the name defaults to the path, with `` z<z>`` for a chosen slice). Missing files are left out,
    with a line on stderr."""
    from tomoqc.train.measured import read_image

    out = [(p.stem, np.load(p)) for p in sorted((REPO / "tests" / "data" / "real").glob("*.npy"))]
    for entry in named if realdata is not None else ():
        rel, z = entry[0], entry[1]
        p = Path(realdata) / rel
        if not p.is_file():
            print(f"{p}: not found, left out", file=sys.stderr)
            continue
        a = np.asarray(read_image(p))
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., 0]
        if a.ndim == 3:
            a = a[a.shape[0] // 2 if z is None else z]
        name = entry[2] if len(entry) > 2 else (rel if z is None else f"{rel} z{z}")
        out.append((name, a))
    return [(n, np.asarray(a, dtype)) for n, a in out]
