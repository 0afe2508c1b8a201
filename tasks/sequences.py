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

from jstip.model.config import MixConfig
from jstip.schemas.sequences import POOLS, AudioSlice, Segment, TrainingSequence
from jstip.storage.store import DatasetStore, DatasetVersion, StoreError

SAMPLE_RATE = 16000


class DatasetError(RuntimeError):
    """A dataset version cannot be trained on; the message names the version and the item."""


@dataclass
class SequencePools:
    version_id: str
    pools: dict[str, list[TrainingSequence]]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> sequences left out

    def counts(self) -> dict[str, int]:
        return {pool: len(self.pools.get(pool, [])) for pool in POOLS}


def resolve_version(store: DatasetStore, version_id: str | None) -> DatasetVersion:
    """The version to train on (None: the latest published), checked to be complete on disk."""
    try:
        version = store.version(version_id) if version_id else store.latest()
    except StoreError as e:
        raise DatasetError(str(e)) from None
    if version is None:
        raise DatasetError(f"no dataset version is published in {store.root}: build one first "
                           f"(`jstip build --store {store.root}`)")
    missing = [t for t in ("utterances", "normalized_audio", "spans", "interleave_plans")
               if not any((version.path / t).glob("*.parquet"))]
    if missing:
        raise DatasetError(f"dataset version {version.version_id} is registered but incomplete on disk: no "
                           f"{', '.join(missing)} under {version.path} (deleted or moved?); rebuild it")
    return version


def _parquet(version: DatasetVersion, table: str) -> str:
    return str(version.path / table / "*.parquet").replace("'", "''")


def build_sequences(store: DatasetStore, version_id: str | None, mix: MixConfig, asr_prompt: str,
                    on_missing_audio: str = "error") -> SequencePools:
    version = resolve_version(store, version_id)
    con = duckdb.connect()
    rates = con.execute(f"SELECT DISTINCT sampling_rate FROM read_parquet('{_parquet(version, 'normalized_audio')}')"
                        ).fetchall()
    if any(r != SAMPLE_RATE for (r,) in rates):
        raise DatasetError(f"dataset version {version.version_id}: normalised audio at {sorted(r for (r,) in rates)} "
                           f"Hz; the speech-LLM takes {SAMPLE_RATE} Hz (build with normalize.sample_rate: 16000)")
    spans = con.sql(f"""
        SELECT s.plan_id, s.utterance_id, p.strategy, p.domain, s.modality, s.role, s.text,
               s.start_sample, s.end_sample, a.flac_path
        FROM read_parquet('{_parquet(version, 'spans')}') s
        JOIN read_parquet('{_parquet(version, 'interleave_plans')}') p USING (plan_id, utterance_id)
        LEFT JOIN read_parquet('{_parquet(version, 'normalized_audio')}') a USING (utterance_id)
        WHERE p.strategy IN ('word', 'segment', 'text')
        ORDER BY s.plan_id, s.utterance_id, s.span_index""").to_arrow_table().to_pydict()
    utterances = con.sql(f"""
        SELECT u.utterance_id, u.domain, u.text, a.flac_path, a.num_samples
        FROM read_parquet('{_parquet(version, 'utterances')}') u
        JOIN read_parquet('{_parquet(version, 'normalized_audio')}') a USING (utterance_id)
        ORDER BY u.utterance_id""").to_arrow_table().to_pydict()

    pools: dict[str, list[TrainingSequence]] = {pool: [] for pool in POOLS}
    pools["interleaved"], pools["text"] = _plan_sequences(version, spans)
    for utt, domain, text, path, samples in zip(utterances["utterance_id"], utterances["domain"],
                                                utterances["text"], utterances["flac_path"],
                                                utterances["num_samples"]):
        speech = Segment("speech", text, loss=False, audio=AudioSlice(path, 0, samples))
        pools["asr"].append(TrainingSequence(f"asr/utt/{utt}", "asr", utt, domain,
                                             (speech, Segment("text", text)), prompt=asr_prompt))
        if mix.transcripts_as_text:
            pools["text"].append(TrainingSequence(f"text/utt/{utt}", "text", utt, domain, (Segment("text", text),)))
    return _drop_missing_audio(version, pools, on_missing_audio)


