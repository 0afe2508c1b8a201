"""Ingestion: speech manifests -> `recordings` + `utterances`, domain text -> `text_corpus`.

Every entry that cannot be used becomes one `quarantine` row (stage "ingest") and one log warning; nothing is
dropped silently, and `accepted + quarantined == num_entries` always holds, so a caller can check it.

Formats of `ingest_manifest`, detected from the content of the first line that parses as JSON (names are
only used to find a Lhotse manifest's partner file):
- Lhotse CutSet (`"type": "MonoCut"`): one utterance per supervision; start = cut start + supervision start.
- Lhotse supervisions (a line with `recording_id`) or recordings (a line with `sources`): the partner file is
  found beside it by Lhotse's naming (`X_supervisions_Y.jsonl.gz` <-> `X_recordings_Y.jsonl.gz`), else the
  only `*recordings*.jsonl[.gz]` / `*supervisions*.jsonl[.gz]` in the same directory.
- NeMo (a line with `audio_filepath`): `text`, optional `duration`, `offset`, `id`, `domain`, `entities`,
  `speaker`, `lang`.
- A directory: exactly one Lhotse recordings + one supervisions manifest (or, failing that, exactly one cuts
  manifest) at its top level; otherwise audio files with same-name `.txt` transcripts, searched recursively.

Ids (deterministic, so reruns produce the same tables):
- Lhotse: utterance_id = supervision id, recording_id = recording id, as the manifest gives them.
- NeMo: utterance_id = the `id` field if present, else `<audio stem>-<sha1(audio path|offset|duration)[:12]>`;
  recording_id = `<audio stem>-<sha1(audio path)[:12]>`. The audio path is the normalised path relative to the
  manifest's directory (symlinks not resolved), so moving a corpus keeps its ids; offset/duration are
  formatted to the millisecond ("" for no duration). Deriving from
  the segment rather than the line number keeps ids stable when a manifest is re-sharded or reordered, and makes
  an exact repeat of a segment a `duplicate_id`. 12 hex digits (48 bits), not 8: ids of files sharing a stem
  would collide by the birthday bound at ~10^5 files with 32 bits.
- Audio directory: utterance_id = recording_id = path relative to the directory, without extension, '/' -> '_'.
- Entries with no id of their own are quarantined as `<manifest stem>:line<N>`.
- `source` names one entry, uniquely (callers count entries by it): `<manifest file name>:<line>`; the k-th
  supervision of a cut with several is `<name>:<line>#<k>`; in an audio directory, the audio file's path
  relative to it (an orphan transcript: its own path).

Paths in the tables (`audio_path`, `source`) are relative to the corpus root (`IngestResult.corpus_root`: the
manifest's directory, or the audio directory itself), and reasons name files the same way: the same corpus
gives the same tables wherever it lies, which is what lets shard keys and version ids be content hashes.

The first entry to name an id claims it, even when that entry is itself quarantined; later ones are
`duplicate_id`, filed under `<manifest stem>:line<N>` (an audio directory: the audio file's relative path) with
the repeated id as `value`. So no accepted utterance_id ever appears in this stage's quarantine table, and
`utterances` anti-joined with `quarantine` on utterance_id keeps every accepted utterance.

Content identity: after the lines are read, every accepted utterance's audio file is opened once, confined
(jstip.storage.content.open_confined: the handle is checked, not just the name) and hashed: `audio_sha256`
in `utterances` and `recordings`. Hashes are cached by (device, inode, size, mtime, ctime) when the caller
passes a `FileHashes` with a cache file, so a rerun re-reads only files that changed. A file that cannot be
opened that way quarantines its utterances (`audio_not_found`, `audio_unreadable`,
`path_outside_allowed_roots`). Recording metadata that a manifest does not give (NeMo, audio directories)
stays null; the normaliser measures it. The recordings table holds only recordings that an accepted
utterance uses.

Totality: nothing on one line can stop a build. Every line is read inside a guard that turns any
unexpected exception into one quarantine row for that line (`invalid_entry`, with the exception) after
undoing what the line had added; strings that cannot be stored (lone surrogates from JSON `\ud800` escapes
or undecodable file names) are `malformed_text`; NUL bytes and paths longer than the kernel opens are
`invalid_path`; quarantine rows themselves are made storable (escaped, bounded) whatever the line held.

Confinement (`allowed_roots`, the build's `ingest.allowed_roots`): an audio path must lie under the manifest's
directory (an audio directory: itself) or an allowed root once `..` and symlinks are resolved, else the entry
is quarantined as `path_outside_allowed_roots` before its file is even probed. Directories are resolved once
(cached) and files with one lstat each, so confinement stays cheap at 13M lines. A line that is not UTF-8 is
`malformed_text`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jstip.schemas.validate import conform, schema_for
from jstip.storage.content import ConfinementError, FileHashes
from jstip.tasks.text import split_words

try:  # lhotse's own choice too: orjson is several times faster on 13M-line manifests
    import orjson

    _JSON_ERRORS: tuple[type[Exception], ...] = (ValueError, orjson.JSONDecodeError)
    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson comes with lhotse
    _JSON_ERRORS = (ValueError,)
    _fast_loads = json.loads

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
        return _fast_loads(raw)
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


# ------------------------------------------------------------------------------------------ detection


def _lhotse_files(directory: Path, kind: str) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and kind in p.name and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz")))


def _partner(path: Path, own: str, other: str) -> Path:
    """Lhotse's naming: X_supervisions_Y.jsonl.gz <-> X_recordings_Y.jsonl.gz; else the only `other` beside it."""
    name = path.name
    if own in name:
        head, _, tail = name.rpartition(own)
        candidate = path.parent / f"{head}{other}{tail}"
        if candidate.is_file():
            return candidate
    else:
        candidate = path.parent / f"*{other}*.jsonl[.gz]"
    beside = _lhotse_files(path.parent, other)
    if len(beside) == 1:
        return beside[0]
    found = f"; found {len(beside)}: {', '.join(p.name for p in beside)}" if beside else ""
    raise ManifestError(f"no Lhotse {other} manifest for {path} (looked for {candidate}{found}); put it beside the "
                        f"{own} manifest named by Lhotse's convention (X_{own}_Y.jsonl.gz -> X_{other}_Y.jsonl.gz), "
                        f"or pass a directory holding exactly one recordings and one supervisions manifest")


