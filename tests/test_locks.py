"""One writer per output (tomoqc.locks), with real processes holding, dying and racing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tomoqc.errors import InputError
from tomoqc.locks import OutputLock, lock_path, read_lock

# A process that takes the lock of argv[1] (lock file argv[3] when given) and holds it until its stdin closes. With
# FAKE_HOST set it says it runs on that host (as a run on another node of a shared file
# system would); its heartbeat is real.
HOLDER = r"""
import os, socket, sys
if os.environ.get("FAKE_HOST"):
    socket.gethostname = lambda: os.environ["FAKE_HOST"]
from tomoqc.locks import OutputLock
lock_file = sys.argv[3] if len(sys.argv) > 3 else None
lock = OutputLock(sys.argv[1], stale_after=float(sys.argv[2]), lock_file=lock_file).acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""

# A process that waits for the file argv[2], then tries to take the lock of argv[1]; the
# winner holds it until the file argv[3] exists.
RACER = r"""
import os, sys, time
from tomoqc.errors import InputError
from tomoqc.locks import OutputLock
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
try:
    with OutputLock(sys.argv[1]):
        print("won", flush=True)
        while not os.path.exists(sys.argv[3]):
            time.sleep(0.01)
except InputError as err:
    print("refused", err, flush=True)
"""


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def _start_holder(output, stale_after=60.0, lock_file=None, **env):
    extra = [] if lock_file is None else [str(lock_file)]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(output), str(stale_after), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_lock_file_names_this_process_and_goes_away_on_release(tmp_path):
    out = tmp_path / "vol.quality.zarr"
    with OutputLock(out) as lock:
        assert lock.held and not lock.lost
        holder, _ = read_lock(lock_path(out))
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
        assert lock_path(out) == tmp_path / ".vol.quality.zarr.lock"
    assert not lock_path(out).exists() and not lock.held
    assert sorted(os.listdir(tmp_path)) == []  # no temporaries left either


def test_held_lock_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out.zarr"
    proc = _start_holder(out)
    try:
        with pytest.raises(InputError) as info:
            OutputLock(out).acquire()
        msg = str(info.value)
        assert msg.startswith(f"{out}: is being written by tomoqc pid {proc.pid} on host {socket.gethostname()} since ")
        assert msg.endswith("; wait for it or stop it")
        assert "\n" not in msg
        # the holder's lock is untouched and still its own
        holder, _ = read_lock(lock_path(out))
        assert holder.pid == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not lock_path(out).exists()  # released by its holder on the way out


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "out.zarr"
    proc = _start_holder(out)
    _kill(proc)
    assert read_lock(lock_path(out))[0].pid == proc.pid  # left behind by the killed run
    with OutputLock(out):
        assert read_lock(lock_path(out))[0].pid == os.getpid()
    assert not lock_path(out).exists()


def test_pid_reused_by_another_process_does_not_keep_the_lock(tmp_path):
    """A lock whose pid now belongs to a process started later (here: this one) is stale."""
    out = tmp_path / "out.zarr"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2000-01-01T00:00:00+00:00",
              "token": "dead-run", "process_start": 946684800.0}
    lock_path(out).write_text(json.dumps(record))
    with OutputLock(out):
        assert read_lock(lock_path(out))[0].token != "dead-run"


def test_other_host_lock_is_refused_while_its_heartbeat_runs_and_taken_over_when_it_stops(tmp_path):
    out = tmp_path / "out.zarr"
    stale = 2.0
    proc = _start_holder(out, stale_after=stale, FAKE_HOST="node-b")
    try:
        # longer than stale_after: only the heartbeat keeps this lock fresh
        time.sleep(stale + 1.5)
        with pytest.raises(InputError, match=f"pid {proc.pid} on host node-b since"):
            OutputLock(out, stale_after=stale).acquire()
        _kill(proc)  # the "node" dies; its pid means nothing on this host
        with pytest.raises(InputError, match="host node-b"):
            OutputLock(out, stale_after=stale).acquire()
        time.sleep(stale + 1.0)  # no heartbeat for longer than stale_after
        with OutputLock(out, stale_after=stale):
            assert read_lock(lock_path(out))[0].host == socket.gethostname()
    finally:
        if proc.poll() is None:
            _kill(proc)
    assert not lock_path(out).exists()
    assert not [p for p in os.listdir(tmp_path) if ".stale-" in p or ".new-" in p]


def _race(out, tmp_path, n, tag):
    go, done = tmp_path / f"go-{tag}", tmp_path / f"done-{tag}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(go), str(done)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(n)]
    try:
        time.sleep(1.0)  # let every racer start and wait for the signal
        go.touch()
        deadline = time.monotonic() + 120
        # every loser exits at once; the winner waits for `done`
        while sum(p.poll() is not None for p in procs) < n - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        done.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [o.strip() for o, _ in results]
    assert all(p.returncode == 0 for p in procs), [e for _, e in results]
    return outs


@pytest.mark.parametrize("stale_lock", [False, True], ids=["no-lock", "stale-lock"])
def test_concurrent_writers_exactly_one_wins(tmp_path, stale_lock):
    out = tmp_path / "out.zarr"
    for round_ in range(2):
        if stale_lock:
            _kill(_start_holder(out))  # a killed run's lock that every racer sees as stale
            assert lock_path(out).exists()
        outs = _race(out, tmp_path, 6, round_)
        winners = [o for o in outs if o == "won"]
        assert len(winners) == 1, outs
        assert all(o.startswith("refused") and "is being written by tomoqc pid" in o for o in outs if o != "won"), outs
        assert not lock_path(out).exists()
    assert not [p for p in os.listdir(tmp_path) if ".stale-" in p or ".new-" in p]


