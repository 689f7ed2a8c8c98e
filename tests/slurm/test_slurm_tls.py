"""``tomoqc score --cluster slurm`` on a real one-node SLURM talks TLS end to end.

Run with ``pytest -m slurm tests/slurm`` (``make test-slurm``).
"""

from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pytest

from slurm_helpers import TOMOQC

pytestmark = pytest.mark.slurm


def _config(tmp_path, **extra) -> str:
    opts = {"cores": 1, "memory": "2GB", "processes": 1, "walltime": "00:10:00", "interface": "lo", "max_jobs": 1,
            "log_directory": str(tmp_path / "dask-logs"), "shared_temp_directory": str(tmp_path / "shared")}
    opts.update(extra)
    path = tmp_path / "cluster.yaml"
    path.write_text("".join(f"{k}: {v!r}\n" if isinstance(v, str) else f"{k}: {v}\n" for k, v in opts.items()))
    return str(path)


def test_score_on_slurm_uses_tls_and_removes_its_credentials(slurm, tiny_data, tmp_path):
    from tomoqc.pipeline import open_quality

    vol = tiny_data["volumes"][0]
    shared = tmp_path / "shared"
    proc = subprocess.Popen([TOMOQC, "score", str(vol), "--out", str(tmp_path / "q"), "--cluster", "slurm",
                             "--cluster-config", _config(tmp_path), "--chunk-slices", "4", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            folders = list(shared.iterdir()) if shared.is_dir() else []
            if folders and len(list(folders[0].iterdir())) == 3:
                # while the run lasts: the worker jobs' CA, certificate and key, readable by this user only
                seen = (folders[0], folders[0].stat().st_mode & 0o777, sorted(p.stat().st_mode & 0o777
                                                                               for p in folders[0].iterdir()))
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert seen is not None, "no credential folder appeared during the run"
    folder, mode, file_modes = seen
    assert mode == 0o700 and all(m & 0o077 == 0 for m in file_modes), seen
    # the credentials are gone with the run
    assert not folder.exists() and list(shared.iterdir()) == []
    # the worker job registered with the scheduler over TLS
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "dask-logs").iterdir())
    registered = re.findall(r"Registered to:\s+(\S+)", logs)
    assert registered and all(a.startswith("tls://") for a in registered), logs[-3000:]
    assert re.search(r"Start worker at:\s+tls://", logs), logs[-3000:]
    # and the work was done, in full
    ds = open_quality(tmp_path / "q" / f"{vol.name}.quality.zarr")
    assert ds["score"].shape == (8,) and np.all(np.isfinite(ds["score"].values))
