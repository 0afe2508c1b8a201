"""The four manifest readers (NeMo, Lhotse supervisions + recordings, Lhotse cuts, audio directory) and the state
they share: output rows, id claims, confinement, the per-line guard (`_Ingest.entry`).

Why one module of ~450 lines: the readers are methods of one class (`_Ingest`), which holds what every reader
updates together (rows, claims, counts) so that one line's failure rolls back exactly what that line added.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jstip.schemas.validate import conform
from jstip.storage.content import ConfinementError, FileHashes
from jstip.tasks.ingest.entries import (_MANIFEST_HINT, _RECORDING_KEYS, _SUPERVISION_KEYS, AUDIO_EXTENSIONS,
                                       TRANSCRIPT_EXTENSION, IngestResult, ManifestError, _Claims, _entities, _id,
                                       _is_number, _json_object, _lines, _manifest_stem, _offset, _optional_str,
                                       _positive_duration, _Quarantine, _Reject, _resolve, _Rows, _short_hash,
                                       _storable, _text, _valid_path, _valid_text)

logger = logging.getLogger(__name__)


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

    def manifest_lines(self, path: Path) -> Iterator[tuple[bytes, str, str]]:
        """Each non-blank line of a manifest, as (raw bytes, source `<file>:<line>`, line id `<stem>:line<N>`:
        the id of an entry that names none). Readers handle each inside its own guard (`entry`)."""
        stem = _manifest_stem(path)
        for line_no, raw in _lines(path):
            if raw.strip():
                yield raw, f"{self.name(path)}:{line_no}", f"{stem}:line{line_no}"

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
        base = str(path.parent.absolute())

        @functools.lru_cache(maxsize=1 << 16)  # segments of one long file come in runs
        def audio_identity(audio: str) -> tuple[str, str, str]:
            audio_path = _resolve(audio, base)
            audio_stem = os.path.splitext(os.path.basename(audio_path))[0]
            return audio_path, audio_stem, f"{audio_stem}-{_short_hash(self.name(audio_path))}"

        for raw, source, line_id in self.manifest_lines(path):
            utterance_id = line_id
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
        base = str(recordings_path.parent.absolute())
        for raw, source, line_id in self.manifest_lines(recordings_path):
            recording_id = None
            with self.entry(source, line_id):
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
                    self.quarantine.reject(line_id, source, error)
                    if recording_id is not None:
                        recordings[recording_id] = (source, error)

        for raw, source, line_id in self.manifest_lines(supervisions_path):
            utterance_id = line_id
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

        base = str(path.parent.absolute())
        recordings: dict[str, dict | _Reject] = {}  # first definition of each recording id wins
        for raw, source, line_id in self.manifest_lines(path):
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
