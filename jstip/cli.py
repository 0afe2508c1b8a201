"""The `jstip` command line: synthesise a demo corpus, build datasets, inspect the catalog."""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(help="jstip: interleaved speech-text data for speech-LLM pretraining.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
catalog_app = typer.Typer(help="Inspect published dataset versions in a store's DuckDB catalog.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
models_app = typer.Typer(help="Inspect trained models registered in a store's DuckDB catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()

StoreOption = Annotated[Path, typer.Option("--store", help="Root of the versioned dataset store.")]

SPAN_STATISTICS_SQL = """
SELECT modality, role, count(*) AS spans, round(avg(num_words), 2) AS mean_words,
       round(avg(audio_end - audio_start), 3) AS mean_seconds
FROM spans GROUP BY modality, role ORDER BY modality, role
"""


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def _print_relation(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, no_wrap=index == 0)  # ids in the first column must stay copy-pasteable
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output directory for audio, manifests and the text corpus.")],
    utterances: Annotated[int, typer.Option(min=1, help="Number of utterances to synthesise.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same bytes.")] = 0,
):
    """Synthesise a medical/banking demo corpus with espeak-ng (audio, Lhotse + NeMo manifests, word timings)."""
    from jstip.tasks.synth import synthesize_corpus

    result = synthesize_corpus(out, utterances=utterances, seed=seed)
    console.print(result)


def _run_build(manifest, store, config, name, text_corpus, shard_size):
    from jstip.config import ConfigError, load_config
    from jstip.flows.build_interleaved import build_interleaved
    from jstip.storage import StoreBusyError
    from jstip.tasks.ingest import ManifestError, detect_manifest_format
    from jstip.tasks.stages import AccountingError
    from jstip.tasks.suites import QualityGateError

    # Validate at the edge, before Prefect starts: a bad path or config is one line, not a failed flow run.
    try:
        load_config(config)
        if manifest is not None:
            detect_manifest_format(manifest)
        if text_corpus is not None and not text_corpus.is_file():
            raise ManifestError(f"text corpus not found: {text_corpus} (expected `domain<TAB>sentence` lines)")
    except (ConfigError, ManifestError) as e:
        _fail(str(e))
    from jstip.progress import stage_progress

    try:
        with stage_progress(console):
            return build_interleaved(manifest=None if manifest is None else str(manifest), store=str(store),
                                     config_path=None if config is None else str(config), name=name,
                                     text_corpus=None if text_corpus is None else str(text_corpus),
                                     shard_size=shard_size)
    except (ConfigError, ManifestError, AccountingError, QualityGateError, StoreBusyError) as e:
        _fail(str(e))


def _command_name() -> str:
    """How the user can call jstip again: `.venv/bin/jstip` after `make demo`, `jstip` when on PATH."""
    import os
    import shutil

    invoked = Path(sys.argv[0])
    if invoked.name == "jstip" and shutil.which("jstip") != str(invoked.resolve()):
        return os.path.relpath(invoked)
    return "jstip"


def _report(published, store: Path) -> None:
    from jstip.storage import DatasetStore

    console.print(f"\n[bold green]published[/bold green] {published.name}/{published.version_id}"
                  f"  (parent: {published.parent_version or 'none'})")
    console.print(f"ingested {published.ingested} utterances: {published.accepted} accepted, "
                  f"{published.quarantined} quarantined")
    with DatasetStore(store).connect(read_only=True) as con:
        rel = con.execute(SPAN_STATISTICS_SQL)
        _print_relation([d[0] for d in rel.description], rel.fetchall(), title="span statistics (DuckDB over `spans`)")
    console.print(f"dataset files: {published.path}")
    console.print(f"catalog:       {DatasetStore(store).catalog_path}")
    if published.data_docs_path:
        console.print(f"data docs:     {published.data_docs_path}"
                      + (f"  ({len(published.suite_failures)} expectation(s) failed; published with checks.gx: warn)"
                         if published.suite_failures else ""))
    jstip = _command_name()
    console.print(f"quarantine:    {jstip} quarantine {published.version_id} --store {store}")
    console.print(f"statistics:    {jstip} stats --store {store}   (HTML with plots: {jstip} report --store {store})")
    console.print(f"try:           {jstip} catalog list --store {store}")
    console.print(f"               {jstip} query --store {store} 'SELECT check_name, count(*) FROM quarantine GROUP BY 1'")


@app.command()
def build(
    manifest: Annotated[Optional[Path], typer.Option(
        help="Lhotse manifest (cuts, or supervisions beside recordings), NeMo JSONL manifest, or a directory "
             "of audio files with .txt transcripts. Default: the embedded demo corpus.")] = None,
    store: StoreOption = Path("data"),
    config: Annotated[Optional[Path], typer.Option(help="YAML build config. Default: the demo config "
                                                        "(configs/demo.yaml).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Dataset name (overrides the config's).")] = None,
    text_corpus: Annotated[Optional[Path], typer.Option(help="Domain text: `domain<TAB>sentence` lines.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(min=1, help="Utterances per shard task.")] = None,
):
    """Run the build-interleaved flow (on an ephemeral Prefect server) and publish a dataset version."""
    published = _run_build(manifest, store, config, name, text_corpus, shard_size)
    _report(published, store)


DECODING_MEANING = {
    "greedy": "the LLM alone, greedy",
    "ctc-greedy": "the CTC head alone (no LLM)",
}


def _decoding_meaning(name: str) -> str:
    if name in DECODING_MEANING:
        return DECODING_MEANING[name]
    if name.startswith("joint-"):
        return "CTC head + LLM, beam search (the model's decoding)"
    return f"the LLM alone, beam search ({name[4:]} beams)"


@app.command()
def demo(
    store: StoreOption = Path("data"),
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also run the downstream loop: pretrain the LM "
                                                                  "prior, train the CPU demo speech-LLM, evaluate, "
                                                                  "promote.")] = True,
):
    """Synthesise the demo corpus, build it, show what was published; then pretrain an LM prior, train a small
    speech-LLM from it, evaluate it on a held-out test set and promote it (flows `pretrain-lm` and
    `nightly-retrain`; a few minutes on 2 cores)."""
    import time

    started = time.perf_counter()
    published = _run_build(None, store, None, None, None, None)
    _report(published, store)
    if not train:
        return
    from jstip.flows.nightly_retrain import nightly_retrain
    from jstip.flows.pretrain_lm import pretrain_lm as pretrain_flow
    from jstip.storage.registry import ModelRegistry

    console.print("\n[bold]downstream:[/bold] pretrain an LM prior (flow pretrain-lm), then nightly-retrain: build "
                  "the held-out test set, train from the prior, evaluate, promote")
    prior = pretrain_flow(store=str(store), dataset_version=published.version_id)
    decision = nightly_retrain(store=str(store), base_llm=prior.model_id)
    registry = ModelRegistry(store)
    model = registry.model(decision.candidate_id)
    evidence = decision.evidence or {}
    results = [r for r in registry.eval_results(model_id=model.model_id).to_pylist()
               if r["dataset_version"] == evidence.get("dataset_version") and r["domain"] == "all"]
    by_decoding: dict[str, dict[str, float]] = {}
    for r in results:
        by_decoding.setdefault(r["decoding"], {})[r["metric"]] = r["value"]
    pm = prior.metrics
    console.print(f"\n[bold green]LM prior[/bold green] {prior.model_id}: a {pm['parameters']:,}-parameter LM "
                  f"pretrained on the demo's domain text ({pm['domain_sentences']} sentences) + "
                  f"{pm['general_sentences']} general English sentences sampled from pocketsphinx's trigram LM")
    m = model.metrics
    console.print(f"[bold green]model[/bold green] {model.model_id}: the speech-LLM trained from it on "
                  f"{model.dataset_version}, {model.config['steps']} steps (loss {m['first_loss']:.2f} -> "
                  f"{m['final_loss']:.2f}, {m['train_seconds'] / 60:.1f} min)")
    any_row = next(iter(by_decoding.values()), {})
    console.print(f"\n[bold]held-out test set[/bold] {evidence.get('test_set')} ({evidence.get('dataset_version')}): "
                  f"{int(any_row.get('utterances', 0))} utterances ({int(any_row.get('ref_words', 0))} words, "
                  f"{int(any_row.get('entity_occurrences', 0))} entity mentions) that no training utterance repeats")
    order = ["greedy", "beam4", "ctc-greedy"] + sorted(d for d in by_decoding if d.startswith("joint-"))
    order = [d for d in order if d in by_decoding] + [d for d in by_decoding if d not in order]
    best = min(order, key=lambda d: by_decoding[d].get("wer", float("inf"))) if order else None
    metrics = ("wer", "entity_accuracy", "eer", "hallucination_rate")
    _print_relation(["decoding", "what it is", "WER", "entity accuracy", "EER", "hallucinations"],
                    [(d + (" (best)" if d == best else ""), _decoding_meaning(d),
                      *(f"{by_decoding[d][k]:.3f}" if k in by_decoding[d] else "" for k in metrics)) for d in order])
    console.print("WER: word errors (substituted, deleted, inserted) per reference word; 0 is perfect, lower is better.\n"
                  "entity accuracy: share of entity mentions (drug names, doses, conditions, procedures, doctors, bank "
                  "products, merchants, amounts, dates, card digits) transcribed exactly; higher is better.\n"
                  "EER: word errors on entity words. hallucinations: share of hypotheses more than twice as long as "
                  "the reference.")
    if best is not None:
        examples = registry.eval_utterances(model.model_id, evidence["dataset_version"], best).to_pylist()[:3]
        console.print(f"\nexamples ({best}):")
        for row in examples:
            console.print(f"  reference:  {row['reference']}")
            console.print(f"  hypothesis: {row['hypothesis']}")
    console.print(f"\npromotion on channel nightly: {'promoted' if decision.promote else 'kept the incumbent'} "
                  f"({decision.reason})")
    jstip = _command_name()
    console.print(f"demo done in {(time.perf_counter() - started) / 60:.1f} min")
    console.print(f"try:           {jstip} models list --store {store}")
    console.print(f"               {jstip} evals --store {store}   (per domain)")
    console.print(f"               {jstip} query --store {store} 'SELECT reason FROM promotions'")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the catalog's views (spans, utterances, quarantine, ...).")],
    store: StoreOption = Path("data"),
):
    """Run one read-only SELECT against the store's catalog (no writes, no files outside the store's datasets)."""
    from jstip.storage import DatasetStore, StoreError

    try:
        columns, rows = DatasetStore(store).user_query(sql)  # sandboxed: see DatasetStore.user_query
    except StoreError as e:
        _fail(str(e))
    _print_relation(columns, rows)


@app.command()
def quarantine(
    version: Annotated[str, typer.Argument(help="Version id (or a unique prefix), or `latest`.")],
    store: StoreOption = Path("data"),
    examples: Annotated[int, typer.Option(min=0, help="Example items shown per reason.")] = 3,
    check: Annotated[Optional[str], typer.Option(help="Only this check_name.")] = None,
):
    """List a version's quarantined items grouped by reason (stage and check), with counts, hours and examples."""
    from jstip.storage import DatasetStore, StoreError
    from jstip.storage.views import DERIVED_VIEWS

    data_store = DatasetStore(store)
    try:
        v = data_store.version(version)  # an id, a prefix or `latest`
        with data_store.connect(read_only=True) as con:
            # the version's own schema; the view's SQL, so versions registered before the view existed work too
            con.execute(f'USE "v_{v.version_id}"')
            summary = con.execute(f"SELECT * FROM ({DERIVED_VIEWS['quarantine_summary']}) "
                                  "WHERE ? IS NULL OR check_name = ?", [check, check]).fetchall()
            items = con.execute(
                """SELECT stage, check_name, utterance_id, value, threshold, reason FROM (
                     SELECT *, row_number() OVER (PARTITION BY stage, check_name ORDER BY utterance_id) AS k
                     FROM quarantine WHERE ? IS NULL OR check_name = ?) WHERE k <= ?
                   ORDER BY stage, check_name, utterance_id""", [check, check, examples]).fetchall()
    except StoreError as e:
        _fail(str(e))
    console.print(f"[bold]{v.name}/{v.version_id}[/bold]: {sum(r[2] for r in summary)} quarantine row(s)"
                  f"{f' of check {check}' if check else ''}; accepted utterances: {v.row_counts.get('utterances')}")
    if not summary:
        return
    _print_relation(["stage", "check", "count", "hours", "no duration"],
                    [(st, ch, n, f"{h:.4f}", u) for st, ch, n, h, u, _ in summary], title="quarantine by reason")
    for st, ch, *_ in summary:
        rows = [(uid, value, threshold, reason) for s_, c_, uid, value, threshold, reason in items
                if (s_, c_) == (st, ch)]
        if rows:
            _print_relation(["utterance", "value", "threshold", "reason"], rows, title=f"{st} / {ch}: examples")


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
    version: Annotated[Optional[str], typer.Argument(help="Version id (or a unique prefix). Default: the latest.")
                       ] = None,
    store: StoreOption = Path("data"),
    sql: Annotated[Optional[str], typer.Option("--sql", help="Run this SQL instead, read-only, in the version's "
                                               "schema (its tables and the stats_* views).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Value bound to the next `?` of --sql "
                                                       "(repeat for several; numbers bind as numbers).")] = None,
):
    """Interleave plan statistics of a version: span lengths, speech fraction, spans per utterance, hours per
    domain, entity placement (the catalog's stats_* views)."""
    import duckdb

    from jstip.storage import DatasetStore, StoreError
    from jstip.storage.views import PLAN_STATISTICS_VIEWS

    data_store = DatasetStore(store)
    try:
        v = data_store.version(version) if version else data_store.latest()
        if v is None:
            raise StoreError(f"no published versions in {data_store.catalog_path} (run `jstip build --store {store}`)")
        if sql is not None:  # sandboxed: see DatasetStore.user_query
            columns, rows = data_store.user_query(sql, [_sql_parameter(p) for p in param or []],
                                                  schema=f"v_{v.version_id}")
            _print_relation(columns, rows)
            return
        with data_store.connect(read_only=True) as con:
            con.execute(f'USE "v_{v.version_id}"')  # ids are hex: see DatasetStore.version
            console.print(f"[bold]{v.name}/{v.version_id}[/bold]: {v.row_counts.get('interleave_plans', 0)} plans, "
                          f"{v.row_counts.get('spans', 0)} spans")
            for name, view_sql in PLAN_STATISTICS_VIEWS.items():
                if name.endswith("_histogram"):
                    continue
                # the view's SQL, so versions registered before the view existed work too
                rel = con.execute(f"SELECT * FROM ({view_sql})")
                _print_relation([d[0] for d in rel.description], rel.fetchall(), title=name)
            histograms = ", ".join(n for n in PLAN_STATISTICS_VIEWS if n.endswith("_histogram"))
            console.print(f"distributions: {histograms} (e.g. jstip stats --sql 'SELECT * FROM "
                          f"stats_span_length_histogram WHERE unit = ?' -p words)")
    except StoreError as e:
        _fail(str(e))
    except duckdb.Error as e:
        _fail(f"query failed: {e}")


