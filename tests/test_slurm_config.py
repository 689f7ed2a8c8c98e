"""SLURM options: YAML files, validation, CLI merging, the worker job script; no SLURM needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tomoqc.errors import InputError, OptionError
from tomoqc.slurm import (
    DEFAULTS,
    OPTIONS,
    load_cluster_config,
    make_slurm_cluster,
    max_jobs_for,
    slurm_options_from_cli,
    validate_slurm_options,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"


def write(tmp_path, text, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_values_are_read_and_defaults_filled(tmp_path):
    path = write(tmp_path, """
partition: gpu          # alias of queue
account: proj-42
walltime: "02:30:00"
cores: 8
memory: 32GB
processes: 1
gpus: 1
max_jobs: 6
job_extra_directives: ["--qos=high", "--constraint=a100"]
job_script_prologue:
  - module load cuda
""")
    opts = load_cluster_config(path)
    assert set(opts) == set(OPTIONS)
    assert opts["queue"] == "gpu" and opts["account"] == "proj-42"
    assert opts["walltime"] == "02:30:00" and opts["cores"] == 8 and opts["memory"] == "32GB"
    assert opts["gpus"] == 1 and opts["max_jobs"] == 6
    assert opts["job_extra_directives"] == ["--qos=high", "--constraint=a100"]
    assert opts["job_script_prologue"] == ["module load cuda"]
    assert opts["min_jobs"] == DEFAULTS["min_jobs"] == 0
    assert opts["interface"] is None


@pytest.mark.parametrize("text", [
    "slurm:\n  queue: batch\n  local-directory: /scratch\n  cores: 4\n",
    "jobqueue:\n  slurm:\n    queue: batch\n    local_directory: /scratch\n    cores: 4\n",
    "queue: batch\nlocal-directory: /scratch\ncores: 4\n",
])
def test_nested_and_hyphenated_forms_are_the_same(tmp_path, text):
    opts = load_cluster_config(write(tmp_path, text))
    assert (opts["queue"], opts["local_directory"], opts["cores"]) == ("batch", "/scratch", 4)


@pytest.mark.parametrize("text, words", [
    ("cores: 4\nqueu: batch\n", ["unknown option 'queu'", "did you mean 'queue'"]),
    ("cores: four\n", ["cores", "integer", "'four'"]),
    ("cores: 0\n", ["cores", ">= 1"]),
    ("cores: 2\nprocesses: 4\n", ["processes (4) cannot exceed cores (2)"]),
    ("walltime: 2 hours\n", ["walltime", "'2 hours'", "HH:MM:SS"]),
    ("memory: lots\n", ["memory", "'lots'"]),
    ("memory: 512\n", ["memory", "less than 1 MiB"]),
    ("gpus: 2\n", ["request 1 GPU per job"]),
    ("gpus: 1\ncores: 4\nprocesses: 2\n", ["processes must be 1"]),
    ("min_jobs: 5\nmax_jobs: 2\n", ["min_jobs (5) cannot exceed max_jobs (2)"]),
    ("job_extra_directives: qos=high\n", ["job_extra_directives", "sbatch option"]),
    ("interface: no-such-nic0\n", ["interface", "no-such-nic0", "available"]),
    ("- queue\n- batch\n", ["expected a mapping", "list"]),
    ("", ["is empty"]),
    ("queue: [unclosed\n", ["not valid YAML", "line"]),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_cluster_config(path)
    assert info.value.path == str(path)
    for word in words:
        assert word in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_cluster_config(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="is a folder"):
        load_cluster_config(tmp_path)


def test_cli_values_win_over_the_file_and_none_keeps_it(tmp_path):
    path = write(tmp_path, "queue: batch\ncores: 4\nmemory: 8GB\nmax_jobs: 3\n")
    opts = slurm_options_from_cli(path, cores=2, memory=None, queue="short")
    assert (opts["queue"], opts["cores"], opts["memory"], opts["max_jobs"]) == ("short", 2, "8GB", 3)
    assert slurm_options_from_cli(None)["cores"] == DEFAULTS["cores"]
    with pytest.raises(OptionError, match="walltime"):  # a bad CLI value is an option error
        slurm_options_from_cli(path, walltime="soon")


def test_number_of_jobs_follows_the_chunks():
    opts = validate_slurm_options({"max_jobs": 8, "processes": 2, "cores": 2})
    assert max_jobs_for(opts, 5) == 3      # ceil(5 chunks / 2 workers per job)
    assert max_jobs_for(opts, 100) == 8    # capped by max_jobs
    assert max_jobs_for(opts, 1) == 1
    assert max_jobs_for(opts) == 8         # unknown number of chunks
    assert max_jobs_for(dict(opts, n_chunks=4)) == 2


def test_worker_job_script_carries_the_options(tmp_path):
    opts = {"queue": "gpu", "account": "proj", "walltime": "02:00:00", "cores": 4, "memory": "16GB",
            "processes": 1, "gpus": 1, "gpu_type": "a100", "interface": "lo", "local_directory": str(tmp_path),
            "log_directory": str(tmp_path / "logs"), "job_extra_directives": ["--qos=high"],
            "job_script_prologue": ["module load cuda"], "dashboard_address": ":0"}
    cluster = make_slurm_cluster(opts)
    try:
        script = cluster.job_script()
        assert len(cluster.workers) == 0  # adaptive from zero: nothing submitted yet
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("-p gpu", "-A proj", "-t 02:00:00", "--cpus-per-task=4", "--gres=gpu:a100:1",
                      "--qos=high"):
        assert f"#SBATCH {directive}" in lines, (directive, script)
    assert any(line.startswith(f"#SBATCH -o {tmp_path / 'logs'}") for line in lines)
    assert "module load cuda" in lines
    assert "export TF_FORCE_GPU_ALLOW_GROWTH=true" in lines
    assert "export TOMOQC_TF_THREADS=4" in lines and "export OMP_NUM_THREADS=4" in lines  # 4 cores, 1 process
    launch = lines[-1]
    assert launch.startswith(sys.executable + " -m distributed.cli.dask_worker")
    assert "--interface lo" in launch and f"--local-directory {tmp_path}" in launch
    assert (tmp_path / "logs").is_dir()


def test_importing_dask_jobqueue_keeps_ctrl_c_an_interrupt():
    """dask_jobqueue's import swaps SIGINT for sys.exit(); tomoqc puts the handler back."""
    code = ("import signal; before = signal.getsignal(signal.SIGINT);"
            "from tomoqc.slurm import _import_slurm_cluster; _import_slurm_cluster();"
            "import sys; sys.exit(0 if signal.getsignal(signal.SIGINT) is before else 5)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_score_cli_reports_a_bad_cluster_config_in_one_line(tmp_path, capsys):
    from tomoqc.cli import main

    path = write(tmp_path, "cores: 2\nprocesses: 3\n")
    rc = main(["score", str(tmp_path / "vol.zarr"), "--cluster", "slurm", "--cluster-config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"tomoqc: error: {path}: processes (3) cannot exceed cores (2): "
                   "each worker process needs at least one core"]


def test_submit_pipeline_dry_run_uses_config_settings(tmp_path):
    """config.sh settings (here from the environment) reach every sbatch command, chained."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("reference\n")
    vols = []
    for name in ("a.zarr", "b.zarr", "c.npy"):
        (tmp_path / name).mkdir() if name.endswith(".zarr") else (tmp_path / name).write_bytes(b"")
        vols.append(name)
    (tmp_path / "volumes.txt").write_text("# three\n" + "\n".join(vols) + "\n\n")
    env = dict(os.environ, TOMOQC_WORKDIR=str(tmp_path / "run"), TOMOQC_DATA=str(data),
               TOMOQC_VOLUMES=str(tmp_path / "volumes.txt"), TOMOQC_PARTITION="gpu", TOMOQC_ACCOUNT="proj",
               TOMOQC_TRAIN_GPUS="2", TOMOQC_GPU_TYPE="a100", TOMOQC_TRAIN_TIME="12:00:00",
               TOMOQC_ARRAY_PARALLEL="2", TOMOQC_SIGNAL_SECS="600")
    proc = subprocess.run(["bash", str(SCRIPTS / "submit_pipeline.sh"), "all", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["rank_job=DRYRUN_rank", "finetune_job=DRYRUN_finetune",
                                   "score_job=DRYRUN_score", "aggregate_job=DRYRUN_aggregate"]
    cmds = [line[2:].split() for line in proc.stderr.splitlines() if line.startswith("# sbatch")]
    assert [c[-1] for c in cmds] == [str(SCRIPTS / s) for s in ("train_rank.sbatch", "train_finetune.sbatch",
                                                                  "score_array.sbatch", "aggregate.sbatch")]
    rank, finetune, score, aggregate = cmds
    for c in cmds:
        assert "--partition=gpu" in c and "--account=proj" in c
    for c in (rank, finetune):
        assert {"--gres=gpu:a100:2", "--time=12:00:00", "--requeue", "--signal=B:USR1@600"} <= set(c)
    assert "--dependency=afterok:DRYRUN_rank" in finetune
    assert "--array=1-3%2" in score and "--dependency=afterok:DRYRUN_finetune" in score
    assert not any(a.startswith("--gres") for a in score)
    assert "--dependency=afterok:DRYRUN_score" in aggregate
    assert any(a.endswith("%x-%A_%a.out") for a in score)


def test_submit_pipeline_refuses_volumes_that_would_share_an_output(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub / "scan.zarr").mkdir(parents=True)
    (tmp_path / "volumes.txt").write_text("x/scan.zarr\ny/scan.zarr\n")
    env = dict(os.environ, TOMOQC_WORKDIR=str(tmp_path / "run"), TOMOQC_VOLUMES=str(tmp_path / "volumes.txt"))
    proc = subprocess.run(["bash", str(SCRIPTS / "submit_pipeline.sh"), "score", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "would both write" in proc.stderr and "scan.zarr.quality.zarr" in proc.stderr


def test_example_cluster_yaml_is_valid():
    opts = load_cluster_config(SCRIPTS / "cluster.yaml")
    assert opts["queue"] == "batch" and opts["cores"] == 4 and opts["gpus"] == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to another user")
def test_start_slurm_refuses_to_run_without_root():
    """Exit code 77 (what the SLURM tests turn into a loud skip), before installing anything."""
    import tempfile

    state = tempfile.mkdtemp(prefix="tomoqc-slurm-nonroot.")
    os.chmod(state, 0o777)
    try:
        proc = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(REPO / "tests" / "slurm" / "start_slurm.sh"),
                               state], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["rm", "-rf", state], check=False)
    assert proc.returncode == 77, proc.stderr
    assert "must run as root" in proc.stderr and proc.stdout == ""
