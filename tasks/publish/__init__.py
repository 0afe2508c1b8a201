"""Stage `publish`: the build's shards become one immutable, validated dataset version.

Three steps, over the outputs of every shard (jstip.tasks.stages):
- de-duplication: audio that appears in more than one accepted utterance, across shards (DuckDB over every
  shard's normalized_audio), is quarantined as `duplicate_audio` (cached by the checked shards' keys);
- the gate, over the staged files before the rename that makes the version visible: the accounting invariant
  (accepted + quarantined = ingested, every accepted utterance planned; SQL over the staged Parquet), then the
  Great Expectations suites (`suites`, with offline Data Docs: `data_docs`; checks.gx: block | warn | off);
- the atomic publish itself (jstip.storage.store.DatasetStore.publish): stage, validate, rename, register.

The version id hashes the shard keys (which hold each stage's code identity), the config and this stage's own
code identity (jstip.version.stage_code_version("publish")).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jstip.config import BuildConfig
from jstip.schemas import empty
from jstip.schemas.tables import TEXT_CORPUS_STAGE
from jstip.storage.layout import StoreLayout
from jstip.storage.store import DatasetStore
from jstip.storage.work import cached_stage, stage_key
from jstip.tasks.checks import duplicate_audio
from jstip.version import stage_code_version

if TYPE_CHECKING:
    from jstip.tasks.stages import Ingested, StageOutput

log = logging.getLogger(__name__)


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


class AccountingError(RuntimeError):
    """The staged version does not account for every ingested entry: nothing is published."""


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
                                    config_json=config.version_config_json(), code_version=stage_code_version("publish"),
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
    key = stage_key("dedupe", *(o.key for o in checked), config.checks.fingerprint(), stage_code_version("publish"))

    def compute():
        if not config.checks.drop_duplicate_audio:
            return {"quarantine": empty("quarantine")}
        return {"quarantine": duplicate_audio([o.tables["normalized_audio"] for o in checked],
                                              [o.tables["utterances"] for o in checked])}

    paths, _ = cached_stage(StoreLayout(store).work_dir, "dedupe", key, compute)
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
        from jstip.tasks.publish.suites import QualityGateError, validate_version

        report = validate_version(staged, self.dataset_store.data_docs_dir(version_id), self.config)
        if not report.success:
            message = report.message(f"{self.config.name}/{version_id}")
            if self.config.checks.gx == "block":
                raise QualityGateError(f"{message}\nNothing was published (checks.gx: warn publishes anyway).")
            log.warning("%s\nPublished anyway (checks.gx: warn).", message)
            self.suite_failures = report.failures
        return report.data_docs_path
