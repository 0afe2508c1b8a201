"""Where things lie in a store, and the names derived from a version id: the one place they are spelled.

    <root>/catalog.duckdb             the DuckDB catalog (jstip.storage.store)
    <root>/datasets/<name>/<version>/ published versions, one directory of Parquet parts per table
    <root>/audio/<xx>/<sha256>.flac   normalised audio, named by its PCM (jstip.storage.audio_pool)
    <root>/work/<stage>/<key>/        stage results by content key (jstip.storage.work)
    <root>/gx/data_docs/<version>/    Great Expectations Data Docs of the publish gate
    <root>/.staging/                  versions being published

Stages need only this layout (and the audio pool, the stage cache), not the catalog: a stage's code
identity (jstip.version) then stays free of the catalog's code.
"""

from __future__ import annotations

import os
from pathlib import Path

from jstip.storage.audio_pool import AudioPool

CATALOG_FILE = "catalog.duckdb"

# Parquet settings for published tables (and stage results, which publishing links as they are): zstd is
# ~2x smaller than snappy on span text at similar speed.
PARQUET_OPTIONS = {"compression": "zstd"}


def version_schema(version_id: str) -> str:
    """The catalog schema holding one version's views: `v_<id>` (ids are hex, so it is a plain identifier)."""
    return f"v_{version_id}"


class StoreLayout:
    """The paths of a store rooted at `root` (made absolute), and how recorded paths relate to it."""

    def __init__(self, root: str | Path = "./data"):
        self.root = Path(root).resolve()
        self.catalog_path = self.root / CATALOG_FILE
        self.datasets_dir = self.root / "datasets"
        self.audio_dir = self.root / "audio"
        self.work_dir = self.root / "work"
        self.gx_dir = self.root / "gx"
        self.staging_dir = self.root / ".staging"

    @property
    def audio_pool(self) -> AudioPool:
        return AudioPool(self.audio_dir)

    def data_docs_dir(self, version_id: str) -> Path:
        return self.gx_dir / "data_docs" / version_id

    def relative(self, path: str | Path) -> str:
        """`path` as the catalog records it: relative to the store root (POSIX separators) when it lies in the
        store, which moves with it; absolute when it lies elsewhere (e.g. a model trained outside it)."""
        path = Path(os.path.abspath(path))
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def resolve(self, recorded: str | Path) -> Path:
        """A path the catalog or a table records, on this machine: relative ones (every path written since
        stores became relocatable) under this store's root; absolute ones (older catalogs) as they are."""
        return self.root / recorded
