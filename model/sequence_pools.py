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

The pools are read from the version's sequence index (jstip.model.sequence_index), built on first use.

Bad input: a version that is not in the catalog, or whose files are gone, stops with an error naming it.
A speech span whose FLAC is missing stops training before the first step (on_missing_audio: error, the
default: a model must be reproducible from the dataset version it names), or, with `skip`, its sequence is
left out and counted (the counts go into the model's metrics). The files are checked on every run (one
`stat` per audio file), not cached with the index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.model.config import MixConfig
from jstip.model.sequence_index import (INDEX_STAGE, SPEECH, DatasetError, SequenceIndex, build_index, index_key,
                                        missing_audio_ids, read_ipc)
from jstip.schemas.sequences import POOLS, AudioSlice, Segment, TrainingSequence
from jstip.storage.store import DatasetStore, DatasetVersion, StoreError

class SequencePool(Sequence[TrainingSequence]):
    """One pool's sequences, sorted by (estimated length, sequence_id), materialised one at a time on access
    from the memory-mapped index. `positions`: the index rows this pool keeps (None: all), when sequences
    whose audio is missing were left out."""

    def __init__(self, name: str, index: SequenceIndex, prompt: str | None, positions: np.ndarray | None = None):
        self.name = name
        self.prompt = prompt
        self._index = index
        self._rows = index.pools[name]
        self._positions = positions

    def __reduce__(self):  # by the index's path (SequenceIndex.__reduce__), never the mapped data
        return SequencePool, (self.name, self._index, self.prompt, self._positions)

    def __len__(self) -> int:
        return len(self._rows) if self._positions is None else len(self._positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} of pool {self.name} ({len(self)} sequences)")
        i = i % len(self)
        row = i if self._positions is None else int(self._positions[i])
        rows = self._rows
        utterance_id = rows.utterance_id[row]
        first, count = int(rows.first_row[row]), int(rows.num_rows[row])
        return TrainingSequence(f"{self.name}/{rows.plan_key[row]}/{utterance_id}", self.name, utterance_id,
                                rows.domain[row], self._segments(first, count),
                                prompt=self.prompt if self.name == "asr" else None)

    def _segments(self, first: int, count: int) -> tuple[Segment, ...]:
        index = self._index
        out = []
        for r in range(first, first + count):
            text = index.text[r]
            if index.modality[r] == SPEECH:
                audio = AudioSlice(index.flac_path[int(index.audio_id[r])], int(index.start_sample[r]),
                                   int(index.end_sample[r]))
                out.append(Segment("speech", text, loss=False, audio=audio))
            else:
                out.append(Segment("text", text))
        return tuple(out)


@dataclass
class SequencePools:
    version_id: str
    pools: dict[str, SequencePool]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> sequences left out
    index: SequenceIndex | None = None
    asr_prompt: str = ""
    # audio ids (rows of the index's audio table) whose FLAC was missing when the files were checked: what a
    # rank that did not check them needs to leave out the same sequences (jstip.model.distributed)
    missing_audio: tuple[int, ...] = ()

    def counts(self) -> dict[str, int]:
        return {pool: len(self.pools[pool]) if pool in self.pools else 0 for pool in POOLS}

    @cached_property
    def texts(self) -> list[str]:
        """Every distinct text of every segment of the kept sequences, plus the ASR prompt, sorted: what a
        tiny LM's tokenizer is trained on (jstip.model.tiny_lm). Read on first use only (at 38k hours this
        is GBs of strings; a real run loads an LLM with its own tokenizer and never asks)."""
        column = read_ipc(self.index.directory / "segment_text.arrow").column("text")
        if self.missing_audio:
            keep = np.zeros(self.index.num_segments, dtype=bool)
            for pool in self.pools.values():
                rows = pool._rows
                positions = np.arange(len(rows)) if pool._positions is None else pool._positions
                first = np.asarray(rows.first_row)[positions]
                count = np.asarray(rows.num_rows)[positions]
                keep[np.repeat(first, count) + _ranges(count)] = True
            column = column.filter(pa.array(keep))
        return sorted(set(pc.unique(column).to_pylist()) | {self.asr_prompt})


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), ... concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


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
                    on_missing_audio: str = "error", *, missing_audio: Sequence[int] | None = None) -> SequencePools:
    """The version's sequence pools, from its index (built first if this is the first use).

    missing_audio: None checks that every audio file exists (one stat each); a rank that was told the
    result by the rank that checked passes it instead (audio ids, jstip.model.distributed)."""
    version = resolve_version(store, version_id)
    directory = store.work_dir / INDEX_STAGE / index_key(version.version_id, mix.transcripts_as_text, asr_prompt)
    if not (directory / "index.json").is_file():
        build_index(store, version, directory, mix.transcripts_as_text, asr_prompt)
    index = SequenceIndex(directory, store.root)
    if missing_audio is None:
        missing_audio = missing_audio_ids(index)
    return _open_pools(index, version.version_id, asr_prompt, on_missing_audio, tuple(int(a) for a in missing_audio))


