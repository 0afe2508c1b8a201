"""The versioned dataset store: immutable Parquet versions plus a DuckDB catalog.

Layout under the store root (default ./data):

    catalog.duckdb                          versions, views over the latest version, one schema per version
    datasets/<name>/<version>/<table>/part-*.parquet    published versions, never modified
    audio/<hash[:2]>/<hash>.flac            normalised audio, content-addressed, shared by versions
    work/<stage>/<key>/                     shard results of each stage, keyed by content (the cache)
    gx/data_docs/<version>/index.html       Great Expectations Data Docs of each version's suites
    .staging/                               versions being written; never read by anyone

Publishing is write-elsewhere, rename, register: a version directory is staged in full under .staging,
renamed into datasets/ (atomic on one filesystem), and only then recorded in the catalog, in one
transaction with the views. Readers go through the catalog, so a crash at any point leaves either the
previous state or the complete new version visible, never part of one. A `validate` hook runs over the
staged files before the rename (the accounting invariant and the Great Expectations suites,
jstip.tasks.stages.publish): if it raises, the staging directory is removed and nothing is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jstip.schemas import DATASET_TABLES, conform, empty, schema_for
from jstip.storage.views import DERIVED_VIEWS

CATALOG_FILE = "catalog.duckdb"

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
    def __init__(self, root: str | Path = "./data"):
        self.root = Path(root).resolve()
        self.catalog_path = self.root / CATALOG_FILE
        self.datasets_dir = self.root / "datasets"
        self.audio_dir = self.root / "audio"
        self.work_dir = self.root / "work"
        self.gx_dir = self.root / "gx"
        self.staging_dir = self.root / ".staging"

    def data_docs_dir(self, version_id: str) -> Path:
        return self.gx_dir / "data_docs" / version_id

    # -- catalog -------------------------------------------------------------------------------

    def connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A connection to the catalog; create it (and the store root) on first use."""
        if read_only:
            if not self.catalog_path.exists():
                raise StoreError(f"no catalog at {self.catalog_path}: nothing has been published to this store yet "
                                 f"(run `jstip build --store {self.root}`)")
            return duckdb.connect(str(self.catalog_path), read_only=True)
        self.root.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.catalog_path))
        con.execute(_CATALOG_DDL)
        return con

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
        """Look a version up by id or unique id prefix."""
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
        """
        unknown = set(tables) - set(DATASET_TABLES)
        if unknown:
            raise StoreError(f"cannot publish unknown table(s) {sorted(unknown)}; expected {DATASET_TABLES}")
        version_id = version_id_for(input_hash, config_json, code_version)
        for existing in self.versions(name):
            if existing.version_id == version_id:
                return existing
        if parent_version is None:
            latest = self.latest(name)
            parent_version = latest.version_id if latest else None

        final_dir = self.datasets_dir / name / version_id
        staging = self.staging_dir / f"{version_id}-{uuid.uuid4().hex[:8]}"
        try:
            row_counts = {table: self._write_table(staging / table, table, tables.get(table)) for table in DATASET_TABLES}
            data_docs = validate(staging, version_id) if validate is not None else None
            final_dir.parent.mkdir(parents=True, exist_ok=True)
            if final_dir.exists():
                # Left by a crash between rename and registration: it was never visible, replace it.
                shutil.rmtree(final_dir)
            os.rename(staging, final_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        version = DatasetVersion(
            version_id=version_id, name=name, parent_version=parent_version,
            created_at=datetime.now(timezone.utc), config_json=config_json, code_version=code_version,
            input_hash=input_hash, row_counts=row_counts, status="published", path=final_dir,
            data_docs_path=data_docs,
        )
        self._register(version)
        return version

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

    def _register(self, version: DatasetVersion) -> None:
        with self.connect() as con:
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
