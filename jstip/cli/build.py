"""`jstip synth` and `jstip build`: a demo corpus, and a dataset version built from a manifest."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from jstip.cli.common import (StoreOption, app, command_name, console, fail, one_line_errors, print_relation,
                              running_flows, say)


class Role(str, Enum):
    """What a dataset version is for (jstip.schemas.tables.DATASET_ROLES)."""

    train = "train"
    dev = "dev"
    test = "test"


SPAN_STATISTICS_SQL = """
SELECT modality, role, count(*) AS spans, round(avg(num_words), 2) AS mean_words,
       round(avg(audio_end - audio_start), 3) AS mean_seconds
FROM spans GROUP BY modality, role ORDER BY modality, role
"""


_RESUME_BUILD = "finished shards are cached: rerun the same command to resume."


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
    print_relation(["file", "what"], [
       (result.nemo_manifest, "NeMo manifest: jstip build --manifest THIS"),
       (result.cuts, "Lhotse CutSet (recordings and supervisions beside it)"),
       (result.text_corpus, "domain text: jstip build --text-corpus THIS"),
       (result.word_timings, "espeak-ng's word timings: jstip eval-alignment --reference THIS"),
       (result.audio_dir, "audio (WAV)")])


def run_build(manifest: Path | None, store: Path, config: Path | None = None, name: str | None = None,
              text_corpus: Path | None = None, shard_size: int | None = None, role: Role | None = None,
              allow_roots: list[Path] | None = None):
    from jstip.config import ConfigError, load_config
    from jstip.flows.build_interleaved import build_interleaved
    from jstip.storage import StoreBusyError
    from jstip.tasks.ingest import AudioOutsideAllowedRoots, ManifestError, detect_manifest_format
    from jstip.tasks.publish import AccountingError
    from jstip.tasks.publish.suites import QualityGateError

    # Validate at the edge, before Prefect starts: a bad path or config is one line, not a failed flow run.
    with one_line_errors(ConfigError, ManifestError):
        load_config(config, role=None if role is None else role.value)
        if manifest is not None:
            detect_manifest_format(manifest)
        if text_corpus is not None and not text_corpus.is_file():
            raise ManifestError(f"text corpus not found: {text_corpus} (expected `domain<TAB>sentence` lines)")
        for root in allow_roots or []:
            if not root.is_dir():
                raise ManifestError(f"--allow-root {root}: not a directory")
    from jstip.progress import build_progress

    expected = (ConfigError, ManifestError, AccountingError, QualityGateError, StoreBusyError)
    try:
        with running_flows("build", _RESUME_BUILD, expected), build_progress(console):
            return build_interleaved(manifest=None if manifest is None else str(manifest), store=str(store),
                                     config_path=None if config is None else str(config), name=name,
                                     text_corpus=None if text_corpus is None else str(text_corpus),
                                     shard_size=shard_size, role=None if role is None else role.value,
                                     allow_roots=[str(r.resolve()) for r in allow_roots or []] or None)
    except AudioOutsideAllowedRoots as e:  # a usage error: the flag is missing
        fail(str(e), code=2)
    except expected as e:
        fail(str(e))


def report_published(published, store: Path) -> None:
    from jstip.storage import DatasetStore

    say("\n", ("published", "bold green"), f" {published.name}/{published.version_id}"
                 f"  (parent: {published.parent_version or 'none'})")
    console.print(f"ingested {published.ingested} utterances: {published.accepted} accepted, "
                  f"{published.quarantined} quarantined")
    with DatasetStore(store).connect(read_only=True) as con:
        rel = con.execute(SPAN_STATISTICS_SQL)
        print_relation([d[0] for d in rel.description], rel.fetchall(), title="span statistics (DuckDB over `spans`)")
    console.print(f"dataset files: {published.path}")
    console.print(f"catalog:       {DatasetStore(store).catalog_path}")
    if published.data_docs_path:
        console.print(f"data docs:     {published.data_docs_path}"
                      + (f"  ({len(published.suite_failures)} expectation(s) failed; published with checks.gx: warn)"
                         if published.suite_failures else ""))
    jstip = command_name()
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
    published = run_build(manifest, store, config, name, text_corpus, shard_size, role, allow_root)
    report_published(published, store)
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
    print_relation(["stage", "check", "entries", "example"], reasons,
                   title="nothing was accepted: the most common reasons")
    for _, check, _, _ in reasons:
        if check in _QUARANTINE_ADVICE:
            console.print(Text(f"{check}: {_QUARANTINE_ADVICE[check]}"))
    fail(f"version {published.name}/{published.version_id} has 0 accepted utterances of {published.ingested}; "
         f"see `{command_name()} quarantine {published.version_id} --store {store}`")