@app.command()
def report(
    version: Annotated[Optional[str], typer.Argument(help="Version id (or a unique prefix). Default: the latest.")
                       ] = None,
    store: StoreOption = Path("data"),
):
    """Write an HTML report of a version (span length, speech fraction, duration, quarantine and alignment score
    plots, the statistics tables, a link to the GX Data Docs) to <store>/reports/<version>/index.html."""
    from jstip.storage import StoreError
    from jstip.tasks.report import write_report

    try:
        index = write_report(store, version)
    except StoreError as e:
        _fail(str(e))
    console.print(f"wrote {index}")


@app.command()
def export(
    version: Annotated[str, typer.Argument(help="Version id (or a unique prefix), or `latest`.")],
    format: Annotated[str, typer.Option("--format", help="lhotse (cuts.jsonl.gz) | lhotse-shar (tar shards with "
                                                         "the audio) | nemo (manifest.jsonl)")],
    out: Annotated[Path, typer.Option(help="Output directory (must be empty or absent, unless --overwrite).")],
    store: StoreOption = Path("data"),
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out (only once the export is "
                                                 "complete).")] = False,
    shard_size: Annotated[int, typer.Option(min=1, help="lhotse-shar: cuts per shard.")] = 1000,
):
    """Export a version's accepted utterances with their normalised audio, word alignments and interleave
    spans (plus the domain text) for Lhotse/icefall or NeMo trainers."""
    from jstip.storage import StoreError
    from jstip.tasks.export import ExportError, export_version

    try:
        summary = export_version(store, version, format, out, overwrite=overwrite, shard_size=shard_size)
    except (StoreError, ExportError, OSError) as e:
        _fail(str(e))
    console.print(f"{summary.name}/{summary.version_id}: exported {summary.utterances} utterances "
                  f"({summary.audio_seconds / 3600:.3f} h, {summary.words} words), {summary.plans} plans, "
                  f"{summary.spans} spans, {summary.text_sentences} text-only sentences as {summary.format}")
    console.print(f"wrote {summary.out}: {', '.join(summary.files)}")