def _sniff(path: Path) -> dict | None:
    """The first line of `path` that parses as a JSON object, or None if the file has no non-blank line."""
    seen_content = False
    for _, raw in _lines(path):
        if not raw.strip():
            continue
        seen_content = True
        try:
            return _json_object(raw)
        except _Reject:
            continue
    if seen_content:
        raise ManifestError(f"no line of {path} parses as a JSON object ({_MANIFEST_HINT})")
    return None


def _detect(path: Path) -> tuple[str, tuple[Path, ...]]:
    if not path.exists():
        raise ManifestError(f"manifest not found: {path} ({_MANIFEST_HINT})")
    if path.is_dir():
        recordings, supervisions = _lhotse_files(path, "recordings"), _lhotse_files(path, "supervisions")
        cuts = _lhotse_files(path, "cuts")
        if len(recordings) == 1 and len(supervisions) == 1:
            return "lhotse_supervisions", (supervisions[0], recordings[0])
        if not recordings and not supervisions and len(cuts) == 1:
            return "lhotse_cuts", (cuts[0],)
        if recordings or supervisions or cuts:
            names = ", ".join(p.name for p in recordings + supervisions + cuts)
            raise ManifestError(f"{path} holds Lhotse manifests ({names}) but not exactly one recordings + one "
                                f"supervisions manifest (or one cuts manifest); pass the manifest file itself")
        return "audio_dir", ()
    first = _sniff(path)
    if first is None:
        return "empty", ()
    if "audio_filepath" in first:
        return "nemo", (path,)
    if first.get("type") in _CUT_TYPES:
        return "lhotse_cuts", (path,)
    if "sources" in first:
        return "lhotse_supervisions", (_partner(path, "recordings", "supervisions"), path)
    if "recording_id" in first:
        return "lhotse_supervisions", (path, _partner(path, "supervisions", "recordings"))
    raise ManifestError(f"unknown manifest format: {path} (its first entry has keys {sorted(first)}; "
                        f"{_MANIFEST_HINT}: NeMo lines need 'audio_filepath' and 'text'; for text-only corpora "
                        f"use ingest_text_corpus)")


# ------------------------------------------------------------------------------------------ the readers


