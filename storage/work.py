"""The stage cache: each shard result of each stage lives under a key made from its content.

A key is a hash of the stage name, the keys/hashes of the stage's inputs, the stage's config and the code
version, so a rerun with unchanged inputs finds every result already there and does no stage work, and a
changed config or code misses the cache instead of reusing a stale result.
A result directory appears only complete (written to a temporary sibling, then renamed); the temporary
sibling is named after its owner process, so the next publish deletes what a killed build left
(jstip.storage.lock.remove_stale_temporaries).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jstip.schemas import conform
from jstip.storage.lock import kill_point, temp_name
from jstip.storage.store import PARQUET_OPTIONS


def stage_key(stage: str, *parts: str) -> str:
    return hashlib.sha256("\0".join((stage, *parts)).encode()).hexdigest()[:24]


def result_dir(work_dir: Path, stage: str, key: str) -> Path:
    return Path(work_dir) / stage / key


def cached_stage(
    work_dir: Path, stage: str, key: str, compute: Callable[[], Mapping[str, pa.Table]]
) -> tuple[dict[str, Path], bool]:
    """Return ({table name: parquet path}, was_cached); run `compute` only when the key has no result."""
    out = result_dir(work_dir, stage, key)
    if out.is_dir():
        return {p.stem: p for p in sorted(out.glob("*.parquet"))}, True
    tmp = out.parent / temp_name(key)
    tmp.mkdir(parents=True)
    try:
        for name, table in compute().items():
            pq.write_table(conform(name, table), tmp / f"{name}.parquet", **PARQUET_OPTIONS)
        kill_point(stage)  # a test hook: crash with the result written but not yet in place
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():  # another worker finishing the same key first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {p.stem: p for p in sorted(out.glob("*.parquet"))}, False


def install_directory(built: Path, final: Path, attempts: int = 5) -> None:
    """Put the complete directory `built` at `final`, replacing what is there: readers see the old directory or
    the new one, each whole (a moment with neither is possible). Concurrent installers of the same `final`
    (two builds of one version writing its Data Docs) each install a complete directory; the last one stays."""
    for _ in range(attempts):
        try:
            os.rename(built, final)
            return
        except OSError:
            if not final.exists():
                raise
        trash = final.parent / temp_name(final.name)
        try:
            os.rename(final, trash)
        except FileNotFoundError:  # another installer moved it first
            continue
        shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not install {built} as {final}: other writers kept replacing it")