def test_a_lock_taken_over_under_a_holder_is_noticed(tmp_path):
    out = tmp_path / "out.zarr"
    lock = OutputLock(out, stale_after=0.6).acquire()
    try:
        before = os.stat(lock_path(out)).st_mtime_ns
        time.sleep(0.5)  # a few heartbeats
        assert os.stat(lock_path(out)).st_mtime_ns > before
        # what a taker on another host does once it judged the lock stale
        other = {"pid": 99999, "host": "node-c", "started": "now", "token": "other", "process_start": None}
        tmp = tmp_path / "other.lock"
        tmp.write_text(json.dumps(other))
        os.replace(tmp, lock_path(out))
        assert lock.lost
        with pytest.raises(InputError, match="taken over by tomoqc pid 99999 on host node-c"):
            lock.check()
    finally:
        lock.release()
    assert read_lock(lock_path(out))[0].token == "other"  # the new holder's lock is left alone


def test_write_zarr_refuses_an_output_another_process_writes(tmp_path):
    from tomoqc.io import write_zarr

    out = tmp_path / "copy.zarr"
    proc = _start_holder(out)
    try:
        with pytest.raises(InputError, match=f"^{out}: is being written by tomoqc pid {proc.pid} "):
            write_zarr(np.zeros((2, 8, 8), np.float32), out, progress=False)
        assert sorted(os.listdir(tmp_path)) == [".copy.zarr.lock"]  # nothing written, not even a temporary
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # once the writer is gone, the output can be written
    write_zarr(np.ones((2, 8, 8), np.float32), out, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["copy.zarr"]


def test_a_killed_writers_temporaries_are_cleaned_by_the_next_writer(tmp_path):
    """Temporaries of a run killed on any host are removed once its lock is taken over."""
    from tomoqc.io import write_zarr

    out = tmp_path / "copy.zarr"
    proc = _start_holder(out)
    left = tmp_path / ".copy.zarr.tmp-4194303"  # a pid that may well be alive: the lock decides, not the pid
    left.mkdir()
    _kill(proc)
    write_zarr(np.ones((2, 8, 8), np.float32), out, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["copy.zarr"]


def test_report_refuses_a_folder_another_process_writes(tmp_path):
    import xarray as xr

    from tomoqc.report import REPORT_LOCK, report

    rep = tmp_path / "rep"
    rep.mkdir()
    proc = _start_holder(rep, lock_file=rep / REPORT_LOCK)
    n = 4
    ds = xr.Dataset(
        {"score": (("z",), np.full(n, 4.0, np.float32)), "flag": (("z",), np.zeros(n, np.int8)),
         "valid_fraction": (("z",), np.ones(n, np.float32)),
         "patch_score": (("z", "py", "px"), np.full((n, 1, 1), 4.0, np.float32)),
         "severity": (("z", "distortion"), np.zeros((n, 1), np.float32))},
        coords={"z": np.arange(n), "distortion": ["noise"]}, attrs={"complete": True, "input": "", "axis": "z"})
    try:
        with pytest.raises(InputError, match=f"^{rep}: is being written by tomoqc pid {proc.pid} "):
            report(ds, rep, plots=False)
        assert sorted(os.listdir(rep)) == [REPORT_LOCK]  # nothing written
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    report(ds, rep, plots=False)  # the folder is free again
    assert sorted(os.listdir(rep)) == ["index.html", "report.csv", "report.json"]


def test_a_taker_puts_back_a_live_lock_it_moved_by_mistake(tmp_path):
    """The race a rename-based takeover must survive: between judging a lock stale and moving
    it, another process took the stale lock over and holds a fresh one."""
    out = tmp_path / "out.zarr"
    _kill(_start_holder(out))
    taker = OutputLock(out)
    _, judged = read_lock(lock_path(out))  # what the slow taker judged stale
    proc = _start_holder(out)  # meanwhile a faster process took it over
    try:
        taker._take_over(judged)  # the slow taker moves what is there now
        holder, _ = read_lock(lock_path(out))
        assert holder is not None and holder.pid == proc.pid  # given back to its live holder
        with pytest.raises(InputError, match=f"pid {proc.pid} "):
            taker.acquire()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not lock_path(out).exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_unreadable_lock_file_is_busy_while_young_and_stale_when_old(tmp_path):
    out = tmp_path / "out.zarr"
    lock_path(out).write_bytes(b"")  # e.g. a lock file still being written by O_EXCL creation
    with pytest.raises(InputError, match="is being written by another tomoqc process"):
        OutputLock(out, stale_after=30).acquire()
    old = time.time() - 60
    os.utime(lock_path(out), (old, old))
    with OutputLock(out, stale_after=30):
        assert read_lock(lock_path(out))[0].pid == os.getpid()


def test_labelling_refuses_a_dataset_another_process_writes(tmp_path):
    from tomoqc.labels import project_dataset

    ds = tmp_path / "ds"
    ds.mkdir()
    manifest = ds / "manifest.csv"
    manifest.write_text("file,reference,kind,level\nimg.npy,r0,none,0\n")
    before = manifest.read_bytes()
    proc = _start_holder(ds)  # e.g. `tomoqc dataset build --overwrite` of the same folder
    try:
        with pytest.raises(InputError, match=f"^{ds}: is being written by tomoqc pid {proc.pid} "):
            project_dataset(ds, progress=False)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert manifest.read_bytes() == before and sorted(os.listdir(ds)) == ["manifest.csv"]
