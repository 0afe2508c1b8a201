"""Ingestion's plumbing: reading one manifest line, checking its fields, and the rows entries become.

Everything here works on one line or one value: `_lines` reads (gzip or plain) lines as bytes, `_json_object`
parses one, the `_valid_*`/`_text`/`_id`/... helpers raise `_Reject(check, problem)` for a value that cannot be
used, and `_Rows`/`_Quarantine` collect table rows. The readers (jstip.tasks.ingest.readers) combine them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from jstip.schemas.validate import conform, schema_for

# orjson (lhotse's choice too) is several times faster than json on 13M-line manifests
_JSON_ERRORS: tuple[type[Exception], ...] = (ValueError, orjson.JSONDecodeError)

logger = logging.getLogger(__name__)

STAGE = "ingest"

# Extensions of files that libsndfile (soundfile) reads; audio is not opened at ingest, so this is by name.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd",
    ".caf", ".w64", ".rf64", ".sph", ".nist",
})
TRANSCRIPT_EXTENSION = ".txt"

_CUT_TYPES = frozenset({"MonoCut", "MultiCut", "MixedCut", "PaddingCut", "Cut"})
_RECORDING_KEYS = ("id", "sources", "sampling_rate", "num_samples", "duration")
_SUPERVISION_KEYS = ("id", "recording_id", "start", "duration")
_MANIFEST_HINT = "expected a Lhotse/NeMo manifest or a directory of audio files with .txt transcripts"


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (missing, unreadable, unknown format)."""


@dataclass
class IngestResult:
    recordings: pa.Table
    utterances: pa.Table
    quarantine: pa.Table
    format: str  # lhotse_cuts | lhotse_supervisions | nemo | audio_dir | empty
    num_entries: int  # good + bad entries seen: utterances.num_rows + quarantine.num_rows
    # The directory every path in the tables is relative to: the manifest's (an audio directory: itself).
    corpus_root: str = ""
    # Real directories audio may come from (the confinement), or None for a trusted, unconfined manifest.
    roots: tuple[str, ...] | None = None


@dataclass
class TextIngestResult:
    text_corpus: pa.Table
    quarantine: pa.Table
    num_lines: int  # non-blank lines seen: text_corpus.num_rows + quarantine.num_rows


# ---------------------------------------------------------------------------------------------- plumbing


class _Reject(Exception):
    """One entry is unusable: `check` is the machine name, `problem` the human half of the reason."""

    def __init__(self, check: str, problem: str, value: Any = None, row_id: str | None = None):
        super().__init__(problem)
        self.check = check
        self.problem = problem
        self.value = None if value is None else str(value)[:200]
        self.row_id = row_id  # the quarantine row's id when it must not be the entry's own (duplicates)


class _Rows:
    """Column-wise accumulator for one schema table (row dicts would cost ~10x the memory at 13M rows)."""

    def __init__(self, table_name: str):
        self.table_name = table_name
        self.schema = schema_for(table_name)
        self.columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def append(self, **values: Any) -> None:
        unknown = values.keys() - self.columns.keys()
        if unknown:
            raise KeyError(f"{self.table_name}: no column(s) {sorted(unknown)}")
        for name, column in self.columns.items():
            column.append(values.get(name))

    def __len__(self) -> int:
        return len(self.columns[self.schema.names[0]])

    def truncate(self, length: int) -> None:
        for column in self.columns.values():
            del column[length:]

    def table(self) -> pa.Table:
        arrays = {name: pa.array(values, type=self.schema.field(name).type) for name, values in self.columns.items()}
        return conform(self.table_name, pa.table(arrays))


class _Quarantine(_Rows):
    def __init__(self) -> None:
        super().__init__("quarantine")

    def reject(self, utterance_id: str, source: str, error: _Reject) -> None:
        # Every text here may come from the hostile line itself (lone surrogates, NUL bytes, 10k characters):
        # made storable and bounded, so that writing the row can never fail.
        source = _storable(source, 1000)
        reason = _storable(f"{source}: {error.problem}", 2000)
        logger.warning(reason)
        self.append(utterance_id=_storable(error.row_id or utterance_id, 1000), stage=STAGE, check_name=error.check,
                    value=None if error.value is None else _storable(error.value, 200), reason=reason, source=source)


