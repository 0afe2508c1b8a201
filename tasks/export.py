"""Exports of a published dataset version for other trainers: Lhotse (a cuts manifest or Shar) and NeMo (JSONL).

An export is the accepted utterances of one version, each with its normalised audio (the 16 kHz mono FLAC of
the store's audio pool: the audio the word times and span samples refer to), its word alignment and its
interleave plans, so that Lhotse/icefall and NeMo trainers read the same versioned data as jstip's own.

    OUT/cuts.jsonl.gz         lhotse:      one MonoCut per utterance (cut id = recording id = supervision id)
    OUT/shar/                 lhotse-shar: cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar (the audio, FLAC, inside)
    OUT/manifest.jsonl        nemo:        one line per utterance
    OUT/text_corpus.jsonl     all formats: the domain sentences without audio (the text arm), with their plans
    OUT/jstip_export.json     all formats: version, format, counts, and where the files are

Per utterance (Lhotse: the supervision, whose `custom` holds the extra keys; NeMo: keys of the line):
- text, language, speaker, and `domain`, `entities`, `source` (manifest file:line), `aligner`;
- the word alignment: Lhotse `supervision.alignment["word"]` = AlignmentItem(symbol, start, duration, score);
  NeMo `words` = [{"word", "start", "end", "score"}], the layout of `jstip align`. Item k is word_index k;
- `plans`: the utterance's interleave_plans rows and `spans`: its spans rows, each row as in the table
  less utterance_id, ordered by (plan_id, span_index). A version normally has one plan; where it has
  several, every plan is there and its spans are told apart by plan_id (select one with
  `[s for s in spans if s["plan_id"] == p]`). Span times and samples are in the exported audio.

The Lhotse manifest and the NeMo manifest point at the FLAC files in the store's audio pool (absolute paths
of the store the export was made from; content-addressed, never modified); lhotse-shar copies the audio into
its tar shards (self-contained).
Both manifests keep the keys jstip's own ingest reads (supervision.custom domain/entities; NeMo id, lang,
domain, entities), so an export can be built again.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from jstip.storage.store import DatasetStore, DatasetVersion

EXPORT_FORMATS = ("lhotse", "lhotse-shar", "nemo")
TEXT_CORPUS_FILE = "text_corpus.jsonl"
METADATA_FILE = "jstip_export.json"
_BATCH_ROWS = 4096  # rows fetched from DuckDB at a time: an export streams, it never holds a version in memory


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportSummary:
    version_id: str
    name: str
    format: str
    out: Path
    utterances: int
    words: int
    plans: int  # interleave_plans rows exported (utterances and text-only sequences)
    spans: int
    text_sentences: int
    audio_seconds: float
    files: tuple[str, ...]  # relative to out


def _row_struct(columns: list[str]) -> str:
    # A row of the table less utterance_id, in the table's column order (names come from our own schemas).
    return "{" + ", ".join(f"'{c}': \"{c}\"" for c in columns if c != "utterance_id") + "}"


# Each utterance's words, plans and spans as lists, grouped by DuckDB (no Python loop over the tables).
_GROUPED_SQL = """
WITH words AS (
    SELECT utterance_id,
           list({{'word': word, 'start': start, 'end': "end", 'score': score}} ORDER BY word_index) AS words,
           any_value(aligner) AS aligner
    FROM word_alignments GROUP BY utterance_id),
plans AS (SELECT utterance_id, list({plan} ORDER BY plan_id) AS plans FROM interleave_plans GROUP BY utterance_id),
spans AS (SELECT utterance_id, list({span} ORDER BY plan_id, span_index) AS spans FROM spans GROUP BY utterance_id)
"""

_SPEECH_SQL = _GROUPED_SQL + """
SELECT u.utterance_id, u.text, u.language, u.speaker, u.domain, u.entities, u.source,
       a.flac_path, a.sampling_rate, a.num_samples, a.duration, w.words, w.aligner, p.plans, s.spans
