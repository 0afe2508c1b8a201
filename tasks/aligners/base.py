"""The aligner contract: what every backend implements and returns (lhotse's forced_alignment/base.py is the model).

A backend (`jstip.tasks.aligners.<name>`, chosen by `jstip.tasks.aligners.make_aligner`) is made once per
shard and aligns one utterance at a time: `align(text, samples, sampling_rate)` returns one WordTiming per
word of `split_words(text)`, or raises AlignmentFailed with a quarantine check name. A backend imports this
module, never another backend's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

SAMPLE_RATE = 16000  # what normalize writes and what the en-us acoustic model was trained on


class AlignmentFailed(Exception):
    """An utterance could not be aligned; `check` is the machine-readable quarantine check name."""

    def __init__(self, check: str, reason: str, attempts: int = 0, value: str | None = None,
                 threshold: str | None = None):
        super().__init__(reason)
        self.check = check
        self.reason = reason
        self.attempts = attempts
        self.value = value
        self.threshold = threshold
        self.borderline = False  # transcript verification: a verdict a second pass must confirm


@dataclass(frozen=True)
class WordTiming:
    """One transcript word (index into split_words(text)) and its span in the audio, in seconds."""

    word_index: int
    start: float
    end: float
    score: float | None = None


@dataclass(frozen=True)
class PhoneTiming:
    """One phone of transcript word `word_index`, in seconds; ARPAbet as the aligner's model names it."""

    word_index: int
    phone: str
    start: float
    end: float


@dataclass
class UtteranceAlignment:
    words: list[WordTiming]
    attempts: int = 1
    phones: list[PhoneTiming] | None = None  # in order; only from an aligner asked for phones


class WordAligner(Protocol):
    """What every aligner backend implements (pocketsphinx, whisperx, nemo).

    An instance is made once per shard (models are costly to load) and aligns one utterance at a time.
    `align` returns one WordTiming per word of split_words(text), or raises AlignmentFailed.
    """

    name: ClassVar[str]

    def align(self, text: str, samples: np.ndarray, sampling_rate: int) -> UtteranceAlignment: ...

