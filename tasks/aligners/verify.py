"""Transcript verification for the CTC backends (whisperx, nemo): the model's own greedy transcript against
the text it was asked to align. (pocketsphinx verifies inside its alignment pass: `pocketsphinx`.)"""

from __future__ import annotations

import numpy as np

from jstip.config import AlignConfig
from jstip.tasks.aligners.base import AlignmentFailed


def ctc_greedy_text(frame_ids: np.ndarray, blank: int, to_text) -> str:
    """A CTC model's own transcript: the best class of each frame, repeats merged, blanks dropped, mapped to
    text by `to_text(ids)` (the backend's vocabulary)."""
    ids = np.asarray(frame_ids)
    if len(ids) == 0:
        return ""
    keep = np.concatenate([[True], ids[1:] != ids[:-1]]) & (ids != blank)
    return to_text([int(i) for i in ids[keep]])


def check_ctc_transcript(hypothesis: str, reference: str, config: AlignConfig) -> None:
    """Transcript verification for CTC aligners (whisperx, nemo): transcript_mismatch when the model's greedy
    transcript's CER against the text it was asked to align is above `align.verify.max_ctc_cer` (spaces
    collapsed, case folded)."""
    limit = config.verify.max_ctc_cer
    if not config.verify.enabled or limit is None:
        return
    import jiwer

    ref, hyp = (" ".join(t.lower().split()) for t in (reference, hypothesis))
    cer = float(jiwer.cer(ref, hyp)) if ref else 0.0
    if cer > limit:
        raise AlignmentFailed("transcript_mismatch", f"the model's own transcript {hyp[:80]!r} differs from the text "
                              f"{ref[:80]!r} by CER {cer:.2f}, above {limit:g}: the transcript belongs to other audio "
                              "or is wrong in places", value=f"{cer:.3f}", threshold=f"{limit:g}")

