"""The versioned dataset store: immutable Parquet versions plus a DuckDB catalog.

Why one module of ~650 lines: it is one class, the catalog (`DatasetStore`), whose parts (opening under the
lock discipline, version resolution, verification, the atomic publish and its views) share the connection, the
write lock and the catalog schema; this account of them is a sixth of it. What stages need of a store (its
layout, the audio pool, the stage cache) is apart, in `layout`, `audio_pool` and `work`.

Layout under the store root (default ./data):

    catalog.duckdb                          versions, views over the newest training version, a schema per version
    datasets/<name>/<version>/<table>/part-*.parquet    published versions, never modified
    audio/<hash[:2]>/<hash>.flac            normalised audio, content-addressed, shared by versions
    work/<stage>/<key>/                     shard results of each stage, keyed by content (the cache)
    gx/data_docs/<version>/index.html       Great Expectations Data Docs of each version's suites
    .staging/                               versions being written; never read by anyone
    .write.lock                             the store's write lock (flock; holder's pid/host inside)

Publishing is write-elsewhere, rename, register: a version directory is staged in full under .staging,
renamed into datasets/ (atomic on one filesystem), and only then recorded in the catalog, in one
transaction with the views. Readers go through the catalog, so a crash at any point leaves either the
previous state or the complete new version visible, never part of one. A `validate` hook runs over the
staged files before the rename (the accounting invariant and the Great Expectations suites,
jstip.tasks.publish): if it raises, the staging directory is removed and nothing is published.

Concurrency (docs/RELIABILITY.md). DuckDB admits one writing process per catalog file, and none while
another process reads it; two mechanisms make several builds, trainers and readers share one store:
- `connect()` waits (up to $JSTIP_STORE_LOCK_TIMEOUT_S, default 600 s) while another process holds the
  catalog file, then fails with StoreBusyError naming that process. One statement or one transaction on
  a write connection needs nothing more: DuckDB's own file lock serialises writers.
- `write_lock()` is the store's exclusive write lock (jstip.storage.lock: a kernel flock, released when
  its holder dies however it dies). Hold it around any read-decide-write sequence that must see the
  catalog unchanged between the read and the write: publish holds it from "is this version already
  registered?" through the rename and the registration; a registry that promotes a model "if better
  than the current one" should do the same:

      with store.write_lock(purpose="promote model m1"):
          with store.connect() as con:   # read the incumbent, decide, write the promotion
              ...

  It is re-entrant in a thread and waits for other threads and processes; past the timeout it raises
  StoreBusyError naming the holder's pid, host and purpose. Keep the block short: builds wait on it.

Temporary files (staging directories, stage results and audio being written) carry their owner's pid and
host (jstip.storage.lock.temp_name); each publish deletes those whose owner process is gone.
`user_query` runs SQL from users in a sandbox (jstip.storage.sandbox): one SELECT statement by DuckDB's
parser, in a child process with a time limit, over a read-only attachment of the catalog that can read no
file outside datasets/ and write none.

Relocatable: everything the catalog records (version and Data Docs paths, the views' Parquet globs, model
paths) and every path inside a published table (`normalized_audio.flac_path`) is relative to the store
root, so a store moved, copied or rsynced elsewhere works there and never reads the original's files.
Connections set DuckDB's `file_search_path` to the root; any DuckDB client can do the same, or open the
catalog from the store root (`cd STORE && duckdb -readonly catalog.duckdb`).

Readable by DuckDB 1.x: the catalog is created in storage format `CATALOG_STORAGE_VERSION` (DuckDB 1.0's),
which every DuckDB since 1.0 opens; DuckDB keeps a file's format when it writes to it later.

Tamper evidence: publishing records every file of a version (size and sha256) in `dataset_files`, and
each normalised audio file's size and sha256 in the version's `normalized_audio` rows (flac_bytes,
flac_sha256), so the Parquet file hashes cover the audio too. `verify_version` checks them (`fast`: every
file's size, every Parquet file's sha256 and a random sample of the audio; `full`: every sha256), and
`ensure_intact` is what training, evaluation and export call before they read a version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jstip.schemas import DATASET_TABLES, conform, empty, schema_for
from jstip.schemas.tables import DATASET_ROLES, HELD_OUT_ROLES
from jstip.storage.content import sha256_file
from jstip.storage.lock import LockTimeout, kill_point, lock_timeout_s, remove_stale_temporaries, store_lock, temp_name
from jstip.storage.layout import PARQUET_OPTIONS, StoreLayout, version_schema
from jstip.storage.sandbox import QueryFailed, QueryRefused, check_read_only, run_read_only
from jstip.storage.views import DERIVED_VIEWS

log = logging.getLogger(__name__)

# DuckDB 1.0's storage format (storage version 64): DuckDB 1.0 to 2.x open it, e.g. the `duckdb` CLI 1.5 of
# the `duckdb-cli` package, which reads storage versions 64-68 only, while DuckDB 2.0 writes 69 by default.
CATALOG_STORAGE_VERSION = "v1.0.0"
# How training, evaluation and export verify a version before reading it: fast | full | off.
VERIFY_ENV = "JSTIP_VERIFY"
# Audio files whose sha256 a fast verification checks (chosen at random each time; all when fewer).
FAST_AUDIO_SAMPLE = 64
WRITE_LOCK_FILE = ".write.lock"

_CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS dataset_versions_table (
    version_id      VARCHAR PRIMARY KEY,
    name            VARCHAR NOT NULL,
    parent_version  VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL,
    config_json     VARCHAR NOT NULL,
    code_version    VARCHAR NOT NULL,
    input_hash      VARCHAR NOT NULL,
    row_counts_json VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    data_docs_path  VARCHAR
);
-- catalogs created before the column existed
ALTER TABLE dataset_versions_table ADD COLUMN IF NOT EXISTS data_docs_path VARCHAR;
ALTER TABLE dataset_versions_table ADD COLUMN IF NOT EXISTS role VARCHAR DEFAULT 'train';
CREATE OR REPLACE VIEW dataset_versions AS SELECT * FROM dataset_versions_table ORDER BY created_at;
-- every file of every version as published: path relative to the store root, size, sha256
CREATE TABLE IF NOT EXISTS dataset_files (
    version_id      VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    bytes           BIGINT NOT NULL,
    sha256          VARCHAR NOT NULL,
    PRIMARY KEY (version_id, path)
);
"""


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or no hard links there
        shutil.copyfile(source, target)


