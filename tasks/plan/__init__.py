"""Interleave planning: which words of an aligned utterance reach the model as audio and which as text.

Entry points: `plan_shard(utterances, word_alignments, audio, config)` for a shard of aligned utterances,
`plan_text_corpus(text_corpus, num_utterance_plans, config)` for the dataset's text-only sequences, and
`check_plan_invariants(spans, word_alignments, audio)`, which plan_shard runs on its own output.

Strategies (`config.strategy`; with `mixed`, drawn per utterance with `config.mixed`'s probabilities):
- word: spans of whole words alternate modality. Span lengths come from `config.word`'s distribution for
  the rarer modality (speech when eta = speech_fraction <= 0.5) and from the same family stretched by
  max(eta, 1-eta) / min(eta, 1-eta) for the other, so that about eta of the words are speech.
- segment: the utterance is cut between words: at pauses of at least min_pause_ms, after sentence-final
  punctuation, or into segments of about target_s seconds (S = round(duration / target_s) segments; cut k
  at (k + jitter * (u - 1/2)) * duration / S, u uniform, snapped to the nearest gap between words, as
  USDM does). Each segment is speech with probability eta. Neighbouring text segments merge into one
  span; in F2 neighbouring speech segments merge too, so F2 spans always alternate.
- asr: the whole utterance as one speech span followed by its transcript: a plain ASR pair, which is
  the F1 sequence with one span.
- text (any strategy, when the build has a text corpus): a domain sentence of text_corpus as one text
  span; its plan's utterance_id is the sentence's text_id (plan_text_corpus, run once per dataset version).
The first span is `start_modality`, or speech with probability eta when that is `random`.

Formats:
- F1 "transcribe-as-you-go": every speech span is followed by a `transcript` span with its own words;
- F2 "continuation": nothing is repeated; the loss goes on the text spans.
In both, the speech and text spans (not the transcripts) cover every word exactly once, in order.

Speech span edges sit in the middle of the gap between two words (the middle of the overlap, where an
aligner lets neighbours overlap), never inside a word; at the ends of the utterance they take at most
EDGE_PAD seconds of the surrounding audio, clipped to the audio.

Determinism and speed: every random draw is a counter-based hash, splitmix64 of (key, stream, counter)
with key = splitmix64(hash(utterance id) ^ splitmix64(seed)), turned into a uniform number and, for span
lengths, into an integer through an inverse-CDF table. No generator state is shared between utterances,
so a plan depends on (seed, utterance id, config) only, never on the shard, the order of its rows or
the number of workers; and a whole shard is planned with NumPy array operations (word-level spans in one
pass per span rank, over every utterance still open), not with a Python loop over utterances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.config import PlanConfig
from jstip.schemas import conform, empty, from_rows
from jstip.tasks.plan.draws import draw_keys, span_length_cdf, span_lengths, string_hash, uniforms
from jstip.tasks.plan.invariants import _violations, check_plan_invariants  # noqa: F401 - check_plan_invariants: API
from jstip.tasks.plan.words import _MODALITIES, _ROLES, _lookup, _rows_of, _Words, entity_word_mask, group_words
from jstip.tasks.text import split_words

EDGE_PAD = 0.1  # seconds of context kept before the first / after the last word of an utterance

STRATEGIES = ("word", "segment", "asr", "text")
_WORD, _SEGMENT, _ASR, _TEXT = range(4)

# Streams of the counter-based generator, one per kind of draw: a new kind of draw never shifts another's.
_STREAM_STRATEGY, _STREAM_START, _STREAM_SPAN, _STREAM_CUT, _STREAM_SEGMENT, _STREAM_TEXT = range(1, 7)

SENTENCE_END = r"[.!?\x{2026}][\"'\x{201D}\x{2019})\]]*$"  # . ! ? or an ellipsis, then closing quotes/brackets


class PlanError(RuntimeError):
    """A plan broke an invariant: a planner bug, never a property of the input."""


@dataclass
class PlanResult:
    interleave_plans: pa.Table
    spans: pa.Table


def plan_id_for(config: PlanConfig) -> str:
    return f"{config.strategy}-{config.format}-{config.fingerprint()[:8]}"


def _word_level(sel: np.ndarray, n: np.ndarray, keys: np.ndarray, start_speech: np.ndarray,
                config: PlanConfig) -> tuple[np.ndarray, ...]:
    eta = config.speech_fraction
    if eta <= 0.0 or eta >= 1.0:
        zeros = np.zeros(len(sel), np.int64)
        return sel, zeros, n[sel] - 1, np.full(len(sel), eta >= 1.0), zeros
    stretch = max(eta, 1 - eta) / min(eta, 1 - eta)
    cdf = {True: span_length_cdf(config.word, 1.0 if eta <= 0.5 else stretch),
           False: span_length_cdf(config.word, stretch if eta <= 0.5 else 1.0)}
    parts: list[tuple[np.ndarray, ...]] = []
    # Utterances that start alike have the same modality at every span rank: one table lookup per rank.
    for speech in (True, False):
        todo = sel[start_speech[sel] == speech]
        pos = np.zeros(len(todo), np.int64)
        rank = 0
        while len(todo):
            last = np.minimum(pos + span_lengths(cdf[speech], uniforms(keys[todo], _STREAM_SPAN, rank)), n[todo]) - 1
            parts.append((todo, pos, last, np.full(len(todo), speech), np.full(len(todo), rank)))
            pos = last + 1
            open_ = pos < n[todo]
            todo, pos = todo[open_], pos[open_]
            speech, rank = not speech, rank + 1
    return tuple(np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(5))


def _segment_cuts(sel: np.ndarray, rows: np.ndarray, local: np.ndarray, position: np.ndarray, words: _Words,
                  keys: np.ndarray, config: PlanConfig) -> np.ndarray:
    """cut[i]: a segment boundary right after word row rows[i] (the rows of the utterances `sel`; local[i]:
    the row's utterance as an index into sel, position[i]: the word's index in it)."""
    seg = config.segment
    n = words.n[sel]
    not_last = position < n[local] - 1
    if seg.boundary == "pause":
        after = words.start[np.minimum(rows + 1, words.num_rows - 1)]
        return not_last & (after - words.end[rows] >= seg.min_pause_ms / 1000.0)
    if seg.boundary == "punctuation":
        text = words.word.take(pa.array(rows))
        return not_last & np.asarray(pc.match_substring_regex(text, SENTENCE_END).to_numpy(zero_copy_only=False), bool)
    cut = np.zeros(len(rows), bool)
    first_row, last_row = words.first_row[sel], words.first_row[sel] + n - 1
    begin, finish = words.start[first_row], words.end[last_row]
    count = np.where(n > 1, np.maximum(1, np.rint((finish - begin) / seg.target_s)), 1).astype(np.int64)
    cuts = count - 1
    owner = np.repeat(np.arange(len(sel)), cuts)
    k = np.arange(int(cuts.sum())) - np.repeat(np.cumsum(cuts) - cuts, cuts) + 1
    at = begin[owner] + (k + seg.jitter * (uniforms(keys[sel[owner]], _STREAM_CUT, k) - 0.5)) * \
        ((finish - begin) / count)[owner]
    # The gaps after the non-last words, in order; gaps of sel[j] are entries gap_first[j] .. + n[j] - 2.
    gap = np.flatnonzero(not_last)
    middle = (words.end[rows[gap]] + words.start[rows[gap] + 1]) / 2
    micro = np.clip(np.rint(middle * 1e6), 0, 2**40 - 1).astype(np.int64)
    gap_key = np.maximum.accumulate(local[gap].astype(np.int64) * 2**40 + micro)
    want = owner.astype(np.int64) * 2**40 + np.clip(np.rint(at * 1e6), 0, 2**40 - 1).astype(np.int64)
    gap_first = np.cumsum(n - 1) - (n - 1)
    lo, hi = gap_first[owner], gap_first[owner] + n[owner] - 2
    right = np.clip(np.searchsorted(gap_key, want), lo, hi)
    left = np.clip(right - 1, lo, hi)
    nearest = np.where(np.abs(middle[left] - at) <= np.abs(middle[right] - at), left, right)
    cut[gap[nearest]] = True
    return cut


def _segment_level(sel: np.ndarray, words: _Words, keys: np.ndarray, start_speech: np.ndarray,
                   config: PlanConfig) -> tuple[np.ndarray, ...]:
    n = words.n[sel]
    local = np.repeat(np.arange(len(sel)), n)
    position = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    rows = words.first_row[sel][local] + position
    cut = _segment_cuts(sel, rows, local, position, words, keys, config)
    opens = position == 0
    opens[1:] |= cut[:-1]
    closes = cut | (position == n[local] - 1)
    seg_first, seg_last = np.flatnonzero(opens), np.flatnonzero(closes)
    owner = local[seg_first]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
    speech = uniforms(keys[sel[owner]], _STREAM_SEGMENT, rank) < config.speech_fraction
    speech[rank == 0] = start_speech[sel[owner[rank == 0]]]
    merge = np.zeros(len(owner), bool)
    merge[1:] = (rank[1:] > 0) & (speech[1:] == speech[:-1]) & (~speech[1:] | (config.format == "F2"))
    run_first = np.flatnonzero(~merge)
    run_last = np.append(run_first[1:], len(owner))[:len(run_first)] - 1
    owner = owner[run_first]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
    return sel[owner], position[seg_first[run_first]], position[seg_last[run_last]], speech[run_first], rank


def _asr(sel: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    zeros = np.zeros(len(sel), np.int64)
    return sel, zeros, n[sel] - 1, np.ones(len(sel), bool), zeros


# -- entities ---------------------------------------------------------------------------------------

# Stripped from both ends of words and entity tokens before they are compared (what transcripts put around
# words; a plain character list trims ~5x faster than a Unicode-class regex).


def _take(table: pa.Table, column: str, rows: np.ndarray, type_: pa.DataType) -> pa.Array:
    if column not in table.column_names or table.num_rows == 0:
        return pa.nulls(len(rows), type_)
    return table.column(column).combine_chunks().take(pa.array(np.where(rows >= 0, rows, 0), mask=rows < 0))


def _strategy_codes(keys: np.ndarray, config: PlanConfig) -> np.ndarray:
    if config.strategy != "mixed":
        return np.full(len(keys), STRATEGIES.index(config.strategy), np.int64)
    weights = np.array([config.mixed.word, config.mixed.segment, config.mixed.asr])
    bounds = np.cumsum(weights) / weights.sum()
    codes = np.searchsorted(bounds, uniforms(keys, _STREAM_STRATEGY, 0), side="right")
    return np.minimum(codes, np.flatnonzero(weights > 0)[-1])


def _masked(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, type=type_, mask=~valid)


def plan_shard(utterances: pa.Table, word_alignments: pa.Table, audio: pa.Table, config: PlanConfig) -> PlanResult:
    """Plan every utterance of the shard that has word alignments and normalised audio (raises PlanError
    if a plan breaks an invariant)."""
    words = group_words(word_alignments)
    audio_row = _lookup(words.ids, audio)
    if (audio_row < 0).any():  # words without audio are not planned
        keep = audio_row >= 0
        words = group_words(words.table.take(pa.array(_rows_of(words.first_row[keep], words.n[keep]))))
        audio_row = audio_row[keep]
    N, W = len(words.n), words.num_rows
    if N == 0:
        return PlanResult(empty("interleave_plans"), empty("spans"))
    duration = audio.column("duration").to_numpy()[audio_row]
    rate = audio.column("sampling_rate").to_numpy().astype(np.float64)[audio_row]
    num_samples = audio.column("num_samples").to_numpy()[audio_row]

    keys = draw_keys(config.seed, words.ids)
    code = _strategy_codes(keys, config)
    if config.start_modality == "random":
        start_speech = uniforms(keys, _STREAM_START, 0) < config.speech_fraction
    else:
        start_speech = np.full(N, config.start_modality == "speech")
    parts = [
        _word_level(np.flatnonzero(code == _WORD), words.n, keys, start_speech, config),
        _segment_level(np.flatnonzero(code == _SEGMENT), words, keys, start_speech, config),
        _asr(np.flatnonzero(code == _ASR), words.n),
    ]
    utt, first, last, rank = (np.concatenate([p[i] for p in parts]).astype(np.int64) for i in (0, 1, 2, 4))
    speech = np.concatenate([p[3] for p in parts]).astype(bool)

    # segments in (utterance, rank) order
    per_utt = np.bincount(utt, minlength=N)
    order = np.empty(len(utt), np.int64)
    order[(np.cumsum(per_utt) - per_utt)[utt] + rank] = np.arange(len(utt))
    utt, first, last, speech = utt[order], first[order], last[order], speech[order]
    row_first, row_last = words.first_row[utt] + first, words.first_row[utt] + last
    S = len(utt)
    if not np.array_equal(row_first[1:], row_last[:-1] + 1) or row_first[0] != 0 or row_last[-1] != W - 1:
        raise PlanError("segments do not cover every word of the shard exactly once")

    # audio bounds of speech segments: the middle of the gaps around them, or EDGE_PAD at the utterance's ends
    n_utt, dur = words.n[utt], duration[utt]
    begin = np.where(first == 0, words.start[row_first] - EDGE_PAD,
                     (words.end[np.maximum(row_first - 1, 0)] + words.start[row_first]) / 2)
    finish = np.where(last == n_utt - 1, words.end[row_last] + EDGE_PAD,
                      (words.end[row_last] + words.start[np.minimum(row_last + 1, W - 1)]) / 2)
    begin, finish = np.clip(begin, 0.0, dur), np.clip(finish, 0.0, dur)
    start_sample = np.clip(np.rint(begin * rate[utt]), 0, num_samples[utt]).astype(np.int64)
    end_sample = np.clip(np.rint(finish * rate[utt]), 0, num_samples[utt]).astype(np.int64)

    text = pc.binary_join(pa.ListArray.from_arrays(pa.array(np.append(row_first, W).astype(np.int32)),
                                                   words.word), " ")

    utt_row = _lookup(words.ids, utterances)
    entities = _take(utterances, "entities", utt_row, pa.list_(pa.string()))
    entities_known = entities.is_valid().to_numpy(zero_copy_only=False)
    entity_prefix = np.concatenate([[0], np.cumsum(entity_word_mask(words, entities))])
    entity_words = entity_prefix[row_last + 1] - entity_prefix[row_first]

    # F1 (and every ASR pair): a transcript span right after each speech span
    is_f1 = (code == _ASR) | (config.format == "F1")
    with_transcript = speech & is_f1[utt]
    formats = pa.array(["F1", "F2"])
    format_code = pa.array((~is_f1).astype(np.int64))
    rows_per_segment = 1 + with_transcript.astype(np.int64)
    segment_of_row = np.repeat(np.arange(S), rows_per_segment)
    R = len(segment_of_row)
    is_transcript = np.zeros(R, bool)
    is_transcript[(np.cumsum(rows_per_segment) - 1)[with_transcript]] = True
    row_utt = utt[segment_of_row]
    spans_per_utt = np.bincount(row_utt, minlength=N)
    span_index = np.arange(R) - np.repeat(np.cumsum(spans_per_utt) - spans_per_utt, spans_per_utt)
    row_speech = speech[segment_of_row] & ~is_transcript
    role = np.where(row_speech, 0, np.where(is_transcript, 2, 1))
    seg = pa.array(segment_of_row)
    plan_id = plan_id_for(config)
    strategy_names = pa.array(STRATEGIES)
    span_words = (last - first + 1)[segment_of_row]
    spans = pa.table({
        "plan_id": pa.array([plan_id]).take(pa.array(np.zeros(R, np.int64))),
        "utterance_id": words.ids.take(pa.array(row_utt)),
        "span_index": pa.array(span_index, pa.int32()),
        "modality": _MODALITIES.take(pa.array((~row_speech).astype(np.int64))),
        "role": _ROLES.take(pa.array(role)),
        "first_word": pa.array(first[segment_of_row], pa.int32()),
        "last_word": pa.array(last[segment_of_row], pa.int32()),
        "num_words": pa.array(span_words, pa.int32()),
        "text": text.take(seg),
        "audio_start": _masked(begin[segment_of_row], row_speech, pa.float64()),
        "audio_end": _masked(finish[segment_of_row], row_speech, pa.float64()),
        "start_sample": _masked(start_sample[segment_of_row], row_speech, pa.int64()),
        "end_sample": _masked(end_sample[segment_of_row], row_speech, pa.int64()),
        "strategy": strategy_names.take(pa.array(code[row_utt])),
        "format": formats.take(pa.array((~is_f1[row_utt]).astype(np.int64))),
        "entity_words": _masked(entity_words[segment_of_row], entities_known[row_utt], pa.int32()),
    })
    segment_words = last - first + 1
    plans = pa.table({
        "plan_id": pa.array([plan_id]).take(pa.array(np.zeros(N, np.int64))),
        "utterance_id": words.ids,
        "strategy": strategy_names.take(pa.array(code)),
        "format": formats.take(format_code),
        "seed": pa.array(np.full(N, config.seed), pa.int64()),
        "num_spans": pa.array(spans_per_utt, pa.int32()),
        "num_words": pa.array(words.n, pa.int32()),
        "speech_words": pa.array(np.bincount(utt, weights=segment_words * speech, minlength=N).astype(np.int64),
                                 pa.int32()),
        "speech_seconds": pa.array(np.bincount(utt, weights=(finish - begin) * speech, minlength=N)),
        "domain": _take(utterances, "domain", utt_row, pa.string()),
        "audio_seconds": pa.array(duration, pa.float64()),
    })
    result = PlanResult(conform("interleave_plans", plans), conform("spans", spans))
    violations = _violations(result.spans, words, audio)
    if violations.num_rows:
        first_rows = "; ".join(f"{r['utterance_id']}: {r['invariant']}: {r['detail']}"
                               for r in violations.slice(0, 5).to_pylist())
        raise PlanError(f"planner bug: {violations.num_rows} invariant violation(s) ({plan_id}): {first_rows}")
    return result


# -- text-only sequences ----------------------------------------------------------------------------

def text_sequence_count(num_utterance_plans: int, config: PlanConfig) -> int:
    """How many text-only sequences make them `text_share` of all sequences (before the corpus cap)."""
    # any strategy: a text corpus the user passed is planned, never silently dropped
    if config.text_share <= 0:
        return 0
    return int(round(config.text_share / (1.0 - config.text_share) * num_utterance_plans))


def plan_text_corpus(text_corpus: pa.Table, num_utterance_plans: int, config: PlanConfig) -> PlanResult:
    """Text-only sequences of the domain text (any strategy): the domain sentences with the smallest draws, as many as make
    them `text_share` of all sequences (all sentences if the corpus is smaller). Each is one plan of
    strategy `text` (format F2) with one text span; its utterance_id is the sentence's text_id."""
    wanted = min(text_sequence_count(num_utterance_plans, config), text_corpus.num_rows)
    if wanted == 0:
        return PlanResult(empty("interleave_plans"), empty("spans"))
    ids = text_corpus.column("text_id").combine_chunks()
    draw = uniforms(draw_keys(config.seed, ids), _STREAM_TEXT, 0)
    chosen = np.sort(np.lexsort((string_hash(ids), draw))[:wanted])
    chosen = text_corpus.take(pa.array(chosen)).sort_by("text_id")
    plan_id = plan_id_for(config)
    plans, spans = [], []
    for text_id, domain, sentence in zip(chosen.column("text_id").to_pylist(), chosen.column("domain").to_pylist(),
                                         chosen.column("text").to_pylist()):
        tokens = split_words(sentence)
        plans.append(dict(plan_id=plan_id, utterance_id=text_id, strategy="text", format="F2", seed=config.seed,
                          num_spans=1, num_words=len(tokens), speech_words=0, speech_seconds=0.0, domain=domain))
        spans.append(dict(plan_id=plan_id, utterance_id=text_id, span_index=0, modality="text", role="text",
                          first_word=0, last_word=len(tokens) - 1, num_words=len(tokens), text=" ".join(tokens),
                          strategy="text", format="F2"))
    return PlanResult(from_rows("interleave_plans", plans), from_rows("spans", spans))


# -- invariants -------------------------------------------------------------------------------------