def _plan_sequences(version: DatasetVersion, spans: dict) -> tuple[list, list]:
    interleaved, text_only = [], []
    n = len(spans["plan_id"])
    start = 0
    while start < n:
        key = (spans["plan_id"][start], spans["utterance_id"][start])
        end = start
        while end < n and (spans["plan_id"][end], spans["utterance_id"][end]) == key:
            end += 1
        segments = []
        for i in range(start, end):
            if spans["modality"][i] == "speech":
                if spans["flac_path"][i] is None or spans["start_sample"][i] is None:
                    raise DatasetError(f"dataset version {version.version_id}: speech span {i - start} of plan "
                                       f"{key[0]} for utterance {key[1]} has no audio (no normalized_audio row "
                                       "or no sample offsets)")
                audio = AudioSlice(spans["flac_path"][i], spans["start_sample"][i], spans["end_sample"][i])
                segments.append(Segment("speech", spans["text"][i], loss=False, audio=audio))
            else:
                segments.append(Segment("text", spans["text"][i]))
        strategy, domain = spans["strategy"][start], spans["domain"][start]
        pool = "text" if strategy == "text" else "interleaved"
        sequence = TrainingSequence(f"{pool}/{key[0]}/{key[1]}", pool, key[1], domain, tuple(segments))
        (text_only if pool == "text" else interleaved).append(sequence)
        start = end
    return interleaved, text_only


def _drop_missing_audio(version: DatasetVersion, pools: dict[str, list[TrainingSequence]],
                        on_missing_audio: str) -> SequencePools:
    paths = {s.audio.path for seqs in pools.values() for seq in seqs for s in seq.segments if s.audio is not None}
    missing = {p for p in paths if not os.path.isfile(p)}
    if not missing:
        return SequencePools(version.version_id, pools)
    affected = [seq for seqs in pools.values() for seq in seqs
                if any(s.audio is not None and s.audio.path in missing for s in seq.segments)]
    if on_missing_audio == "error":
        example = affected[0]
        path = next(s.audio.path for s in example.segments if s.audio is not None and s.audio.path in missing)
        raise DatasetError(f"dataset version {version.version_id}: {len(missing)} audio file(s) missing from the "
                           f"store, used by {len(affected)} sequence(s); e.g. utterance {example.utterance_id}: "
                           f"{path}. Rebuild the version, or set on_missing_audio: skip to train without them")
    dropped = {seq.sequence_id for seq in affected}
    kept = {pool: [seq for seq in seqs if seq.sequence_id not in dropped] for pool, seqs in pools.items()}
    return SequencePools(version.version_id, kept, {"missing_audio": len(affected)})


def estimated_positions(sequence: TrainingSequence) -> float:
    """Rough LLM positions: one per 80 ms of speech, one per 4 characters of text (for bucketing only)."""
    return sequence.speech_samples / 1280 + sequence.text_chars / 4


class BucketSampler:
    """Batches drawn by step: a pool by its mix weight, a length bucket of that pool by its size, then
    `batch_size` sequences of the bucket (without replacement where it holds enough).

    Batches of similar length pad little. Batch `step` depends only on (seed, step), so a resumed run
    draws exactly the batches the uninterrupted run would have drawn, with no sampler state to save."""

    def __init__(self, pools: dict[str, Sequence[TrainingSequence]], weights: dict[str, float], batch_size: int,
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
        self.buckets: dict[str, list[list[TrainingSequence]]] = {}
        for pool in self.pools:
            ordered = sorted(pools[pool], key=lambda s: (estimated_positions(s), s.sequence_id))
            bounds = np.array_split(np.arange(len(ordered)), min(buckets, len(ordered)))
            self.buckets[pool] = [ordered[b[0]:b[-1] + 1] for b in bounds]

    def batch(self, step: int) -> list[TrainingSequence]:
        rng = np.random.default_rng([self.seed, step])
        pool = self.pools[int(rng.choice(len(self.pools), p=self.weights))]
        buckets = self.buckets[pool]
        sizes = np.array([len(b) for b in buckets], dtype=float)
        bucket = buckets[int(rng.choice(len(buckets), p=sizes / sizes.sum()))]
        replace = len(bucket) < self.batch_size
        picks = rng.choice(len(bucket), size=self.batch_size, replace=replace)
        return [bucket[i] for i in picks]