class StoreError(RuntimeError):
    pass


class StoreBusyError(StoreError, LockTimeout):
    """The store's write lock, or the catalog file, stayed held by another process past the timeout."""


class ModelBusyError(StoreBusyError):
    """Another process holds the model's lock (it is training or registering that model)."""


class VersionIntegrityError(StoreError):
    """A published version's files differ from what was recorded when it was published."""


class RegistryError(StoreError):
    """A model, eval result or promotion the registry (jstip.storage.registry) cannot find or accept."""


@dataclass(frozen=True)
class DatasetVersion:
    version_id: str
    name: str
    parent_version: str | None
    created_at: datetime
    config_json: str
    code_version: str
    input_hash: str
    row_counts: dict[str, int]
    status: str
    path: Path
    data_docs_path: Path | None = None  # Great Expectations Data Docs (index.html) of the version's suites
    role: str = "train"  # DATASET_ROLES: train, or held out (dev, test)

    @property
    def held_out(self) -> bool:
        return self.role in HELD_OUT_ROLES

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


@dataclass
class VerifyReport:
    """What `DatasetStore.verify_version` found: `problems` name each file that differs (empty: intact)."""

    version: DatasetVersion
    mode: str  # fast | full
    files: int = 0  # files checked (existence and size)
    hashed: int = 0  # files whose sha256 was computed
    hashed_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    unrecorded: bool = False  # published before checksums were recorded: nothing to compare

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unrecorded

    def check(self, path: Path, shown: str, size: int | None, digest: str | None, hash_it: bool) -> None:
        self.files += 1
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            self.problems.append(f"{shown}: missing")
            return
        except OSError as e:
            self.problems.append(f"{shown}: unreadable ({e})")
            return
        if size is not None and found != size:
            self.problems.append(f"{shown}: {found} bytes, published with {size}")
            return
        if hash_it and digest is not None:
            _, actual = sha256_file(path)
            self.hashed += 1
            self.hashed_bytes += found
            if actual != digest:
                self.problems.append(f"{shown}: sha256 {actual[:16]}..., published with {digest[:16]}...")


def version_id_for(input_hash: str, config_json: str, code_version: str) -> str:
    """A version is named by what made it: the same inputs, config and code give the same id."""
    digest = hashlib.sha256("\0".join((input_hash, config_json, code_version)).encode()).hexdigest()
    return digest[:16]


