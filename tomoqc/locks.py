"""One writer per output: a lock file beside each output, safe on shared file systems.

Two runs of tomoqc that write the same output at the same time would interleave their
temporary files and crash or, worse, mix their results. Every writer therefore holds an
:class:`OutputLock` while it writes: a small file ``.<name>.lock`` beside the output
that says which process writes it (pid, host, start time). A second writer is refused
with one line naming that process; the first one is never disturbed.

A lock whose writer was killed (``kill -9``, a node crash, a SLURM time limit) does not
block the output forever. It is *stale*, and the next writer takes it over, when

- it was made on this host and its process no longer runs (or the pid now belongs to
  another process, started after the lock was made);
- it was made on another host and its heartbeat stopped: the holder touches the lock
  file every ``stale_after / 6`` seconds, and a lock file that nobody touched for
  ``stale_after`` seconds (default :data:`DEFAULT_STALE_AFTER`, or the environment
  variable ``TOMOQC_LOCK_STALE_SECONDS``) is stale.

Notes
-----
The lock file appears with its whole content at once: it is written under a unique
temporary name and hard-linked to the lock name, which fails when a lock exists (and is
atomic on NFS as well as on local file systems). Where hard links are not supported the
lock is created with ``O_CREAT | O_EXCL``.

A stale lock is taken over without a race: the taker renames it to a unique name (only
one process can succeed), checks that what it moved is the very lock it judged stale,
deletes it and then competes for the lock name like any other writer. When the moved
file is a fresh lock made in the meantime by another process, it is put back. A holder
checks at every heartbeat that the lock file is still its own; :attr:`OutputLock.lost`
and :meth:`OutputLock.check` tell a writer before it renames its result into place.

Heartbeats of other hosts are read from the lock file's modification time, compared
with this host's clock: hosts of one cluster must agree on the time to within a small
part of ``stale_after`` (NTP does much better).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tomoqc.errors import InputError, OptionError

__all__ = ["DEFAULT_STALE_AFTER", "LockHolder", "OutputLock", "lock_path", "pid_alive", "read_lock"]

#: Seconds without a heartbeat after which another host's lock counts as stale.
DEFAULT_STALE_AFTER = 180.0

#: Tries to take a lock that keeps changing under us before giving up.
_ATTEMPTS = 50


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _process_start(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), None when unknown."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no such process, no permission, no psutil
        return None


def _host() -> str:
    return socket.gethostname()


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``: ``.<name>.lock`` in the same folder."""
    final = Path(os.path.abspath(output))
    if not final.name:
        raise InputError(final, "cannot lock the root folder; choose an output inside it")
    return final.parent / f".{final.name}.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written in its lock file."""

    pid: int
    host: str
    started: str
    token: str
    process_start: float | None
    #: seconds since the holder last touched the lock file (by this host's clock)
    heartbeat_age: float

    def describe(self) -> str:
        """``tomoqc pid 1234 on host node7 since 2026-01-31T12:00:00+01:00``."""
        return f"tomoqc pid {self.pid} on host {self.host} since {self.started}"


