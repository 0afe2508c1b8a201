"""Sequence builder and sampler: a published dataset version -> training sequences in three pools.

Pools (sampled by TrainConfig.mix weights, one pool per batch):
- interleaved: one sequence per (plan, utterance) of strategy word or segment, its spans in order: speech
  spans as audio slices of the normalised FLAC (by the plan's sample offsets), text and transcript spans
  as text with loss. F1 and F2 need nothing special here: the plan already holds the span order.
- asr: every accepted utterance as `prompt, speech(whole utterance), transcript`: the inference-time
  format (JSTIP keeps ASR pairs in the mix). Plans of strategy `asr` are the same sequences without the
  prompt, so they are not added twice.
- text: the version's text-only plans (domain text, LM loss on every token), plus every transcript when
  `mix.transcripts_as_text` (plain joint speech-text training, the JSTIP paper's baseline).

Bad input: a version that is not in the catalog, or whose files are gone, stops with an error naming it.
A speech span whose FLAC is missing stops training before the first step (on_missing_audio: error, the
default: a model must be reproducible from the dataset version it names), or, with `skip`, its sequence is
left out and counted (the counts go into the model's metrics).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.model.config import MixConfig
from jstip.schemas.sequences import POOLS, AudioSlice, Segment, TrainingSequence
from jstip.storage.store import DatasetStore, DatasetVersion, StoreError

SAMPLE_RATE = 16000


class DatasetError(RuntimeError):
    """A dataset version cannot be trained on; the message names the version and the item."""


class SequencePool(Sequence[TrainingSequence]):
    """One pool's sequences, held as columns (Arrow/NumPy) and materialised one at a time on access.

    `index` has one row per sequence, sorted by (estimated length, sequence_id); `segments` one row per
    segment of every sequence of every pool, and a sequence's segments are the rows
    [first_row, first_row + num_rows). At 38k hours (~14 M utterances, ~100 M spans) this is a few
    columns of numbers and strings, not millions of Python objects."""

    def __init__(self, name: str, index: pa.Table, segments: "_SegmentColumns", prompt: str | None):
        self.name = name
        self.prompt = prompt
        self._segments = segments
        self.sequence_ids = index.column("sequence_id").to_pylist()
        self._utterance_ids = index.column("utterance_id").combine_chunks()
        self._domains = index.column("domain").combine_chunks()
        self._first = index.column("first_row").to_numpy()
        self._count = index.column("num_rows").to_numpy()
        self.lengths = index.column("est_positions").to_numpy()

    def __len__(self) -> int:
        return len(self.sequence_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        first, count = int(self._first[i]), int(self._count[i])
        return TrainingSequence(self.sequence_ids[i], self.name, self._utterance_ids[i].as_py(),
                                self._domains[i].as_py(), self._segments.segments(first, count),
                                prompt=self.prompt if self.name == "asr" else None)


class _SegmentColumns:
    def __init__(self, table: pa.Table):
        self.modality = table.column("modality").combine_chunks()
        self.text = table.column("text").combine_chunks()
        self.path = table.column("flac_path").combine_chunks()
        self.start = table.column("start_sample").combine_chunks()
        self.end = table.column("end_sample").combine_chunks()

    def segments(self, first: int, count: int) -> tuple[Segment, ...]:
        out = []
        for r in range(first, first + count):
            text = self.text[r].as_py()
            if self.modality[r].as_py() == "speech":
                audio = AudioSlice(self.path[r].as_py(), self.start[r].as_py(), self.end[r].as_py())
                out.append(Segment("speech", text, loss=False, audio=audio))
            else:
                out.append(Segment("text", text))
        return tuple(out)


@dataclass
class SequencePools:
    version_id: str
    pools: dict[str, SequencePool]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> sequences left out
    texts: list[str] = field(default_factory=list)  # every distinct text of every segment (tokenizer training)

    def counts(self) -> dict[str, int]:
        return {pool: len(self.pools[pool]) if pool in self.pools else 0 for pool in POOLS}


def resolve_version(store: DatasetStore, version_id: str | None) -> DatasetVersion:
    """The version meant (an id, prefix or dataset name; None: the newest training version, never a held-out
    one: DatasetStore.version), checked to be complete on disk."""
    try:
        version = store.version(version_id)
    except StoreError as e:
        raise DatasetError(str(e)) from None
    missing = [t for t in ("utterances", "normalized_audio", "spans", "interleave_plans")
               if not any((version.path / t).glob("*.parquet"))]
    if missing:
        raise DatasetError(f"dataset version {version.version_id} is registered but incomplete on disk: no "
                           f"{', '.join(missing)} under {version.path} (deleted or moved?); rebuild it")
    return version


def build_sequences(store: DatasetStore, version_id: str | None, mix: MixConfig, asr_prompt: str,
                    on_missing_audio: str = "error") -> SequencePools:
    version = resolve_version(store, version_id)
    con = duckdb.connect()
    tables = {t: store.table_sql(version, t) for t in ("spans", "interleave_plans", "normalized_audio", "utterances")}
    rates = con.execute(f"SELECT DISTINCT sampling_rate FROM {tables['normalized_audio']}").fetchall()
    if any(r != SAMPLE_RATE for (r,) in rates):
        raise DatasetError(f"dataset version {version.version_id}: normalised audio at {sorted(r for (r,) in rates)} "
                           f"Hz; the speech-LLM takes {SAMPLE_RATE} Hz (build with normalize.sample_rate: 16000)")
    # Every sequence of every pool as segment rows, in one relation (see the module docstring for the pools).
    con.execute(f"""
        CREATE TEMP TABLE segments AS
        SELECT CASE WHEN p.strategy = 'text' THEN 'text' ELSE 'interleaved' END AS pool,
               (CASE WHEN p.strategy = 'text' THEN 'text/' ELSE 'interleaved/' END) || s.plan_id || '/' || s.utterance_id
                   AS sequence_id,
               s.utterance_id, p.domain, s.span_index AS segment_index, s.modality, s.text,
               CASE WHEN s.modality = 'speech' THEN a.flac_path END AS flac_path,
               CASE WHEN s.modality = 'speech' THEN s.start_sample END AS start_sample,
               CASE WHEN s.modality = 'speech' THEN s.end_sample END AS end_sample
        FROM {tables['spans']} s
        JOIN {tables['interleave_plans']} p USING (plan_id, utterance_id)
        LEFT JOIN {tables['normalized_audio']} a USING (utterance_id)
        WHERE p.strategy IN ('word', 'segment', 'text')
        UNION ALL
        SELECT 'asr', 'asr/utt/' || u.utterance_id, u.utterance_id, u.domain, k.i,
               CASE k.i WHEN 0 THEN 'speech' ELSE 'text' END, u.text,
               CASE k.i WHEN 0 THEN a.flac_path END, CASE k.i WHEN 0 THEN 0 END,
               CASE k.i WHEN 0 THEN a.num_samples END
        FROM {tables['utterances']} u JOIN {tables['normalized_audio']} a USING (utterance_id),
             (VALUES (0), (1)) k(i)
        UNION ALL
        SELECT 'text', 'text/utt/' || u.utterance_id, u.utterance_id, u.domain, 0, 'text', u.text, NULL, NULL, NULL
        FROM {tables['utterances']} u WHERE ?""", [mix.transcripts_as_text])
    broken = con.execute("""SELECT sequence_id, segment_index FROM segments
                            WHERE modality = 'speech' AND (flac_path IS NULL OR start_sample IS NULL)
                            ORDER BY ALL LIMIT 1""").fetchall()
    if broken:
        raise DatasetError(f"dataset version {version.version_id}: speech span {broken[0][1]} of sequence "
                           f"{broken[0][0]} has no audio (no normalized_audio row or no sample offsets)")
    skipped = _missing_audio(con, version, on_missing_audio)
    # one sequence per group, sorted by estimated length (bucketing) then id (a total, stable order)
    segments = con.sql("""
        SELECT *, sum(CASE WHEN modality = 'speech' THEN end_sample - start_sample ELSE 0 END)
                      OVER (PARTITION BY sequence_id) AS speech_samples,
               sum(CASE WHEN modality = 'text' THEN length(text) + 1 ELSE 0 END)
                      OVER (PARTITION BY sequence_id) AS text_chars,
               row_number() OVER (ORDER BY pool, sequence_id, segment_index) - 1 AS rn
        FROM segments ORDER BY pool, sequence_id, segment_index""").to_arrow_table()
    con.register("ordered", segments)
    columns = _SegmentColumns(segments)
    pools = {}
    for pool in POOLS:
        index = con.sql("""
            SELECT sequence_id, any_value(utterance_id) AS utterance_id, any_value(domain) AS domain,
                   min(rn) AS first_row, count(*) AS num_rows,
                   any_value(speech_samples) / 1280.0 + (any_value(text_chars)
                       + CASE WHEN ? = 'asr' THEN length(?) ELSE 0 END) / 4.0 AS est_positions
            FROM ordered WHERE pool = ?
            GROUP BY sequence_id ORDER BY est_positions, sequence_id""",
                        params=[pool, asr_prompt, pool]).to_arrow_table()
        pools[pool] = SequencePool(pool, index, columns, asr_prompt)
    texts = sorted(set(pc.unique(segments.column("text")).to_pylist()) | {asr_prompt})
    return SequencePools(version.version_id, pools, skipped, texts)


def _missing_audio(con: duckdb.DuckDBPyConnection, version: DatasetVersion, on_missing_audio: str) -> dict[str, int]:
    """Check every audio file the sequences read exists (one stat per file); drop or stop (module doc)."""
    paths = [p for (p,) in con.execute("SELECT DISTINCT flac_path FROM segments WHERE flac_path IS NOT NULL").fetchall()]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return {}
    con.execute("CREATE TEMP TABLE missing AS SELECT unnest(?::VARCHAR[]) AS flac_path", [missing])
    affected = con.execute("SELECT DISTINCT sequence_id FROM segments JOIN missing USING (flac_path)").fetchall()
    if on_missing_audio == "error":
        utterance, path = con.execute("SELECT utterance_id, flac_path FROM segments JOIN missing USING (flac_path) "
                                      "ORDER BY utterance_id, flac_path LIMIT 1").fetchone()
        raise DatasetError(f"dataset version {version.version_id}: {len(missing)} audio file(s) missing from the "
                           f"store, used by {len(affected)} sequence(s); e.g. utterance {utterance}: {path}. "
                           "Rebuild the version, or set on_missing_audio: skip to train without them")
    con.execute("DELETE FROM segments WHERE sequence_id IN "
                "(SELECT DISTINCT sequence_id FROM segments JOIN missing USING (flac_path))")
    return {"missing_audio": len(affected)}


class BucketSampler:
    """Batches drawn by step: a pool by its mix weight, a length bucket of that pool by its size, then
    `batch_size` sequences of the bucket (without replacement where it holds enough).

    Batches of similar length pad little. Batch `step` depends only on (seed, step), so a resumed run
    draws exactly the batches the uninterrupted run would have drawn, with no sampler state to save."""

    def __init__(self, pools: dict[str, SequencePool], weights: dict[str, float], batch_size: int,
                 buckets: int, seed: int):
        self.batch_size = batch_size
        self.seed = seed
        self.pools = [p for p in POOLS if pools.get(p) and weights.get(p, 0) > 0]
        if not self.pools:
            available = {p: len(pools.get(p, [])) for p in POOLS}
            raise DatasetError(f"nothing to train on: pools with a positive mix weight are empty "
                               f"(sequences per pool: {available}; weights: {weights})")
        total = sum(weights[p] for p in self.pools)
        self.weights = np.array([weights[p] / total for p in self.pools])
        # a pool is already sorted by estimated length: buckets are contiguous index ranges of it
        self._pools = pools
        self.buckets: dict[str, list[np.ndarray]] = {
            pool: np.array_split(np.arange(len(pools[pool])), min(buckets, len(pools[pool]))) for pool in self.pools}

    def batch(self, step: int) -> list[TrainingSequence]:
        rng = np.random.default_rng([self.seed, step])
        pool = self.pools[int(rng.choice(len(self.pools), p=self.weights))]
        buckets = self.buckets[pool]
        sizes = np.array([len(b) for b in buckets], dtype=float)
        bucket = buckets[int(rng.choice(len(buckets), p=sizes / sizes.sum()))]
        replace = len(bucket) < self.batch_size
        picks = rng.choice(len(bucket), size=self.batch_size, replace=replace)
        return [self._pools[pool][int(bucket[i])] for i in picks]