class _Confinement:
    """Audio paths must lie under one of `roots` once `..` and symlinks are resolved. This check by name is
    the cheap first fence (a path outside is never even opened); the file is then opened once and checked
    again by its handle (jstip.storage.content.open_confined), and hashed and decoded from that handle."""

    def __init__(self, roots: list[str], shown: list[str]):
        self.roots = sorted({os.path.realpath(root) for root in roots})
        self.shown = shown  # the roots as the config names them (location-free, for reasons)
        self._prefixes = tuple(root.rstrip(os.sep) + os.sep for root in self.roots)
        self._real_dir = functools.lru_cache(maxsize=1 << 16)(os.path.realpath)

    def check(self, audio_path: str, shown: str) -> None:
        if os.path.islink(audio_path):
            real = os.path.realpath(audio_path)
        else:  # the directory's symlinks resolved once per directory, not once per file
            real = os.path.join(self._real_dir(os.path.dirname(audio_path)), os.path.basename(audio_path))
        if real in self.roots or real.startswith(self._prefixes):
            return
        if real != audio_path:
            shown = f"{shown} (resolves to {real})"
        raise _Reject("path_outside_allowed_roots", f"audio path {shown} is outside the allowed roots "
                      f"({', '.join(self.shown)}); if the corpus lies there, allow that directory "
                      f"(`jstip build --allow-root DIR`, or ingest.allowed_roots in the build config)", audio_path)


