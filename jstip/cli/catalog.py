"""Commands over published versions: query, quarantine, stats, report, verify, export, catalog list/show."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from jstip.cli.common import (StoreOption, TimeoutOption, VersionArgument, app, catalog_app, console, fail,
                              one_line_errors, print_relation, say)


class ExportFormat(str, Enum):
    """What `jstip export` writes (jstip.storage.export.EXPORT_FORMATS)."""

    lhotse = "lhotse"
    lhotse_shar = "lhotse-shar"
    nemo = "nemo"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the catalog's views (spans, utterances, quarantine, ...).")],
    store: StoreOption = Path("data"),
    timeout: TimeoutOption = None,
):
    """Run one read-only SELECT against the store's catalog (no writes, no files outside the store's datasets)."""
    from jstip.storage import DatasetStore, StoreError

    with one_line_errors(StoreError):
        columns, rows = DatasetStore(store).user_query(sql, timeout_s=timeout)  # sandboxed: jstip.storage.sandbox
    print_relation(columns, rows)


@app.command()
def quarantine(
    version: VersionArgument = None,
    store: StoreOption = Path("data"),
    examples: Annotated[int, typer.Option(min=0, help="Example items shown per reason.")] = 3,
    check: Annotated[Optional[str], typer.Option(help="Only this check_name.")] = None,
):
    """List a version's quarantined items grouped by reason (stage and check), with counts, hours and examples."""
    from jstip.storage import DatasetStore, StoreError
    from jstip.storage.views import DERIVED_VIEWS

    data_store = DatasetStore(store)
    with one_line_errors(StoreError):
        v = data_store.version(version)
        # the version's own schema; the view's SQL, so versions registered before the view existed work too
        with data_store.connect(read_only=True, version=v.version_id) as con:
            summary = con.execute(f"SELECT * FROM ({DERIVED_VIEWS['quarantine_summary']}) "
                                  "WHERE ? IS NULL OR check_name = ?", [check, check]).fetchall()
            items = con.execute(
                """SELECT stage, check_name, utterance_id, value, threshold, reason FROM (
                     SELECT *, row_number() OVER (PARTITION BY stage, check_name ORDER BY utterance_id) AS k
                     FROM quarantine WHERE ? IS NULL OR check_name = ?) WHERE k <= ?
                   ORDER BY stage, check_name, utterance_id""", [check, check, examples]).fetchall()
    say((f"{v.name}/{v.version_id}", "bold"), f": {sum(r[2] for r in summary)} quarantine row(s)"
                 f"{f' of check {check}' if check else ''}; accepted utterances: {v.row_counts.get('utterances')}")
    if not summary:
        return
    print_relation(["stage", "check", "count", "hours", "no duration"],
                   [(st, ch, n, f"{h:.4f}", u) for st, ch, n, h, u, _ in summary], title="quarantine by reason")
    for st, ch, *_ in summary:
        rows = [(uid, value, threshold, reason) for s_, c_, uid, value, threshold, reason in items
                if (s_, c_) == (st, ch)]
        if rows:
            print_relation(["utterance", "value", "threshold", "reason"], rows, title=f"{st} / {ch}: examples")


