"""Which manifest format a path holds, decided by content (Lhotse cuts, supervisions + recordings, NeMo, an
audio directory), and the files it consists of."""

from __future__ import annotations

from pathlib import Path

from jstip.tasks.ingest.entries import _CUT_TYPES, _MANIFEST_HINT, ManifestError, _json_object, _lines, _Reject


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