class _Ingest:
    """State shared by the format readers: output tables, id claims, the cached existence check.

    Paths in the tables are relative to `corpus_root` (the manifest's directory), so that the same corpus
    gives the same tables, bytes and ids wherever it lies."""

    def __init__(self, corpus_root: str, confinement: _Confinement | None = None) -> None:
        self.corpus_root = corpus_root
        self.confinement = confinement
        self.recordings = _Rows("recordings")
        self.recording_ids: set[str] = set()
        self.utterances = _Rows("utterances")
        self.quarantine = _Quarantine()
        self.claims = _Claims()
        self.num_entries = 0
        self.exists = functools.lru_cache(maxsize=1 << 16)(os.path.exists)

    def name(self, path: str | Path) -> str:
        """`path` relative to the corpus root, with '/' separators: how tables and reasons name files."""
        return Path(os.path.relpath(path, self.corpus_root)).as_posix()

    @contextmanager
    def entry(self, source: str, line_id: str) -> Iterator[None]:
        """Whatever one manifest line does, it ends as rows, never as a stopped build: an unexpected error
        (a library's exception, a bug) rolls back what the line added and quarantines it as one entry."""
        mark = (self.num_entries, len(self.utterances), len(self.recordings), len(self.quarantine))
        try:
            yield
        except Exception as e:  # noqa: BLE001 - any one line's failure is that line's quarantine row
            self.num_entries, utterances, recordings, quarantined = mark
            self.utterances.truncate(utterances)
            self.recordings.truncate(recordings)
            self.quarantine.truncate(quarantined)
            self.recording_ids = set(self.recordings.columns["recording_id"])
            self.num_entries += 1
            logger.debug("entry %s failed", _storable(source, 200), exc_info=True)
            self.quarantine.reject(line_id, source, _Reject(
                "invalid_entry", f"cannot read this entry: {type(e).__name__}: {e}"))

    def require_audio(self, audio_path: str) -> None:
        _valid_path(audio_path)
        shown = self.name(audio_path)
        if self.confinement is not None:  # first: a path outside is never even probed
            self.confinement.check(audio_path, shown)
        if not self.exists(audio_path):
            raise _Reject("audio_not_found", f"audio file not found: {shown}", shown)

    def accept(self, recording: dict, **utterance: Any) -> None:
        try:
            for field, value in (*recording.items(), *utterance.items()):
                _valid_text(value, field)
        except _Reject as error:
            self.quarantine.reject(utterance["utterance_id"], utterance["source"], error)
            return
        audio_path = self.name(recording["audio_path"])
        if recording["recording_id"] not in self.recording_ids:
            self.recording_ids.add(recording["recording_id"])
            self.recordings.append(**{**recording, "audio_path": audio_path})
        self.utterances.append(recording_id=recording["recording_id"], audio_path=audio_path, **utterance)

    def result(self, format_: str, hashes: FileHashes) -> IngestResult:
        utterances = self._identify_audio(self.utterances.table(), hashes)
        quarantine = self.quarantine.table()
        recordings = self.recordings.table()
        used = pc.is_in(recordings.column("recording_id"), value_set=utterances.column("recording_id"))
        recordings = recordings.filter(used)
        recordings = recordings.set_column(recordings.schema.get_field_index("audio_sha256"), "audio_sha256",
                                           self._sha_column(recordings))
        assert utterances.num_rows + quarantine.num_rows == self.num_entries, "an entry was lost"
        roots = None if self.confinement is None else tuple(self.confinement.roots)
        return IngestResult(recordings=conform("recordings", recordings), utterances=utterances,
                            quarantine=quarantine, format=format_, num_entries=self.num_entries,
                            corpus_root=self.corpus_root, roots=roots)

    def _sha_column(self, table: pa.Table) -> pa.Array:
        return pa.array([self._digests.get(p) for p in table.column("audio_path").to_pylist()], pa.string())

    def _identify_audio(self, utterances: pa.Table, hashes: FileHashes) -> pa.Table:
        """sha256 of every accepted utterance's audio file, read through a confined open (the content, not
        the path or stat, is what names shards and versions); an audio file that cannot be read that way
        quarantines its utterances."""
        roots = None if self.confinement is None else self.confinement.roots
        names = utterances.column("audio_path").to_pylist()
        found = hashes.hash_many([os.path.join(self.corpus_root, n) for n in dict.fromkeys(names)], roots)
        self._digests = {}
        for path, digest in found.items():
            self._digests[self.name(path)] = digest if isinstance(digest, str) else None
        keep = []
        for row, name in zip(utterances.select(["utterance_id", "source"]).to_pylist(), names):
            outcome = found[os.path.join(self.corpus_root, name)]
            keep.append(isinstance(outcome, str))
            if not keep[-1]:
                if isinstance(outcome, ConfinementError):
                    check = "path_outside_allowed_roots"
                elif isinstance(outcome, FileNotFoundError):
                    check = "audio_not_found"
                else:
                    check = "audio_unreadable"
                problem = str(outcome).replace(os.path.join(self.corpus_root, ""), "")
                self.quarantine.reject(row["utterance_id"], row["source"],
                                       _Reject(check, f"cannot read audio {name}: {problem}", name))
        utterances = utterances.filter(pa.array(keep, pa.bool_()))
        return utterances.set_column(utterances.schema.get_field_index("audio_sha256"), "audio_sha256",
                                     self._sha_column(utterances))

    # -- NeMo ------------------------------------------------------------------------------------------

    def nemo(self, path: Path) -> None:
        base, stem = str(path.parent.absolute()), _manifest_stem(path)

        @functools.lru_cache(maxsize=1 << 16)  # segments of one long file come in runs
        def audio_identity(audio: str) -> tuple[str, str, str]:
            audio_path = _resolve(audio, base)
            audio_stem = os.path.splitext(os.path.basename(audio_path))[0]
            return audio_path, audio_stem, f"{audio_stem}-{_short_hash(self.name(audio_path))}"

        for line_no, raw in _lines(path):
            if not raw.strip():
                continue
            source = f"{self.name(path)}:{line_no}"
            utterance_id = line_id = f"{stem}:line{line_no}"
            with self.entry(source, line_id):
                self.num_entries += 1
                try:
                    entry = _json_object(raw)
                    explicit = entry.get("id") is not None
                    if explicit:
                        utterance_id = _id(entry["id"], "id")
                        self.claims.claim(utterance_id, source, line_id)
                    audio = entry.get("audio_filepath")
                    if audio is None or audio == "":
                        raise _Reject("missing_field", "no 'audio_filepath'", "audio_filepath")
                    if not isinstance(audio, str):
                        raise _Reject("invalid_field", f"'audio_filepath' must be a string, got {audio!r}", audio)
                    _valid_path(audio)
                    audio_path, audio_stem, recording_id = audio_identity(audio)
                    offset = 0.0 if entry.get("offset") is None else _offset(entry["offset"])
                    duration = None if entry.get("duration") is None else _positive_duration(entry["duration"])
                    if not explicit:
                        length = "" if duration is None else f"{duration:.3f}"
                        segment = f"{self.name(audio_path)}|{offset:.3f}|{length}"
                        utterance_id = f"{audio_stem}-{_short_hash(segment)}"
                        self.claims.claim(utterance_id, source, line_id)
                    text = _text(entry.get("text"))
                    fields = dict(speaker=_optional_str(entry.get("speaker"), "speaker"),
                                  language=_optional_str(entry.get("lang", entry.get("language")), "lang"),
                                  domain=_optional_str(entry.get("domain"), "domain"),
                                  entities=_entities(entry.get("entities")))
                    self.require_audio(audio_path)
                except _Reject as error:
                    self.quarantine.reject(utterance_id, source, error)
                    continue
                recording = dict(recording_id=recording_id, audio_path=audio_path)
                self.accept(recording, utterance_id=utterance_id, start=offset, duration=duration, text=text,
                            source=source, **fields)

    # -- Lhotse ----------------------------------------------------------------------------------------

    @staticmethod
    def _recording_row(recording: Any, base: str) -> dict:
        """A recordings row from a lhotse Recording; the audio's existence is checked per use, not here."""
        if not isinstance(recording.id, str) or not recording.id:
            raise _Reject("invalid_field", f"recording id must be a non-empty string, got {recording.id!r}",
                          recording.id)
        sampling_rate, num_samples = recording.sampling_rate, recording.num_samples
        if not isinstance(sampling_rate, int) or isinstance(sampling_rate, bool) or sampling_rate <= 0:
            raise _Reject("invalid_field", f"recording {recording.id!r}: sampling_rate must be a positive integer, "
                          f"got {sampling_rate!r}", sampling_rate)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise _Reject("invalid_field", f"recording {recording.id!r}: num_samples must be a non-negative "
                          f"integer, got {num_samples!r}", num_samples)
        duration = _positive_duration(recording.duration, f"recording {recording.id!r} duration")
        if not recording.sources:
            raise _Reject("invalid_field", f"recording {recording.id!r} has no audio sources", recording.id)
        first = recording.sources[0]
        if first.type != "file" or not isinstance(first.source, str):
            # url/command/memory/shar sources are not files the normaliser can open with soundfile
            raise _Reject("unsupported_audio_source", f"recording {recording.id!r}: audio source of type "
                          f"{first.type!r} is not supported (only 'file')", first.type)
        return dict(recording_id=recording.id, audio_path=_resolve(first.source, base), sampling_rate=sampling_rate,
                    num_samples=num_samples, duration=duration, num_channels=recording.num_channels)

    @staticmethod
    def _supervision_fields(supervision: Any, cut_start: float = 0.0) -> dict:
        start = supervision.start
        if not _is_number(start) or not math.isfinite(start):
            raise _Reject("invalid_offset", f"start must be a number of seconds, got {start!r}", start)
        start = _offset(cut_start + start, "start in the recording")
        duration = _positive_duration(supervision.duration)
        text = _text(supervision.text)
        channel = supervision.channel
        if isinstance(channel, list):  # a multi-channel supervision has no single channel to record
            channel = channel[0] if len(channel) == 1 else None
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
            raise _Reject("invalid_field", f"channel must be an integer or a list of integers, got {channel!r}",
                          channel)
        custom = supervision.custom or {}
        if not isinstance(custom, dict):
            raise _Reject("invalid_field", f"'custom' must be an object, got {custom!r}", custom)
        return dict(start=start, duration=duration, text=text, channel=channel,
                    language=_optional_str(supervision.language, "language"),
                    speaker=_optional_str(supervision.speaker, "speaker"),
                    domain=_optional_str(custom.get("domain"), "custom.domain"),
                    entities=_entities(custom.get("entities")))

    def lhotse_supervisions(self, supervisions_path: Path, recordings_path: Path) -> None:
        from lhotse import Recording, SupervisionSegment

        # recording id -> its row, or the _Reject (with its source) that quarantined its line
        recordings: dict[str, dict | tuple[str, _Reject]] = {}
        base, stem = str(recordings_path.parent.absolute()), _manifest_stem(recordings_path)
        for line_no, raw in _lines(recordings_path):
            if not raw.strip():
                continue
            source = f"{self.name(recordings_path)}:{line_no}"
            recording_id = None
            with self.entry(source, f"{stem}:line{line_no}"):
                try:
                    entry = _json_object(raw)
                    if isinstance(entry.get("id"), str):
                        recording_id = entry["id"]
                        if recording_id in recordings:
                            recording_id = None  # keep the first definition
                            raise _Reject("duplicate_id", f"duplicate recording id {entry['id']!r}", entry["id"])
                    missing = [key for key in _RECORDING_KEYS if key not in entry]
                    if missing:
                        raise _Reject("missing_field", f"recording has no {', '.join(map(repr, missing))}", missing[0])
                    try:
                        recording = Recording.from_dict(entry)
                    except Exception as e:  # lhotse raises TypeError/KeyError/ValueError, depending on the field
                        raise _Reject("invalid_entry", f"not a Lhotse recording: {e}") from None
                    recordings[recording.id] = self._recording_row(recording, base)
                except _Reject as error:
                    # a bad recordings line is an entry of its own; its supervisions are quarantined again below
                    self.num_entries += 1
                    self.quarantine.reject(f"{stem}:line{line_no}", source, error)
                    if recording_id is not None:
                        recordings[recording_id] = (source, error)

        stem = _manifest_stem(supervisions_path)
        for line_no, raw in _lines(supervisions_path):
            if not raw.strip():
                continue
            source = f"{self.name(supervisions_path)}:{line_no}"
            utterance_id = line_id = f"{stem}:line{line_no}"
            with self.entry(source, line_id):
                self.num_entries += 1
                try:
                    entry = _json_object(raw)
                    if entry.get("id") is not None:
                        utterance_id = _id(entry["id"], "id")
                        self.claims.claim(utterance_id, source, line_id)
                    missing = [key for key in _SUPERVISION_KEYS if key not in entry]
                    if missing:
                        raise _Reject("missing_field", f"supervision has no {', '.join(map(repr, missing))}",
                                      missing[0])
                    try:
                        supervision = SupervisionSegment.from_dict(entry)
                    except Exception as e:
                        raise _Reject("invalid_entry", f"not a Lhotse supervision: {e}") from None
                    recording = recordings.get(supervision.recording_id)
                    if recording is None:
                        raise _Reject("unknown_recording", f"recording {supervision.recording_id!r} is not in "
                                      f"{self.name(recordings_path)}", supervision.recording_id)
                    if isinstance(recording, tuple):
                        bad_source, bad = recording
                        raise _Reject("bad_recording", f"recording {supervision.recording_id!r} was quarantined "
                                      f"({bad_source}: {bad.problem})", supervision.recording_id)
                    fields = self._supervision_fields(supervision)
                    self.require_audio(recording["audio_path"])
                except _Reject as error:
                    self.quarantine.reject(utterance_id, source, error)
                    continue
                self.accept(recording, utterance_id=utterance_id, source=source, **fields)

    def lhotse_cuts(self, path: Path) -> None:
        from lhotse import MonoCut
        from lhotse.serialization import deserialize_item

        base, stem = str(path.parent.absolute()), _manifest_stem(path)
        recordings: dict[str, dict | _Reject] = {}  # first definition of each recording id wins
        for line_no, raw in _lines(path):
            if not raw.strip():
                continue
            source = f"{self.name(path)}:{line_no}"
            line_id = f"{stem}:line{line_no}"
            with self.entry(source, line_id):
                self._lhotse_cut(raw, source, line_id, base, recordings, deserialize_item, MonoCut)

    def _lhotse_cut(self, raw: bytes, source: str, line_id: str, base: str, recordings: dict,
                    deserialize_item, MonoCut) -> None:
        try:
            entry = _json_object(raw)
            try:
                cut = deserialize_item(entry)
            except Exception as e:
                raise _Reject("invalid_entry", f"not a Lhotse cut: {e}") from None
        except _Reject as error:
            self.num_entries += 1
            self.quarantine.reject(line_id, source, error)
            return
        supervisions = list(getattr(cut, "supervisions", None) or [])
        cut_error = None
        if not isinstance(cut, MonoCut):
            cut_error = _Reject("unsupported_cut", f"cut {getattr(cut, 'id', None)!r} is a "
                                f"{type(cut).__name__}; only MonoCut is supported", type(cut).__name__)
        elif not supervisions:
            cut_error = _Reject("no_supervision", f"cut {cut.id!r} has no supervision (no transcript)", cut.id)
        elif not cut.has_recording:
            cut_error = _Reject("no_recording", f"cut {cut.id!r} has no recording", cut.id)
        elif not _is_number(cut.start) or not math.isfinite(cut.start):
            cut_error = _Reject("invalid_offset", f"cut {cut.id!r}: start must be a number, got {cut.start!r}",
                                cut.start)
        else:
            if cut.recording.id not in recordings:
                try:
                    recordings[cut.recording.id] = self._recording_row(cut.recording, base)
                except _Reject as error:
                    recordings[cut.recording.id] = error
            recording = recordings[cut.recording.id]
            if isinstance(recording, _Reject):
                cut_error = recording
        if not supervisions:
            self.num_entries += 1
            self.quarantine.reject(line_id, source, cut_error)
            return
        for index, supervision in enumerate(supervisions, 1):
            # `source` identifies one entry: the k-th supervision of a cut that has several is "file:line#k"
            entry_source, entry_id = (source, line_id) if len(supervisions) == 1 else \
                (f"{source}#{index}", f"{line_id}#{index}")
            self.num_entries += 1
            utterance_id = entry_id
            try:
                utterance_id = _id(supervision.id, "supervision id")
                self.claims.claim(utterance_id, entry_source, entry_id)
                if cut_error is not None:
                    raise cut_error
                fields = self._supervision_fields(supervision, cut_start=cut.start)
                self.require_audio(recording["audio_path"])
            except _Reject as error:
                self.quarantine.reject(utterance_id, entry_source, error)
                continue
            self.accept(recording, utterance_id=utterance_id, source=entry_source, **fields)

    # -- audio directory -------------------------------------------------------------------------------

    def audio_dir(self, root: Path) -> None:
        root = root.absolute()
        audio: dict[str, list[Path]] = {}
        transcripts: dict[str, Path] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                file = Path(dirpath, name)
                key = file.relative_to(root).with_suffix("").as_posix()
                suffix = file.suffix.lower()
                if suffix == TRANSCRIPT_EXTENSION:
                    transcripts[key] = file
                elif suffix in AUDIO_EXTENSIONS:
                    audio.setdefault(key, []).append(file)
        if not audio and not transcripts:
            raise ManifestError(f"no audio files or .txt transcripts in {root} ({_MANIFEST_HINT}; audio is "
                                f"recognised by extension: {', '.join(sorted(AUDIO_EXTENSIONS))})")
        for key in sorted(audio.keys() | transcripts.keys()):
            utterance_id = key.replace("/", "_")
            transcript = transcripts.get(key)
            if key not in audio:
                with self.entry(self.name(transcript), utterance_id):
                    self.num_entries += 1
                    self.quarantine.reject(utterance_id, self.name(transcript), _Reject(
                        "audio_not_found", f"transcript has no audio file beside it (no {key}.<audio extension>)",
                        self.name(transcript)))
                continue
            for audio_file in audio[key]:  # an entry is an audio file; its path is the entry's source
                source = self.name(audio_file)
                with self.entry(source, utterance_id):
                    self.num_entries += 1
                    try:
                        _valid_text(utterance_id, "file name")
                        self.claims.claim(utterance_id, source, audio_file.relative_to(root).as_posix())
                        if self.confinement is not None:  # a symlink in the directory may point anywhere
                            self.confinement.check(str(audio_file), source)
                        if transcript is None:
                            expected = audio_file.with_suffix(TRANSCRIPT_EXTENSION)
                            raise _Reject("no_transcript", f"no transcript (expected {self.name(expected)})",
                                          self.name(expected))
                        try:
                            content = transcript.read_bytes().decode("utf-8-sig")
                        except UnicodeDecodeError as e:
                            raise _Reject("malformed_text", f"transcript is not UTF-8: {e}") from None
                        # a transcript file may wrap lines: one utterance, whitespace collapsed
                        text = _text(" ".join(content.split()))
                    except _Reject as error:
                        self.quarantine.reject(utterance_id, source, error)
                        continue
                    recording = dict(recording_id=utterance_id, audio_path=str(audio_file))
                    self.accept(recording, utterance_id=utterance_id, start=0.0, duration=None, text=text,
                                source=source)


