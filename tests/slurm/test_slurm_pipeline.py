"""The SLURM job scripts and ``tomoqc score --cluster slurm`` on a real one-node SLURM.

Run with ``pytest -m slurm tests/slurm`` (``make test-slurm``); the session fixture starts
the scheduler (see conftest.py).
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time

import numpy as np
import pytest

from slurm_helpers import SCRIPTS, TOMOQC, job_records, pipeline_env, run_tomoqc, slurm_time, wait_jobs

pytestmark = pytest.mark.slurm


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline(slurm, tiny_data, tmp_path_factory):
    """submit_pipeline.sh all: rank -> finetune -> score array (3 volumes) -> aggregate."""
    work = tmp_path_factory.mktemp("pipeline")
    env = pipeline_env(work, TOMOQC_DATA=tiny_data["dataset"], TOMOQC_VOLUMES=tiny_data["listing"])
    proc = subprocess.run(["bash", str(SCRIPTS / "submit_pipeline.sh"), "all"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = dict(line.split("=", 1) for line in proc.stdout.split() if "_job=" in line)
    assert set(ids) == {"rank_job", "finetune_job", "score_job", "aggregate_job"}, proc.stdout
    records = wait_jobs(ids.values(), timeout=480)
    return {"work": work, "ids": ids, "records": records, "env": env}


def _state(records, job_id):
    return [r["JobState"] for r in records[str(job_id)]]


def test_rank_then_finetune_chain_produces_a_model(pipeline):
    ids, recs, work = pipeline["ids"], pipeline["records"], pipeline["work"]
    logs = "\n".join(p.read_text() for p in (work / "logs").glob("tomoqc-*.out"))
    assert _state(recs, ids["rank_job"]) == ["COMPLETED"], logs[-3000:]
    assert _state(recs, ids["finetune_job"]) == ["COMPLETED"], logs[-3000:]
    rank, finetune = recs[ids["rank_job"]][0], recs[ids["finetune_job"]][0]
    # afterok: the finetune job started only once the rank job had ended
    assert slurm_time(finetune["StartTime"]) >= slurm_time(rank["EndTime"])
    rank_model = work / "rank" / "best.keras"
    model = work / "finetune" / "best.keras"
    assert rank_model.stat().st_size > 1_000_000 and model.stat().st_size > 1_000_000
    import json

    card = json.loads((work / "finetune" / "model_card.json").read_text())
    assert card["init"] == str(rank_model)  # finetuned from the rank job's model
    assert card["weights_sha256"] == _sha256(model)


def test_array_scores_each_listed_volume(pipeline, tiny_data):
    from tomoqc.pipeline import open_quality

    ids, recs, work = pipeline["ids"], pipeline["records"], pipeline["work"]
    tasks = recs[ids["score_job"]]
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [1, 2, 3]
    assert all(t["JobState"] == "COMPLETED" for t in tasks), tasks
    # afterok on the finetune job; the array used that job's model
    finetune = recs[ids["finetune_job"]][0]
    assert min(slurm_time(t["StartTime"]) for t in tasks) >= slurm_time(finetune["EndTime"])
    model_sha = _sha256(work / "finetune" / "best.keras")
    for i, vol in enumerate(tiny_data["volumes"], start=1):
        log = work / "logs" / f"tomoqc-score-{ids['score_job']}_{i}.out"  # %A_%a logs
        assert log.is_file() and vol.name in log.read_text()
        ds = open_quality(work / "quality" / f"{vol.name}.quality.zarr")
        score = ds["score"].values
        assert score.shape == (8,)
        assert np.all(np.isfinite(score)) and np.all((score >= 1) & (score <= 5))
        assert ds.attrs["model_sha256"] == model_sha
        assert ds.attrs["input"] == str(vol)


def test_aggregate_job_writes_the_report(pipeline, tiny_data):
    import csv

    from tomoqc.pipeline import open_quality

    ids, recs, work = pipeline["ids"], pipeline["records"], pipeline["work"]
    assert _state(recs, ids["aggregate_job"]) == ["COMPLETED"]
    agg = recs[ids["aggregate_job"]][0]
    assert slurm_time(agg["StartTime"]) >= max(slurm_time(t["EndTime"]) for t in recs[ids["score_job"]])
    with open(work / "report" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == sorted(str(v) for v in tiny_data["volumes"])
    for row in rows:
        ds = open_quality(row["output"])
        assert float(row["median_score"]) == pytest.approx(float(np.median(ds["score"].values)), abs=1e-3)
    assert (work / "report" / "report.json").is_file()
    assert any(p.suffix == ".png" for p in (work / "report").iterdir())


def _cluster_yaml(tmp_path, **extra) -> str:
    lines = {"cores": 1, "memory": "2GB", "processes": 1, "walltime": "00:10:00", "interface": "lo",
             "max_jobs": 1, "dashboard_address": ":0", "log_directory": str(tmp_path / "dask-logs")}
    lines.update(extra)
    path = tmp_path / "cluster.yaml"
    path.write_text("".join(f"{k}: {v!r}\n" if isinstance(v, str) else f"{k}: {v}\n" for k, v in lines.items()))
    return str(path)


def _worker_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "tomoqc-worker", "-o", "%i %t"], capture_output=True, text=True)
    return out.stdout.split("\n") if out.stdout.strip() else []


def _jobcomp_workers(slurm) -> int:
    text = slurm.jobcomp.read_text() if slurm.jobcomp.exists() else ""
    return text.count("Name=tomoqc-worker ")


def test_slurm_cluster_scores_equal_local_scores(slurm, pipeline, tiny_data, tmp_path):
    from tomoqc.pipeline import open_quality

    # the model trained by the pipeline above: its scores vary between slices, unlike an
    # untrained network's, so that equal outputs mean something
    model = pipeline["work"] / "finetune" / "best.keras"
    vols = tiny_data["volumes"]
    config = _cluster_yaml(tmp_path, max_jobs=2)
    before = _jobcomp_workers(slurm)
    run_tomoqc("score", *vols, "--model", model, "--out", tmp_path / "slurm", "--cluster", "slurm",
               "--cluster-config", config, "--chunk-slices", 4, "--quiet")
    run_tomoqc("score", *vols, "--model", model, "--out", tmp_path / "local", "--cluster", "local",
               "--workers", 1, "--chunk-slices", 4, "--quiet")
    values = []
    for vol in vols:
        a = open_quality(tmp_path / "slurm" / f"{vol.name}.quality.zarr")
        b = open_quality(tmp_path / "local" / f"{vol.name}.quality.zarr")
        # equal to float32 rounding: a SLURM worker has 1 core and the local one the machine's
        # threads, and TensorFlow's CPU kernels sum in an order that depends on the thread
        # count (a score of 3.57 once differed by 1.3e-5); any real difference - another
        # slice, chunk or model - is orders of magnitude larger
        for name in ("score", "severity", "patch_score"):
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-4, err_msg=name)
        values.append(np.concatenate([a["score"].values, a["severity"].values.ravel()]))
    allv = np.concatenate(values)  # the streak severity is NaN for a network without measured terms
    assert np.nanmax(allv) - np.nanmin(allv) > 0.01, "constant outputs: the comparison would prove nothing"
    # the work really ran in SLURM jobs, and every worker job is gone again
    deadline = time.monotonic() + 30
    while _worker_jobs() and time.monotonic() < deadline:
        time.sleep(1)
    assert _worker_jobs() == []
    assert _jobcomp_workers(slurm) > before
    assert any((tmp_path / "dask-logs").iterdir())


def test_ctrl_c_cancels_the_worker_jobs(slurm, tiny_data, tmp_path):
    vol = tmp_path / "long.zarr"
    run_tomoqc("example", vol, "--slices", 48, "--size", 224, "--no-progress")
    config = _cluster_yaml(tmp_path)
    proc = subprocess.Popen([TOMOQC, "score", str(vol), "--out", str(tmp_path / "q"), "--cluster", "slurm",
                             "--cluster-config", config, "--chunk-slices", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a shell without job control starts background jobs with SIGINT
                            # ignored; give the child the default disposition, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(j.endswith(" R") for j in _worker_jobs()):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no worker job started"
            time.sleep(0.3)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    deadline = time.monotonic() + 30
    while _worker_jobs() and time.monotonic() < deadline:
        time.sleep(1)
    assert _worker_jobs() == [], "worker jobs left behind after Ctrl-C"
    assert not (tmp_path / "q" / "long.zarr.quality.zarr").exists()  # nothing half-written under the final name


def test_train_segment_job_trains_is_requeued_and_resumes(slurm, tiny_data, tmp_path):
    """train_segment.sbatch trains D-LinkNet on the dataset's phantom labels; warned by SLURM
    (USR1) it saves its state, is requeued, resumes and ends with every epoch logged once."""
    import csv
    import json
    import re

    epochs = 3
    env = pipeline_env(tmp_path, TOMOQC_DATA=tiny_data["dataset"],
                       TOMOQC_SEGMENT_ARGS=f"--epochs {epochs} --steps-per-epoch 25 --batch-size 2 --crop 64 "
                                           "--width 0.125 --classes 3")
    args = subprocess.run(["bash", str(SCRIPTS / "sbatch_args.sh"), "train"], capture_output=True, text=True,
                          env=env, check=True).stdout.split()
    job = subprocess.run(["sbatch", "--parsable", *args, str(SCRIPTS / "train_segment.sbatch")],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    out = tmp_path / "segment"
    logfile = tmp_path / "logs" / f"tomoqc-segment-{job}.out"

    def logged():
        if not (out / "log.csv").exists():
            return []
        with open(out / "log.csv", newline="") as fh:
            return [int(r["epoch"]) for r in csv.DictReader(fh)]

    deadline = time.monotonic() + 300
    while 1 not in logged():
        rec = job_records(job)[0]
        assert rec["JobState"] in ("PENDING", "RUNNING"), (rec, logfile.read_text() if logfile.exists() else "")
        assert time.monotonic() < deadline, "the first epoch did not finish in time"
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    rec = wait_jobs([job], timeout=300)[job][0]
    log = logfile.read_text()
    assert rec["JobState"] == "COMPLETED", (rec, log[-3000:])
    assert rec["Restarts"] == "1", rec
    runs = re.split(r"^tomoqc-slurm: job \S+ \(\S*\) restart ", log, flags=re.M)[1:]
    assert len(runs) == 2, log
    assert "received SIGUSR1" in runs[0] and "resuming from the saved state" in runs[1]
    assert logged() == list(range(epochs + 1))
    for f in ("best.keras", "best.json", "model_card.json", "curves.png"):
        assert (out / f).is_file(), f
    card = json.loads((out / "model_card.json").read_text())
    assert card["kind"] == "dlinknet" and card["n_classes"] == 3
    assert card["data"]["dataset"]["dir"] == str(tiny_data["dataset"])
    assert card["weights_sha256"] == _sha256(out / "best.keras")


def test_slurm_client_runs_tasks_in_jobs_and_cancels_them(slurm, tmp_path):
    import os

    from tomoqc.slurm import slurm_client

    options = {"cores": 1, "memory": "1GB", "interface": "lo", "max_jobs": 1, "walltime": "00:05:00",
               "dashboard_address": ":0", "log_directory": str(tmp_path / "logs")}
    with slurm_client(options) as client:
        job = client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=120)
        assert job is not None and job.isdigit()  # the task ran inside a SLURM job
        assert job_records(job)[0]["JobName"] == "tomoqc-worker"
    deadline = time.monotonic() + 30
    while job_records(job)[0]["JobState"] not in ("CANCELLED", "COMPLETED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_records(job)[0]["JobState"] in ("CANCELLED", "COMPLETED")
    assert _worker_jobs() == []
