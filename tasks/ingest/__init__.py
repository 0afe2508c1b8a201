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

import os
from collections.abc import Sequence
from pathlib import Path

from jstip.storage.content import FileHashes
from jstip.tasks.ingest.detect import _detect
from jstip.tasks.ingest.entries import (IngestResult, ManifestError, TextIngestResult, _lines, _manifest_stem,
                                       _Quarantine, _Reject, _Rows, _short_hash)
from jstip.tasks.ingest.readers import _Confinement, _Ingest
from jstip.tasks.text import split_words


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


class AudioOutsideAllowedRoots(ManifestError):
    """Every entry of a manifest points outside the directories audio may come from: a missing --allow-root, not
    bad data. The build stops at ingest, before any audio work."""


def stop_if_all_audio_is_outside_the_roots(manifest: str | Path, result: IngestResult) -> None:
    """Raise AudioOutsideAllowedRoots when no entry was accepted and every one lies outside the allowed roots."""
    quarantine = result.quarantine
    if result.utterances.num_rows or not quarantine.num_rows:
        return
    checks = quarantine.column("check_name").to_pylist()
    if any(check != "path_outside_allowed_roots" for check in checks):
        return
    paths = [os.path.join(result.corpus_root, v) for v in quarantine.column("value").to_pylist() if v]
    try:
        common = os.path.commonpath(paths) if paths else None
    except ValueError:
        common = None
    where = f" The audio lies under {common}: if that is right, rerun with `--allow-root {common}`" if common else (
        " Rerun with `--allow-root DIR` for the directory that holds it")
    raise AudioOutsideAllowedRoots(
        f"every audio path in {manifest} ({len(checks)} entries) lies outside the directories audio may come from "
        f"({', '.join(result.roots or ())}).{where} (or add it to ingest.allowed_roots in the build config). "
        f"Nothing was built.")


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
