"""DuckLake and Delta Lake against jstip's own store, on the tables of one published version.

For each format: publish the version's 8 tables as one new version (snapshot / commit), read it back, list
versions, move the whole thing and read again, flip one byte of a data file and see whether the format
notices, and whether DuckDB 2.0 (jstip's stack) can read it offline. jstip's own publish is timed over the
same Parquet files (sha256 recording included).

The formats need packages jstip does not install: run this in a separate virtual environment, because the
registry's DuckLake extension (`duckdb-ext-ducklake`) is built for DuckDB 1.4.x only while jstip pins 2.0:

    python3 -m venv /tmp/lakes && /tmp/lakes/bin/pip install duckdb==1.4.4 duckdb-ext-ducklake deltalake==1.6.6 \\
        pyarrow==26.0.1
    /tmp/lakes/bin/python benchmarks/table_formats.py STORE [VERSION]

It prints its figures; docs/ARCHITECTURE.md ("Why not DuckLake or Delta Lake") records them with the decision.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("recordings", "utterances", "normalized_audio", "word_alignments", "quarantine", "interleave_plans",
          "spans", "text_corpus")


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _version_dir(store: Path, version: str | None) -> Path:
    dirs = sorted(store.glob("datasets/*/*"), key=lambda p: p.stat().st_mtime)
    return next(d for d in dirs if d.name == version) if version else dirs[-1]


def ducklake(tables: dict[str, pa.Table], work: Path) -> dict:
    import duckdb
    import duckdb_ext

    ext = next(Path(list(duckdb_ext.__path__)[0]).glob("extensions/*/*/ducklake.duckdb_extension"))
    out: dict = {}
    lake = work / "lake"
    lake.mkdir()

    def connect(root: Path):
        con = duckdb.connect(config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD '{ext}'")
        con.execute(f"ATTACH 'ducklake:{root}/meta.ducklake' AS lake (DATA_PATH '{root}/data/')")
        return con

    con = connect(lake)
    started = time.perf_counter()
    con.execute("BEGIN")
    for name, table in tables.items():
        con.register("t", table)
        con.execute(f"CREATE TABLE lake.{name} AS SELECT * FROM t")
        con.unregister("t")
    con.execute("COMMIT")
    out["publish_s"] = time.perf_counter() - started
    out["snapshots"] = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0]
    out["spans_rows"] = con.execute("SELECT count(*) FROM lake.spans").fetchone()[0]
    paths = con.execute("SELECT path, path_is_relative FROM __ducklake_metadata_lake.ducklake_data_file LIMIT 1"
                        ).fetchone()
    out["data_file_path_recorded"] = paths
    columns = [c for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = "
                                         "'__ducklake_metadata_lake' AND table_name = 'ducklake_data_file'").fetchall()]
    out["data_file_columns"] = columns
    con.close()
    data_file = next((lake / "data").rglob("*.parquet"))
    _flip(data_file)
    try:
        con = connect(lake)
        con.execute("SELECT * FROM lake.spans").fetchall()
        con.execute("SELECT * FROM lake.utterances").fetchall()
        out["flipped_byte"] = "read without complaint (or failed only if the byte broke Parquet decoding)"
    except Exception as e:  # noqa: BLE001
        out["flipped_byte"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    finally:
        con.close()
    _flip(data_file)  # restored
    moved = work / "lake-moved"
    shutil.copytree(lake, moved)  # a copy, the original left in place: which files does the copy read?
    shutil.rmtree(lake / "data")  # ... the original's data files gone
    for how, attach in (("with the new DATA_PATH", f"(DATA_PATH '{moved}/data/')"), ("without DATA_PATH", "")):
        con = duckdb.connect(config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD '{ext}'")
        try:
            con.execute(f"ATTACH 'ducklake:{moved}/meta.ducklake' AS lake {attach}")
            out[f"copy {how}"] = f"{con.execute('SELECT count(*) FROM lake.spans').fetchone()[0]} rows"
        except Exception as e:  # noqa: BLE001 - reported
            out[f"copy {how}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        finally:
            con.close()
    out["duckdb_version"] = duckdb.__version__
    return out


def delta(tables: dict[str, pa.Table], work: Path) -> dict:
    from deltalake import DeltaTable, write_deltalake

    out: dict = {}
    root = work / "delta"
    started = time.perf_counter()
    for name, table in tables.items():  # one Delta table per table: no commit across tables
        write_deltalake(str(root / name), table, mode="overwrite")
    out["publish_s"] = time.perf_counter() - started
    spans = DeltaTable(str(root / "spans"))
    out["spans_rows"] = spans.to_pyarrow_table().num_rows
    add = spans.get_add_actions(flatten=True)
    out["add_action_columns"] = add.column_names if hasattr(add, "column_names") else add.schema.names
    out["path_recorded"] = add.column("path")[0].as_py() if hasattr(add, "column") else None
    moved = work / "delta-moved"
    shutil.move(root, moved)
    out["after_move_rows"] = DeltaTable(str(moved / "spans")).to_pyarrow_table().num_rows
    data_file = next((moved / "utterances").glob("*.parquet"))
    _flip(data_file)
    try:
        DeltaTable(str(moved / "utterances")).to_pyarrow_table()
        out["flipped_byte"] = "read without complaint (or failed only if the byte broke Parquet decoding)"
    except Exception as e:  # noqa: BLE001
        out["flipped_byte"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def main() -> None:
    store = Path(sys.argv[1]).resolve()
    version_dir = _version_dir(store, sys.argv[2] if len(sys.argv) > 2 else None)
    tables = {t: pq.read_table(version_dir / t) for t in TABLES}
    size = sum(p.stat().st_size for p in version_dir.rglob("*.parquet"))
    print(f"version {version_dir.name}: {sum(t.num_rows for t in tables.values())} rows, {size / 1e6:.2f} MB Parquet")
    with tempfile.TemporaryDirectory() as tmp:
        for name, measure in (("DuckLake", ducklake), ("Delta Lake", delta)):
            work = Path(tmp) / name.replace(" ", "")
            work.mkdir()
            try:
                result = measure(tables, work)
            except Exception as e:  # noqa: BLE001 - a format that cannot do it is a finding
                result = {"error": f"{type(e).__name__}: {e}"}
            print(f"\n{name}")
            for key, value in result.items():
                print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
