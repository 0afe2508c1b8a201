"""Files known by their content: sha256 of a file, opening a file confined to allowed roots without a race,
and a cache of file hashes keyed by what `stat` says, so unchanged files are not read again.

**Confined open** (`open_confined`): the file that is checked is the file that is read. The path is opened
once; the opened handle must be a regular file, and where the kernel says that handle's file lies
(/proc/self/fd/N on Linux; elsewhere the path's real location, which must name the same device and
inode as the handle) must be under an allowed root. Whoever swaps the file, or a directory above it, for
a symlink to elsewhere around the check gets either the inside file or a refusal, never the outside one:
the caller reads from the handle, not the name.
A FIFO or device is refused without blocking (opened with O_NONBLOCK, then checked).

**The hash cache** (`FileHashes`): content identity must not trust paths, sizes or mtimes, but reading
38k hours of audio on every nightly run would cost hours. Like git's index, a cached hash is reused only
when (device, inode, size, mtime_ns, ctime_ns) are all unchanged; the kernel sets ctime on every write,
truncate, chmod and utime -- a program cannot set it back -- so writing new bytes and restoring the mtime
still invalidates the entry, while `touch` and `mv` only cost a re-read (the content, hence every id, is
unchanged). Entries whose ctime or mtime is less than `RACY_S` old when hashed are not stored (a write
in the same clock tick as the hash would otherwise leave an identical stat: git's "racy clean" case).
The cache is an optimisation only: delete it and the next build re-reads every file and finds the same ids.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jstip.storage.lock import temp_name

_BLOCK = 1 << 20
# A hash whose file changed less than this long before it was taken is not cached (see the module doc).
RACY_S = 2.0


class ConfinementError(OSError):
    """The path resolves outside every allowed root, or is no longer the file that was opened."""


class NotARegularFileError(OSError):
    """The path names a directory, FIFO, socket or device: nothing to hash or decode."""


def sha256_fd(fd: int) -> tuple[int, str]:
    """(bytes, sha256 hex) of the whole file behind `fd`, read from its start; the offset is left at the end."""
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        block = os.read(fd, _BLOCK)
        if not block:
            return size, digest.hexdigest()
        digest.update(block)
        size += len(block)


def sha256_file(path: str | Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def _under(real: str, roots: Sequence[str]) -> bool:
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _opened_path(fd: int) -> str | None:
    """Where the kernel says the opened file lies (Linux: /proc/self/fd), whatever names led to it; None where
    there is no such view."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if where.endswith(" (deleted)") or not where.startswith("/"):
        raise ConfinementError(f"the opened file is no longer at a path ({where})")
    return where


def open_confined(path: str, roots: Sequence[str] | None) -> int:
    """Open `path` for reading and return the descriptor, or raise ConfinementError / OSError.

    `roots`: real (resolved) directories the file must lie in; None: anywhere (a trusted manifest). The
    caller reads from the descriptor and closes it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotARegularFileError(f"{path} is not a regular file")
        if roots is not None:
            real = _opened_path(fd)
            if real is None:  # no /proc: resolve the name, then require it to be the opened file
                try:
                    real = os.path.realpath(path)
                    named = os.stat(real, follow_symlinks=False)
                except OSError as e:  # e.g. a link swapped mid-resolution (readlink on what is now a file)
                    raise ConfinementError(f"{path} changed while it was being opened ({e.strerror})") from None
                if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
                    raise ConfinementError(f"{path} changed while it was being opened (it is no longer the file "
                                           f"at {real}); refusing to read it")
            if not _under(real, roots):
                shown = path if real == path else f"{path} (resolves to {real})"
                raise ConfinementError(f"audio path {shown} is outside the allowed roots {', '.join(roots)}")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class FileIdentity:
    """What stat says about a file: equal identities mean unchanged content (module doc)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_CACHE_SCHEMA = pa.schema([("path", pa.string()), ("device", pa.uint64()), ("inode", pa.uint64()),
                           ("size", pa.int64()), ("mtime_ns", pa.int64()), ("ctime_ns", pa.int64()),
                           ("sha256", pa.string())])


class FileHashes:
    """sha256 of files by path, with the stat-keyed cache of the module doc in `cache_file` (a Parquet file,
    replaced atomically; None: no cache). Hashing runs on `workers` threads (hashlib releases the GIL).
    `racy_s`: files changed more recently than this when hashed are not cached (module doc)."""

    def __init__(self, cache_file: str | Path | None = None, workers: int | None = None, racy_s: float = RACY_S):
        self.cache_file = None if cache_file is None else Path(cache_file)
        self.racy_s = racy_s
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._cached: dict[str, tuple[FileIdentity, str]] = {}
        self._fresh: dict[str, tuple[FileIdentity, str]] = {}
        self.hashed_files = 0
        self.hashed_bytes = 0
        self.reused = 0
        self._counting = threading.Lock()
        if self.cache_file is not None and self.cache_file.exists():
            try:
                table = pq.read_table(self.cache_file)
            except (OSError, pa.ArrowException):
                table = None  # a damaged cache is only a slower build
            if table is not None and table.schema.equals(_CACHE_SCHEMA):
                for row in zip(*(table.column(n).to_pylist() for n in _CACHE_SCHEMA.names)):
                    self._cached[row[0]] = (FileIdentity(*row[1:6]), row[6])

    def hash_many(self, paths: Iterable[str], roots: Sequence[str] | None) -> dict[str, str | Exception]:
        """{path: sha256 hex, or the exception that stopped it being read (ConfinementError, OSError ...)}."""
        unique = list(dict.fromkeys(paths))
        with ThreadPoolExecutor(self.workers) as pool:
            return dict(zip(unique, pool.map(lambda p: self._hash(p, roots), unique)))

    def _hash(self, path: str, roots: Sequence[str] | None) -> str | Exception:
        try:
            fd = open_confined(path, roots)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            return e
        try:
            before = FileIdentity.of(os.fstat(fd))
            cached = self._cached.get(path)
            if cached is not None and cached[0] == before:
                with self._counting:
                    self.reused += 1
                    self._fresh[path] = cached
                return cached[1]
            size, digest = sha256_fd(fd)
            after = FileIdentity.of(os.fstat(fd))
            if after != before or size != after.size:
                return OSError(f"{path} changed while it was being read; rerun once it is no longer written")
            with self._counting:
                self.hashed_files += 1
                self.hashed_bytes += size
                if time.time_ns() - max(after.mtime_ns, after.ctime_ns) > self.racy_s * 1e9:
                    self._fresh[path] = (after, digest)
            return digest
        except OSError as e:
            return e
        finally:
            os.close(fd)

    def save(self) -> None:
        """Write the entries of the files hashed or confirmed by this instance (an atomic replace); nothing
        when they are exactly what the cache already held."""
        if self.cache_file is None or not self._fresh or self._fresh == self._cached:
            return
        rows = [(p, *identity.__dict__.values(), digest) for p, (identity, digest) in sorted(self._fresh.items())]
        table = pa.table([pa.array(col, type=field.type) for col, field in zip(zip(*rows), _CACHE_SCHEMA)],
                         schema=_CACHE_SCHEMA)
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(temp_name(self.cache_file.name))
        pq.write_table(table, tmp)
        os.replace(tmp, self.cache_file)