def _open_pools(index: SequenceIndex, version_id: str, asr_prompt: str, on_missing_audio: str,
                missing_audio: tuple[int, ...]) -> SequencePools:
    if not missing_audio:
        pools = {pool: SequencePool(pool, index, asr_prompt) for pool in POOLS}
        return SequencePools(version_id, pools, {}, index, asr_prompt)
    missing_rows = np.isin(np.asarray(index.audio_id), np.array(missing_audio, dtype=np.int32))
    hits = np.concatenate([[0], np.cumsum(missing_rows, dtype=np.int64)])
    affected = {}
    for pool in POOLS:
        rows = index.pools[pool]
        first, count = np.asarray(rows.first_row), np.asarray(rows.num_rows)
        affected[pool] = hits[first + count] - hits[first] > 0
    total = int(sum(a.sum() for a in affected.values()))
    if on_missing_audio == "error":
        utterances = index.audio_table.column("utterance_id").take(pa.array(missing_audio))
        paths = index.audio_table.column("flac_path").take(pa.array(missing_audio))
        utterance, path = min(zip(utterances.to_pylist(), paths.to_pylist()))
        path = os.path.join(index.root, path)
        raise DatasetError(f"dataset version {version_id}: {len(missing_audio)} audio file(s) missing from the "
                           f"store, used by {total} sequence(s); e.g. utterance {utterance}: {path}. "
                           "Rebuild the version, or set on_missing_audio: skip to train without them")
    pools = {pool: SequencePool(pool, index, asr_prompt, np.flatnonzero(~affected[pool])) for pool in POOLS}
    return SequencePools(version_id, pools, {"missing_audio": total}, index, asr_prompt, missing_audio)


class BucketSampler:
    """Batches drawn by step: a pool by its mix weight, a length bucket of that pool by its size, then
    `batch_size` sequences of the bucket (without replacement where it holds enough).

    Batches of similar length pad little. Batch `step` depends only on (seed, step), so a resumed run
    draws exactly the batches the uninterrupted run would have drawn, with no sampler state to save; and
    under data parallelism every rank draws the same global batch and keeps its share (`rank_share`), so
    the global batch does not depend on the number of ranks."""

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
        # A pool is already sorted by estimated length: buckets are contiguous ranges of it, the split of
        # np.array_split (the first n % k buckets one longer), kept as (start, size) rather than index arrays.
        self._pools = pools
        self.buckets: dict[str, list[tuple[int, int]]] = {}
        for pool in self.pools:
            n = len(pools[pool])
            k = min(buckets, n)
            sizes = [n // k + 1] * (n % k) + [n // k] * (k - n % k)
            self.buckets[pool] = list(zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes))

    def indices(self, step: int) -> tuple[str, list[int]]:
        """(pool, positions in the pool) of the global batch of `step`."""
        rng = np.random.default_rng([self.seed, step])
        pool = self.pools[int(rng.choice(len(self.pools), p=self.weights))]
        buckets = self.buckets[pool]
        sizes = np.array([size for _, size in buckets], dtype=float)
        start, size = buckets[int(rng.choice(len(buckets), p=sizes / sizes.sum()))]
        picks = rng.choice(size, size=self.batch_size, replace=size < self.batch_size)
        return pool, [start + int(i) for i in picks]

    def batch(self, step: int) -> list[TrainingSequence]:
        """The global batch of `step`."""
        pool, positions = self.indices(step)
        return [self._pools[pool][i] for i in positions]

    def rank_batch(self, step: int, rank: int, world_size: int) -> list[TrainingSequence]:
        """Rank `rank`'s share of the global batch of `step`: its sequences rank, rank + world_size, ..."""
        pool, positions = self.indices(step)
        return [self._pools[pool][i] for i in rank_share(positions, rank, world_size)]


def rank_share(items: list, rank: int, world_size: int) -> list:
    """Every world_size-th item from `rank`: the shares of all ranks partition the items."""
    return items[rank::world_size]
