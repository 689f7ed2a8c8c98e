"""A training job warned by SLURM (USR1) checkpoints, is requeued and resumes from its state."""

from __future__ import annotations

import csv
import re
import subprocess
import time

import pytest

from slurm_helpers import SCRIPTS, job_records, pipeline_env, wait_jobs

pytestmark = pytest.mark.slurm

EPOCHS = 6
EPOCH_LINE = re.compile(r"^epoch (\d+):", re.M)


def _log_epochs(path) -> list[int]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def test_requeued_training_resumes_from_its_checkpoint(slurm, tiny_data, tmp_path):
    env = pipeline_env(tmp_path, TOMOQC_DATA=tiny_data["dataset"],
                       TOMOQC_RANK_ARGS=f"--epochs {EPOCHS} --batch-size 1 --steps-per-epoch 3 --crop 64")
    args = subprocess.run(["bash", str(SCRIPTS / "sbatch_args.sh"), "train"], capture_output=True, text=True,
                          env=env, check=True).stdout.split()
    assert "--requeue" in args and any(a.startswith("--signal=B:USR1@") for a in args)
    job = subprocess.run(["sbatch", "--parsable", *args, str(SCRIPTS / "train_rank.sbatch")],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    out = tmp_path / "rank"
    logfile = tmp_path / "logs" / f"tomoqc-rank-{job}.out"

    # wait until the first epoch is complete (its row is in log.csv), then warn the job
    deadline = time.monotonic() + 300
    while 1 not in _log_epochs(out / "log.csv"):
        rec = job_records(job)[0]
        assert rec["JobState"] in ("PENDING", "RUNNING"), (rec, logfile.read_text() if logfile.exists() else "")
        assert time.monotonic() < deadline, "the first epoch did not finish in time"
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)

    rec = wait_jobs([job], timeout=300)[job][0]
    log = logfile.read_text()
    assert rec["JobState"] == "COMPLETED", (rec, log[-3000:])
    assert rec["Restarts"] == "1", rec  # exactly one requeue

    # the log holds both runs (--open-mode=append); split it at the second run's start line
    runs = re.split(r"^tomoqc-slurm: job \S+ \(\S*\) restart ", log, flags=re.M)[1:]
    assert len(runs) == 2, log
    first, second = runs
    assert first.startswith("0 ") and second.startswith("1 ")
    # (SLURM ends the batch script as it requeues the job, so nothing it would print after
    # `scontrol requeue` is sure to reach the log: a CI run under load lost such a line)
    assert "received SIGUSR1" in first and f"requeueing job {job} to resume" in first
    done_before = [int(e) for e in EPOCH_LINE.findall(first)]
    done_after = [int(e) for e in EPOCH_LINE.findall(second)]
    assert done_before and max(done_before) < EPOCHS, "the signal came after the run had finished"
    # the second run resumed from the checkpoint: it went on with the next epoch, not epoch 1
    assert "resuming from the saved state" in second
    assert done_after[0] == max(done_before) + 1 > 1
    assert done_after[-1] == EPOCHS
    # every epoch was logged exactly once over the two runs
    assert _log_epochs(out / "log.csv") == list(range(0, EPOCHS + 1))
    assert (out / "best.keras").is_file()
