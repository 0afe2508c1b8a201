"""The `jstip` command line: synthesise a demo corpus, build datasets, inspect the catalog."""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from enum import Enum  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402
from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from jstip.tasks.aligners import ALIGNERS  # noqa: E402 - the registry only; no backend is imported

# The machine refuses, not the input: errno -> what to do. Printed as one line by every command (_App).
_MACHINE_ERRORS = {
    errno.ENOSPC: "free some space, or point --store (or --out) at a file system with room; a rerun resumes",
    errno.EDQUOT: "the disk quota is exhausted: free some space, or use another --store (or --out)",
    errno.EROFS: "the file system is mounted read-only: use a writable --store (or --out)",
    errno.EACCES: "this user may not write there: fix the permissions, or use another --store (or --out)",
    errno.EPERM: "the operation is not permitted there: fix the permissions, or use another --store (or --out)",
}


def _machine_refused(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _MACHINE_ERRORS


class _App(typer.Typer):
    """The `jstip` command: a full disk or a refused permission ends any command with one line, not a
    traceback from wherever the write happened."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except OSError as error:
            if not _machine_refused(error):
                raise
            where = f" ({error.filename})" if error.filename else ""
            console.print(Text.assemble(("error:", "red"), f" {error.strerror}{where}: {_MACHINE_ERRORS[error.errno]}"),
                          soft_wrap=True)
            sys.exit(1)


app = _App(help="jstip: interleaved speech-text data for speech-LLM pretraining.", no_args_is_help=True,
           add_completion=False, pretty_exceptions_enable=False)
catalog_app = typer.Typer(help="Inspect published dataset versions in a store's DuckDB catalog.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
models_app = typer.Typer(help="Inspect trained models registered in a store's DuckDB catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
# Nothing printed is read as markup: ids, reasons, paths and SQL results are shown literally (an utterance id
# "[red]X[/red]" prints as itself); styling is explicit, through Text (_say).
console = Console(markup=False, highlight=False)


def _say(*parts: str | tuple[str, str]) -> None:
    """Print one line: strings literally, (text, style) pairs styled."""
    console.print(Text.assemble(*parts), soft_wrap=True)

StoreOption = Annotated[Path, typer.Option("--store", help="Root of the versioned dataset store.")]
class Role(str, Enum):
    """What a dataset version is for (jstip.schemas.tables.DATASET_ROLES)."""

    train = "train"
    dev = "dev"
    test = "test"


# Word-alignment backends, as the registry names them: a new backend is a new choice of --aligner.
AlignerName = Enum("AlignerName", {name: name for name in ALIGNERS}, type=str)


class AlignmentFormat(str, Enum):
    """What `jstip align` writes (jstip.tasks.aligners.align_manifest.OUTPUT_FORMATS)."""

    jsonl = "jsonl"
    ctm = "ctm"
    textgrid = "textgrid"


class ExportFormat(str, Enum):
    """What `jstip export` writes (jstip.storage.export.EXPORT_FORMATS)."""

    lhotse = "lhotse"
    lhotse_shar = "lhotse-shar"
    nemo = "nemo"


VersionArgument = Annotated[Optional[str], typer.Argument(
    help="Version id, unique id prefix, or dataset name (its newest version). Default: the newest training version "
         "(a held-out test set is never a default).", show_default=False)]
TimeoutOption = Annotated[Optional[float], typer.Option(
    "--timeout", min=0.001, help="Stop the query after this many seconds (default: $JSTIP_QUERY_TIMEOUT_S, else 60).")]

SPAN_STATISTICS_SQL = """
SELECT modality, role, count(*) AS spans, round(avg(num_words), 2) AS mean_words,
       round(avg(audio_end - audio_start), 3) AS mean_seconds
FROM spans GROUP BY modality, role ORDER BY modality, role
"""


def _fail(message: str, code: int = 1) -> None:
    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(code=code)


@contextmanager
def _running_flows(what: str, resume: str, expected: tuple[type[BaseException], ...] = ()):
    """Around a command that runs Prefect flows: the command's own Prefect server (or PREFECT_API_URL's), and
    SIGINT/SIGTERM as one line and exit code 130/143 (jstip.local_server). Errors of the `expected` types, and
    a full disk or a permission the machine refuses, are the command's to print as one line: Prefect's console
    reports of them (tracebacks, failed states) are left out of the terminal (the Prefect API records them)."""
    from jstip.local_server import interruptible, prefect_api, quiet_console_logs

    def on_stop(signal_name: str) -> None:
        console.print(f"\n{what} stopped ({signal_name}); {resume}", markup=False, highlight=False, soft_wrap=True)

    def is_expected(error: BaseException) -> bool:
        return isinstance(error, expected) or _machine_refused(error)

    # the errors' names and messages, and Prefect's report of the tasks that could not run after them
    marks = (*_class_names(expected), *(os.strerror(code) for code in _MACHINE_ERRORS),
             "did not reach a 'COMPLETED' state")
    with interruptible(on_stop), prefect_api(), quiet_console_logs(is_expected, marks):
        yield


def _class_names(types) -> list[str]:
    return [t.__name__ for t in types] + [name for t in types for name in _class_names(t.__subclasses__())]


_RESUME_BUILD = "finished shards are cached: rerun the same command to resume."


def _print_relation(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    """A table of values, each shown literally (Text: never read as markup) and whole: a narrow terminal wraps
    a value onto more lines, never cuts it short."""
    table = Table(title=None if title is None else Text(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for index, column in enumerate(columns):
        # ids in the first column must stay copy-pasteable: never wrapped
        table.add_column(Text(column), no_wrap=index == 0, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    console.print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output directory for audio, manifests and the text corpus.")],
    utterances: Annotated[int, typer.Option(min=1, help="Number of utterances to synthesise.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same bytes.")] = 0,
):
    """Synthesise a medical/banking demo corpus with espeak-ng (audio, Lhotse + NeMo manifests, word timings)."""
    from jstip.synth import synthesize_corpus

    result = synthesize_corpus(out, utterances=utterances, seed=seed)
    console.print(Text(f"synthesised {result.utterances} utterances ({result.audio_seconds / 60:.1f} min of speech) "
                       f"and {result.text_sentences} domain-text sentences into {result.out_dir}"))
    _print_relation(["file", "what"], [
        (result.nemo_manifest, "NeMo manifest: jstip build --manifest THIS"),
        (result.cuts, "Lhotse CutSet (recordings and supervisions beside it)"),
        (result.text_corpus, "domain text: jstip build --text-corpus THIS"),
        (result.word_timings, "espeak-ng's word timings: jstip eval-alignment --reference THIS"),
        (result.audio_dir, "audio (WAV)")])


def _run_build(manifest: Path | None, store: Path, config: Path | None = None, name: str | None = None,
               text_corpus: Path | None = None, shard_size: int | None = None, role: Role | None = None,
               allow_roots: list[Path] | None = None):
    from jstip.config import ConfigError, load_config
    from jstip.flows.build_interleaved import build_interleaved
    from jstip.storage import StoreBusyError
    from jstip.tasks.ingest import AudioOutsideAllowedRoots, ManifestError, detect_manifest_format
    from jstip.tasks.publish import AccountingError
    from jstip.tasks.publish.suites import QualityGateError

    # Validate at the edge, before Prefect starts: a bad path or config is one line, not a failed flow run.
    try:
        load_config(config, role=None if role is None else role.value)
        if manifest is not None:
            detect_manifest_format(manifest)
        if text_corpus is not None and not text_corpus.is_file():
            raise ManifestError(f"text corpus not found: {text_corpus} (expected `domain<TAB>sentence` lines)")
        for root in allow_roots or []:
            if not root.is_dir():
                raise ManifestError(f"--allow-root {root}: not a directory")
    except (ConfigError, ManifestError) as e:
        _fail(str(e))
    from jstip.progress import build_progress

    expected = (ConfigError, ManifestError, AccountingError, QualityGateError, StoreBusyError)
    try:
        with _running_flows("build", _RESUME_BUILD, expected), build_progress(console):
            return build_interleaved(manifest=None if manifest is None else str(manifest), store=str(store),
                                     config_path=None if config is None else str(config), name=name,
                                     text_corpus=None if text_corpus is None else str(text_corpus),
                                     shard_size=shard_size, role=None if role is None else role.value,
                                     allow_roots=[str(r.resolve()) for r in allow_roots or []] or None)
    except AudioOutsideAllowedRoots as e:  # a usage error: the flag is missing
        _fail(str(e), code=2)
    except expected as e:
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

    _say("\n", ("published", "bold green"), f" {published.name}/{published.version_id}"
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
    role: Annotated[Optional[Role], typer.Option(help="What the version is for (overrides the config's; default "
                                                      "train). dev and test versions are held out: no command uses "
                                                      "them unless they are named.", show_default=False)] = None,
    allow_root: Annotated[Optional[list[Path]], typer.Option(
        "--allow-root", help="A directory audio may come from besides the manifest's own (repeatable; added to "
                             "ingest.allowed_roots), e.g. the audio/ beside a NeMo manifests/ folder.")] = None,
):
    """Run the build-interleaved flow (on a local Prefect server) and publish a dataset version."""
    published = _run_build(manifest, store, config, name, text_corpus, shard_size, role, allow_root)
    _report(published, store)
    if published.accepted == 0:
        _nothing_accepted(published, store)


# What to do about the most common reasons a whole corpus is quarantined.
_QUARANTINE_ADVICE = {
    "path_outside_allowed_roots": "allow the audio's directory with --allow-root DIR",
    "audio_not_found": "relative audio paths are read relative to the manifest's directory; check them",
    "audio_unreadable": "convert the audio to a format libsndfile reads (WAV, FLAC, OGG, MP3)",
    "source_sampling_rate": "for telephone audio set checks.min_source_sampling_rate: 8000",
    "text_charset": "the default aligner reads English (Latin script); for another language set "
                    "checks.allowed_char_classes and an aligner that reads it",
}


def _nothing_accepted(published, store: Path) -> None:
    """A version with no accepted utterance is published (its quarantine says why) but the command fails."""
    from jstip.storage import DatasetStore
    from jstip.storage.views import DERIVED_VIEWS

    with DatasetStore(store).connect(read_only=True, version=published.version_id) as con:
        reasons = con.execute(f"SELECT stage, check_name, count, example FROM ({DERIVED_VIEWS['quarantine_summary']}) "
                              "LIMIT 5").fetchall()
    _print_relation(["stage", "check", "entries", "example"], reasons,
                    title="nothing was accepted: the most common reasons")
    for _, check, _, _ in reasons:
        if check in _QUARANTINE_ADVICE:
            console.print(Text(f"{check}: {_QUARANTINE_ADVICE[check]}"))
    _fail(f"version {published.name}/{published.version_id} has 0 accepted utterances of {published.ingested}; "
          f"see `{_command_name()} quarantine {published.version_id} --store {store}`")


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


def print_downstream(store: Path, decision, prior=None) -> None:
    """What the demo's downstream loop made: the LM prior, the model, its scores on the held-out test set per
    decoding (with what each decoding and metric means), example transcripts, the promotion decision."""
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    model = registry.model(decision.candidate_id)
    evidence = decision.evidence or {}
    results = [r for r in registry.eval_results(model_id=model.model_id).to_pylist()
               if r["dataset_version"] == evidence.get("dataset_version") and r["domain"] == "all"]
    by_decoding: dict[str, dict[str, float]] = {}
    for r in results:
        by_decoding.setdefault(r["decoding"], {})[r["metric"]] = r["value"]
    if prior is not None:
        pm = prior.metrics
        _say("\n", ("LM prior", "bold green"), f" {prior.model_id}: a {pm['parameters']:,}-parameter LM "
                      f"pretrained on the demo's domain text ({pm['domain_sentences']} sentences) + "
                      f"{pm['general_sentences']} general English sentences sampled from pocketsphinx's trigram LM")
    m = model.metrics
    _say(("model", "bold green"), f" {model.model_id}: the speech-LLM trained "
                  f"{'from it ' if prior is not None else ''}on "
                  f"{model.dataset_version}, {model.config['steps']} steps (loss {m['first_loss']:.2f} -> "
                  f"{m['final_loss']:.2f}, {m['train_seconds'] / 60:.1f} min)")
    any_row = next(iter(by_decoding.values()), {})
    _say("\n", ("held-out test set", "bold"), f" {evidence.get('test_set')} ({evidence.get('dataset_version')}): "
                  f"{int(any_row.get('utterances', 0))} utterances ({int(any_row.get('ref_words', 0))} words, "
                  f"{int(any_row.get('entity_occurrences', 0))} entity mentions) synthesised with another seed than "
                  "the training corpus: other voices, speaking rates, amounts, dates and names")
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
    # one Prefect server for the build and the downstream flows
    with _running_flows("demo", "rerun it to resume: built shards and training checkpoints are kept."):
        _run_demo(store, train)


def _run_demo(store: Path, train: bool) -> None:
    import time

    started = time.perf_counter()
    published = _run_build(None, store, None, None, None, None)
    _report(published, store)
    if not train:
        return
    from jstip.flows.nightly_retrain import nightly_retrain
    from jstip.flows.pretrain_lm import pretrain_lm as pretrain_flow

    _say("\n", ("downstream:", "bold"), " pretrain an LM prior (flow pretrain-lm), then nightly-retrain: build the "
         "held-out test set, train from the prior, evaluate, promote")
    prior = pretrain_flow(store=str(store), dataset_version=published.version_id)
    decision = nightly_retrain(store=str(store), base_llm=prior.model_id)
    print_downstream(store, decision, prior)
    jstip = _command_name()
    console.print(f"demo done in {(time.perf_counter() - started) / 60:.1f} min")
    console.print(f"try:           {jstip} models list --store {store}")
    console.print(f"               {jstip} evals --store {store}   (per domain)")
    console.print(f"               {jstip} query --store {store} 'SELECT reason FROM promotions'")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the catalog's views (spans, utterances, quarantine, ...).")],
    store: StoreOption = Path("data"),
    timeout: TimeoutOption = None,
):
    """Run one read-only SELECT against the store's catalog (no writes, no files outside the store's datasets)."""
    from jstip.storage import DatasetStore, StoreError

    try:
        columns, rows = DatasetStore(store).user_query(sql, timeout_s=timeout)  # sandboxed: jstip.storage.sandbox
    except StoreError as e:
        _fail(str(e))
    _print_relation(columns, rows)


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
    try:
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
    except StoreError as e:
        _fail(str(e))
    _say((f"{v.name}/{v.version_id}", "bold"), f": {sum(r[2] for r in summary)} quarantine row(s)"
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
            _print_relation(columns, rows)
            return
        with data_store.connect(read_only=True, version=v.version_id) as con:
            _say((f"{v.name}/{v.version_id}", "bold"), f": {v.row_counts.get('interleave_plans', 0)} plans, "
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
    version: VersionArgument = None,
    store: StoreOption = Path("data"),
):
    """Write an HTML report of a version (span length, speech fraction, duration, quarantine and alignment score
    plots, the statistics tables, a link to the GX Data Docs) to <store>/reports/<version>/index.html."""
    from jstip.storage import StoreError
    from jstip.storage.report import write_report

    try:
        index = write_report(store, version)
    except StoreError as e:
        _fail(str(e))
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
    try:
        versions = [data_store.version(version)] if version else data_store.versions()
        if not versions:
            raise StoreError(f"no published versions in {data_store.catalog_path} (run `jstip build --store {store}`)")
        reports = [data_store.verify_version(v.version_id, full=full) for v in versions]
    except StoreError as e:
        _fail(str(e))
    failed = False
    for report in reports:
        v = report.version
        if report.unrecorded:
            _say((f"{v.name}/{v.version_id}: published before file checksums were recorded; nothing to compare "
                  "(rebuild it to record them)", "yellow"))
            continue
        what = (f"{report.files} files, {report.hashed} hashed ({report.hashed_bytes / 1e6:.1f} MB), "
                f"{report.mode} check")
        if report.ok:
            _say(("ok", "green"), f" {v.name}/{v.version_id}: {what}")
            continue
        failed = True
        _say(("TAMPERED", "red"), f" {v.name}/{v.version_id}: {len(report.problems)} file(s) differ ({what})")
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

    try:
        summary = export_version(store, version, format.value, out, overwrite=overwrite, shard_size=shard_size)
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
    aligner: Annotated[AlignerName, typer.Option(help="Word-alignment backend.")] = AlignerName["pocketsphinx"],
    model: Annotated[Optional[str], typer.Option(help="whisperx: hub id or local Wav2Vec2ForCTC dir; "
                                                      "nemo: .nemo file or pretrained name.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    format: Annotated[AlignmentFormat, typer.Option("--format", help="Output format (a JSONL status file is "
                                                                     "written beside ctm and textgrid).")
                      ] = AlignmentFormat.jsonl,
    config: Annotated[Optional[Path], typer.Option(help="YAML build config whose align/normalize sections to "
                                                        "use (--aligner/--model override it).")] = None,
):
    """Word-align a manifest: one output line per input line, in order, status ok or failed with a reason."""
    from pydantic import ValidationError

    from jstip.config import ConfigError, load_config
    from jstip.tasks.aligners.align_manifest import align_manifest
    from jstip.tasks.ingest import ManifestError

    try:
        build_config = load_config(config)
        align_config = build_config.align.model_validate(
            {**build_config.align.model_dump(), "aligner": aligner.value, "model": model or build_config.align.model})
        summary = align_manifest(manifest, align_config, out, format.value, workers, build_config.normalize)
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
    from jstip.tasks.aligners.alignment_io import AlignmentFormatError, read_alignments
    from jstip.tasks.aligners.eval_alignment import evaluate_alignments

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
    """List published dataset versions, oldest first, with what each is for (train, or held out: dev, test)."""
    from jstip.storage import DatasetStore, StoreError

    data_store = DatasetStore(store)
    try:
        data_store.connect(read_only=True).close()  # a --store that is no store is an error, not an empty list
    except StoreError as e:
        _fail(str(e))
    versions = data_store.versions(name)
    if not versions:
        console.print(f"no published versions in {data_store.catalog_path}" + (f" named {name}" if name else ""))
        return
    default_version = data_store.default_version() if name is None else None
    default = None if default_version is None else default_version.version_id
    # fits 80 columns: lineage, config and code version are in `jstip catalog show VERSION`
    _print_relation(
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

    try:
        v = DatasetStore(store).version(version)
    except StoreError as e:
        _fail(str(e))
    _say((f"{v.name}/{v.version_id}", "bold"), f"  role={v.role}  status={v.status}")
    console.print(f"parent:  {v.parent_version or 'none'}")
    console.print(f"created: {v.created_at.isoformat()}   code: {v.code_version}")
    console.print(f"path:    {v.path}")
    console.print(f"docs:    {v.data_docs_path or 'none (no Great Expectations suites ran)'}")
    console.print(f"query:   SELECT * FROM {version_schema(v.version_id)}.spans")
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
    _say((f"{m.name}/{m.model_id}", "bold"))
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
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version id, prefix or dataset name "
                                                                     "(default: the newest training version).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML training config (default: the CPU demo model, "
                                                        "jstip.model.config).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Override the config's number of steps.")] = None,
    init_model: Annotated[Optional[str], typer.Option(help="Registered model id to continue training from.")] = None,
    name: Annotated[str, typer.Option(help="Model family name in the catalog.")] = "jstip",
    allow_test_set: Annotated[bool, typer.Option("--allow-test-set", help="Train on a held-out (dev or test) "
                                                 "version anyway; it can no longer judge the model.")] = False,
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
    from jstip.model.distributed import DistributedTrainingError, LaunchSpec, under_launcher
    from jstip.model.sequence_pools import DatasetError, resolve_version
    from jstip.storage import DatasetStore

    try:  # validate at the edge: a bad config or version is one line, not a failed flow run
        load_train_config(config, steps=steps)
        if not under_launcher():  # under torchrun, rank 0 alone reads the catalog (jstip.model.training)
            chosen = DatasetStore(store).training_version(version, allow_held_out=allow_test_set)
            resolve_version(DatasetStore(store), chosen.version_id)
        launch = LaunchSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                            max_restarts=max_restarts)
    except (TrainConfigError, DatasetError, StoreError, ValueError) as e:
        _fail(str(e))
    if under_launcher():
        if launch.distributed:
            _fail("already running under torchrun: give --nproc-per-node / --nnodes to torchrun, not to jstip train")
        _train_rank(store, version, config, steps, init_model, name, base_llm, allow_test_set, result_file)
        return
    from jstip.flows.train import train as train_flow

    try:
        with _running_flows("training", "rerun the same command to resume from the last checkpoint.",
                            expected=(DistributedTrainingError,)):
            result = train_flow(store=str(store), dataset_version=version,
                                config_path=None if config is None else str(config), steps=steps,
                                init_model=init_model, name=name, allow_test_set=allow_test_set, base_llm=base_llm,
                                nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                                max_restarts=max_restarts)
    except (DatasetError, StoreError, DistributedTrainingError) as e:
        _fail(str(e))
    _print_trained(result)


def _print_trained(result) -> None:
    _say(("model", "bold green"), f" {result.model_id}  trained on dataset version {result.dataset_version}")
    console.print(f"final loss {result.metrics.get('final_loss', float('nan')):.4f} after {result.steps} steps")
    console.print(f"model:  {result.model_dir}")
    console.print(f"log:    {result.model_dir.parent / 'train_log.csv'}")


def _train_rank(store: Path, version: str | None, config: Path | None, steps: int | None, init_model: str | None,
                name: str, base_llm: str | None, allow_test_set: bool, result_file: Path | None) -> None:
    """One rank of a torchrun job: train in this process; rank 0 prints, each machine's local rank 0 writes
    the result file (the launching flow reads it)."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import record

    from jstip.model.config import load_train_config, with_base_llm
    from jstip.storage.store import StoreError
    from jstip.model.distributed import DistributedTrainingError
    from jstip.model.sequence_pools import DatasetError
    from jstip.model.training import train as train_task

    rank = int(os.environ["RANK"])

    @record  # torchrun's summary then carries this rank's traceback
    def run():
        train_config = with_base_llm(load_train_config(config, steps=steps), base_llm)
        return train_task(store, version, train_config, init_model=init_model, name=name,
                          allow_test_set=allow_test_set,
                          on_log=lambda line: console.print(line, highlight=False, soft_wrap=True))

    try:
        result = run()
    except (DatasetError, StoreError, DistributedTrainingError) as e:
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
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version whose domain text to read: "
                                                                     "id, prefix or dataset name (default: the newest "
                                                                     "training version; never a held-out set).")] = None,
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
    from jstip.model.sequence_pools import DatasetError, resolve_version

    try:  # validate at the edge
        load_pretrain_config(config, steps=steps, general_sentences=general_sentences)
        chosen = DatasetStore(store).version(version)
        if chosen.held_out:  # its text would leak into every model built on the prior
            _fail(f"dataset version {chosen.name}/{chosen.version_id} is a held-out {chosen.role} set: an LM prior "
                  "pretrained on its text would leak it into every model it judges. Name a training version "
                  "(`jstip catalog list`).")
        resolve_version(DatasetStore(store), chosen.version_id)
    except (TrainConfigError, DatasetError, StoreError) as e:
        _fail(str(e))
    try:
        with _running_flows("LM pretraining", "rerun the same command to start it again."):
            result = pretrain_flow(store=str(store), dataset_version=version,
                                   config_path=None if config is None else str(config), steps=steps,
                                   general_sentences=general_sentences, name=name)
    except (DatasetError, StoreError, ValueError) as e:
        _fail(str(e))
    m = result.metrics
    _say(("LM prior", "bold green"), f" {result.model_id}  pretrained on the domain text of "
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
    test_version: Annotated[Optional[str], typer.Option(help="Test set: a version id, prefix or dataset name "
                                                             "(default: the newest version of role test).")] = None,
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
    from jstip.model.sequence_pools import DatasetError, resolve_version

    try:  # validate at the edge
        record = ModelRegistry(store).model(model)
        data_store = DatasetStore(store)
        version = resolve_version(data_store, test_version or data_store.newest_test_set().version_id)
        for name in decoding or []:
            DecodeOptions.parse(name)
    except (StoreError, DatasetError, ValueError) as e:
        _fail(str(e))
    try:
        with _running_flows("evaluation", "nothing was recorded; rerun the command."):
            overall = evaluate_flow(record.model_id, store=str(store), test_version=version.version_id,
                                    test_set=test_set, decodings=decoding or None, limit=limit)
    except (StoreError, DatasetError) as e:  # e.g. a test version whose files differ from what was published
        _fail(str(e))
    metrics = ("utterances", "wer", "entity_accuracy", "eer", "insertions", "hallucinations")
    rows = [(name, *(f"{values[m]:.4g}" if m in values else "" for m in metrics)) for name, values in overall.items()]
    _print_relation(["decoding", *metrics], rows,
                    title=f"model {record.model_id} on {test_set or version.name} ({version.version_id})")
    console.print(f"per domain: {_command_name()} evals --model {record.model_id} --store {store}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
