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

**The sequence index** is built once per (dataset version, what shapes it) by DuckDB, streamed to disk
under `<store>/work/sequence_index/<key>/` and memory-mapped by every reader: segment rows (modality, text,
audio id, sample offsets) as NumPy arrays and an Arrow IPC file, one row per sequence of each pool (sorted
by estimated length, then id) likewise, and the FLAC path of each audio id (as the version records it,
relative to the store root, resolved when read: the index moves with its store). Nothing is read into a
process's own memory: the pages live in the OS page cache, shared by every rank and DataLoader worker of
a machine, and a sequence becomes Python objects only when a batch draws it. At 38k hours (13.7 M
utterances, 38 M sequences) the files are 12.2 GiB and a rank's own heap for them 0.07 GiB (BENCHMARKS.md
"sequence index at 38k hours"). The directory appears complete or not at all (written under a temporary
name, then renamed), so concurrent or killed builders never leave a half index to read.

Bad input: a version that is not in the catalog, or whose files are gone, stops with an error naming it.
A speech span whose FLAC is missing stops training before the first step (on_missing_audio: error, the
default: a model must be reproducible from the dataset version it names), or, with `skip`, its sequence is
left out and counted (the counts go into the model's metrics). The files are checked on every run (one
`stat` per audio file), not cached with the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.model.config import MixConfig
from jstip.schemas.sequences import POOLS, AudioSlice, Segment, TrainingSequence
from jstip.storage.lock import remove_stale_temporaries, temp_name
from jstip.storage.store import DatasetStore, DatasetVersion, StoreError

SAMPLE_RATE = 16000
INDEX_STAGE = "sequence_index"
TEXT, SPEECH = 0, 1  # segment modality codes in the index
_BATCH_ROWS = 1 << 20  # rows per streamed batch while building the index
# DuckDB's working memory while building an index (it spills to the index's temporary directory beyond it)
INDEX_BUILD_MEMORY = os.environ.get("JSTIP_INDEX_BUILD_MEMORY", "4GB")


class DatasetError(RuntimeError):
    """A dataset version cannot be trained on; the message names the version and the item."""


class _Strings:
    """A memory-mapped Arrow string column (several chunks) with O(log chunks) access by row."""

    def __init__(self, column: pa.ChunkedArray):
        self._chunks = column.chunks
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])

    def __getitem__(self, row: int) -> str | None:
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._chunks[chunk][row - int(self._starts[chunk])].as_py()


