"""Training sequences: what the sequence builder makes from a dataset version and the model consumes.

A sequence is an ordered list of segments, each given to the LLM as text tokens or as speech (encoder
frames of an audio slice). Loss falls on text segments marked `loss` (and the final end-of-sequence),
never on the prompt or on speech positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

POOLS = ("interleaved", "asr", "text")


@dataclass(frozen=True)
class AudioSlice:
    """Samples [start_sample, end_sample) of a normalised 16 kHz mono FLAC in the store's audio pool."""

    path: str
    start_sample: int
    end_sample: int  # exclusive

    @property
    def num_samples(self) -> int:
        return self.end_sample - self.start_sample


@dataclass(frozen=True)
class Segment:
    modality: Literal["text", "speech"]
    text: str  # speech: the words spoken (the CTC head's target)
    loss: bool = True  # text: whether the LM loss falls on it; speech: never
    audio: AudioSlice | None = None  # speech only


@dataclass(frozen=True)
class TrainingSequence:
    sequence_id: str  # "<pool>/<plan_id or 'utt'>/<utterance_id>": unique within a dataset version
    pool: Literal["interleaved", "asr", "text"]
    utterance_id: str
    domain: str | None
    segments: tuple[Segment, ...]
    prompt: str | None = None  # instruction text before the segments; no loss