def _sql_parameter(value: str):
    """A --param value: an integer or a decimal number when it reads as one, else text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@app.command()
def stats(
    version: VersionArgument = None,
    store: StoreOption = Path("data"),
    sql: Annotated[Optional[str], typer.Option("--sql", help="Run this SQL instead, read-only, in the version's "
                                               "schema (its tables and the stats_* views).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Value bound to the next `?` of --sql "
                                                       "(repeat for several; numbers bind as numbers).")] = None,
    timeout: TimeoutOption = None,
):
    """Interleave plan statistics of a version: span lengths, speech fraction, spans per utterance, hours per
    domain, entity placement (the catalog's stats_* views)."""
    import duckdb

    from jstip.storage import DatasetStore, StoreError
    from jstip.storage.views import PLAN_STATISTICS_VIEWS

    data_store = DatasetStore(store)
    try:
        v = data_store.version(version)
        if sql is not None:  # sandboxed: see DatasetStore.user_query
            columns, rows = data_store.user_query(sql, [_sql_parameter(p) for p in param or []],
                                                  version=v.version_id, timeout_s=timeout)
            print_relation(columns, rows)
            return
        with data_store.connect(read_only=True, version=v.version_id) as con:
            say((f"{v.name}/{v.version_id}", "bold"), f": {v.row_counts.get('interleave_plans', 0)} plans, "
                         f"{v.row_counts.get('spans', 0)} spans")
            for name, view_sql in PLAN_STATISTICS_VIEWS.items():
                if name.endswith("_histogram"):
                    continue
                # the view's SQL, so versions registered before the view existed work too
                rel = con.execute(f"SELECT * FROM ({view_sql})")
                print_relation([d[0] for d in rel.description], rel.fetchall(), title=name)
            histograms = ", ".join(n for n in PLAN_STATISTICS_VIEWS if n.endswith("_histogram"))
            console.print(f"distributions: {histograms} (e.g. jstip stats --sql 'SELECT * FROM "
                          f"stats_span_length_histogram WHERE unit = ?' -p words)")
    except StoreError as e:
        fail(str(e))
    except duckdb.Error as e:
        fail(f"query failed: {e}")


@app.command()
def report(
    version: VersionArgument = None,
    store: StoreOption = Path("data"),
):
    """Write an HTML report of a version (span length, speech fraction, duration, quarantine and alignment score
    plots, the statistics tables, a link to the GX Data Docs) to <store>/reports/<version>/index.html."""
    from jstip.storage import StoreError
    from jstip.storage.report import write_report

    with one_line_errors(StoreError):
        index = write_report(store, version)
    console.print(f"wrote {index}")


@app.command()
def verify(
    version: Annotated[Optional[str], typer.Argument(help="Version id, unique id prefix or dataset name. Default: "
                                                          "every published version.")] = None,
    store: StoreOption = Path("data"),
    full: Annotated[bool, typer.Option("--full", help="Hash every file, the audio included (default: every file's "
                                                      "size, every Parquet file's sha256, a sample of the audio).")
                    ] = False,
):
    """Check that a version's files are those it was published with (sizes and sha256 recorded at publishing);
    exit 1 naming each file that differs."""
    from jstip.storage import DatasetStore, StoreError

    data_store = DatasetStore(store)
    with one_line_errors(StoreError):
        versions = [data_store.version(version)] if version else data_store.versions()
        if not versions:
            raise StoreError(f"no published versions in {data_store.catalog_path} (run `jstip build --store {store}`)")
        reports = [data_store.verify_version(v.version_id, full=full) for v in versions]
    failed = False
    for report in reports:
        v = report.version
        if report.unrecorded:
            say((f"{v.name}/{v.version_id}: published before file checksums were recorded; nothing to compare "
                 "(rebuild it to record them)", "yellow"))
            continue
        what = (f"{report.files} files, {report.hashed} hashed ({report.hashed_bytes / 1e6:.1f} MB), "
                f"{report.mode} check")
        if report.ok:
            say(("ok", "green"), f" {v.name}/{v.version_id}: {what}")
            continue
        failed = True
        say(("TAMPERED", "red"), f" {v.name}/{v.version_id}: {len(report.problems)} file(s) differ ({what})")
        for problem in report.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
    if failed:
        raise typer.Exit(code=1)


@app.command()
def export(
    format: Annotated[ExportFormat, typer.Option("--format", help="lhotse: cuts.jsonl.gz; lhotse-shar: tar shards "
                                                                  "with the audio; nemo: manifest.jsonl")],
    out: Annotated[Path, typer.Option(help="Output directory (must be empty or absent, unless --overwrite).")],
    store: StoreOption = Path("data"),
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out (only once the export is "
                                                 "complete).")] = False,
    shard_size: Annotated[int, typer.Option(min=1, help="lhotse-shar: cuts per shard.")] = 1000,
    version: VersionArgument = None,
):
    """Export a version's accepted utterances with their normalised audio, word alignments and interleave
    spans (plus the domain text) for Lhotse/icefall or NeMo trainers."""
    from jstip.storage import StoreError
    from jstip.storage.export import ExportError, export_version

    with one_line_errors(StoreError, ExportError, OSError):
        summary = export_version(store, version, format.value, out, overwrite=overwrite, shard_size=shard_size)
    console.print(f"{summary.name}/{summary.version_id}: exported {summary.utterances} utterances "
                  f"({summary.audio_seconds / 3600:.3f} h, {summary.words} words), {summary.plans} plans, "
                  f"{summary.spans} spans, {summary.text_sentences} text-only sentences as {summary.format}")
    console.print(f"wrote {summary.out}: {', '.join(summary.files)}")


@catalog_app.command("list")
def catalog_list(
    store: StoreOption = Path("data"),
    name: Annotated[Optional[str], typer.Option(help="Only versions of this dataset.")] = None,
):
    """List published dataset versions, oldest first, with what each is for (train, or held out: dev, test)."""
    from jstip.storage import DatasetStore, StoreError

    data_store = DatasetStore(store)
    with one_line_errors(StoreError):
        data_store.connect(read_only=True).close()  # a --store that is no store is an error, not an empty list
    versions = data_store.versions(name)
    if not versions:
        console.print(f"no published versions in {data_store.catalog_path}" + (f" named {name}" if name else ""))
        return
    default_version = data_store.default_version() if name is None else None
    default = None if default_version is None else default_version.version_id
    # fits 80 columns: lineage, config and code version are in `jstip catalog show VERSION`
    print_relation(
        ["version", "name", "role", "created (UTC)", "utterances", "quarantine"],
        [(v.version_id + (" *" if v.version_id == default else ""), v.name, v.role,
          v.created_at.strftime("%Y-%m-%d %H:%M"), v.row_counts.get("utterances"), v.row_counts.get("quarantine"))
         for v in versions])
    if default:
        console.print("* the default version of every command (the newest training version); name any other by "
                      "id or dataset name", markup=False, highlight=False)


@catalog_app.command("show")
def catalog_show(
    version: VersionArgument = None,
    store: StoreOption = Path("data"),
):
    """Show one version: lineage, config, row counts and where its tables are."""
    from jstip.storage import DatasetStore, StoreError
    from jstip.storage.layout import version_schema

    with one_line_errors(StoreError):
        v = DatasetStore(store).version(version)
    say((f"{v.name}/{v.version_id}", "bold"), f"  role={v.role}  status={v.status}")
    console.print(f"parent:  {v.parent_version or 'none'}")
    console.print(f"created: {v.created_at.isoformat()}   code: {v.code_version}")
    console.print(f"path:    {v.path}")
    console.print(f"docs:    {v.data_docs_path or 'none (no Great Expectations suites ran)'}")
    console.print(f"query:   SELECT * FROM {version_schema(v.version_id)}.spans")
    print_relation(["table", "rows"], sorted(v.row_counts.items()), title="tables")
    console.print("config:")
    console.print_json(json.dumps(v.config))