@app.command()
def align(
    manifest: Annotated[Path, typer.Argument(help="NeMo-style JSONL manifest (audio_filepath, text, optional id, "
                                                  "duration, offset).")],
    out: Annotated[Path, typer.Option(help="Output: a .jsonl / .ctm file, or a directory for textgrid.")],
    aligner: Annotated[str, typer.Option(help="pocketsphinx | whisperx | nemo")] = "pocketsphinx",
    model: Annotated[Optional[str], typer.Option(help="whisperx: hub id or local Wav2Vec2ForCTC dir; "
                                                      "nemo: .nemo file or pretrained name.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    format: Annotated[str, typer.Option("--format", help="jsonl | ctm | textgrid")] = "jsonl",
    config: Annotated[Optional[Path], typer.Option(help="YAML build config whose align/normalize sections to "
                                                        "use (--aligner/--model override it).")] = None,
):
    """Word-align a manifest: one output line per input line, in order, status ok or failed with a reason."""
    from pydantic import ValidationError

    from jstip.config import ConfigError, load_config
    from jstip.tasks.align_manifest import OUTPUT_FORMATS, align_manifest
    from jstip.tasks.ingest import ManifestError

    if format not in OUTPUT_FORMATS:
        _fail(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {format!r}")
    try:
        build_config = load_config(config)
        align_config = build_config.align.model_validate(
            {**build_config.align.model_dump(), "aligner": aligner, "model": model or build_config.align.model})
        summary = align_manifest(manifest, align_config, out, format, workers, build_config.normalize)
    except (ConfigError, ManifestError, ValidationError, OSError) as e:
        _fail(str(e))
    console.print(f"{summary.entries} entries: {summary.aligned} aligned, {summary.failed} failed "
                  f"({summary.audio_seconds:.1f} s of audio)")
    console.print(f"wrote {summary.out}" + (f" and {summary.status_file}" if summary.status_file != summary.out else ""))


@app.command("eval-alignment")
def eval_alignment(
    reference: Annotated[Path, typer.Option(help="Reference alignment: jstip JSONL, CTM, TextGrid or TIMIT .wrd "
                                                 "(a file, or a directory of them).")],
    hypothesis: Annotated[Path, typer.Option(help="Hypothesis alignment, in any of the same formats.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
):
    """Word-boundary accuracy: start/end error (ms), share within 20/50/100 ms, share of words aligned."""
    from jstip.tasks.alignment_io import AlignmentFormatError, read_alignments
    from jstip.tasks.eval_alignment import evaluate_alignments

    try:
        errors = evaluate_alignments(read_alignments(reference), read_alignments(hypothesis))
    except AlignmentFormatError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(errors.as_dict(), indent=2))
        return
    _print_relation(["metric", "value"], [(k, f"{v:.2f}" if isinstance(v, float) else v)
                                          for k, v in errors.as_dict().items()], title="alignment accuracy")


@catalog_app.command("list")
def catalog_list(
    store: StoreOption = Path("data"),
    name: Annotated[Optional[str], typer.Option(help="Only versions of this dataset.")] = None,
):
    """List published dataset versions, oldest first."""
    from jstip.storage import DatasetStore

    versions = DatasetStore(store).versions(name)
    if not versions:
        console.print(f"no published versions in {DatasetStore(store).catalog_path}")
        return
    _print_relation(
        ["version", "name", "parent", "created (UTC)", "utterances", "spans", "quarantine", "code"],
        [(v.version_id, v.name, v.parent_version, v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
          v.row_counts.get("utterances"), v.row_counts.get("spans"), v.row_counts.get("quarantine"),
          v.code_version) for v in versions],
    )


@catalog_app.command("show")
def catalog_show(
    version: Annotated[str, typer.Argument(help="Version id (or a unique prefix).")],
    store: StoreOption = Path("data"),
):
    """Show one version: lineage, config, row counts and where its tables are."""
    from jstip.storage import DatasetStore, StoreError

    try:
        v = DatasetStore(store).version(version)
    except StoreError as e:
        _fail(str(e))
    console.print(f"[bold]{v.name}/{v.version_id}[/bold]  status={v.status}")
    console.print(f"parent:  {v.parent_version or 'none'}")
    console.print(f"created: {v.created_at.isoformat()}   code: {v.code_version}")
    console.print(f"path:    {v.path}")
    console.print(f"docs:    {v.data_docs_path or 'none (no Great Expectations suites ran)'}")
    console.print(f"query:   SELECT * FROM v_{v.version_id}.spans")
    _print_relation(["table", "rows"], sorted(v.row_counts.items()), title="tables")
    console.print("config:")
    console.print_json(json.dumps(v.config))


def _metric_text(metric: str, value: float) -> str:
    if metric.endswith(("wer", "eer", "accuracy", "rate")):
        return f"{value:.4f}"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


EVAL_SUMMARY_METRICS = ["utterances", "wer", "entity_accuracy", "eer", "hallucination_rate"]


def _print_eval_summary(results, metrics: list[str], title: str | None = None, with_model: bool = True) -> None:
    """Eval result rows pivoted: one row per (model,) test set, decoding, dataset version and domain."""
    keys = ["model_id"] * with_model + ["test_set", "decoding", "dataset_version", "domain"]
    groups: dict[tuple, dict[str, float]] = {}
    for row in results.to_pylist():
        groups.setdefault(tuple(row[k] for k in keys), {})[row["metric"]] = row["value"]
    _print_relation(["model"] * with_model + ["test set", "decoding", "dataset version", "domain", *metrics],
                    [(*key, *(_metric_text(m, values[m]) if m in values else None for m in metrics))
                     for key, values in groups.items()], title=title)


@models_app.command("list")
def models_list(
    store: StoreOption = Path("data"),
    name: Annotated[Optional[str], typer.Option(help="Only models of this name.")] = None,
):
    """List registered models, oldest first, with the channels that have promoted them."""
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    models = registry.models(name)
    if not models:
        console.print(f"no models registered in {registry.store.catalog_path}")
        return
    channels: dict[str, list[str]] = {}
    for channel, model_id in registry.channels().items():
        channels.setdefault(model_id, []).append(channel)
    _print_relation(
        ["model", "name", "dataset version", "parent", "created (UTC)", "promoted on", "path"],
        [(m.model_id, m.name, m.dataset_version, m.parent_model, m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
          ", ".join(channels.get(m.model_id, [])), m.path) for m in models],
    )


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="Model id (or a unique prefix).")],
    store: StoreOption = Path("data"),
):
    """Show one model: lineage, checkpoint, training metrics, overall eval results and config."""
    import pyarrow.compute as pc

    from jstip.storage import StoreError
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    try:
        m = registry.model(model)
        results = registry.eval_results(m.model_id)
    except StoreError as e:
        _fail(str(e))
    channels = [channel for channel, model_id in registry.channels().items() if model_id == m.model_id]
    console.print(f"[bold]{m.name}/{m.model_id}[/bold]")
    console.print(f"trained on:  {m.dataset_version}   parent: {m.parent_model or 'none'}")
    console.print(f"created:     {m.created_at.isoformat()}")
    console.print(f"path:        {m.path}")
    console.print(f"promoted on: {', '.join(channels) or 'none'}")
    if m.metrics:
        _print_relation(["metric", "value"], sorted(m.metrics.items()), title="training metrics")
    overall = results.filter(pc.equal(results["domain"], "all"))
    if overall.num_rows:
        _print_eval_summary(overall, EVAL_SUMMARY_METRICS, title="eval results (all domains)", with_model=False)
    else:
        console.print("eval results: none recorded")
    console.print("config:")
    console.print_json(m.config_json)


@app.command()
def evals(
    store: StoreOption = Path("data"),
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model (id or a unique prefix).")] = None,
    test_set: Annotated[Optional[str], typer.Option("--test-set", help="Only this test set.")] = None,
    metric: Annotated[Optional[list[str]], typer.Option(
        "--metric", "-m", help=f"Metric columns (repeat for several; default: {', '.join(EVAL_SUMMARY_METRICS)}). "
                               "Every row: jstip query 'SELECT * FROM eval_results'.")] = None,
):
    """Eval results of registered models: one row per model, test set, decoding, dataset version and domain."""
    from jstip.storage import StoreError
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    try:
        results = registry.eval_results(model, test_set)
    except StoreError as e:
        _fail(str(e))
    if not results.num_rows:
        console.print(f"no eval results in {registry.store.catalog_path}"
                      + (f" for model {model}" if model else "") + (f" on test set {test_set}" if test_set else ""))
        return
    _print_eval_summary(results, metric or EVAL_SUMMARY_METRICS)


@app.command()
def train(
    store: StoreOption = Path("data"),
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version id or prefix (default: the "
                                                                     "latest published).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML training config (default: the CPU demo model, "
                                                        "jstip.model.config).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Override the config's number of steps.")] = None,
    init_model: Annotated[Optional[str], typer.Option(help="Registered model id to continue training from.")] = None,
    name: Annotated[str, typer.Option(help="Model family name in the catalog.")] = "jstip",
    base_llm: Annotated[Optional[str], typer.Option(
        "--base-llm", help="The LLM to start from, overriding the config's model.llm.path: an LM prior's model id "
                           "(jstip pretrain-lm), a hub id or a local transformers directory.")] = None,
    nproc_per_node: Annotated[int, typer.Option(
        "--nproc-per-node", min=1, help="Training processes on this machine (one per GPU): > 1 runs torchrun "
                                        "with DDP, or FSDP2 (the config's distributed.sharding).")] = 1,
    nnodes: Annotated[str, typer.Option(
        "--nnodes", help="Machines (N, or MIN:MAX): run the same command on each, with --rdzv-endpoint.")] = "1",
    rdzv_endpoint: Annotated[Optional[str], typer.Option(
        "--rdzv-endpoint", help="host:port of the rendezvous (one of the machines), the same on every "
                                "machine.")] = None,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", min=0, help="torchrun restarts the job this many times after a failure, each time "
                                      "resuming from the last checkpoint.")] = 0,
    result_file: Annotated[Optional[Path], typer.Option(hidden=True, help="Under torchrun: where each machine's "
                                                                          "local rank 0 writes the result (JSON).")] = None,
):
    """Train a speech-LLM on a dataset version (Prefect flow `train`); resumes from the last checkpoint.

    Under torchrun (`torchrun --nproc-per-node 8 -m jstip train ...`) each worker runs this command as one
    rank of a DDP/FSDP2 job, without Prefect; `--nproc-per-node N` runs exactly that from the train flow.
    """
    from jstip.model.config import TrainConfigError, load_train_config
    from jstip.storage.store import StoreError
    from jstip.tasks.distributed import DistributedTrainingError, LaunchSpec, under_launcher
    from jstip.tasks.sequences import DatasetError, resolve_version
    from jstip.storage import DatasetStore

    try:  # validate at the edge: a bad config or version is one line, not a failed flow run
        load_train_config(config, steps=steps)
        if not under_launcher():
            resolve_version(DatasetStore(store), version)
        launch = LaunchSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                            max_restarts=max_restarts)
    except (TrainConfigError, DatasetError, StoreError, ValueError) as e:
        _fail(str(e))
    if under_launcher():
        if launch.distributed:
            _fail("already running under torchrun: give --nproc-per-node / --nnodes to torchrun, not to jstip train")
        _train_rank(store, version, config, steps, init_model, name, base_llm, result_file)
        return
    from jstip.flows.train import train as train_flow

    try:
        result = train_flow(store=str(store), dataset_version=version, config_path=None if config is None else str(config),
                            steps=steps, init_model=init_model, name=name, base_llm=base_llm,
                            nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                            max_restarts=max_restarts)
    except (DatasetError, StoreError, DistributedTrainingError) as e:
        _fail(str(e))
    _print_trained(result)


