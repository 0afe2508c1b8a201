"""The versioned dataset store: immutable Parquet versions plus a DuckDB catalog.

Layout under the store root (default ./data):

    catalog.duckdb                          versions, views over the latest version, one schema per version
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
jstip.tasks.stages.publish): if it raises, the staging directory is removed and nothing is published.

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
`user_query` runs SQL from users in a sandbox: a read-only attachment of the catalog, single SELECT
statements only, no file access outside datasets/.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jstip.schemas import DATASET_TABLES, conform, empty, schema_for
from jstip.storage.lock import LockTimeout, kill_point, lock_timeout_s, remove_stale_temporaries, store_lock, temp_name
from jstip.storage.views import DERIVED_VIEWS

CATALOG_FILE = "catalog.duckdb"
WRITE_LOCK_FILE = ".write.lock"
# Audio being written (jstip.tasks.normalize.write_flac): one directory, so that finding what a killed
# process left takes one listing, not one of every audio/<xx>/ directory.
TEMP_DIR = ".tmp"

# Parquet settings for published tables (and stage results, which publishing links as they are): zstd is
# ~2x smaller than snappy on span text at similar speed.
PARQUET_OPTIONS = {"compression": "zstd"}

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
CREATE OR REPLACE VIEW dataset_versions AS SELECT * FROM dataset_versions_table ORDER BY created_at;
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


# Statement types user SQL may have (duckdb.extract_statements): reading only.
_USER_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


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

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


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


class DatasetStore:
    def __init__(self, root: str | Path = "./data", lock_timeout_s: float | None = None):
        """`lock_timeout_s`: how long writers wait for the write lock and for the catalog file, and readers
        for the catalog file, before StoreBusyError (None: $JSTIP_STORE_LOCK_TIMEOUT_S, else 600 s)."""
        self.root = Path(root).resolve()
        self.lock_timeout_s = lock_timeout_s
        self.catalog_path = self.root / CATALOG_FILE
        self.datasets_dir = self.root / "datasets"
        self.audio_dir = self.root / "audio"
        self.work_dir = self.root / "work"
        self.gx_dir = self.root / "gx"
        self.staging_dir = self.root / ".staging"

    def data_docs_dir(self, version_id: str) -> Path:
        return self.gx_dir / "data_docs" / version_id

    # -- catalog -------------------------------------------------------------------------------

    def _timeout(self) -> float:
        return lock_timeout_s() if self.lock_timeout_s is None else self.lock_timeout_s

    def connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A connection to the catalog; create it (and the store root) on first use.

        While another process holds the catalog file (DuckDB: one writing process, or any number of
        reading ones), wait for it up to the lock timeout, then raise StoreBusyError naming it."""
        if read_only:
            if not self.catalog_path.exists():
                raise StoreError(f"no catalog at {self.catalog_path}: nothing has been published to this store yet "
                                 f"(run `jstip build --store {self.root}`)")
            return self._open(lambda: duckdb.connect(str(self.catalog_path), read_only=True))
        self.root.mkdir(parents=True, exist_ok=True)
        con = self._open(lambda: duckdb.connect(str(self.catalog_path)))
        con.execute(_CATALOG_DDL)
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

    def user_query(self, sql: str, params: Sequence = (), schema: str | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement from a user; return (column names, rows).

        Three fences: only a single SELECT (or EXPLAIN) statement is accepted; the catalog is attached
        read-only to a private in-memory DuckDB; that DuckDB may read no file outside datasets/ and write
        none (enable_external_access off, configuration locked). `schema` is made current first (e.g. a
        version's `v_<id>`). Parameters are bound, never formatted into the SQL."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as e:
            raise StoreError(f"query failed: {e}") from None
        kinds = [str(st.type).rpartition(".")[2] for st in statements]
        if len(kinds) != 1 or kinds[0] not in _USER_STATEMENTS:
            shown = ", ".join(kinds) or "none"
            raise StoreError(f"query failed: user SQL runs read-only, one SELECT statement at a time; got "
                             f"{len(kinds)} statement(s) of type {shown} (the catalog is changed by `jstip build` "
                             f"only)")
        if not self.catalog_path.exists():
            self.connect(read_only=True)  # raises the "nothing published yet" error
        catalog = str(self.catalog_path).replace("'", "''")
        allowed = str(self.datasets_dir).replace("'", "''") + os.sep
        with self._open(duckdb.connect) as con:
            self._open(lambda: con.execute(f"ATTACH '{catalog}' AS catalog (READ_ONLY)"))
            con.execute("USE catalog")
            con.execute(f"SET allowed_directories = ['{allowed}']")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            if schema is not None:
                con.execute('USE "{}"'.format(schema.replace('"', '""')))
            try:
                relation = con.execute(sql, list(params))
                return [d[0] for d in relation.description], relation.fetchall()
            except duckdb.Error as e:
                raise StoreError(f"query failed: {e}") from None

    def versions(self, name: str | None = None) -> list[DatasetVersion]:
        """Published versions, oldest first."""
        if not self.catalog_path.exists():
            return []
        with self.connect(read_only=True) as con:
            sql = "SELECT * FROM dataset_versions_table"
            params: list = []
            if name is not None:
                sql += " WHERE name = ?"
                params.append(name)
            rows = con.execute(sql + " ORDER BY created_at, version_id", params).fetchall()
            columns = [d[0] for d in con.description]
        return [self._row_to_version(dict(zip(columns, row))) for row in rows]

    def latest(self, name: str | None = None) -> DatasetVersion | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def version(self, version_id: str) -> DatasetVersion:
        """Look a version up by id, unique id prefix, or `latest` (the newest published)."""
        if version_id == "latest":
            latest = self.latest()
            if latest is None:
                raise StoreError(f"no published versions in {self.catalog_path} (run `jstip build --store {self.root}`)")
            return latest
        matches = [v for v in self.versions() if v.version_id.startswith(version_id)]
        if not matches:
            raise StoreError(f"no dataset version {version_id!r} in {self.catalog_path} (see `jstip catalog list`)")
        if len(matches) > 1:
            raise StoreError(f"version prefix {version_id!r} is ambiguous: {[v.version_id for v in matches]}")
        return matches[0]

    def read_table(self, version_id: str, table: str) -> pa.Table:
        if table not in DATASET_TABLES:
            raise StoreError(f"unknown table {table!r}; a version holds {', '.join(DATASET_TABLES)}")
        version = self.version(version_id)
        return pq.read_table(version.path / table)

    @staticmethod
    def _row_to_version(row: dict) -> DatasetVersion:
        return DatasetVersion(
            version_id=row["version_id"], name=row["name"], parent_version=row["parent_version"],
            created_at=row["created_at"], config_json=row["config_json"], code_version=row["code_version"],
            input_hash=row["input_hash"], row_counts=json.loads(row["row_counts_json"]), status=row["status"],
            path=Path(row["path"]), data_docs_path=Path(row["data_docs_path"]) if row.get("data_docs_path") else None,
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
                    data_docs_path=data_docs,
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
                        self._register(con, version)
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
        directories, stage results and shards being written, audio being written); return them. Those of
        live processes, and of other hosts, are left alone (jstip.storage.lock)."""
        places = [self.staging_dir, self.audio_dir / TEMP_DIR]
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

    def _register(self, con: duckdb.DuckDBPyConnection, version: DatasetVersion) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                "INSERT INTO dataset_versions_table (version_id, name, parent_version, created_at, config_json, "
                "code_version, input_hash, row_counts_json, status, path, data_docs_path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [version.version_id, version.name, version.parent_version, version.created_at,
                 version.config_json, version.code_version, version.input_hash,
                 json.dumps(version.row_counts, sort_keys=True), version.status, str(version.path),
                 None if version.data_docs_path is None else str(version.data_docs_path)],
            )
            self._create_views(con, f"v_{version.version_id}", version.path)
            self._create_views(con, "main", version.path)
            # views added by newer code reach older versions too
            for (older,) in con.execute("SELECT version_id FROM dataset_versions_table WHERE version_id <> ?",
                                        [version.version_id]).fetchall():
                self._create_derived_views(con, f"v_{older}")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _create_views(con: duckdb.DuckDBPyConnection, schema: str, version_dir: Path) -> None:
        # DDL cannot take bound parameters; the path is ours (store root + hex id), quoted defensively.
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for table in DATASET_TABLES:
            glob = str(version_dir / table / "*.parquet").replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW \"{schema}\".\"{table}\" AS SELECT * FROM read_parquet('{glob}')")
        DatasetStore._create_derived_views(con, schema)

    @staticmethod
    def _create_derived_views(con: duckdb.DuckDBPyConnection, schema: str) -> None:
        for view, sql in DERIVED_VIEWS.items():
            con.execute(f'CREATE OR REPLACE VIEW "{schema}"."{view}" AS {sql}')