def read_lock(lock_file: str | os.PathLike) -> tuple[LockHolder | None, bytes | None]:
    """Read a lock file.

    Returns
    -------
    holder : LockHolder or None
        None when the file is missing or does not hold a lock record.
    raw : bytes or None
        The file's bytes (None when it is missing), to tell two lock files apart.
    """
    try:
        with open(lock_file, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read(65536)
    except FileNotFoundError:
        return None, None
    except OSError:
        return None, b""
    age = max(0.0, time.time() - st.st_mtime)
    try:
        rec = json.loads(raw.decode("utf-8"))
        holder = LockHolder(pid=int(rec["pid"]), host=str(rec["host"]), started=str(rec["started"]),
                            token=str(rec["token"]),
                            process_start=None if rec.get("process_start") is None else float(rec["process_start"]),
                            heartbeat_age=age)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        # half-written or foreign content: only its age tells whether it is abandoned
        holder = None
    return holder, raw


def _file_age(path: Path) -> float | None:
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except OSError:
        return None


def _stale_after_default() -> float:
    text = os.environ.get("TOMOQC_LOCK_STALE_SECONDS")
    if not text:
        return DEFAULT_STALE_AFTER
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"TOMOQC_LOCK_STALE_SECONDS must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise OptionError(f"TOMOQC_LOCK_STALE_SECONDS must be positive, got {text!r}")
    return value


class OutputLock:
    """Exclusive right to write one output, held by this process.

    Use it as a context manager around everything that writes the output (temporary
    files, the final rename)::

        with OutputLock(final) as lock:
            ...                      # write under a temporary name
            lock.check()             # still ours? then
            os.replace(tmp, final)

    Parameters
    ----------
    output : path-like
        The output to be written (it need not exist).
    lock_file : path-like, optional
        Where the lock lives; default :func:`lock_path` ``(output)``, beside it. An
        output folder that is filled in place (a report) may keep it inside.
    stale_after : float, optional
        Seconds without a heartbeat after which a lock made on another host is stale
        (default: ``TOMOQC_LOCK_STALE_SECONDS`` or :data:`DEFAULT_STALE_AFTER`). The
        heartbeat interval is a sixth of it.

    Raises
    ------
    InputError
        On :meth:`acquire` (entering the ``with`` block) when a live process holds the
        lock: ``"<output>: is being written by tomoqc pid 1234 on host h since ...;
        wait for it or stop it"``; or when the lock file cannot be created.
    """

    def __init__(self, output: str | os.PathLike, *, lock_file: str | os.PathLike | None = None,
                 stale_after: float | None = None):
        self.output = Path(os.path.abspath(output))
        self.lock_file = Path(os.path.abspath(lock_file)) if lock_file is not None else lock_path(output)
        self.stale_after = float(stale_after) if stale_after is not None else _stale_after_default()
        if not self.stale_after > 0:
            raise OptionError(f"stale_after must be positive, got {stale_after}")
        self._token: str | None = None
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._token is not None

    @property
    def lost(self) -> bool:
        """True when another process replaced this lock while it was held."""
        if self._token is not None and not self._lost:
            holder, _ = read_lock(self.lock_file)
            if holder is None or holder.token != self._token:
                self._lost = True
        return self._lost

    def check(self) -> None:
        """Raise :class:`InputError` when the lock was lost (see :attr:`lost`)."""
        if not self.held:
            raise InputError(self.output, "is not locked by this process")
        if self.lost:
            holder, _ = read_lock(self.lock_file)
            who = holder.describe() if holder is not None else "another process"
            raise InputError(self.output, f"this run's lock was taken over by {who}; the output is left to it")

    def acquire(self) -> "OutputLock":
        """Take the lock, taking over a stale one; raise :class:`InputError` when it is held."""
        if self._token is not None:
            raise RuntimeError("OutputLock.acquire called twice")
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(self.output, f"cannot create the folder for its lock file: {err.strerror or err}") from None
        token = uuid.uuid4().hex
        record = json.dumps({
            "pid": os.getpid(),
            "host": _host(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": token,
            "process_start": _process_start(os.getpid()),
        }).encode("utf-8")
        for _ in range(_ATTEMPTS):
            if self._publish(record):
                holder, _ = read_lock(self.lock_file)
                if holder is None or holder.token != token:
                    # a taker put back a live lock it had moved by mistake, over ours: it wins
                    continue
                self._token = token
                self._lost = False
                self._start_heartbeat()
                return self
            holder, raw = read_lock(self.lock_file)
            if raw is None:
                continue  # released just now: try again
            if not self._is_stale(holder):
                raise InputError(self.output, self._busy_message(holder))
            self._take_over(raw)
        raise InputError(self.output, f"could not take its lock {self.lock_file}: other processes keep "
                                      "changing it; try again")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still this process's."""
        if self._token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder, _ = read_lock(self.lock_file)
        if holder is not None and holder.token == self._token:
            try:
                os.unlink(self.lock_file)
            except FileNotFoundError:
                pass
        self._token = None
        self._thread = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "lost" if self._lost else ("held" if self.held else "free")
        return f"OutputLock({str(self.output)!r}, {state})"

    # ------------------------------------------------------------------ internals

    def _busy_message(self, holder: LockHolder | None) -> str:
        if holder is None:
            return (f"is being written by another tomoqc process (its lock file {self.lock_file} is being "
                    "created); wait for it or stop it")
        return f"is being written by {holder.describe()}; wait for it or stop it"

    def _is_stale(self, holder: LockHolder | None) -> bool:
        if holder is None:  # unreadable: abandoned only when nobody touched it for a long time
            age = _file_age(self.lock_file)
            return age is not None and age > self.stale_after
        if holder.host == _host():
            if not pid_alive(holder.pid):
                return True
            if holder.process_start is not None:
                now_start = _process_start(holder.pid)
                # the pid was given to another process after the holder died
                if now_start is not None and abs(now_start - holder.process_start) > 1.0:
                    return True
            return False
        return holder.heartbeat_age > self.stale_after

    def _publish(self, record: bytes) -> bool:
        """Create the lock file with ``record`` in it; False when a lock file exists."""
        tmp = self.lock_file.with_name(f"{self.lock_file.name}.new-{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            raise InputError(self.output, f"cannot create its lock file in {tmp.parent}: "
                                          f"{err.strerror or err}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(record)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.lock_file)
                return True
            except FileExistsError:
                return False
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                    raise InputError(self.output, f"cannot create its lock file {self.lock_file}: "
                                                  f"{err.strerror or err}") from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        # no hard links on this file system: exclusive create, then write
        try:
            fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise InputError(self.output, f"cannot create its lock file {self.lock_file}: "
                                          f"{err.strerror or err}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(record)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, judged: bytes) -> None:
        """Move the stale lock ``judged`` out of the way (or put back a fresh one moved by mistake)."""
        grave = self.lock_file.with_name(f"{self.lock_file.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.lock_file, grave)
        except FileNotFoundError:
            return  # another process moved it first
        except OSError as err:
            raise InputError(self.output, f"cannot take over the stale lock {self.lock_file}: "
                                          f"{err.strerror or err}") from None
        holder, raw = read_lock(grave)
        if raw == judged or raw is None or self._is_stale_file(holder, grave):
            try:
                os.unlink(grave)
            except FileNotFoundError:
                pass
            return
        # a live lock, created after we judged the old one stale: it is not ours to remove
        os.replace(grave, self.lock_file)

    def _is_stale_file(self, holder: LockHolder | None, path: Path) -> bool:
        if holder is None:
            age = _file_age(path)
            return age is not None and age > self.stale_after
        return self._is_stale(holder)

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        interval = self.stale_after / 6.0
        token, lock_file, stop = self._token, self.lock_file, self._stop

        def beat():
            while not stop.wait(interval):
                holder, _ = read_lock(lock_file)
                if holder is None or holder.token != token:
                    self._lost = True
                    return
                try:
                    os.utime(lock_file)
                except OSError:
                    pass  # a file-system hiccup: try again at the next beat

        self._thread = threading.Thread(target=beat, name=f"tomoqc-lock-heartbeat:{lock_file.name}", daemon=True)
        self._thread.start()