def _storable(text: str, limit: int) -> str:
    """`text` as valid UTF-8 (a lone surrogate shown as a \\udXXX escape), cut to `limit` characters."""
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _valid_text(value: Any, field: str) -> None:
    """Strings must be valid Unicode to be stored (JSON's \\ud800 escapes decode to lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Reject("malformed_text", f"{field!r} is not valid Unicode: {e.reason} at position {e.start}",
                          value) from None
    elif isinstance(value, list):
        for item in value:
            _valid_text(item, field)


# Longest path the kernel opens (PATH_MAX) and longest name in it (NAME_MAX), in bytes.
_PATH_MAX, _NAME_MAX = 4095, 255


def _valid_path(audio: str) -> None:
    if "\0" in audio:
        raise _Reject("invalid_path", "audio path contains a NUL byte", audio)
    _valid_text(audio, "audio path")
    encoded = os.fsencode(audio)
    if len(encoded) > _PATH_MAX or any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
        raise _Reject("invalid_path", f"audio path is too long to open ({len(encoded)} bytes; at most "
                      f"{_PATH_MAX}, and {_NAME_MAX} per name)", audio)


class _Claims:
    """First entry to name an id keeps it; later ones are duplicates.

    A duplicate's quarantine row is filed under `entry_id` (its place in the manifest), not under the id it
    repeats: quarantine is keyed by utterance_id, and the accepted first entry must not look quarantined.
    """

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def claim(self, utterance_id: str, source: str, entry_id: str) -> None:
        first = self.first.get(utterance_id)
        if first is not None:
            raise _Reject("duplicate_id", f"duplicate utterance id {utterance_id!r} (first at {first})",
                          utterance_id, row_id=entry_id)
        self.first[utterance_id] = source


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every line; a file that breaks mid-read is a ManifestError."""
    line_no = 0
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                yield line_no, raw
    except (OSError, EOFError, zlib.error) as e:
        raise ManifestError(f"cannot read {path} after line {line_no}: {e} (is the file truncated or not "
                            f"gzip despite its .gz name?)") from None


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except _JSON_ERRORS:
        return json.loads(raw)  # json accepts what orjson refuses (NaN, Infinity); still ValueError if broken


def _json_object(raw: bytes) -> dict:
    try:
        value = _loads(raw)
    except UnicodeDecodeError as e:
        raise _Reject("malformed_text", f"line is not UTF-8: {e}", raw.decode("utf-8", "replace").strip()) from None
    except ValueError as e:  # JSONDecodeError
        raise _Reject("malformed_json", f"malformed JSON: {e}", raw.decode("utf-8", "replace").strip()) from None
    if not isinstance(value, dict):
        raise _Reject("malformed_json", f"expected a JSON object, got {type(value).__name__}",
                      raw.decode("utf-8", "replace").strip())
    return value


def _manifest_stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return name or path.name


def _short_hash(text: str, digits: int = 12) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:digits]


def _resolve(audio: str, base: str) -> str:
    return os.path.normpath(audio if os.path.isabs(audio) else os.path.join(base, audio))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_duration(value: Any, what: str = "duration") -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _Reject("invalid_duration", f"{what} must be a positive number of seconds, got {value!r}", value)
    return float(value)


def _offset(value: Any, what: str = "offset") -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise _Reject("invalid_offset", f"{what} must be a non-negative number of seconds, got {value!r}", value)
    return float(value)


def _text(value: Any, field: str = "text") -> str:
    if value is None:
        raise _Reject("missing_field", f"no {field!r} (transcript)", field)
    if not isinstance(value, str):
        raise _Reject("invalid_field", f"{field!r} must be a string, got {type(value).__name__}", value)
    text = value.strip()
    if not text:
        raise _Reject("empty_text", "empty transcript", value)
    return text


def _id(value: Any, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _Reject("invalid_field", f"{field!r} must be a non-empty string, got {value!r}", value)
    return value


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric speaker ids are common in NeMo manifests
    if not isinstance(value, str):
        raise _Reject("invalid_field", f"{field!r} must be a string, got {value!r}", value)
    return value


def _entities(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _Reject("invalid_field", f"'entities' must be a string or a list of strings, got {value!r}", value)
