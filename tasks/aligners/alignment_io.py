"""Word alignments in the formats other tools speak: jstip JSONL, CTM, Praat TextGrid, TIMIT `.wrd`.

Readers return {utterance id: [AlignedWord, ...]} in time order; writers take the same. Times are seconds.
- JSONL (what `jstip align` writes): one object per line with "id" and "words": [{"word", "start", "end",
  "score"}] ("status" other than "ok" means no words); "utterance_id" is accepted for "id", so the
  reference timings `jstip synth` writes (word_timings.jsonl) read directly.
- CTM (NIST): `<utterance> <channel> <start> <duration> <word> [<confidence>]`; `;;` comments.
- TextGrid (Praat, long or short text format): the first interval tier named "words" (else the first
  interval tier); empty intervals are pauses. The utterance id is the file stem.
- TIMIT `.wrd`: `<start sample> <end sample> <word>` at 16 kHz. The utterance id is the file stem.
A directory argument reads every file of its format inside it (recursively).
"""

from __future__ import annotations

import json
import math
import re
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


_TG_TIER = re.compile(r'(?:class\s*=\s*)?"IntervalTier"\s*(?:name\s*=\s*)?"([^"]*)"', re.S)
_TG_NUMBER = r"(-?[\d.]+(?:[eE][-+]?\d+)?)"
_TG_INTERVAL = re.compile(rf'(?:xmin\s*=\s*)?{_TG_NUMBER}\s*(?:xmax\s*=\s*)?{_TG_NUMBER}\s*(?:text\s*=\s*)?"((?:[^"]|"")*)"')


def _read_textgrid(path: Path) -> Alignments:
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    tiers = list(_TG_TIER.finditer(text))
    if not tiers:
        raise AlignmentFormatError(f"{path}: no IntervalTier found (is it a Praat TextGrid?)")
    chosen = next((i for i, t in enumerate(tiers) if t.group(1).lower() in ("words", "word")), 0)
    body_start = tiers[chosen].end()
    body_end = tiers[chosen + 1].start() if chosen + 1 < len(tiers) else len(text)
    body = text[body_start:body_end]
    # skip the tier's own xmin/xmax/size header: intervals are (xmin, xmax, "text") triples
    header = re.match(rf"\s*(?:xmin\s*=\s*)?{_TG_NUMBER}\s*(?:xmax\s*=\s*)?{_TG_NUMBER}\s*(?:intervals:\s*size\s*=\s*)?\d+",
                      body)
    body = body[header.end():] if header else body
    words = [AlignedWord(label.replace('""', '"').strip(), float(a), float(b))
             for a, b, label in _TG_INTERVAL.findall(body)]
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


def _tg_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def textgrid_text(words: list[AlignedWord], duration: float) -> str:
    """A Praat TextGrid (long text format) with one "words" tier; gaps become empty intervals."""
    intervals: list[tuple[float, float, str]] = []
    cursor = 0.0
    for w in words:
        if w.start > cursor + 1e-9:
            intervals.append((cursor, w.start, ""))
        intervals.append((w.start, w.end, w.word))
        cursor = w.end
    duration = max(duration, cursor)
    if duration > cursor + 1e-9:
        intervals.append((cursor, duration, ""))
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration:.6f}",
             "tiers? <exists>", "size = 1", "item []:", "    item [1]:", '        class = "IntervalTier"',
             '        name = "words"', "        xmin = 0", f"        xmax = {duration:.6f}",
             f"        intervals: size = {len(intervals)}"]
    for k, (a, b, label) in enumerate(intervals, 1):
        lines += [f"        intervals [{k}]:", f"            xmin = {a:.6f}", f"            xmax = {b:.6f}",
                  f"            text = {_tg_quote(label)}"]
    return "\n".join(lines) + "\n"