# ------------------------------------------------------------------------------------------ public API


def detect_manifest_format(path: str | Path) -> str:
    """The manifest's format (nemo, lhotse_cuts, lhotse_supervisions, audio_dir, empty); raises ManifestError
    for a manifest that cannot be read at all. Cheap: reads the first entry only."""
    return _detect(Path(path).absolute())[0]


def ingest_manifest(path: str | Path, allowed_roots: Sequence[str | Path] | None = None,
                    hashes: FileHashes | None = None) -> IngestResult:
    """Read one speech manifest (Lhotse, NeMo or a directory of audio + .txt) into recordings + utterances.

    `allowed_roots`: None reads audio paths wherever they point (for trusted manifests); a sequence (the
    build passes `ingest.allowed_roots`, possibly empty) confines them to the manifest's directory plus
    these roots (absolute, or relative to the manifest's directory); see the module doc.

    Bad entries become quarantine rows (and log warnings); problems with the manifest as a whole raise
    ManifestError. `num_entries == utterances.num_rows + quarantine.num_rows`, where an entry is a non-blank
    line of a NeMo or supervisions manifest, a supervision of a cut (or the cut line itself when it yields no
    supervision), an audio file or orphan transcript of a directory, and each quarantined recordings line.
    """
    path = Path(path).absolute()
    format_, files = _detect(path)
    home = path if path.is_dir() else path.parent
    confinement = None
    if allowed_roots is not None:
        confinement = _Confinement([str(home), *(str(home / Path(root).expanduser()) for root in allowed_roots)],
                                   ["the manifest's directory", *(str(root) for root in allowed_roots)])
    ingest = _Ingest(str(home), confinement)
    if format_ == "nemo":
        ingest.nemo(files[0])
    elif format_ == "lhotse_cuts":
        ingest.lhotse_cuts(files[0])
    elif format_ == "lhotse_supervisions":
        ingest.lhotse_supervisions(*files)
    elif format_ == "audio_dir":
        ingest.audio_dir(path)
    return ingest.result(format_, hashes or FileHashes())


