"""Read-only SQL from users (`jstip query`, `jstip stats --sql`): one SELECT, in a child process.

Fences, each enough on its own for what it covers:
1. **Statement types, from DuckDB's own parser** (`duckdb.extract_statements`): exactly one statement, of
   type SELECT (which includes WITH, VALUES, FROM-first, DESCRIBE, SHOW and SUMMARIZE). Everything else --
   EXPLAIN (ANALYZE runs its statement), COPY, ATTACH, INSTALL/LOAD, SET/RESET/USE, PRAGMA, CALL, CREATE,
   INSERT/UPDATE/DELETE, EXPORT, `;` chains -- is refused before any database is opened. A statement the
   parser cannot classify is refused too. No regular expression looks at the SQL.
2. **A child process** runs the statement, with the store root as its working directory, and is killed
   when the time limit passes (default 60 s, `JSTIP_QUERY_TIMEOUT_S`): a runaway query ends, whatever
   DuckDB is doing, and nothing it allocated outlives it.
3. **DuckDB's own sandbox** in that child: an in-memory database to which the catalog is attached
   READ_ONLY; `enable_external_access = false` with `allowed_directories` = the store's `datasets/` only
   (no ATTACH, COPY TO, extension install/load, or file outside the published tables; DuckDB also lets
   a database read the file it has attached: the catalog itself); `temp_directory = ''` (nothing spills
   to disk: a query that needs more than `memory_limit` fails instead of writing); extension
   auto-install/auto-load off; then `lock_configuration = true`, so no SET can undo any of it.

The `query()` table function runs SELECT statements only (DuckDB's parser again), so it cannot reach past
fence 1. Parameters are bound (`?`), never formatted into the SQL.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

QUERY_TIMEOUT_ENV = "JSTIP_QUERY_TIMEOUT_S"
DEFAULT_QUERY_TIMEOUT_S = 60.0
# The one statement type user SQL may have (duckdb.extract_statements).
ALLOWED_STATEMENTS = frozenset({"SELECT"})
_ERROR_EXIT = 3  # the child's exit status when DuckDB refused or failed the query (message on stdout)
_CHILD = "import sys; from jstip.storage.sandbox import _child; sys.exit(_child())"


class QueryRefused(ValueError):
    """The SQL is not one read-only statement; the message says what it is and what is accepted."""


class QueryFailed(RuntimeError):
    """DuckDB failed the query, or it ran past the time limit."""


def query_timeout_s(timeout_s: float | None = None) -> float:
    if timeout_s is not None:
        value = timeout_s
    else:
        raw = os.environ.get(QUERY_TIMEOUT_ENV)
        try:
            value = float(raw) if raw else DEFAULT_QUERY_TIMEOUT_S
        except ValueError:
            raise QueryRefused(f"{QUERY_TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise QueryRefused(f"query time limit must be a positive number of seconds, not {value!r}")
    return value


def statement_types(sql: str) -> list[str]:
    """The statement types DuckDB's parser finds in `sql` (e.g. ['SELECT'], ['COPY'], ['SELECT', 'SELECT'])."""
    try:
        statements = duckdb.extract_statements(sql)
        return [str(statement.type).rpartition(".")[2] for statement in statements]
    except duckdb.Error as e:
        raise QueryRefused(f"query failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a statement type this duckdb's Python binding cannot name
        raise QueryRefused(f"query refused: DuckDB's parser could not classify it ({type(e).__name__}: {e})") from None


def check_read_only(sql: str) -> None:
    """Raise QueryRefused unless `sql` is exactly one SELECT statement (fence 1 of the module doc)."""
    kinds = statement_types(sql)
    if len(kinds) != 1 or kinds[0] not in ALLOWED_STATEMENTS:
        shown = ", ".join(kinds) or "none"
        raise QueryRefused(
            f"query refused: user SQL runs read-only, exactly one SELECT (WITH, VALUES, DESCRIBE, SHOW and "
            f"SUMMARIZE are SELECTs too); got {len(kinds)} statement(s) of type {shown}. EXPLAIN, COPY, ATTACH, "
            f"INSTALL/LOAD, SET, PRAGMA, CALL and every writing statement are refused; the catalog is changed "
            f"by `jstip build` only")


def run_read_only(root: Path, catalog: Path, sql: str, params: Sequence = (), schema: str | None = None,
                  timeout_s: float | None = None, lock_timeout_s: float = 600.0) -> tuple[list[str], list[tuple]]:
    """Run one read-only SELECT over the catalog of the store at `root`; return (column names, rows).

    Raises QueryRefused (not one SELECT: nothing ran) or QueryFailed (DuckDB's error, or the time limit)."""
    check_read_only(sql)
    limit = query_timeout_s(timeout_s)
    request = json.dumps({"root": str(root), "catalog": str(catalog), "sql": sql, "params": list(params),
                          "schema": schema, "lock_timeout_s": lock_timeout_s})
    child = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=root, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(request.encode(), timeout=limit)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise QueryFailed(f"query stopped after {limit:g} s, its time limit (raise it with --timeout or "
                          f"{QUERY_TIMEOUT_ENV})") from None
    if child.returncode == _ERROR_EXIT:
        raise QueryFailed(f"query failed: {out.decode('utf-8', 'replace').strip()}")
    if child.returncode != 0:
        raise QueryFailed(f"query failed: the query process exited with status {child.returncode}: "
                          f"{err.decode('utf-8', 'replace').strip()[-2000:]}")
    import pyarrow as pa

    table = pa.ipc.open_stream(io.BytesIO(out)).read_all()
    return table.column_names, list(zip(*(column.to_pylist() for column in table.columns)))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attach(con: duckdb.DuckDBPyConnection, catalog: str, lock_timeout_s: float) -> None:
    started, pause = time.monotonic(), 0.01
    while True:
        try:
            con.execute(f"ATTACH {_quote(catalog)} AS catalog (READ_ONLY)")
            return
        except duckdb.IOException as e:  # a writer holds the catalog file: wait, as DatasetStore.connect does
            if "lock" not in str(e).lower() or time.monotonic() - started > lock_timeout_s:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _child() -> int:
    request = json.loads(sys.stdin.buffer.read())
    root = request["root"]
    # the result goes to the parent through the original stdout; anything DuckDB itself prints (a progress
    # bar, a warning) goes to stderr instead of into the result stream
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    con = duckdb.connect(":memory:", config={
        "file_search_path": root, "temp_directory": "", "autoinstall_known_extensions": False,
        "autoload_known_extensions": False})
    con.execute("SET enable_progress_bar = false")
    try:
        _attach(con, request["catalog"], request["lock_timeout_s"])
        con.execute("USE catalog")
        con.execute(f"SET allowed_directories = [{_quote(os.path.join(root, 'datasets') + os.sep)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        if request["schema"] is not None:
            con.execute('USE "{}"'.format(request["schema"].replace('"', '""')))
        table = con.execute(request["sql"], request["params"]).to_arrow_table()
    except duckdb.Error as e:
        result.write(str(e).encode())
        result.close()
        return _ERROR_EXIT
    import pyarrow as pa

    with result, pa.ipc.new_stream(result, table.schema) as writer:
        writer.write_table(table)
    return 0

