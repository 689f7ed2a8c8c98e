"""Helpers for the SLURM tests: job queries, running tomoqc, the job scripts' environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
TOMOQC = str(Path(sys.executable).parent / "tomoqc")

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def venv_dir() -> Path:
    """The virtual environment running the tests (its bin/activate is used by the job scripts)."""
    exe = Path(sys.executable)
    for parent in (exe.parent.parent, exe.resolve().parent.parent):
        if (parent / "bin" / "activate").is_file():
            return parent
    return exe.parent.parent




def job_records(job_id: str | int) -> list[dict]:
    """``scontrol show job -o`` as one dict per job (an array gives one per task)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    records = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        rec = {}
        # values may hold spaces only in Command/WorkDir/StdOut paths, which the tests keep free of them
        for token in line.split():
            if "=" in token:
                k, v = token.split("=", 1)
                rec.setdefault(k, v)
        records.append(rec)
    return records


def wait_jobs(job_ids, timeout: float) -> dict[str, list[dict]]:
    """Wait until every job (every task of an array) ended; return their records."""
    deadline = time.monotonic() + timeout
    while True:
        recs = {str(j): job_records(j) for j in job_ids}
        done = all(r and all(x.get("JobState") in TERMINAL for x in r) for r in recs.values())
        if done:
            return recs
        if time.monotonic() > deadline:
            states = {j: [(x.get("JobId"), x.get("JobState"), x.get("Reason")) for x in r] for j, r in recs.items()}
            raise AssertionError(f"jobs still not finished after {timeout:.0f} s: {states}")
        time.sleep(2)


def slurm_time(text: str) -> float:
    """Seconds since the epoch of a SLURM timestamp such as 2026-01-31T12:00:00."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))




def run_tomoqc(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(["nice", "-n", "10", TOMOQC, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, f"tomoqc {' '.join(map(str, args))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def pipeline_env(workdir: Path, **overrides) -> dict:
    """Environment for the job scripts: tiny jobs, the test virtual environment, no GPU."""
    env = dict(os.environ)
    env.update({
        "TOMOQC_WORKDIR": str(workdir),
        "TOMOQC_VENV": str(venv_dir()),
        "TOMOQC_TRAIN_GPUS": "0",
        "TOMOQC_TRAIN_CPUS": "1",
        "TOMOQC_TRAIN_MEM": "2G",
        "TOMOQC_TRAIN_TIME": "00:15:00",
        "TOMOQC_SCORE_CPUS": "1",
        "TOMOQC_SCORE_MEM": "2G",
        "TOMOQC_SCORE_TIME": "00:10:00",
        "TOMOQC_AGGREGATE_MEM": "1G",
        "TOMOQC_SCORE_CLUSTER": "none",
        "TOMOQC_RANK_ARGS": "--epochs 1 --batch-size 1 --steps-per-epoch 2 --crop 64",
        "TOMOQC_FINETUNE_ARGS": "--epochs 1 --batch-size 4 --steps-per-epoch 2 --crop 64",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env
