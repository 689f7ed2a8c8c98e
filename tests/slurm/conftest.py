"""A real one-node SLURM for the tests in this folder, and tiny data to run jobs on.

The session fixture ``slurm`` starts slurmctld, slurmd and munge with
``tests/slurm/start_slurm.sh`` (installing Debian's slurm-wlm and munge when missing)
and stops them with ``stop_slurm.sh`` at the end. Where SLURM cannot be installed or
run (not root, no apt-get) every test here is skipped, with a warning on stderr; any
other failure to start is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slurm_helpers import HERE, run_tomoqc


@dataclass
class Slurm:
    state: Path
    env: dict = field(default_factory=dict)

    @property
    def jobcomp(self) -> Path:
        return self.state / "log" / "jobcomp.log"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    try:
        proc = subprocess.run(["bash", str(HERE / "start_slurm.sh"), str(state)], capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("start_slurm.sh did not finish in 15 minutes")
    if proc.returncode == 77:
        reason = (proc.stderr.strip().splitlines() or ["SLURM cannot be installed here"])[-1]
        sys.stderr.write(f"\nWARNING: SKIPPING THE SLURM TESTS: {reason}\n")
        warnings.warn(f"SLURM tests skipped: {reason}", stacklevel=1)
        pytest.skip(f"SLURM cannot run here: {reason}")
    if proc.returncode != 0:
        pytest.fail(f"start_slurm.sh failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    env = dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, flags=re.M))
    assert "SLURM_CONF" in env, proc.stdout
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # sbatch/squeue/scontrol run by the tests and by dask-jobqueue
    try:
        yield Slurm(state=state, env=env)
    finally:
        subprocess.run(["bash", str(HERE / "stop_slurm.sh"), str(state)], capture_output=True, text=True,
                       timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A labelled 4-reference dataset (128 px slices) and three 8-slice 224 px volumes."""
    root = tmp_path_factory.mktemp("tiny")
    run_tomoqc("dataset", "build", "--references", 4, "--domain", "image", "--size", 128, "--no-mixtures",
               "--workers", 1, "--no-progress", "--seed", 3, "--out", root / "dataset")
    run_tomoqc("label", root / "dataset")
    vols = []
    for i in (1, 2, 3):
        v = root / f"vol{i}.zarr"
        run_tomoqc("example", v, "--slices", 8, "--size", 224, "--seed", i, "--no-progress")
        vols.append(v)
    listing = root / "volumes.txt"
    # one absolute path, two relative to the list, a comment and a blank line
    listing.write_text(f"# tiny test volumes\n{vols[0]}\n\nvol2.zarr\n  vol3.zarr  \n")
    return {"root": root, "dataset": root / "dataset", "volumes": vols, "listing": listing}