def _read_ipc(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped: zero-copy, its pages shared with every process that maps it."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


class _Paths:
    """Audio paths as the version records them (relative to the store root), resolved under `root`."""

    def __init__(self, recorded: _Strings, root: str):
        self._recorded = recorded
        self._root = root

    def __getitem__(self, row: int) -> str:
        return os.path.join(self._root, self._recorded[row])  # an absolute recorded path (older versions) as is


class SequenceIndex:
    """The memory-mapped files of one built index (see the module docstring). Pickles as its path, so a
    DataLoader worker started by spawn or forkserver maps the same files instead of copying them.

    root: the store's root, under which the audio paths the index holds (as the version records them,
    relative to the store: jstip.storage.store.DatasetStore.relative) are resolved, so an index moves with
    its store."""

    def __init__(self, directory: str | Path, root: str | Path):
        self.directory = Path(directory)
        self.root = str(root)
        self.meta = json.loads((self.directory / "index.json").read_text())
        d = self.directory
        self.modality = np.load(d / "segment_modality.npy", mmap_mode="r")
        self.audio_id = np.load(d / "segment_audio.npy", mmap_mode="r")
        self.start_sample = np.load(d / "segment_start.npy", mmap_mode="r")
        self.end_sample = np.load(d / "segment_end.npy", mmap_mode="r")
        self.text = _Strings(_read_ipc(d / "segment_text.arrow").column("text"))
        self.audio_table = _read_ipc(d / "audio.arrow")
        self.flac_path = _Paths(_Strings(self.audio_table.column("flac_path")), self.root)
        self.pools = {pool: _PoolIndex(d, pool) for pool in POOLS}

    def __reduce__(self):
        return SequenceIndex, (self.directory, self.root)

    @property
    def num_segments(self) -> int:
        return int(self.meta["segments"])

    def nbytes(self) -> int:
        """Size of the index's files (what the page cache holds once every page was read)."""
        return sum(p.stat().st_size for p in self.directory.iterdir())


class _PoolIndex:
    def __init__(self, directory: Path, pool: str):
        self.first_row = np.load(directory / f"{pool}_first_row.npy", mmap_mode="r")
        self.num_rows = np.load(directory / f"{pool}_num_rows.npy", mmap_mode="r")
        self.est_positions = np.load(directory / f"{pool}_est_positions.npy", mmap_mode="r")
        table = _read_ipc(directory / f"{pool}_sequences.arrow")
        self.utterance_id = _Strings(table.column("utterance_id"))
        self.plan_key = _Strings(table.column("plan_key"))
        self.domain = _Strings(table.column("domain"))

    def __len__(self) -> int:
        return len(self.first_row)


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
        column = _read_ipc(self.index.directory / "segment_text.arrow").column("text")
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


def index_key(version_id: str, transcripts_as_text: bool, asr_prompt: str) -> str:
    """What an index depends on: the version, whether transcripts are text sequences too, the prompt's
    length (it shifts the ASR pool's estimated lengths) and this module's code."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    parts = (version_id, str(transcripts_as_text), str(len(asr_prompt)), code)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


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


def build_index(store: DatasetStore, version: DatasetVersion, directory: Path, transcripts_as_text: bool,
                asr_prompt: str) -> dict:
    """Build the sequence index of a version's tables into `directory` (streamed; DuckDB spills to disk
    beyond INDEX_BUILD_MEMORY). Returns the index's metadata."""
    started = time.perf_counter()
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory.parent)
    tmp = directory.parent / temp_name(directory.name)
    tmp.mkdir()
    try:
        meta = _write_index(store, version, tmp, transcripts_as_text, asr_prompt)
        meta["build_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "index.json").is_file():  # another process finishing it first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write_index(store: DatasetStore, version: DatasetVersion, out: Path, transcripts_as_text: bool,
                 asr_prompt: str) -> dict:
    version_id = version.version_id
    # audio paths as recorded (relative to the store root): the index is resolved where it is read
    tables = {t: store.table_sql(version, t, recorded_paths=True) for t in
              ("spans", "interleave_plans", "normalized_audio", "utterances")}
    work = out / "duckdb"
    con = duckdb.connect(str(out / "build.duckdb"))
    try:
        con.execute(f"SET memory_limit = '{INDEX_BUILD_MEMORY}'")
        con.execute("SET temp_directory = '{}'".format(str(work).replace("'", "''")))
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")  # a training log is no terminal
        rates = con.execute(f"SELECT DISTINCT sampling_rate FROM {tables['normalized_audio']}").fetchall()
        if any(r != SAMPLE_RATE for (r,) in rates):
            raise DatasetError(f"dataset version {version_id}: normalised audio at {sorted(r for (r,) in rates)} "
                               f"Hz; the speech-LLM takes {SAMPLE_RATE} Hz (build with normalize.sample_rate: 16000)")
        con.execute(f"""CREATE TABLE audio AS
            SELECT (row_number() OVER (ORDER BY utterance_id) - 1)::INTEGER AS audio_id, utterance_id, flac_path,
                   num_samples
            FROM {tables['normalized_audio']}""")
        # Every sequence of every pool as segment rows (see the module docstring for the pools).
        con.execute(f"""
            CREATE TABLE segments AS
            SELECT CASE WHEN p.strategy = 'text' THEN 'text' ELSE 'interleaved' END AS pool, s.plan_id AS plan_key,
                   s.utterance_id, p.domain, s.span_index AS segment_index,
                   CASE WHEN s.modality = 'speech' THEN {SPEECH} ELSE {TEXT} END::TINYINT AS modality, s.text,
                   CASE WHEN s.modality = 'speech' THEN a.audio_id END AS audio_id,
                   CASE WHEN s.modality = 'speech' THEN s.start_sample END::INTEGER AS start_sample,
                   CASE WHEN s.modality = 'speech' THEN s.end_sample END::INTEGER AS end_sample
            FROM {tables['spans']} s
            JOIN {tables['interleave_plans']} p USING (plan_id, utterance_id)
            LEFT JOIN audio a USING (utterance_id)
            WHERE p.strategy IN ('word', 'segment', 'text')
            UNION ALL
            SELECT 'asr', 'utt', u.utterance_id, u.domain, k.i, CASE k.i WHEN 0 THEN {SPEECH} ELSE {TEXT} END::TINYINT,
                   u.text, CASE k.i WHEN 0 THEN a.audio_id END, CASE k.i WHEN 0 THEN 0 END::INTEGER,
                   CASE k.i WHEN 0 THEN a.num_samples END::INTEGER
            FROM {tables['utterances']} u JOIN audio a USING (utterance_id), (VALUES (0), (1)) k(i)
            UNION ALL
            SELECT 'text', 'utt', u.utterance_id, u.domain, 0, {TEXT}::TINYINT, u.text, NULL, NULL, NULL
            FROM {tables['utterances']} u WHERE ?""", [transcripts_as_text])
        broken = con.execute(f"""SELECT pool || '/' || plan_key || '/' || utterance_id, segment_index FROM segments
                                 WHERE modality = {SPEECH} AND (audio_id IS NULL OR start_sample IS NULL)
                                 ORDER BY ALL LIMIT 1""").fetchall()
        if broken:
            raise DatasetError(f"dataset version {version_id}: speech span {broken[0][1]} of sequence "
                               f"{broken[0][0]} has no audio (no normalized_audio row or no sample offsets)")
        # One row per sequence. Segment rows are stored grouped by sequence, sequences in (pool, sequence_id)
        # order, so a sequence's segments are rows [first_row, first_row + num_rows).
        con.execute(f"""
            CREATE TABLE sequences AS
            SELECT pool, plan_key, utterance_id, any_value(domain) AS domain, count(*)::INTEGER AS num_rows,
                   pool || '/' || plan_key || '/' || utterance_id AS sequence_id,
                   sum(CASE WHEN modality = {SPEECH} THEN end_sample - start_sample ELSE 0 END) / 1280.0
                       + (sum(CASE WHEN modality = {TEXT} THEN length(text) + 1 ELSE 0 END)
                          + CASE WHEN pool = 'asr' THEN length(?) ELSE 0 END) / 4.0 AS est_positions
            FROM segments GROUP BY pool, plan_key, utterance_id""", [asr_prompt])
        con.execute("""
            CREATE TABLE ordered AS
            SELECT *, (row_number() OVER w - 1)::BIGINT AS sequence_no,
                   (sum(num_rows) OVER w - num_rows)::BIGINT AS first_row
            FROM sequences WINDOW w AS (ORDER BY pool, sequence_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)""")
        (rows,), = con.execute("SELECT count(*) FROM segments").fetchall()
        arrays = {name: np.lib.format.open_memmap(out / f"segment_{name}.npy", mode="w+", dtype=dtype, shape=(rows,))
                  for name, dtype in (("modality", np.int8), ("audio", np.int32), ("start", np.int32),
                                      ("end", np.int32))}
        ordered = con.sql("""SELECT s.modality, s.text, coalesce(s.audio_id, -1) AS audio,
                                    coalesce(s.start_sample, 0) AS start, coalesce(s.end_sample, 0) AS "end"
                             FROM segments s JOIN ordered o USING (pool, plan_key, utterance_id)
                             ORDER BY o.sequence_no, s.segment_index""")
        _stream(ordered, out / "segment_text.arrow", ["text"], arrays)
        for array in arrays.values():
            array.flush()
        del arrays
        _stream(con.sql("SELECT flac_path, utterance_id FROM audio ORDER BY audio_id"), out / "audio.arrow",
                ["flac_path", "utterance_id"], {})
        counts = {}
        for pool in POOLS:
            (n,), = con.execute("SELECT count(*) FROM ordered WHERE pool = ?", [pool]).fetchall()
            counts[pool] = n
            arrays = {name: np.lib.format.open_memmap(out / f"{pool}_{name}.npy", mode="w+", dtype=dtype, shape=(n,))
                      for name, dtype in (("first_row", np.int64), ("num_rows", np.int32),
                                          ("est_positions", np.float64))}
            relation = con.sql("""SELECT first_row, num_rows, est_positions, utterance_id, plan_key, domain
                                  FROM ordered WHERE pool = ? ORDER BY est_positions, sequence_id""", params=[pool])
            _stream(relation, out / f"{pool}_sequences.arrow", ["utterance_id", "plan_key", "domain"], arrays)
            for array in arrays.values():
                array.flush()
            del arrays
    finally:
        con.close()
    for scratch in (out / "build.duckdb", out / "build.duckdb.wal"):
        scratch.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"version_id": version_id, "segments": rows, "sequences": counts,
            "transcripts_as_text": transcripts_as_text, "asr_prompt_length": len(asr_prompt)}


