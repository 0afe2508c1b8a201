"""Shard-level entry points of every stage, as the flows call them.

Each function takes and returns small, serialisable descriptions (paths, keys, counts), reads its shard's
Parquet inputs, runs the stage's pure function (jstip.tasks.<stage>) and stores the result in the stage
cache under a content key, so that a rerun with unchanged inputs, config and code does no stage work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jstip.config import BuildConfig
from jstip.schemas import conform, empty
from jstip.storage import DatasetStore
from jstip.storage.content import FileHashes
from jstip.storage.lock import temp_name
from jstip.storage.work import cached_stage, result_dir, stage_key
from jstip.tasks.align import align_shard
from jstip.tasks.checks import check_shard, duplicate_audio, fill_durations
from jstip.tasks.ingest import ManifestError, ingest_manifest, ingest_text_corpus
from jstip.tasks.normalize import normalize_shard
from jstip.tasks.plan import plan_shard, plan_text_corpus
from jstip.tasks.shard import shard_key, split_shards
from jstip.version import code_version

log = logging.getLogger(__name__)

# Quarantine rows of the text-only corpus: not speech utterances, so not part of the speech accounting.
TEXT_CORPUS_STAGE = "text_corpus"

DEMO_UTTERANCES = 400  # enough speech for the demo model to transcribe (BENCHMARKS.md "demo recipe")
DEMO_SEED = 0
DEMO_TEST_UTTERANCES = 40
DEMO_TEST_SEED = 1000  # far from DEMO_SEED: no utterance of the test set repeats a training one


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


@dataclass(frozen=True)
class Published:
    version_id: str
    name: str
    path: str
    parent_version: str | None
    row_counts: dict[str, int]
    accepted: int
    quarantined: int
    ingested: int
    data_docs_path: str | None = None  # Great Expectations Data Docs of the version's suites
    suite_failures: tuple[str, ...] = ()  # failed expectations published anyway (checks.gx: warn)


def _work_dir(store: str) -> Path:
    return DatasetStore(store).work_dir


def _output(stage: str, shard_id: str, key: str, paths: dict[str, Path], cached: bool) -> StageOutput:
    counts = {name: pq.ParquetFile(path).metadata.num_rows for name, path in paths.items()}
    return StageOutput(stage, shard_id, key, {n: str(p) for n, p in paths.items()}, counts, cached)


def demo_corpus(store: str, text_corpus: str | None = None) -> tuple[str, str]:
    """Synthesise the embedded demo corpus into the store (once; it is deterministic) and return
    (manifest, text corpus) paths."""
    from jstip.tasks.synth import synthesize_corpus

    out = Path(store).resolve() / "demo_corpus"
    cuts = out / "lhotse" / "demo_cuts_all.jsonl.gz"
    if not cuts.exists():
        synthesize_corpus(out, utterances=DEMO_UTTERANCES, seed=DEMO_SEED)
    return str(cuts), text_corpus or str(out / "text_corpus.tsv")


def demo_test_corpus(store: str) -> str:
    """The demo's held-out test set: DEMO_TEST_UTTERANCES more synthetic utterances of the same domains,
    drawn with another seed (other voices, fillers and entities), synthesised into the store once."""
    from jstip.tasks.synth import synthesize_corpus

    out = Path(store).resolve() / "demo_corpus_test"
    manifest = out / "nemo_manifest.jsonl"  # NeMo JSONL beside the audio: inside the default allowed root
    if not manifest.exists():
        result = synthesize_corpus(out, utterances=DEMO_TEST_UTTERANCES, seed=DEMO_TEST_SEED)
        assert result.nemo_manifest == manifest, result.nemo_manifest
    return str(manifest)


class AudioOutsideAllowedRoots(ManifestError):
    """Every entry of a manifest points outside the directories audio may come from: a missing --allow-root, not
    bad data. The build stops at ingest, before any audio work."""


def _stop_if_all_audio_is_outside_the_roots(manifest: str, result) -> None:
    quarantine = result.quarantine
    if result.utterances.num_rows or not quarantine.num_rows:
        return
    checks = quarantine.column("check_name").to_pylist()
    if any(check != "path_outside_allowed_roots" for check in checks):
        return
    paths = [os.path.join(result.corpus_root, v) for v in quarantine.column("value").to_pylist() if v]
    try:
        common = os.path.commonpath(paths) if paths else None
    except ValueError:
        common = None
    where = f" The audio lies under {common}: if that is right, rerun with `--allow-root {common}`" if common else (
        " Rerun with `--allow-root DIR` for the directory that holds it")
    raise AudioOutsideAllowedRoots(
        f"every audio path in {manifest} ({len(checks)} entries) lies outside the directories audio may come from "
        f"({', '.join(result.roots or ())}).{where} (or add it to ingest.allowed_roots in the build config). "
        f"Nothing was built.")


def ingest(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> Ingested:
    """Read the manifest (and domain text), cut the utterances into content-keyed shards."""
    # file hashes cached by stat (a cache of this manifest's audio; jstip.storage.content.FileHashes)
    manifest_key = hashlib.sha256(str(Path(manifest).absolute()).encode()).hexdigest()[:16]
    hashes = FileHashes(_work_dir(store) / "file_hashes" / f"{manifest_key}.parquet")
    result = ingest_manifest(manifest, allowed_roots=config.ingest.allowed_roots, hashes=hashes)
    _stop_if_all_audio_is_outside_the_roots(manifest, result)
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
    key = stage_key("ingest", digest.hexdigest(), code_version())
    paths, _ = cached_stage(work, "ingest", key, lambda: tables)
    return Ingested(manifest=str(manifest), format=result.format, num_entries=result.num_entries, key=key,
                    tables={n: str(p) for n, p in paths.items()}, shards=shards)


def _normalize_key(shard: Shard, config: BuildConfig) -> str:
    return stage_key("normalize", shard.key, config.normalize.fingerprint(), code_version())


def _align_key(normalize_key: str, config: BuildConfig) -> str:
    # the checks too: align skips what fails a check needing no alignment (checks.precheck_shard)
    return stage_key("align", normalize_key, config.align.fingerprint(), config.checks.fingerprint(), code_version())


def _check_key(align_key: str, config: BuildConfig) -> str:
    return stage_key("check", align_key, config.checks.fingerprint(), code_version())


def _plan_key(check_key: str, config: BuildConfig) -> str:
    return stage_key("plan", check_key, config.plan.fingerprint(), code_version())


def normalize(shard: Shard, store: str, config: BuildConfig) -> StageOutput:
    key = _normalize_key(shard, config)
    dataset_store = DatasetStore(store)
    audio_dir = dataset_store.audio_dir

    def compute():
        result = normalize_shard(pq.read_table(shard.path), audio_dir, config.normalize,
                                 corpus_root=shard.corpus_root, roots=shard.roots)
        audio = result.normalized_audio  # flac_path relative to the store root: the store is relocatable
        relative = pa.array([dataset_store.relative(p) for p in audio.column("flac_path").to_pylist()], pa.string())
        audio = audio.set_column(audio.schema.get_field_index("flac_path"), "flac_path", relative)
        return {"normalized_audio": audio, "quarantine": result.quarantine}

    return _output("normalize", shard.shard_id, key, *cached_stage(_work_dir(store), "normalize", key, compute))


def align(shard: Shard, normalized: StageOutput, store: str, config: BuildConfig) -> StageOutput:
    key = _align_key(normalized.key, config)

    def compute():
        # flac_path is relative to the store root (relocatable stores); the aligner opens the files here
        audio = normalized.read("normalized_audio")
        root = DatasetStore(store).root
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
    """Text-only sequences of a `mixed` plan (jstip.tasks.plan.plan_text_corpus; none otherwise). Planned
    once per build, after the shards: their number follows the number of utterance plans of all shards."""
    num_plans = sum(o.row_counts["interleave_plans"] for o in planned)
    key = stage_key("plan_text", ingested.key, str(num_plans), config.plan.fingerprint(), code_version())

    def compute():
        result = plan_text_corpus(pq.read_table(ingested.tables["text_corpus"]), num_plans, config.plan)
        return {"interleave_plans": result.interleave_plans, "spans": result.spans}

    return _output("plan_text", "text", key, *cached_stage(_work_dir(store), "plan_text", key, compute))


class AccountingError(RuntimeError):
    pass


def _scan(files: list[str], columns: list[str]) -> tuple[str, list]:
    """SQL (and its parameters) for the given columns of a set of Parquet files; no files, no rows."""
    if files:
        return f"SELECT {', '.join(columns)} FROM read_parquet(?)", [files]
    return "SELECT " + ", ".join(f"NULL::VARCHAR AS {c}" for c in columns) + " WHERE false", []


def _account(ingested: Ingested, utterance_files: list[str], quarantine_files: list[str],
             plan_files: list[str]) -> tuple[int, int]:
    """Every ingested entry is accepted or quarantined, never both, never neither; every accepted one
    has a plan. Counted in SQL over the staged version's files (the publish gate), so what is checked is
    what would be published: entries are identified by their `source` (file:line)."""
    accepted_sql, accepted_args = _scan(utterance_files, ["utterance_id", "source"])
    planned_sql, planned_args = _scan(plan_files, ["utterance_id"])
    with duckdb.connect() as con:
        accepted, quarantined, both, unplanned = con.execute(
            f"""
            WITH a AS ({accepted_sql}),
                 q AS (SELECT DISTINCT source FROM read_parquet(?) WHERE stage <> ?),
                 p AS (SELECT DISTINCT utterance_id FROM ({planned_sql}))
            SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM q),
                   (SELECT count(*) FROM a JOIN q USING (source)),
                   (SELECT count(*) FROM a ANTI JOIN p USING (utterance_id))
            """,
            [*accepted_args, quarantine_files, TEXT_CORPUS_STAGE, *planned_args],
        ).fetchone()
    problems = []
    if both:
        problems.append(f"{both} entr(y/ies) are both accepted and quarantined")
    if accepted + quarantined - both != ingested.num_entries:
        problems.append(f"accepted ({accepted}) + quarantined ({quarantined}) != ingested ({ingested.num_entries})")
    if unplanned:
        problems.append(f"{unplanned} accepted utterance(s) have no interleave plan")
    if problems:
        raise AccountingError(f"accounting failed for {ingested.manifest}; nothing was published: " + "; ".join(problems))
    return accepted, quarantined


def publish(ingested: Ingested, checked: list[StageOutput], planned: list[StageOutput], store: str,
            config: BuildConfig) -> Published:
    """Quarantine duplicate audio across shards, then publish the version atomically. Over the staged
    files, before the rename that makes the version visible, the gate checks the accounting invariant and
    runs the Great Expectations suites (config.checks.gx): either failing publishes nothing."""
    def files(outputs: list[StageOutput], table: str) -> list[str]:
        return [o.tables[table] for o in outputs]

    duplicates = _duplicate_audio(checked, store, config)
    quarantine_files = [ingested.tables["quarantine"], *files(checked, "quarantine"), duplicates]
    utterance_files = files(checked, "utterances")

    def paths(items: list[str]) -> list[Path]:
        return [Path(p) for p in items]

    tables = {
        "recordings": paths([ingested.tables["recordings"]]),
        "utterances": paths(utterance_files),
        "normalized_audio": paths(files(checked, "normalized_audio")),
        "word_alignments": paths(files(checked, "word_alignments")),
        "quarantine": paths(quarantine_files),
        "interleave_plans": paths(files(planned, "interleave_plans")),
        "spans": paths(files(planned, "spans")),
        "text_corpus": paths([ingested.tables["text_corpus"]]),
    }
    dropped = pq.read_table(duplicates, columns=["utterance_id"]).column("utterance_id")
    for name in ("utterances", "normalized_audio", "word_alignments", "interleave_plans", "spans"):
        tables[name] = _without(tables[name], dropped)
    input_hash = stage_key("inputs", ingested.key, *(o.key for o in checked), *(o.key for o in planned))
    dataset_store = DatasetStore(store)
    gate = _PublishGate(ingested, dataset_store, config)
    version = dataset_store.publish(config.name, tables, input_hash=input_hash,
                                    config_json=config.version_config_json(), code_version=code_version(),
                                    validate=gate, role=config.role)
    if gate.counts is None:  # published before with the same inputs: count that version's files again
        gate.account(version.path)
    accepted, quarantined = gate.counts
    return Published(version.version_id, version.name, str(version.path), version.parent_version,
                     version.row_counts, accepted, quarantined, ingested.num_entries,
                     None if version.data_docs_path is None else str(version.data_docs_path),
                     tuple(gate.suite_failures))


def _duplicate_audio(checked: list[StageOutput], store: str, config: BuildConfig) -> str:
    """Parquet file of the build's duplicate_audio quarantine rows (cached by the checked shards' keys)."""
    key = stage_key("dedupe", *(o.key for o in checked), config.checks.fingerprint(), code_version())

    def compute():
        if not config.checks.drop_duplicate_audio:
            return {"quarantine": empty("quarantine")}
        return {"quarantine": duplicate_audio([o.tables["normalized_audio"] for o in checked],
                                              [o.tables["utterances"] for o in checked])}

    paths, _ = cached_stage(_work_dir(store), "dedupe", key, compute)
    return str(paths["quarantine"])


def _without(parts: list[Path], dropped: pa.ChunkedArray):
    """The parts, minus rows of the dropped utterance ids; read lazily, one part at a time."""
    if len(dropped) == 0:
        return parts

    def filtered():
        for part in parts:
            table = pq.read_table(part)
            yield table.filter(pc.invert(pc.is_in(table.column("utterance_id"), value_set=dropped)))
    return filtered()


class _PublishGate:
    """DatasetStore.publish's `validate` hook: over the staged version, the accounting invariant (always)
    and the Great Expectations suites (checks.gx: block raises, warn records the failures, off skips)."""

    def __init__(self, ingested: Ingested, dataset_store: DatasetStore, config: BuildConfig):
        self.ingested, self.dataset_store, self.config = ingested, dataset_store, config
        self.counts: tuple[int, int] | None = None
        self.suite_failures: list[str] = []

    def account(self, version_dir: Path) -> None:
        def parts(table: str) -> list[str]:
            return sorted(str(p) for p in (Path(version_dir) / table).glob("*.parquet"))

        self.counts = _account(self.ingested, parts("utterances"), parts("quarantine"), parts("spans"))

    def __call__(self, staged: Path, version_id: str) -> Path | None:
        self.account(staged)
        if self.config.checks.gx == "off":
            return None
        from jstip.tasks.suites import QualityGateError, validate_version

        report = validate_version(staged, self.dataset_store.data_docs_dir(version_id), self.config)
        if not report.success:
            message = report.message(f"{self.config.name}/{version_id}")
            if self.config.checks.gx == "block":
                raise QualityGateError(f"{message}\nNothing was published (checks.gx: warn publishes anyway).")
            log.warning("%s\nPublished anyway (checks.gx: warn).", message)
            self.suite_failures = report.failures
        return report.data_docs_path


def build_in_process(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> Published:
    """The build-interleaved DAG run sequentially in this process, without an orchestrator.

    Same stage functions, same cache and the same published version as the flow (the version id does
    not depend on who ran the stages). For test fixtures, benchmarks and notebooks; production builds
    go through the `build-interleaved` flow, which adds retries, parallelism and run history."""
    ingested = ingest(manifest, text_corpus, store, config)
    resumed = resume(ingested, store, config)
    checked, planned = [], []
    for shard in resumed.pending:
        normalized = normalize(shard, store, config)
        aligned = align(shard, normalized, store, config)
        checked.append(check(shard, normalized, aligned, store, config))
        planned.append(plan(shard, checked[-1], store, config))
    checked, planned = in_shard_order(ingested, resumed, checked, planned)
    text_planned = plan_text(ingested, planned, store, config)
    return publish(ingested, checked, [*planned, text_planned], store, config)
