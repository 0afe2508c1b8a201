"""Word-boundary accuracy of a hypothesis alignment against a reference.

Entry point: `evaluate_alignments(reference, hypothesis)`. Words are paired per utterance by their text
(case and surrounding punctuation ignored), in order, with difflib's longest-matching-blocks, so a
reference in another tokenisation (TIMIT `.wrd`, a CTM from another tool) still pairs where the words
agree. Reported: mean and median absolute start and end error in ms, the share of boundaries (starts
and ends pooled) within 20/50/100 ms, and the share of reference words that the hypothesis aligned.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass

import numpy as np

from jstip.tasks.aligners.alignment_io import Alignments

TOLERANCES_MS = (20, 50, 100)
_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")


def _key(word: str) -> str:
    return _PUNCT.sub("", word.lower().replace("’", "'"))


@dataclass(frozen=True)
class AlignmentErrors:
    utterances: int
    reference_words: int
    matched_words: int
    words_aligned_pct: float
    mean_start_ms: float
    median_start_ms: float
    mean_end_ms: float
    median_end_ms: float
    within_20ms_pct: float
    within_50ms_pct: float
    within_100ms_pct: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_errors(reference: Alignments, hypothesis: Alignments) -> tuple[np.ndarray, np.ndarray, int]:
    """(start errors, end errors) in seconds (hypothesis - reference) for paired words, and the number of
    reference words."""
    start_err, end_err, total = [], [], 0
    for utt, ref_words in reference.items():
        total += len(ref_words)
        hyp_words = hypothesis.get(utt) or []
        matcher = difflib.SequenceMatcher(a=[_key(w.word) for w in ref_words], b=[_key(w.word) for w in hyp_words],
                                          autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                r, h = ref_words[block.a + k], hyp_words[block.b + k]
                start_err.append(h.start - r.start)
                end_err.append(h.end - r.end)
    return np.asarray(start_err, dtype=np.float64), np.asarray(end_err, dtype=np.float64), total


def evaluate_alignments(reference: Alignments, hypothesis: Alignments) -> AlignmentErrors:
    starts, ends, total = paired_errors(reference, hypothesis)
    if len(starts) == 0:
        nan = float("nan")
        return AlignmentErrors(len(reference), total, 0, 0.0, nan, nan, nan, nan, 0.0, 0.0, 0.0)
    abs_start, abs_end = np.abs(starts) * 1000, np.abs(ends) * 1000
    boundaries = np.concatenate([abs_start, abs_end])
    within = [float(np.mean(boundaries <= tol) * 100) for tol in TOLERANCES_MS]
    return AlignmentErrors(
        utterances=len(reference), reference_words=total, matched_words=len(starts),
        words_aligned_pct=100.0 * len(starts) / max(total, 1),
        mean_start_ms=float(abs_start.mean()), median_start_ms=float(np.median(abs_start)),
        mean_end_ms=float(abs_end.mean()), median_end_ms=float(np.median(abs_end)),
        within_20ms_pct=within[0], within_50ms_pct=within[1], within_100ms_pct=within[2],
    )
