"""Crash and concurrency safety of the store: its write lock, owner-tagged temporary files, a kill hook.

**The write lock** (`store_lock`, used as `DatasetStore.write_lock()`): an exclusive `flock` on
`<store>/.write.lock`. The kernel drops a flock when its holder exits, however it exits (SIGKILL, OOM,
power loss of the process), so the lock is never stale and needs no clean-up. The holder writes its pid,
host, purpose and start time into the file, so that whoever waits past its timeout can say who holds it.
It is re-entrant within a thread and excludes the other threads of the process too. On NFS, flock is
emulated with POSIX byte-range locks (Linux >= 2.6.12): keep the store on a filesystem that honours them.

**Temporary files** carry their owner: `temp_name(base)` = `.<base>.<pid>@<host>.<random>.tmp`.
`remove_stale_temporaries(directory)` deletes those whose owner process is gone (same host only: another
host's pid means nothing here, and a live writer's file is never touched), so a build killed mid-write
leaves nothing behind once the next build runs.

**The kill hook** (`kill_point`): with `JSTIP_KILL_AT=<point>` in the environment, the process SIGKILLs
itself the first time it reaches `<point>`; tests use it to crash a build at an exact place (points:
a stage name after its shard result is written but before it is renamed into place -- `ingest`,
`normalize`, `align`, `check`, `plan`, `plan_text`, `dedupe` --, `publish-staged` after the version is
staged and validated, `publish-renamed` after its rename and before it is registered). Unset, it costs
one dictionary lookup.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

KILL_ENV = "JSTIP_KILL_AT"
# How long a writer waits for the store's write lock (and for DuckDB's lock on the catalog) by default.
TIMEOUT_ENV = "JSTIP_STORE_LOCK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


class LockTimeout(TimeoutError):
    """The lock was held by someone else for longer than the timeout; the message names the holder."""


def lock_timeout_s() -> float:
    """The write-lock timeout: $JSTIP_STORE_LOCK_TIMEOUT_S, else 600 s."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds") from None
    if timeout < 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds >= 0")
    return timeout


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "localhost"


# -- the write lock ---------------------------------------------------------------------------------


class _Held:
    """This process's hold on one lock file: a thread lock (re-entrant) and the flocked descriptor."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not recorded who it is)"
    return (f"pid {info.get('pid')} on host {info.get('host')} ({info.get('purpose')}, since "
            f"{info.get('since')})")


def _timeout_message(path: Path, waited: float, what: str | None = None) -> str:
    if what is not None:  # a per-model lock: its holder is training or registering that model
        return (f"{what} is busy: its lock {path} is held by {_holder(path)}. A lock whose holder has exited is "
                f"released by the kernel, so that process is still running: wait for it to finish (a rerun "
                f"then resumes or returns its result), or stop it.")
    return (f"store write lock {path} is held by {_holder(path)}; waited {waited:.0f} s. A lock whose holder "
            f"has exited is released by the kernel, so that process is still running: wait for it to finish, "
            f"or raise {TIMEOUT_ENV}.")


@contextmanager
def store_lock(path: str | Path, timeout_s: float | None = None, purpose: str = "write",
               error: type[LockTimeout] = LockTimeout, what: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock `path` (created if missing) for the block; wait at most `timeout_s` seconds
    (None: `lock_timeout_s()`) for another holder, then raise `error` naming it (and `what` is locked)."""
    path = Path(path)
    timeout_s = lock_timeout_s() if timeout_s is None else timeout_s
    started = time.monotonic()
    with _held_guard:
        held = _held.setdefault(str(path.resolve()), _Held())
    if not held.thread_lock.acquire(timeout=timeout_s):
        raise error(_timeout_message(path, time.monotonic() - started, what))
    try:
        if held.depth == 0:
            held.fd = _flock(path, started, timeout_s, purpose, error, what)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                fd, held.fd = held.fd, None
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)  # closing the last descriptor releases the flock
    finally:
        held.thread_lock.release()


def _flock(path: Path, started: float, timeout_s: float, purpose: str, error: type[LockTimeout],
           what: str | None = None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise error(_timeout_message(path, waited, what))
            time.sleep(min(pause, max(timeout_s - waited, 0.0)))
            pause = min(pause * 2, 0.5)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


# -- owner-tagged temporary files -----------------------------------------------------------------------

_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[0-9a-f]{8}\.tmp$")


def temp_name(base: str) -> str:
    """A unique temporary name for something that will become `base`, tagged with this process."""
    return f".{base}.{os.getpid()}@{_host()}.{uuid.uuid4().hex[:8]}.tmp"


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete this host's temporary files and directories in `directory` whose owner process is gone;
    return what was deleted."""
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    removed = []
    host = _host()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match["host"] != host or process_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# -- the kill hook ----------------------------------------------------------------------------------------


def kill_point(name: str) -> None:
    """SIGKILL this process here when $JSTIP_KILL_AT names this point (a test hook; see the module doc)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
