"""Arrow schemas: the data contracts every stage reads and writes.

Conventions (after Lhotse's manifests):
- times are seconds as float64, sample positions are int64 at the table's `sampling_rate`;
- required fields first, optional (nullable) fields after, so new columns can be added without breaking
  old files; every schema carries `jstip.schema_version` and `jstip.table` in its metadata;
- `utterance_id` is kept in every per-utterance table, exactly as the source manifest gave it.

Bump SCHEMA_VERSION when a field changes meaning or type; adding a nullable field does not need a bump.
"""

from __future__ import annotations

from typing import Literal, get_args

import pyarrow as pa

SCHEMA_VERSION = "1"

# What a dataset version is for. Held-out versions (dev, test) are never a default: commands reach them only
# when named, and training refuses them unless told explicitly (jstip.storage.store.DatasetStore.version).
DatasetRole = Literal["train", "dev", "test"]
DATASET_ROLES: tuple[str, ...] = get_args(DatasetRole)
HELD_OUT_ROLES = frozenset({"dev", "test"})


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"jstip.schema_version": SCHEMA_VERSION, "jstip.table": table})


def _req(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _opt(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


# A source audio file as the manifest describes it (one row per file, not per utterance).
RECORDINGS = _schema("recordings", [
    _req("recording_id", pa.string()),
    _req("audio_path", pa.string()),
    _opt("sampling_rate", pa.int32()),
    _opt("num_samples", pa.int64()),
    _opt("duration", pa.float64()),
    _opt("num_channels", pa.int32()),
    _opt("audio_sha256", pa.string()),  # sha256 of the file's bytes: what identifies it, wherever it lies
])

# A transcribed stretch of a recording (Lhotse's SupervisionSegment, NeMo's manifest line).
UTTERANCES = _schema("utterances", [
    _req("utterance_id", pa.string()),
    _req("recording_id", pa.string()),
    _req("audio_path", pa.string()),
    _req("start", pa.float64()),  # offset into the recording
    _opt("duration", pa.float64()),  # null: to the end of the recording
    _req("text", pa.string()),
    _opt("channel", pa.int32()),
    _opt("language", pa.string()),
    _opt("speaker", pa.string()),
    _opt("domain", pa.string()),
    # list child named "element" as Parquet names it, so a table read back equals its schema
    _opt("entities", pa.list_(pa.field("element", pa.string()))),
    _req("source", pa.string()),  # "manifest.jsonl:17": where the utterance came from
    _opt("audio_sha256", pa.string()),  # sha256 of the audio file's bytes (the shard key hashes it, not the path)
])

# Audio after normalisation: decoded, mono, resampled, written as FLAC into the content-addressed pool.
NORMALIZED_AUDIO = _schema("normalized_audio", [
    _req("utterance_id", pa.string()),
    _req("audio_hash", pa.string()),  # sha256 of the decoded, normalised 16-bit PCM
    _req("flac_path", pa.string()),  # relative to the store root: audio/<hash[:2]>/<hash>.flac
    _req("sampling_rate", pa.int32()),
    _req("num_samples", pa.int64()),
    _req("duration", pa.float64()),
    _opt("orig_sampling_rate", pa.int32()),
    _opt("orig_num_channels", pa.int32()),
    _opt("peak_dbfs", pa.float64()),  # of the stored audio
    _opt("rms_dbfs", pa.float64()),  # of the stored audio
    _opt("clipping_ratio", pa.float64()),  # of the input: share of samples at >= 0.999 of full scale
    _opt("dc_offset", pa.float64()),  # of the input: mean sample value, fraction of full scale
    _opt("loudness_lufs", pa.float64()),  # of the stored audio, ITU-R BS.1770-4; null: silent or < 0.4 s
    _opt("loudness_gain_db", pa.float64()),  # gain applied by loudness normalisation; null: none applied
    _opt("speech_ratio", pa.float64()),  # silero-vad speech seconds / duration; null: not measured
    _opt("trimmed_lead_s", pa.float64()),  # leading non-speech cut off (0 when not trimming)
    _opt("trimmed_trail_s", pa.float64()),  # trailing non-speech cut off
    _opt("flac_bytes", pa.int64()),  # size of the FLAC file (tamper evidence: DatasetStore.verify_version)
    _opt("flac_sha256", pa.string()),  # sha256 of the FLAC file's bytes
])

# One row per transcript word with its time in the normalised audio.
WORD_ALIGNMENTS = _schema("word_alignments", [
    _req("utterance_id", pa.string()),
    _req("word_index", pa.int32()),  # position in the transcript's whitespace tokens, from 0
    _req("word", pa.string()),  # the transcript's own word, as written
    _req("start", pa.float64()),
    _req("end", pa.float64()),
    _opt("score", pa.float64()),  # aligner-specific confidence; higher is better
    _req("aligner", pa.string()),
])

# One row per failed check: an utterance may appear more than once (one row per reason).
QUARANTINE = _schema("quarantine", [
    _req("utterance_id", pa.string()),
    _req("stage", pa.string()),  # ingest | normalize | align | check | plan
    _req("check_name", pa.string()),  # machine-readable name, e.g. "duration_max"
    _opt("value", pa.string()),  # the measured value, as text (checks measure different types)
    _opt("threshold", pa.string()),
    _req("reason", pa.string()),  # a sentence for humans, naming the input and the problem
    _opt("source", pa.string()),  # file:line of the manifest entry, where known
    # seconds of audio the row withholds (measured where normalize got that far, else the manifest's), so
    # the catalog can count quarantined hours; null: unknown (e.g. an unparsable manifest line)
    _opt("duration", pa.float64()),
])

# One row per (plan, utterance): how an utterance was cut into spans.
INTERLEAVE_PLANS = _schema("interleave_plans", [
    _req("plan_id", pa.string()),
    _req("utterance_id", pa.string()),
    # word | segment | asr | text; a mixed plan records the strategy drawn for this utterance.
    # text: a text-only domain sentence, whose utterance_id is its text_corpus text_id
    _req("strategy", pa.string()),
    # F1 (transcribe-as-you-go) | F2 (continuation); an ASR pair is F1 with one speech span, a text-only
    # sequence F2 with one text span
    _req("format", pa.string()),
    _req("seed", pa.int64()),
    _req("num_spans", pa.int32()),
    _req("num_words", pa.int32()),
    _req("speech_words", pa.int32()),
    _req("speech_seconds", pa.float64()),
    _opt("domain", pa.string()),  # the utterance's (or domain sentence's) domain
    _opt("audio_seconds", pa.float64()),  # the utterance's normalised audio; null for text-only sequences
])

# One row per span of a plan. Speech spans carry audio bounds; text spans carry none.
SPANS = _schema("spans", [
    _req("plan_id", pa.string()),
    _req("utterance_id", pa.string()),
    _req("span_index", pa.int32()),
    _req("modality", pa.string()),  # speech | text
    # speech: words given as audio; text: words given only as text; transcript: (F1) the text of the
    # speech span just before it, repeated as the prediction target
    _req("role", pa.string()),
    _req("first_word", pa.int32()),
    _req("last_word", pa.int32()),  # inclusive
    _req("num_words", pa.int32()),
    _req("text", pa.string()),
    _opt("audio_start", pa.float64()),
    _opt("audio_end", pa.float64()),
    _opt("start_sample", pa.int64()),
    _opt("end_sample", pa.int64()),  # exclusive
    # The plan's strategy and format again, so that span statistics and checks need no join of ~100 M
    # spans with ~14 M plans at 38k hours.
    _opt("strategy", pa.string()),
    _opt("format", pa.string()),
    _opt("entity_words", pa.int32()),  # words of the span inside a mention of utterances.entities; null: unknown
])

# Domain text without audio (JSTIP: domain text adapts as well as synthetic TTS pairs).
TEXT_CORPUS = _schema("text_corpus", [
    _req("text_id", pa.string()),
    _req("domain", pa.string()),
    _req("text", pa.string()),
    _req("source", pa.string()),
])

# The catalog's record of each published version (also stored in the DuckDB catalog as a table).
DATASET_VERSIONS = _schema("dataset_versions", [
    _req("version_id", pa.string()),
    _req("name", pa.string()),
    _opt("parent_version", pa.string()),
    _req("created_at", pa.timestamp("us", tz="UTC")),
    _req("config_json", pa.string()),
    _req("code_version", pa.string()),
    _req("input_hash", pa.string()),
    _req("row_counts_json", pa.string()),
    _req("status", pa.string()),  # published
    _req("path", pa.string()),  # relative to the store root
    _opt("data_docs_path", pa.string()),  # Great Expectations Data Docs of the version's suites (index.html)
])

TABLES: dict[str, pa.Schema] = {
    s.metadata[b"jstip.table"].decode(): s
    for s in (RECORDINGS, UTTERANCES, NORMALIZED_AUDIO, WORD_ALIGNMENTS, QUARANTINE, INTERLEAVE_PLANS, SPANS,
              TEXT_CORPUS, DATASET_VERSIONS)
}

# Tables a published dataset version holds (dataset_versions lives in the catalog, not in a version).
DATASET_TABLES = ("recordings", "utterances", "normalized_audio", "word_alignments", "quarantine",
                  "interleave_plans", "spans", "text_corpus")