def _stream(relation: duckdb.DuckDBPyRelation, arrow_path: Path, string_columns: list[str],
            arrays: dict[str, np.ndarray]) -> None:
    """Write a query's rows batch by batch: `string_columns` to an Arrow IPC file, the others into the
    NumPy arrays of the same name (memory-mapped .npy files); never the whole result in memory."""
    schema = pa.schema([(c, pa.string()) for c in string_columns])
    at = 0
    with pa.ipc.new_file(str(arrow_path), schema) as writer:
        for batch in relation.to_arrow_reader(_BATCH_ROWS):
            n = batch.num_rows
            for name, array in arrays.items():
                array[at:at + n] = batch.column(name).to_numpy(zero_copy_only=False)
            writer.write_batch(pa.record_batch([batch.column(c).cast(pa.string()) for c in string_columns],
                                               schema=schema))
            at += n
    if arrays and at != len(next(iter(arrays.values()))):
        raise RuntimeError(f"{arrow_path}: wrote {at} rows, expected {len(next(iter(arrays.values())))}")


def missing_audio_ids(index: SequenceIndex, batch: int = 65536) -> list[int]:
    """Audio ids whose FLAC file does not exist (one stat per file, streamed over the index)."""
    paths = index.audio_table.column("flac_path")
    missing, at = [], 0
    for chunk in paths.chunks:
        for start in range(0, len(chunk), batch):
            for offset, path in enumerate(chunk.slice(start, batch).to_pylist()):
                if not os.path.isfile(os.path.join(index.root, path)):
                    missing.append(at + start + offset)
        at += len(chunk)
    return missing


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