def _print_trained(result) -> None:
    console.print(f"[bold green]model[/bold green] {result.model_id}  trained on dataset version {result.dataset_version}")
    console.print(f"final loss {result.metrics.get('final_loss', float('nan')):.4f} after {result.steps} steps")
    console.print(f"model:  {result.model_dir}")
    console.print(f"log:    {result.model_dir.parent / 'train_log.csv'}")


def _train_rank(store: Path, version: str | None, config: Path | None, steps: int | None, init_model: str | None,
                name: str, base_llm: str | None, result_file: Path | None) -> None:
    """One rank of a torchrun job: train in this process; rank 0 prints, each machine's local rank 0 writes
    the result file (the launching flow reads it)."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import record

    from jstip.model.config import load_train_config, with_base_llm
    from jstip.storage.store import StoreError
    from jstip.tasks.sequences import DatasetError
    from jstip.tasks.train import train as train_task

    rank = int(os.environ["RANK"])

    @record  # torchrun's summary then carries this rank's traceback
    def run():
        train_config = with_base_llm(load_train_config(config, steps=steps), base_llm)
        return train_task(store, version, train_config, init_model=init_model, name=name,
                          on_log=lambda line: console.print(line, highlight=False, soft_wrap=True))

    try:
        result = run()
    except (DatasetError, StoreError) as e:
        _fail(f"rank {rank}: {e}")
    if result_file is not None and os.environ.get("LOCAL_RANK") == "0":
        tmp = result_file.with_name(result_file.name + ".tmp")
        tmp.write_text(result.to_json())
        tmp.rename(result_file)
    if rank == 0:
        _print_trained(result)


@app.command("pretrain-lm")
def pretrain_lm(
    store: StoreOption = Path("data"),
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version whose domain text to read "
                                                                     "(id or prefix; default: the latest).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML pretraining config (default: "
                                                        "jstip.model.config.PretrainConfig).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Override the config's number of steps.")] = None,
    general_sentences: Annotated[Optional[int], typer.Option(
        min=0, help="General English sentences sampled from the pocketsphinx trigram LM (0: domain text only).")
                                ] = None,
    name: Annotated[str, typer.Option(help="Model name in the catalog.")] = "lm-prior",
):
    """Pretrain an LLM prior (flow `pretrain-lm`) on a version's domain text plus general English sampled
    offline; train from it with `jstip train --base-llm MODEL`."""
    from jstip.flows.pretrain_lm import pretrain_lm as pretrain_flow
    from jstip.model.config import TrainConfigError, load_pretrain_config
    from jstip.storage import DatasetStore
    from jstip.storage.store import StoreError
    from jstip.tasks.sequences import DatasetError, resolve_version

    try:  # validate at the edge
        load_pretrain_config(config, steps=steps, general_sentences=general_sentences)
        resolve_version(DatasetStore(store), version)
    except (TrainConfigError, DatasetError, StoreError) as e:
        _fail(str(e))
    try:
        result = pretrain_flow(store=str(store), dataset_version=version,
                               config_path=None if config is None else str(config), steps=steps,
                               general_sentences=general_sentences, name=name)
    except (DatasetError, StoreError, ValueError) as e:
        _fail(str(e))
    m = result.metrics
    console.print(f"[bold green]LM prior[/bold green] {result.model_id}  pretrained on the domain text of "
                  f"{result.dataset_version} ({m['domain_sentences']} sentences) + {m['general_sentences']} general "
                  "English sentences")
    console.print(f"loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}; held-out loss (nats/token): domain "
                  f"{m['domain_val_loss'] if m['domain_val_loss'] is None else round(m['domain_val_loss'], 3)}, "
                  f"general {m['general_val_loss'] if m['general_val_loss'] is None else round(m['general_val_loss'], 3)}")
    console.print(f"model:  {result.model_dir}")
    console.print(f"train from it: {_command_name()} train --store {store} --base-llm {result.model_id}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Registered model id (or a unique prefix).")],
    store: StoreOption = Path("data"),
    test_version: Annotated[Optional[str], typer.Option(help="Dataset version of the test set (default: the "
                                                             "latest published).")] = None,
    test_set: Annotated[Optional[str], typer.Option(help="Name of the test set in eval_results (default: the "
                                                         "version's dataset name).")] = None,
    decoding: Annotated[Optional[list[str]], typer.Option(help="greedy | beam<N> | joint-ctc<lambda>-beam<N> | "
                                                               "ctc-greedy; repeatable (default with a CTC head: greedy, "
                                                               "ctc-greedy, joint-ctc0.3-beam4; without: greedy, beam4).")
                        ] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N utterances.")] = None,
):
    """Decode a test set with a registered model (Prefect flow `evaluate`); scores go to eval_results."""
    from jstip.flows.evaluate import evaluate as evaluate_flow
    from jstip.model.decode import DecodeOptions
    from jstip.storage import DatasetStore
    from jstip.storage.registry import ModelRegistry
    from jstip.storage.store import StoreError
    from jstip.tasks.sequences import DatasetError, resolve_version

    try:  # validate at the edge
        record = ModelRegistry(store).model(model)
        version = resolve_version(DatasetStore(store), test_version)
        for name in decoding or []:
            DecodeOptions.parse(name)
    except (StoreError, DatasetError, ValueError) as e:
        _fail(str(e))
    overall = evaluate_flow(record.model_id, store=str(store), test_version=version.version_id, test_set=test_set,
                            decodings=decoding or None, limit=limit)
    metrics = ("utterances", "wer", "entity_accuracy", "eer", "insertions", "hallucinations")
    rows = [(name, *(f"{values[m]:.4g}" if m in values else "" for m in metrics)) for name, values in overall.items()]
    _print_relation(["decoding", *metrics], rows,
                    title=f"model {record.model_id} on {test_set or version.name} ({version.version_id})")
    console.print(f"per domain: {_command_name()} evals --model {record.model_id} --store {store}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