# A table to publish: one Arrow table, or the Parquet files of its shards (published part by part, so a
# 38k-hour version is never held in memory at once).
TableSource = pa.Table | Iterable[Path | pa.Table]

# Runs over a staged version (its directory and id) before it becomes visible; raises to publish nothing.
# Returns the path of the Data Docs it built, if any, to be recorded in the catalog.
Validator = Callable[[Path, str], Path | None]


class DatasetStore(StoreLayout):
    """The catalog of a store (its layout: jstip.storage.layout): versions, their views, publishing."""

    def __init__(self, root: str | Path = "./data", lock_timeout_s: float | None = None):
        """`lock_timeout_s`: how long writers wait for the write lock and for the catalog file, and readers
        for the catalog file, before StoreBusyError (None: $JSTIP_STORE_LOCK_TIMEOUT_S, else 600 s)."""
        super().__init__(root)
        self.lock_timeout_s = lock_timeout_s

    # -- catalog -------------------------------------------------------------------------------

    def _timeout(self) -> float:
        return lock_timeout_s() if self.lock_timeout_s is None else self.lock_timeout_s

    def connect(self, read_only: bool = False, version: str | None = None) -> duckdb.DuckDBPyConnection:
        """A connection to the catalog; create it (and the store root) on first use. With `version` (an id), its
        schema is the current one: unqualified names are that version's tables and views.

        Relative paths (the views' Parquet globs) resolve against the store root (`file_search_path`).
        While another process holds the catalog file (DuckDB: one writing process, or any number of
        reading ones), wait for it up to the lock timeout, then raise StoreBusyError naming it."""
        config = {"file_search_path": str(self.root), "storage_compatibility_version": CATALOG_STORAGE_VERSION}
        if read_only:
            if not self.catalog_path.exists():
                raise StoreError(f"no catalog at {self.catalog_path}: nothing has been published to this store yet "
                                 f"(run `jstip build --store {self.root}`)")
            con = self._open(lambda: duckdb.connect(str(self.catalog_path), read_only=True, config=config))
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            con = self._open(lambda: duckdb.connect(str(self.catalog_path), config=config))
            con.execute(_CATALOG_DDL)
        if version is not None:
            con.execute(f'USE "{version_schema(version)}"')
        return con

    def _open(self, opener: Callable[[], duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
        timeout, started, pause = self._timeout(), time.monotonic(), 0.01
        while True:
            try:
                return opener()
            except duckdb.IOException as e:
                # "Could not set lock on file ...: Conflicting lock is held in <program> (PID n)"
                if "lock" not in str(e).lower():
                    raise
                waited = time.monotonic() - started
                if waited >= timeout:
                    raise StoreBusyError(
                        f"catalog {self.catalog_path} is held by another process; waited {waited:.0f} s. Close "
                        f"long-lived connections to it (a DuckDB shell, a notebook) or raise "
                        f"JSTIP_STORE_LOCK_TIMEOUT_S. DuckDB: {e}") from None
            # jittered: two waiters polling in step would keep colliding with each other's short reads
            time.sleep(min(pause * random.uniform(0.5, 1.5), max(timeout - waited, 0.0)))
            pause = min(pause * 2, 0.5)

    def write_lock(self, purpose: str = "write") -> AbstractContextManager[None]:
        """The store's exclusive write lock, for read-decide-write sequences on the catalog (module doc).
        Re-entrant; waits up to the lock timeout, then raises StoreBusyError naming the holder."""
        return store_lock(self.root / WRITE_LOCK_FILE, self._timeout(), purpose, error=StoreBusyError)

    def user_query(self, sql: str, params: Sequence = (), version: str | None = None,
                   timeout_s: float | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement from a user; return (column names, rows).

        Exactly one SELECT (by DuckDB's parser), run in a child process over a read-only attachment of the
        catalog that can read no file outside datasets/ and write none, killed after `timeout_s` (None:
        $JSTIP_QUERY_TIMEOUT_S, else 60 s): jstip.storage.sandbox. With `version` (an id), that version's
        schema is made current first. Parameters are bound, never formatted into the SQL."""
        try:
            if not self.catalog_path.exists():
                check_read_only(sql)  # a writing statement is refused before "the store is empty"
                self.connect(read_only=True)  # raises the "nothing published yet" error
            return run_read_only(self.root, self.catalog_path, sql, params,
                                 schema=None if version is None else version_schema(version), timeout_s=timeout_s,
                                 lock_timeout_s=self._timeout())
        except (QueryRefused, QueryFailed) as e:
            raise StoreError(str(e)) from None

    def versions(self, name: str | None = None, role: str | None = None) -> list[DatasetVersion]:
        """Published versions (of one dataset name, of one role), oldest first."""
        if not self.catalog_path.exists():
            return []
        with self.connect(read_only=True) as con:
            rows = con.execute("SELECT * FROM dataset_versions_table WHERE ? IS NULL OR name = ? "
                               "ORDER BY created_at, version_id", [name, name]).fetchall()
            columns = [d[0] for d in con.description]
        # the role is filtered here: a catalog written before roles existed has no column for it
        versions = [self._row_to_version(dict(zip(columns, row))) for row in rows]
        return [v for v in versions if role is None or v.role == role]

    def latest(self, name: str | None = None, role: str | None = None) -> DatasetVersion | None:
        versions = self.versions(name, role)
        return versions[-1] if versions else None

    def default_version(self) -> DatasetVersion | None:
        """The version every command uses unless told: the newest *training* version (None: there is none)."""
        return self.latest(role="train")

    def version(self, spec: str | None = None) -> DatasetVersion:
        """The version a command means. `spec` is a version id, a dataset name (its newest version, whatever
        its role: named, so meant), a unique id prefix, or None / `latest`: the default, the newest *training*
        version. A held-out version (dev, test) is never a default: reading or training on a test set must be
        asked for by name."""
        if spec is None or spec == "latest":
            return self._default_version()
        versions = self.versions()
        exact = [v for v in versions if v.version_id == spec]
        named = [v for v in versions if v.name == spec]
        matches = exact or named[-1:] or [v for v in versions if v.version_id.startswith(spec)]
        if not matches:
            names = sorted({v.name for v in versions})
            raise StoreError(f"no dataset version or dataset named {spec!r} in {self.catalog_path} (datasets: "
                             f"{', '.join(names) or 'none'}; see `jstip catalog list`)")
        if len(matches) > 1:
            raise StoreError(f"version prefix {spec!r} is ambiguous: {[v.version_id for v in matches]}")
        return matches[0]

    def _default_version(self) -> DatasetVersion:
        if not self.catalog_path.exists():
            self.connect(read_only=True)  # raises: nothing has been published to this store yet
        default = self.default_version()
        if default is not None:
            return default
        held_out = self.versions()
        if not held_out:
            raise StoreError(f"no published versions in {self.catalog_path} (run `jstip build --store {self.root}`)")
        named = ", ".join(sorted({f"{v.name} ({v.role})" for v in held_out}))
        raise StoreError(f"no training version in {self.catalog_path}, only held-out ones: {named}. A held-out "
                         f"version is never a default; name it (e.g. `{held_out[-1].name}`) to use it")

    def newest_test_set(self) -> DatasetVersion:
        """What evaluation uses unless told: the newest version of role test."""
        test = self.latest(role="test")
        if test is None:
            raise StoreError(f"no test set in {self.catalog_path}: build one with `jstip build --role test`, or name "
                             f"the version to evaluate on")
        return test

    def training_version(self, spec: str | None = None, allow_held_out: bool = False) -> DatasetVersion:
        """The version to train on: as `version(spec)`, but a held-out version (dev, test) is refused unless
        `allow_held_out`: training on it would leak the set the model is judged on into the model."""
        version = self.version(spec)
        if version.held_out and not allow_held_out:
            raise StoreError(f"dataset version {version.name}/{version.version_id} is a held-out {version.role} "
                             f"set: training on it would leak it into the model it is meant to judge. Train on a "
                             f"training version (`jstip catalog list`), or pass --allow-test-set if you mean it")
        return version

    def table_sql(self, version: DatasetVersion, table: str, recorded_paths: bool = False) -> str:
        """A DuckDB subquery reading one table of a version, with the paths it holds (normalized_audio's
        flac_path, relative to the store root) resolved for this machine: `FROM {store.table_sql(v, t)} x`.
        recorded_paths: the paths as the version records them instead (for what is stored in the store and
        resolved when read, such as the sequence index: it moves with the store)."""
        if table not in DATASET_TABLES:
            raise StoreError(f"unknown table {table!r}; a version holds {', '.join(DATASET_TABLES)}")
        glob = str(version.path / table / "*.parquet").replace("'", "''")
        if table != "normalized_audio" or recorded_paths:
            return f"(SELECT * FROM read_parquet('{glob}'))"
        root = (str(self.root) + os.sep).replace("'", "''")
        return (f"(SELECT * REPLACE (CASE WHEN starts_with(flac_path, '/') THEN flac_path "
                f"ELSE '{root}' || flac_path END AS flac_path) FROM read_parquet('{glob}'))")

    def read_table(self, version_id: str, table: str) -> pa.Table:
        if table not in DATASET_TABLES:
            raise StoreError(f"unknown table {table!r}; a version holds {', '.join(DATASET_TABLES)}")
        version = self.version(version_id)
        return pq.read_table(version.path / table)

    # -- tamper evidence -------------------------------------------------------------------------

    def verify_version(self, version_id: str, full: bool = False, audio_sample: int = FAST_AUDIO_SAMPLE
                       ) -> VerifyReport:
        """Compare a version's files with what was recorded when it was published.

        Fast (default): every recorded file exists with its size, no file was added to the version's
        directory, every Parquet file's sha256 matches, and so does that of `audio_sample` normalised
        audio files drawn at random (every size is checked). Full: every sha256, audio included."""
        version = self.version(version_id)
        with self.connect(read_only=True) as con:
            recorded = con.execute("SELECT path, bytes, sha256 FROM dataset_files WHERE version_id = ? ORDER BY path",
                                   [version.version_id]).fetchall()
        report = VerifyReport(version, "full" if full else "fast")
        if not recorded:
            report.unrecorded = True  # published before jstip recorded checksums: nothing to compare
            return report
        expected = {path for path, _, _ in recorded}
        if version.path.is_dir():
            for found in sorted(version.path.rglob("*")):
                if found.is_file() and self.relative(found) not in expected:
                    report.problems.append(f"{self.relative(found)}: not part of the version as published "
                                           f"(added after publishing; DuckDB's views would read it)")
        for path, size, digest in recorded:
            report.check(self.resolve(path), path, size, digest, hash_it=True)
        if any(p.endswith(".parquet") and "/normalized_audio/" in p for p in report.problems):
            return report  # the audio list itself cannot be trusted
        audio = self._audio_files(version)
        sampled = set(range(len(audio))) if full or len(audio) <= audio_sample else \
            set(random.SystemRandom().sample(range(len(audio)), audio_sample))
        for i, (path, size, digest) in enumerate(audio):
            report.check(self.resolve(path), path, size, digest, hash_it=i in sampled)
        return report

    def _audio_files(self, version: DatasetVersion) -> list[tuple[str, int | None, str | None]]:
        """(flac_path, flac_bytes, flac_sha256) of each normalised audio file the version uses."""
        with duckdb.connect() as con:
            parts = [str(p) for p in sorted((version.path / "normalized_audio").glob("*.parquet"))]
            if not parts:
                return []
            columns = {name for (name,) in con.execute("SELECT name FROM parquet_schema(?)", [parts[0]]).fetchall()}
            if "flac_sha256" not in columns:
                return [(p, None, None) for (p,) in con.execute(
                    "SELECT DISTINCT flac_path FROM read_parquet(?, union_by_name = true) ORDER BY 1",
                    [parts]).fetchall()]
            return con.execute("SELECT flac_path, any_value(flac_bytes), any_value(flac_sha256) FROM "
                               "read_parquet(?, union_by_name = true) GROUP BY flac_path ORDER BY flac_path",
                               [parts]).fetchall()

    def ensure_intact(self, version_id: str, purpose: str, mode: str | None = None) -> DatasetVersion:
        """Verify a version before `purpose` reads it (training, evaluation, export) and return it; raise
        VersionIntegrityError naming the files that differ. `mode`: fast | full | off (None: $JSTIP_VERIFY,
        else fast)."""
        mode = mode or os.environ.get(VERIFY_ENV) or "fast"
        if mode not in ("fast", "full", "off"):
            raise StoreError(f"{VERIFY_ENV}={mode!r}: expected fast, full or off")
        version = self.version(version_id)
        if mode == "off":
            return version
        report = self.verify_version(version.version_id, full=mode == "full")
        if report.unrecorded:
            log.warning("dataset version %s was published before jstip recorded file checksums: %s reads it "
                        "unverified (rebuild it to record them)", version.version_id, purpose)
        elif not report.ok:
            raise VersionIntegrityError(
                f"dataset version {version.version_id} differs from what was published; {purpose} stopped before "
                f"reading it: " + "; ".join(report.problems[:5])
                + (f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else "")
                + f". List them all with `jstip verify {version.version_id} --full --store {self.root}`; rebuild "
                  "the version (`jstip build`) to restore it")
        return version

    # -- per-model lock --------------------------------------------------------------------------

    def model_lock(self, model_id: str, purpose: str, timeout_s: float = 0.0) -> AbstractContextManager[None]:
        """An exclusive lock on one model (`models/<id>/.lock`): training and registering a model hold it, so
        two runs of the same model never write the same checkpoints or logs. Waits `timeout_s` (default: not
        at all), then raises ModelBusyError naming the holder (pid, host, purpose, since when)."""
        return store_lock(self.root / "models" / model_id / ".lock", timeout_s, purpose, error=ModelBusyError,
                          what=f"model {model_id}")

    def _row_to_version(self, row: dict) -> DatasetVersion:
        return DatasetVersion(
            version_id=row["version_id"], name=row["name"], parent_version=row["parent_version"],
            created_at=row["created_at"], config_json=row["config_json"], code_version=row["code_version"],
            input_hash=row["input_hash"], row_counts=json.loads(row["row_counts_json"]), status=row["status"],
            path=self.resolve(row["path"]),
            data_docs_path=self.resolve(row["data_docs_path"]) if row.get("data_docs_path") else None,
            role=row.get("role") or "train",
        )

    # -- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        tables: Mapping[str, TableSource],
        *,
        input_hash: str,
        config_json: str,
        code_version: str,
        parent_version: str | None = None,
        validate: Validator | None = None,
        role: str = "train",
    ) -> DatasetVersion:
        """Publish a complete dataset version atomically and return it.

        Every table of DATASET_TABLES is written (missing ones as empty tables), validated against its
        schema. `parent_version` defaults to the latest published version of `name`. Publishing the
        same inputs + config + code again returns the existing version unchanged. `validate(staged_dir,
        version_id)` runs after every table is staged and before the rename; if it raises, nothing is published.

        Staging and validation run unlocked, so concurrent builds overlap; the write lock is held from the
        check "is this version registered already?" through the rename and the registration. A build that
        finds its version published meanwhile by another build returns that one and discards its staging.
        """
        unknown = set(tables) - set(DATASET_TABLES)
        if unknown:
            raise StoreError(f"cannot publish unknown table(s) {sorted(unknown)}; expected {DATASET_TABLES}")
        if role not in DATASET_ROLES:
            raise StoreError(f"unknown dataset role {role!r}; expected one of {', '.join(DATASET_ROLES)}")
        version_id = version_id_for(input_hash, config_json, code_version)
        existing = self._registered(name, version_id)
        if existing is not None:
            return existing
        self.remove_stale_temporaries()

        final_dir = self.datasets_dir / name / version_id
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / temp_name(version_id)
        try:
            row_counts = {table: self._write_table(staging / table, table, tables.get(table)) for table in DATASET_TABLES}
            data_docs = validate(staging, version_id) if validate is not None else None
            # sizes and sha256 of exactly what becomes visible (tamper evidence: verify_version)
            files = [(f"{self.relative(final_dir)}/{p.relative_to(staging).as_posix()}", *sha256_file(p))
                     for p in sorted(staging.rglob("*")) if p.is_file()]
            kill_point("publish-staged")
            with self.write_lock(purpose=f"publish {name}/{version_id}"):
                existing = self._registered(name, version_id)
                if existing is not None:  # published by a concurrent build of the same inputs
                    return existing
                if parent_version is None:
                    latest = self.latest(name)
                    parent_version = latest.version_id if latest else None
                version = DatasetVersion(
                    version_id=version_id, name=name, parent_version=parent_version,
                    created_at=datetime.now(timezone.utc), config_json=config_json, code_version=code_version,
                    input_hash=input_hash, row_counts=row_counts, status="published", path=final_dir,
                    data_docs_path=data_docs, role=role,
                )
                # opened before the rename: a catalog that cannot be opened leaves nothing renamed
                with self.connect() as con:
                    final_dir.parent.mkdir(parents=True, exist_ok=True)
                    if final_dir.exists():
                        # Left by a crash between rename and registration (under this lock, nobody else is
                        # between the two): it was never visible, replace it.
                        shutil.rmtree(final_dir)
                    os.rename(staging, final_dir)
                    kill_point("publish-renamed")
                    try:
                        self._register(con, version, files)
                    except BaseException:
                        shutil.rmtree(final_dir, ignore_errors=True)
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def _registered(self, name: str, version_id: str) -> DatasetVersion | None:
        return next((v for v in self.versions(name) if v.version_id == version_id), None)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files and directories that killed processes left in the store (staging
        directories, stage results and shards being written, audio and Data Docs being written); return them. Those of
        live processes, and of other hosts, are left alone (jstip.storage.lock)."""
        places = [self.staging_dir, self.audio_pool.temp_dir, self.gx_dir / "data_docs"]
        if self.work_dir.is_dir():
            places += [p for p in self.work_dir.iterdir() if p.is_dir()]
        return [path for place in places for path in remove_stale_temporaries(place)]

    def _write_table(self, directory: Path, table_name: str, source: TableSource | None) -> int:
        directory.mkdir(parents=True, exist_ok=True)
        if source is None:
            source = empty(table_name)
        # lazily: a part may be a table computed on demand, and only one is held at a time
        parts = [source] if isinstance(source, pa.Table) else source
        rows = 0
        written = 0
        schema = schema_for(table_name)
        for part in parts:
            target = directory / f"part-{written:05d}.parquet"
            if not isinstance(part, pa.Table):
                metadata = pq.read_metadata(part)
                if metadata.num_rows == 0:
                    continue
                if metadata.schema.to_arrow_schema().equals(schema, check_metadata=True):
                    # a stage result already in the published form: link it (stage results are never
                    # modified, only replaced), so publishing a version costs what changed, not its size
                    _link_or_copy(Path(part), target)
                    rows += metadata.num_rows
                    written += 1
                    continue
            table = conform(table_name, part if isinstance(part, pa.Table) else pq.read_table(part))
            if table.num_rows == 0:
                continue  # empty shards add files, not rows; one empty file below keeps the schema
            pq.write_table(table, target, **PARQUET_OPTIONS)
            rows += table.num_rows
            written += 1
        if written == 0:
            pq.write_table(empty(table_name), directory / "part-00000.parquet", **PARQUET_OPTIONS)
        return rows

    def _register(self, con: duckdb.DuckDBPyConnection, version: DatasetVersion,
                  files: list[tuple[str, int, str]]) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                "INSERT INTO dataset_versions_table (version_id, name, parent_version, created_at, config_json, "
                "code_version, input_hash, row_counts_json, status, path, data_docs_path, role) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [version.version_id, version.name, version.parent_version, version.created_at,
                 version.config_json, version.code_version, version.input_hash,
                 json.dumps(version.row_counts, sort_keys=True), version.status, self.relative(version.path),
                 None if version.data_docs_path is None else self.relative(version.data_docs_path), version.role],
            )
            con.executemany("INSERT INTO dataset_files (version_id, path, bytes, sha256) VALUES (?, ?, ?, ?)",
                            [[version.version_id, path, size, digest] for path, size, digest in files])
            self._create_views(con, version_schema(version.version_id), self.relative(version.path))
            if not version.held_out:  # the unqualified views are the newest training version, never a test set
                self._create_views(con, "main", self.relative(version.path))
            # views added by newer code reach older versions too
            for (older,) in con.execute("SELECT version_id FROM dataset_versions_table WHERE version_id <> ?",
                                        [version.version_id]).fetchall():
                self._create_derived_views(con, version_schema(older))
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _create_views(con: duckdb.DuckDBPyConnection, schema: str, version_dir: str) -> None:
        # Relative globs (datasets/<name>/<id>/<table>/*.parquet), resolved against the store root through
        # file_search_path: the store stays valid wherever it is moved or copied. DDL cannot take bound
        # parameters; the path is ours (name + hex id), quoted defensively.
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for table in DATASET_TABLES:
            glob = f"{version_dir}/{table}/*.parquet".replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW \"{schema}\".\"{table}\" AS SELECT * FROM read_parquet('{glob}')")
        DatasetStore._create_derived_views(con, schema)

    @staticmethod
    def _create_derived_views(con: duckdb.DuckDBPyConnection, schema: str) -> None:
        for view, sql in DERIVED_VIEWS.items():
            con.execute(f'CREATE OR REPLACE VIEW "{schema}"."{view}" AS {sql}')
