"""Interleave planning (first cut: word-level): which words of an aligned utterance reach the model as
audio and which as text.

Entry point: `plan_shard(utterances, word_alignments, audio, config)`. For each utterance, spans of whole
words alternate between speech and text; span lengths are 1 + Poisson(mean - 1) words, with text spans
scaled so that on average `speech_fraction` of the words are speech; the first span's modality is drawn
with probability `speech_fraction` of being speech. Formats:
- F1 "transcribe-as-you-go": each speech span is followed by a `transcript` span with its own words;
- F2 "continuation": spans alternate without repeating content; every word is in exactly one span.
Randomness comes from (seed, utterance id) only, so a plan does not depend on sharding or worker count.
Speech span edges sit in the middle of the gap between words (never inside a word); at the ends of the
utterance they extend by at most EDGE_PAD seconds into the surrounding silence, clipped to the audio.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jstip.config import PlanConfig
from jstip.schemas import from_rows

EDGE_PAD = 0.1  # seconds of context kept before the first / after the last word of a speech span


@dataclass
class PlanResult:
    interleave_plans: pa.Table
    spans: pa.Table


def plan_id_for(config: PlanConfig) -> str:
    return f"{config.strategy}-{config.format}-{config.fingerprint()[:8]}"


def utterance_rng(seed: int, utterance_id: str) -> np.random.Generator:
    utt_hash = int.from_bytes(hashlib.sha256(utterance_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, utt_hash])


def word_level_spans(num_words: int, config: PlanConfig, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """[(modality, first_word, last_word)] covering 0..num_words-1 once, alternating modality."""
    eta = config.speech_fraction
    if eta >= 1.0 or eta <= 0.0:
        return [("speech" if eta >= 1.0 else "text", 0, num_words - 1)]
    mean = {"speech": config.mean_span_words, "text": config.mean_span_words * (1 - eta) / eta}
    modality = "speech" if rng.random() < eta else "text"
    spans, first = [], 0
    while first < num_words:
        length = 1 + int(rng.poisson(max(mean[modality] - 1.0, 0.0)))
        last = min(first + length, num_words) - 1
        spans.append((modality, first, last))
        first = last + 1
        modality = "text" if modality == "speech" else "speech"
    return spans


def _speech_bounds(starts: np.ndarray, ends: np.ndarray, first: int, last: int, duration: float) -> tuple[float, float]:
    begin = (ends[first - 1] + starts[first]) / 2 if first > 0 else max(0.0, starts[first] - EDGE_PAD)
    finish = (ends[last] + starts[last + 1]) / 2 if last + 1 < len(starts) else min(duration, ends[last] + EDGE_PAD)
    return float(begin), float(finish)


def plan_shard(utterances: pa.Table, word_alignments: pa.Table, audio: pa.Table, config: PlanConfig) -> PlanResult:
    """Plan every utterance of the shard that has word alignments and normalised audio."""
    plan_id = plan_id_for(config)
    audio_info = {
        row["utterance_id"]: (row["duration"], row["sampling_rate"])
        for row in audio.select(["utterance_id", "duration", "sampling_rate"]).to_pylist()
    }
    words = word_alignments.sort_by([("utterance_id", "ascending"), ("word_index", "ascending")])
    utt_col = words.column("utterance_id").to_numpy(zero_copy_only=False)
    starts_all = words.column("start").to_numpy()
    ends_all = words.column("end").to_numpy()
    words_all = words.column("word").to_pylist()
    # contiguous row ranges of each utterance in the sorted table
    boundaries = np.flatnonzero(np.r_[True, utt_col[1:] != utt_col[:-1], True])

    plans, spans = [], []
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        utt_id = str(utt_col[lo])
        if utt_id not in audio_info:
            continue
        duration, rate = audio_info[utt_id]
        starts, ends, tokens = starts_all[lo:hi], ends_all[lo:hi], words_all[lo:hi]
        rng = utterance_rng(config.seed, utt_id)
        speech_words, speech_seconds, index = 0, 0.0, 0
        for modality, first, last in word_level_spans(hi - lo, config, rng):
            text = " ".join(tokens[first:last + 1])
            span = dict(plan_id=plan_id, utterance_id=utt_id, span_index=index, modality=modality, role=modality,
                        first_word=first, last_word=last, num_words=last - first + 1, text=text)
            if modality == "speech":
                begin, finish = _speech_bounds(starts, ends, first, last, duration)
                span.update(audio_start=begin, audio_end=finish, start_sample=int(round(begin * rate)),
                            end_sample=int(round(finish * rate)))
                speech_words += last - first + 1
                speech_seconds += finish - begin
            spans.append(span)
            index += 1
            if modality == "speech" and config.format == "F1":
                spans.append(dict(plan_id=plan_id, utterance_id=utt_id, span_index=index, modality="text",
                                  role="transcript", first_word=first, last_word=last, num_words=last - first + 1,
                                  text=text))
                index += 1
        plans.append(dict(plan_id=plan_id, utterance_id=utt_id, strategy=config.strategy, format=config.format,
                          seed=config.seed, num_spans=index, num_words=hi - lo, speech_words=speech_words,
                          speech_seconds=speech_seconds))
    return PlanResult(from_rows("interleave_plans", plans), from_rows("spans", spans))
