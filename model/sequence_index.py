"""The sequence index of a dataset version, which jstip.model.sequence_pools reads its pools from.

It is built once per (dataset version, what shapes it) by DuckDB, streamed to disk under
`<store>/work/sequence_index/<key>/` and memory-mapped by every reader: segment rows (modality, text, audio id,
sample offsets) as NumPy arrays and an Arrow IPC file, one row per sequence of each pool (sorted by estimated
length, then id) likewise, and the FLAC path of each audio id (as the version records it, relative to the
store root, resolved when read: the index moves with its store). Nothing is read into a process's own memory:
the pages live in the OS page cache, shared by every rank and DataLoader worker of a machine, and a sequence
becomes Python objects only when a batch draws it. At 38k hours (13.7 M utterances, 38 M sequences) the files
are 12.2 GiB and a rank's own heap for them 0.07 GiB (BENCHMARKS.md "sequence index at 38k hours"). The
directory appears complete or not at all (written under a temporary name, then renamed), so concurrent or
killed builders never leave a half index to read.

Bad input: normalised audio at another rate than the speech-LLM takes, or a speech span without audio, stops
the build naming the version and the span.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from jstip.schemas.sequences import POOLS
from jstip.storage.lock import remove_stale_temporaries, temp_name
from jstip.storage.store import DatasetStore, DatasetVersion

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


def read_ipc(path: Path) -> pa.Table:
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
        self.text = _Strings(read_ipc(d / "segment_text.arrow").column("text"))
        self.audio_table = read_ipc(d / "audio.arrow")
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
        table = read_ipc(directory / f"{pool}_sequences.arrow")
        self.utterance_id = _Strings(table.column("utterance_id"))
        self.plan_key = _Strings(table.column("plan_key"))
        self.domain = _Strings(table.column("domain"))

    def __len__(self) -> int:
        return len(self.first_row)


def index_key(version_id: str, transcripts_as_text: bool, asr_prompt: str) -> str:
    """What an index depends on: the version, whether transcripts are text sequences too, the prompt's
    length (it shifts the ASR pool's estimated lengths) and this module's code."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    parts = (version_id, str(transcripts_as_text), str(len(asr_prompt)), code)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


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
