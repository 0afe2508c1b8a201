"""Word alignments in the formats other tools speak: jstip JSONL, CTM, Praat TextGrid, TIMIT `.wrd`.

Readers return {utterance id: [AlignedWord, ...]} in time order; writers take the same. Times are seconds.
- JSONL (what `jstip align` writes): one object per line with "id" and "words": [{"word", "start", "end",
  "score"}] ("status" other than "ok" means no words); "utterance_id" is accepted for "id", so the
  reference timings `jstip synth` writes (word_timings.jsonl) read directly.
- CTM (NIST): `<utterance> <channel> <start> <duration> <word> [<confidence>]`; `;;` comments. Not through
  lhotse's `SupervisionSet.write_alignment_to_ctm`/`with_alignment_from_ctm`: they write times to 10 ms
  (`:.02f`), which the boundary errors measured here (a few ms) cannot afford, and key lines by recording, not
  utterance.
- TextGrid (Praat, long or short text format; read and written by praatio): the first interval tier named
  "words" (else the first interval tier); empty intervals are pauses. The utterance id is the file stem.
- TIMIT `.wrd`: `<start sample> <end sample> <word>` at 16 kHz. The utterance id is the file stem.
A directory argument reads every file of its format inside it (recursively).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TIMIT_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AlignedWord:
    word: str
    start: float
    end: float
    score: float | None = None


Alignments = dict[str, list[AlignedWord]]


class AlignmentFormatError(ValueError):
    pass


FORMATS = ("jsonl", "ctm", "textgrid", "wrd")


def detect_format(path: Path) -> str:
    suffixes = {".jsonl": "jsonl", ".json": "jsonl", ".ctm": "ctm", ".textgrid": "textgrid", ".wrd": "wrd"}
    if path.is_dir():
        found = {suffixes[p.suffix.lower()] for p in path.rglob("*") if p.suffix.lower() in suffixes}
        if len(found) != 1:
            raise AlignmentFormatError(f"{path}: expected a directory of one alignment format ({', '.join(FORMATS)}), "
                                       f"found {sorted(found) or 'none'}")
        return found.pop()
    try:
        return suffixes[path.suffix.lower()]
    except KeyError:
        raise AlignmentFormatError(f"{path}: unknown alignment format (expected one of .jsonl .ctm .TextGrid "
                                   ".wrd, or a directory of them)") from None


def read_alignments(path: str | Path, fmt: str | None = None) -> Alignments:
    path = Path(path)
    if not path.exists():
        raise AlignmentFormatError(f"alignment file not found: {path}")
    fmt = fmt or detect_format(path)
    reader = {"jsonl": _read_jsonl, "ctm": _read_ctm, "textgrid": _read_textgrid, "wrd": _read_wrd}[fmt]
    pattern = {"jsonl": "*.json*", "ctm": "*.ctm", "textgrid": "*.[Tt]ext[Gg]rid", "wrd": "*.wrd"}[fmt]
    files = sorted(path.rglob(pattern)) if path.is_dir() else [path]
    out: Alignments = {}
    for file in files:
        for utt, words in reader(file).items():
            if utt in out:
                raise AlignmentFormatError(f"{file}: utterance {utt!r} appears twice in {path}")
            out[utt] = sorted(words, key=lambda w: (w.start, w.end))
    return out


def _read_jsonl(path: Path) -> Alignments:
    out: Alignments = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            utt = str(entry["id"] if "id" in entry else entry["utterance_id"])
            if entry.get("status", "ok") != "ok":
                out[utt] = []
                continue
            out[utt] = [AlignedWord(str(w["word"]), float(w["start"]), float(w["end"]),
                                                 None if w.get("score") is None else float(w["score"]))
                                     for w in entry["words"]]
        except (ValueError, KeyError, TypeError) as e:
            raise AlignmentFormatError(f"{path}:{line_no}: not a jstip alignment line: {e}") from None
    return out


def _read_ctm(path: Path) -> Alignments:
    out: Alignments = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split()
        try:
            utt, start, duration, word = parts[0], float(parts[2]), float(parts[3]), parts[4]
            score = float(parts[5]) if len(parts) > 5 else None
        except (IndexError, ValueError):
            raise AlignmentFormatError(f"{path}:{line_no}: expected `utt channel start duration word [conf]`, "
                                       f"got {line!r}") from None
        out.setdefault(utt, []).append(AlignedWord(word, start, start + duration, score))
    return out


def _read_textgrid(path: Path) -> Alignments:
    from praatio import textgrid
    from praatio.utilities.errors import PraatioException

    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False, reportingMode="silence")
    except (PraatioException, ValueError, IndexError, UnicodeDecodeError) as e:
        raise AlignmentFormatError(f"{path}: not a Praat TextGrid: {e}") from None
    tiers = [grid.getTier(name) for name in grid.tierNames]
    tiers = [t for t in tiers if isinstance(t, textgrid.IntervalTier)]
    if not tiers:
        raise AlignmentFormatError(f"{path}: no IntervalTier found (is it a Praat TextGrid?)")
    tier = next((t for t in tiers if t.name.lower() in ("words", "word")), tiers[0])
    words = [AlignedWord(label.strip(), float(start), float(end)) for start, end, label in tier.entries]
    return {path.stem: [w for w in words if w.word]}


def _read_wrd(path: Path) -> Alignments:
    words = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            start, end, word = line.split(maxsplit=2)
            words.append(AlignedWord(word.strip(), int(start) / TIMIT_SAMPLE_RATE, int(end) / TIMIT_SAMPLE_RATE))
        except ValueError:
            raise AlignmentFormatError(f"{path}:{line_no}: expected `start_sample end_sample word`, got {line!r}") from None
    return {path.stem: words}


# -- writers ---------------------------------------------------------------------------------------


def write_ctm(alignments: Mapping[str, Iterable[AlignedWord]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for utt, words in alignments.items():
            for w in words:
                score = "" if w.score is None or not math.isfinite(w.score) else f" {w.score:.4f}"
                f.write(f"{utt} 1 {w.start:.3f} {w.end - w.start:.3f} {w.word}{score}\n")


def write_textgrid(words: list[AlignedWord], duration: float, path: Path) -> None:
    """A Praat TextGrid (long text format, praatio) with one "words" tier; gaps become empty intervals."""
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    duration = max([duration, *(w.end for w in words)])
    grid = textgrid.Textgrid()
    grid.addTier(textgrid.IntervalTier("words", [Interval(w.start, w.end, w.word) for w in words], 0.0, duration))
    grid.save(str(path), format="long_textgrid", includeBlankSpaces=True)