def ingest_text_corpus(path: str | Path, domain: str | None = None) -> TextIngestResult:
    """Read a text-only domain corpus: `domain<TAB>sentence` lines, or plain sentences tagged with `domain`.

    A line with a tab names its own domain (the text before the first tab; `domain` fills in when that is
    empty); a line without one takes `domain`. Blank lines are skipped. A line with no word
    (jstip.tasks.text.split_words), no domain, or a sentence already seen in the same domain is quarantined.
    text_id = `<domain>-<sha1(sentence)[:12]>`. `num_lines` counts non-blank lines:
    `num_lines == text_corpus.num_rows + quarantine.num_rows`.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise ManifestError(f"text corpus not found: {path} (expected a file of 'domain<TAB>sentence' lines, or "
                            f"one sentence per line with the domain argument)")
    corpus, quarantine = _Rows("text_corpus"), _Quarantine()
    first_seen: dict[str, str] = {}
    stem, num_lines = _manifest_stem(path), 0
    for line_no, raw in _lines(path):
        if not raw.strip():
            continue
        num_lines += 1
        source = f"{path.name}:{line_no}"
        text_id = f"{stem}:line{line_no}"
        try:
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise _Reject("malformed_text", f"line is not UTF-8: {e}") from None
            tag, sentence = domain, line
            if "\t" in line:
                tag, sentence = line.split("\t", 1)
                tag = tag.strip() or domain
            sentence = sentence.strip()
            if not tag:
                raise _Reject("missing_domain", "no domain (write 'domain<TAB>sentence' or pass domain=...)")
            if not split_words(sentence):
                raise _Reject("empty_text", "no words in the sentence", sentence)
            text_id = f"{tag}-{_short_hash(sentence)}"
            first = first_seen.get(text_id)
            if first is not None:  # filed under the line, not the text_id the kept first line has
                raise _Reject("duplicate_sentence", f"duplicate sentence (first at {first})", sentence,
                              row_id=f"{stem}:line{line_no}")
            first_seen[text_id] = source
        except _Reject as error:
            quarantine.reject(text_id, source, error)
            continue
        except Exception as e:  # noqa: BLE001 - one line's surprise is that line's quarantine row
            quarantine.reject(text_id, source, _Reject("invalid_entry", f"cannot read this line: "
                                                                         f"{type(e).__name__}: {e}"))
            continue
        corpus.append(text_id=text_id, domain=tag, text=sentence, source=source)
    return TextIngestResult(text_corpus=corpus.table(), quarantine=quarantine.table(), num_lines=num_lines)