FROM utterances u JOIN normalized_audio a USING (utterance_id)
LEFT JOIN words w USING (utterance_id) LEFT JOIN plans p USING (utterance_id) LEFT JOIN spans s USING (utterance_id)
ORDER BY u.utterance_id
"""

# Text-only sequences are plans whose utterance_id is a text_corpus text_id (strategy `text`).
_TEXT_SQL = _GROUPED_SQL + """
SELECT t.text_id, t.domain, t.text, t.source, p.plans, s.spans
FROM text_corpus t LEFT JOIN plans p ON p.utterance_id = t.text_id LEFT JOIN spans s ON s.utterance_id = t.text_id
ORDER BY t.text_id
"""


def _connect(version: DatasetVersion) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for table in ("utterances", "normalized_audio", "word_alignments", "interleave_plans", "spans", "text_corpus"):
        # the relation API takes the path as a value: nothing is formatted into SQL
        con.read_parquet(str(version.path / table / "*.parquet")).create_view(table)
    return con


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[dict]:
    reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
    for batch in reader:
        yield from batch.to_pylist()


def _sql(con: duckdb.DuckDBPyConnection, template: str) -> str:
    return template.format(plan=_row_struct(con.table("interleave_plans").columns),
                           span=_row_struct(con.table("spans").columns))


def _audio_path(store: DatasetStore, flac_path: str) -> str:
    path = Path(flac_path)
    return str(path if path.is_absolute() else store.root / path)


def _cut(row: dict, audio_path: str):
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    uid, duration = row["utterance_id"], row["duration"]
    recording = Recording(id=uid, sources=[AudioSource(type="file", channels=[0], source=audio_path)],
                          sampling_rate=row["sampling_rate"], num_samples=row["num_samples"], duration=duration)
    words = [AlignmentItem(symbol=w["word"], start=w["start"], duration=w["end"] - w["start"], score=w["score"])
             for w in row["words"] or []]
    supervision = SupervisionSegment(
        id=uid, recording_id=uid, start=0.0, duration=duration, channel=0, text=row["text"],
        language=row["language"], speaker=row["speaker"], alignment={"word": words},
        custom={"domain": row["domain"], "entities": row["entities"], "source": row["source"],
                "aligner": row["aligner"], "plans": row["plans"] or [], "spans": row["spans"] or []})
    return MonoCut(id=uid, start=0.0, duration=duration, channel=0, recording=recording, supervisions=[supervision])


def _nemo_line(row: dict, audio_path: str) -> dict:
    return {"audio_filepath": audio_path, "duration": row["duration"], "offset": 0.0, "text": row["text"],
            "id": row["utterance_id"], "lang": row["language"], "speaker": row["speaker"], "domain": row["domain"],
            "entities": row["entities"], "source": row["source"], "aligner": row["aligner"],
            "words": [{"word": w["word"], "start": w["start"], "end": w["end"], "score": w["score"]}
                      for w in row["words"] or []],
            "plans": row["plans"] or [], "spans": row["spans"] or []}


class _Counts:
    def __init__(self) -> None:
        self.utterances = self.words = self.plans = self.spans = self.text_sentences = 0
        self.audio_seconds = 0.0

    def speech(self, row: dict) -> dict:
        self.utterances += 1
        self.words += len(row["words"] or [])
        self.audio_seconds += row["duration"]
        return self._planned(row)

    def text(self, row: dict) -> dict:
        self.text_sentences += 1
        return self._planned(row)

    def _planned(self, row: dict) -> dict:
        self.plans += len(row["plans"] or [])
        self.spans += len(row["spans"] or [])
        return row


def _write_speech(rows: Iterator[dict], format: str, staging: Path, store: DatasetStore, shard_size: int) -> list[str]:
    if format == "nemo":
        with open(staging / "manifest.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(_nemo_line(row, _audio_path(store, row["flac_path"])), ensure_ascii=False) + "\n")
        return ["manifest.jsonl"]
    if format == "lhotse":
        from lhotse import CutSet

        with CutSet.open_writer(staging / "cuts.jsonl.gz") as writer:
            for row in rows:
                writer.write(_cut(row, _audio_path(store, row["flac_path"])))
        return ["cuts.jsonl.gz"]
    from lhotse.shar import SharWriter

    # Shar shards get a folder of their own: CutSet.from_shar(in_dir=...) reads every file there as a field.
    # FLAC of 16-bit samples re-encodes the pool's audio losslessly.
    (staging / "shar").mkdir()
    with SharWriter(staging / "shar", fields={"recording": "flac"}, shard_size=shard_size) as writer:
        for row in rows:
            writer.write(_cut(row, _audio_path(store, row["flac_path"])))
    return sorted(str(p.relative_to(staging)) for p in (staging / "shar").iterdir())


def _write_text(rows: Iterator[dict], staging: Path) -> list[str]:
    with open(staging / TEXT_CORPUS_FILE, "w", encoding="utf-8") as f:
        for row in rows:
            row["plans"], row["spans"] = row["plans"] or [], row["spans"] or []
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return [TEXT_CORPUS_FILE]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty; pass --overwrite to replace it")


def export_version(store: str | Path, version: str | None, format: str, out: str | Path, *, overwrite: bool = False,
                   shard_size: int = 1000) -> ExportSummary:
    """Export a published version (`version`: an id, a unique prefix or a dataset name; None: the newest training
    version) to the directory `out`.

    Everything is written into a staging directory beside `out` and renamed into place at the end, so `out`
    holds a complete export or none; a non-empty `out` is refused unless `overwrite`."""
    if format not in EXPORT_FORMATS:
        raise ExportError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    if shard_size < 1:
        raise ExportError(f"shard size must be >= 1, got {shard_size}")
    data_store = DatasetStore(store)
    # its files are those that were published, or nothing is exported
    v = data_store.ensure_intact(version, purpose="export")
    out = Path(out).resolve()
    _prepare_out(out, overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    counts = _Counts()
    try:
        with _connect(v) as con:
            files = _write_speech((counts.speech(r) for r in _rows(con, _sql(con, _SPEECH_SQL))), format, staging,
                                  data_store, shard_size)
            files += _write_text((counts.text(r) for r in _rows(con, _sql(con, _TEXT_SQL))), staging)
            (total_spans,), (total_plans,) = (con.execute(f"SELECT count(*) FROM {t}").fetchone()
                                              for t in ("spans", "interleave_plans"))
        if (counts.spans, counts.plans) != (total_spans, total_plans):
            # every plan belongs to an accepted utterance or a domain sentence (the publish gate checks it)
            raise ExportError(f"version {v.version_id}: exported {counts.plans} of {total_plans} plans and "
                              f"{counts.spans} of {total_spans} spans; the rest reference no utterance or text_id")
        summary = ExportSummary(
            version_id=v.version_id, name=v.name, format=format, out=out, utterances=counts.utterances,
            words=counts.words, plans=counts.plans, spans=counts.spans, text_sentences=counts.text_sentences,
            audio_seconds=counts.audio_seconds, files=(*files, METADATA_FILE))
        metadata = {**asdict(summary), "out": str(out), "store": str(data_store.root),
                    "code_version": v.code_version, "parent_version": v.parent_version}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _prepare_out(out, overwrite)  # again: someone may have written there meanwhile
        if out.exists():
            previous = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.rename(out, previous)
            os.rename(staging, out)
            shutil.rmtree(previous)
        else:
            os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
