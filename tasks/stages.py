"""The build's stage chain: the shard-level entry point of every stage, and the one definition of the order
they run in (`SHARD_CHAIN`, `run_chain`), which the `build-interleaved` flow (as Prefect tasks) and
`build_in_process` (sequentially, here) both run.

Each entry point takes and returns small, serialisable descriptions (paths, keys, counts), reads its shard's
Parquet inputs, runs the stage's pure function (jstip.tasks.<stage>) and stores the result in the stage
cache under a content key, so that a rerun with unchanged inputs, config and code does no stage work. A key
chains the upstream key, the stage's config section and the stage's own code identity
(jstip.version.stage_code_version: the modules that stage runs, by import graph).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jstip.config import BuildConfig
from jstip.schemas import conform, empty
from jstip.schemas.tables import TEXT_CORPUS_STAGE
from jstip.storage.content import FileHashes
from jstip.storage.layout import StoreLayout
from jstip.storage.lock import temp_name
from jstip.storage.work import cached_stage, result_dir, stage_key
from jstip.tasks.align import align_shard, backend_module
from jstip.tasks.checks import check_shard, fill_durations
from jstip.tasks.ingest import ingest_manifest, ingest_text_corpus, stop_if_all_audio_is_outside_the_roots
from jstip.tasks.normalize import normalize_shard
from jstip.tasks.plan import plan_shard, plan_text_corpus
from jstip.tasks.publish import Published, publish
from jstip.tasks.shard import shard_key, split_shards
from jstip.version import stage_code_version

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Shard:
    shard_id: str  # human-readable position, e.g. "s0003"
    key: str  # content key: the rows, which hold each audio file's sha256 and corpus-relative path
    path: str  # Parquet file of the shard's utterances
    num_utterances: int
    # Where this build reads the audio: the corpus root the rows' relative audio paths start from, and the
    # real directories audio may come from (None: unconfined). Not part of any key: where a corpus lies
    # does not change what it is.
    corpus_root: str = ""
    roots: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StageOutput:
    stage: str
    shard_id: str
    key: str
    tables: dict[str, str]  # table name -> Parquet path
    row_counts: dict[str, int]
    cached: bool

    def read(self, table: str) -> pa.Table:
        return pq.read_table(self.tables[table])

    def summary(self) -> str:
        counts = ", ".join(f"{n} {t}" for t, n in sorted(self.row_counts.items()))
        return f"{self.stage} {self.shard_id}: {counts}{' (cached)' if self.cached else ''}"


@dataclass(frozen=True)
class Ingested:
    manifest: str
    format: str
    num_entries: int
    key: str
    tables: dict[str, str]  # recordings, quarantine, text_corpus
    shards: list[Shard] = field(default_factory=list)
    corpus_root: str = ""  # the directory the rows' relative paths and sources start from


def _work_dir(store: str) -> Path:
    return StoreLayout(store).work_dir


def _output(stage: str, shard_id: str, key: str, paths: dict[str, Path], cached: bool) -> StageOutput:
    counts = {name: pq.ParquetFile(path).metadata.num_rows for name, path in paths.items()}
    return StageOutput(stage, shard_id, key, {n: str(p) for n, p in paths.items()}, counts, cached)


def ingest(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> Ingested:
    """Read the manifest (and domain text), cut the utterances into content-keyed shards."""
    # file hashes cached by stat (a cache of this manifest's audio; jstip.storage.content.FileHashes)
    manifest_key = hashlib.sha256(str(Path(manifest).absolute()).encode()).hexdigest()[:16]
    hashes = FileHashes(_work_dir(store) / "file_hashes" / f"{manifest_key}.parquet")
    result = ingest_manifest(manifest, allowed_roots=config.ingest.allowed_roots, hashes=hashes)
    stop_if_all_audio_is_outside_the_roots(manifest, result)
    hashes.save()
    log.info("ingest: hashed %d audio file(s), %.1f MB; %d unchanged since the last build (cached hashes)",
             hashes.hashed_files, hashes.hashed_bytes / 1e6, hashes.reused)
    text_table, text_quarantine = empty("text_corpus"), empty("quarantine")
    if text_corpus:
        text = ingest_text_corpus(text_corpus)
        text_table = text.text_corpus
        text_quarantine = conform("quarantine", text.quarantine.set_column(
            text.quarantine.schema.get_field_index("stage"), "stage",
            pa.array([TEXT_CORPUS_STAGE] * text.quarantine.num_rows, pa.string())))

    work = _work_dir(store)
    shards = []
    for index, table in enumerate(split_shards(result.utterances, config.shard_size)):
        key = shard_key(table)
        path = work / "shards" / f"{key}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(temp_name(path.name))  # concurrent builds write the same shard: own names
            pq.write_table(table, tmp)
            tmp.replace(path)
        shards.append(Shard(f"s{index:04d}", key, str(path), table.num_rows, result.corpus_root, result.roots))

    tables = {"recordings": result.recordings, "quarantine": pa.concat_tables([result.quarantine, text_quarantine]),
              "text_corpus": text_table}
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard.key.encode())
    for table in tables.values():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    key = stage_key("ingest", digest.hexdigest(), stage_code_version("ingest"))
    paths, _ = cached_stage(work, "ingest", key, lambda: tables)
    return Ingested(manifest=str(manifest), format=result.format, num_entries=result.num_entries, key=key,
                    tables={n: str(p) for n, p in paths.items()}, shards=shards, corpus_root=result.corpus_root)


def _normalize_key(shard: Shard, config: BuildConfig) -> str:
    return stage_key("normalize", shard.key, config.normalize.fingerprint(), stage_code_version("normalize"))


def _align_key(normalize_key: str, config: BuildConfig) -> str:
    # the checks too: align skips what fails a check needing no alignment (checks.precheck_shard)
    # and the code of the backend the config chooses (loaded by name: no import graph sees it)
    code = stage_code_version("align", (backend_module(config.align.aligner),))
    return stage_key("align", normalize_key, config.align.fingerprint(), config.checks.fingerprint(), code)


def _check_key(align_key: str, config: BuildConfig) -> str:
    return stage_key("check", align_key, config.checks.fingerprint(), stage_code_version("check"))


def _plan_key(check_key: str, config: BuildConfig) -> str:
    return stage_key("plan", check_key, config.plan.fingerprint(), stage_code_version("plan"))


def normalize(shard: Shard, store: str, config: BuildConfig) -> StageOutput:
    key = _normalize_key(shard, config)
    layout = StoreLayout(store)
    audio_dir = layout.audio_dir

    def compute():
        result = normalize_shard(pq.read_table(shard.path), audio_dir, config.normalize,
                                 corpus_root=shard.corpus_root, roots=shard.roots)
        audio = result.normalized_audio  # flac_path relative to the store root: the store is relocatable
        relative = pa.array([layout.relative(p) for p in audio.column("flac_path").to_pylist()], pa.string())
        audio = audio.set_column(audio.schema.get_field_index("flac_path"), "flac_path", relative)
        return {"normalized_audio": audio, "quarantine": result.quarantine}

    return _output("normalize", shard.shard_id, key, *cached_stage(_work_dir(store), "normalize", key, compute))


def align(shard: Shard, normalized: StageOutput, store: str, config: BuildConfig) -> StageOutput:
    key = _align_key(normalized.key, config)

    def compute():
        # flac_path is relative to the store root (relocatable stores); the aligner opens the files here
        audio = normalized.read("normalized_audio")
        root = StoreLayout(store).root
        absolute = pa.array([str(root / p) for p in audio.column("flac_path").to_pylist()], pa.string())
        audio = audio.set_column(audio.schema.get_field_index("flac_path"), "flac_path", absolute)
        result = align_shard(pq.read_table(shard.path), audio, config.align, precheck=config.checks)
        return {"word_alignments": result.word_alignments, "quarantine": result.quarantine}

    return _output("align", shard.shard_id, key, *cached_stage(_work_dir(store), "align", key, compute))


def check(shard: Shard, normalized: StageOutput, aligned: StageOutput, store: str, config: BuildConfig) -> StageOutput:
    """Run the checks and keep only accepted utterances; the shard's quarantine gathers every stage's rows."""
    key = _check_key(aligned.key, config)

    def compute():
        utterances = pq.read_table(shard.path)
        audio = normalized.read("normalized_audio")
        words = aligned.read("word_alignments")
        result = check_shard(utterances, audio, words, config.checks)
        accepted = pa.array(result.accepted_ids, pa.string())

        def keep(table: pa.Table) -> pa.Table:
            return table.filter(pc.is_in(table.column("utterance_id"), value_set=accepted))

        quarantine = fill_durations(pa.concat_tables([
            conform("quarantine", t) for t in (normalized.read("quarantine"), aligned.read("quarantine"),
                                               result.quarantine)]), utterances, audio)
        return {"utterances": keep(utterances), "normalized_audio": keep(audio), "word_alignments": keep(words),
                "quarantine": quarantine}

    return _output("check", shard.shard_id, key, *cached_stage(_work_dir(store), "check", key, compute))


def plan(shard: Shard, checked: StageOutput, store: str, config: BuildConfig) -> StageOutput:
    key = _plan_key(checked.key, config)

    def compute():
        result = plan_shard(checked.read("utterances"), checked.read("word_alignments"),
                            checked.read("normalized_audio"), config.plan)
        return {"interleave_plans": result.interleave_plans, "spans": result.spans}

    return _output("plan", shard.shard_id, key, *cached_stage(_work_dir(store), "plan", key, compute))


@dataclass(frozen=True)
class Resumed:
    """Shards whose whole chain (normalize -> plan) is already in the stage cache, and the others."""

    finished: dict[str, tuple[StageOutput, StageOutput]]  # shard_id -> (checked, planned)
    pending: list[Shard]

    def summary(self) -> str:
        total = len(self.finished) + len(self.pending)
        return f"resuming: {len(self.finished)} of {total} shards already complete, {len(self.pending)} to process"


def resume(ingested: Ingested, store: str, config: BuildConfig) -> Resumed:
    """Split the shards into finished (every stage result cached) and pending ones, by their keys alone.

    Finished shards are not submitted as tasks at all: a nightly run that adds 1% of new utterances
    pays task overhead for the new shards only."""
    work = _work_dir(store)
    finished, pending = {}, []
    for shard in ingested.shards:
        keys = {"normalize": _normalize_key(shard, config)}
        keys["align"] = _align_key(keys["normalize"], config)
        keys["check"] = _check_key(keys["align"], config)
        keys["plan"] = _plan_key(keys["check"], config)
        dirs = {stage: result_dir(work, stage, key) for stage, key in keys.items()}
        if not all(d.is_dir() for d in dirs.values()):
            pending.append(shard)
            continue
        outputs = {stage: _output(stage, shard.shard_id, keys[stage],
                                  {p.stem: p for p in sorted(dirs[stage].glob("*.parquet"))}, True)
                   for stage in ("check", "plan")}
        finished[shard.shard_id] = (outputs["check"], outputs["plan"])
    return Resumed(finished, pending)


def in_shard_order(ingested: Ingested, resumed: Resumed, checked: list[StageOutput],
                   planned: list[StageOutput]) -> tuple[list[StageOutput], list[StageOutput]]:
    """Finished and newly processed shard outputs, merged back into shard order (the version hash and
    the published part order depend on it)."""
    fresh = {c.shard_id: (c, p) for c, p in zip(checked, planned)}
    merged = [resumed.finished.get(s.shard_id) or fresh[s.shard_id] for s in ingested.shards]
    return [c for c, _ in merged], [p for _, p in merged]


def plan_text(ingested: Ingested, planned: list[StageOutput], store: str, config: BuildConfig) -> StageOutput:
    """Text-only sequences of the text corpus (jstip.tasks.plan.plan_text_corpus, any strategy). Planned
    once per build, after the shards: their number follows the number of utterance plans of all shards."""
    num_plans = sum(o.row_counts["interleave_plans"] for o in planned)
    key = stage_key("plan_text", ingested.key, str(num_plans), config.plan.fingerprint(),
                    stage_code_version("plan_text"))

    def compute():
        result = plan_text_corpus(pq.read_table(ingested.tables["text_corpus"]), num_plans, config.plan)
        return {"interleave_plans": result.interleave_plans, "spans": result.spans}

    return _output("plan_text", "text", key, *cached_stage(_work_dir(store), "plan_text", key, compute))


# --------------------------------------------------------------------------------------------------
# The chain: one definition of the build DAG


@dataclass(frozen=True)
class ShardStep:
    """A stage run over every pending shard: `run(shard, *outputs of the steps in `after` for that shard, store,
    config)`."""

    name: str
    run: Callable[..., StageOutput]
    after: tuple[str, ...] = ()


SHARD_CHAIN: tuple[ShardStep, ...] = (
    ShardStep("normalize", normalize),
    ShardStep("align", align, ("normalize",)),
    ShardStep("check", check, ("normalize", "align")),
    ShardStep("plan", plan, ("check",)),
)


class ChainRunner(Protocol):
    """Who runs the chain's steps: here, one after the other (`InProcess`); in the flow, Prefect tasks under the
    configured task runner (jstip.flows.build_interleaved)."""

    def call(self, name: str, function: Callable, *args) -> Any:
        """Run one whole-build step (ingest, resume, plan-text, publish) and return its result."""

    def map(self, step: ShardStep, shards: list[Shard], inputs: list, store: str, config: BuildConfig) -> Any:
        """Start `step` over `shards` (inputs: the handles of `step.after`, in order); return a handle."""

    def results(self, step: ShardStep, handle: Any) -> list[StageOutput]:
        """The step's outputs, one per shard in order; raises the first failed shard's error."""

    def resumed(self, ingested: Ingested, resumed: Resumed) -> None:
        """Told how many shards are already complete, before any shard work starts."""


def run_shard_chain(runner: ChainRunner, shards: list[Shard], store: str, config: BuildConfig,
                    until: str | None = None) -> dict[str, list[StageOutput]]:
    """SHARD_CHAIN over `shards`, or its steps up to and including `until` (`jstip align` stops after "align"):
    step name -> one output per shard, in shard order."""
    names = [step.name for step in SHARD_CHAIN]
    steps = SHARD_CHAIN if until is None else SHARD_CHAIN[:names.index(until) + 1]
    handles: dict[str, Any] = {}
    for step in steps:
        handles[step.name] = runner.map(step, shards, [handles[name] for name in step.after], store, config)
    # in chain order: a failed shard raises its own error, not its dependents' "not ready"
    return {step.name: runner.results(step, handles[step.name]) for step in steps}


def run_chain(runner: ChainRunner, manifest: str, text_corpus: str | None, store: str,
              config: BuildConfig) -> Published:
    """The build-interleaved DAG: ingest -> resume -> SHARD_CHAIN over the pending shards -> plan-text -> publish.
    The version id does not depend on the runner: the same input publishes the same version."""
    ingested = runner.call("ingest", ingest, manifest, text_corpus, store, config)
    resumed = runner.call("resume", resume, ingested, store, config)
    runner.resumed(ingested, resumed)
    # shards whose whole chain is cached are not submitted again
    outputs = run_shard_chain(runner, resumed.pending, store, config)
    checked, planned = in_shard_order(ingested, resumed, outputs["check"], outputs["plan"])
    text_planned = runner.call("plan-text", plan_text, ingested, planned, store, config)  # the text corpus
    return runner.call("publish", publish, ingested, checked, [*planned, text_planned], store, config)


class InProcess:
    """The chain run sequentially in this process, without an orchestrator."""

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def call(self, name: str, function: Callable, *args) -> Any:
        return function(*args)

    def map(self, step: ShardStep, shards: list[Shard], inputs: list, store: str, config: BuildConfig) -> list:
        return [step.run(shard, *(outputs[i] for outputs in inputs), store, config) for i, shard in enumerate(shards)]

    def results(self, step: ShardStep, handle: list) -> list[StageOutput]:
        return handle

    def resumed(self, ingested: Ingested, resumed: Resumed) -> None:
        log.info(resumed.summary())


class InProcessPool(InProcess):
    """The chain with each step's shards spread over worker processes (`jstip align --workers`). Spawned, not
    forked: torch and the aligners' native libraries do not survive a fork safely."""

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)

    def map(self, step: ShardStep, shards: list[Shard], inputs: list, store: str, config: BuildConfig) -> list:
        n = len(shards)
        return list(self._pool.map(step.run, shards, *inputs, [store] * n, [config] * n))


def build_in_process(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> Published:
    """The build-interleaved DAG (`run_chain`) run sequentially in this process, without an orchestrator.

    Same chain, same cache and the same published version as the flow (the version id does not depend on
    who ran the stages). For test fixtures, benchmarks, notebooks and `jstip align`-like tools; production
    builds go through the `build-interleaved` flow, which adds retries, parallelism and run history."""
    return run_chain(InProcess(), manifest, text_corpus, store, config)
