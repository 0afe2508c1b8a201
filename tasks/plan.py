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

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.config import PlanConfig, WordLevelConfig
from jstip.schemas import conform, empty, from_rows
from jstip.tasks.text import split_words

EDGE_PAD = 0.1  # seconds of context kept before the first / after the last word of an utterance

STRATEGIES = ("word", "segment", "asr", "text")
_WORD, _SEGMENT, _ASR, _TEXT = range(4)
_ROLES = pa.array(["speech", "text", "transcript"])
_MODALITIES = pa.array(["speech", "text"])

# Streams of the counter-based generator, one per kind of draw: a new kind of draw never shifts another's.
_STREAM_STRATEGY, _STREAM_START, _STREAM_SPAN, _STREAM_CUT, _STREAM_SEGMENT, _STREAM_TEXT = range(1, 7)

# Tolerance of the time invariants, seconds (aligners keep word ends within 1e-9 s of the audio's end).
_EPS = 1e-6
SENTENCE_END = r"[.!?\x{2026}][\"'\x{201D}\x{2019})\]]*$"  # . ! ? or an ellipsis, then closing quotes/brackets


class PlanError(RuntimeError):
    """A plan broke an invariant: a planner bug, never a property of the input."""


@dataclass
class PlanResult:
    interleave_plans: pa.Table
    spans: pa.Table


def plan_id_for(config: PlanConfig) -> str:
    return f"{config.strategy}-{config.format}-{config.fingerprint()[:8]}"


# -- counter-based randomness -----------------------------------------------------------------------

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def splitmix64(x) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea & Flood 2014) on uint64 arrays: a bijection with full avalanche."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _string_buffers(strings: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, uint8 bytes) of a string array: row i is data[offsets[i]:offsets[i + 1]]."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if strings.type not in (pa.string(), pa.large_string()):
        strings = strings.cast(pa.string())
    width = np.int32 if strings.type == pa.string() else np.int64
    _, offsets, data = strings.buffers()
    if offsets is None:  # an empty array may have no buffers
        return np.zeros(len(strings) + 1, np.int64), np.zeros(0, np.uint8)
    offsets = np.frombuffer(offsets, dtype=width, count=len(strings) + 1, offset=strings.offset * width().itemsize)
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def string_hash(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes, 8 bytes per step for all strings at once."""
    offsets, data = _string_buffers(strings)
    lengths = np.diff(offsets)
    h = splitmix64(lengths.astype(np.uint64))
    if not len(lengths) or not len(data):
        return h
    padded = np.concatenate([data, np.zeros(8, np.uint8)])
    lane = np.arange(8)
    for chunk in range(0, int(lengths.max()), 8):
        at = chunk + lane
        block = padded[np.minimum(offsets[:-1, None] + at, len(data))]
        block[at[None, :] >= lengths[:, None]] = 0
        # only strings that reach this chunk: a string's hash must not depend on its neighbours' lengths
        h = np.where(lengths > chunk, splitmix64(h ^ block.view("<u8").ravel()), h)
    return h


def draw_keys(seed: int, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One key per id; every random draw of the id's plan is a function of its key."""
    return splitmix64(string_hash(ids) ^ splitmix64(np.array([seed & _MASK64], dtype=np.uint64)))


def uniforms(keys: np.ndarray, stream: int, counter) -> np.ndarray:
    """U[0, 1) draw number `counter` of stream `stream` for each key (53 random bits)."""
    salt = splitmix64((np.uint64(stream) << _U64(32)) + np.asarray(counter, dtype=np.uint64))
    return (splitmix64(keys ^ salt) >> _U64(11)).astype(np.float64) * (1.0 / 2**53)


# -- span length distributions ----------------------------------------------------------------------

def _at_least_one(pmf_from_zero: np.ndarray) -> np.ndarray:
    pmf = pmf_from_zero[1:].copy()
    pmf[0] += pmf_from_zero[0]
    return pmf


@lru_cache(maxsize=64)
def span_length_cdf(word: WordLevelConfig, stretch: float = 1.0) -> np.ndarray:
    """cdf[k - 1] = P(span length <= k words); the last entry is exactly 1.

    `stretch` >= 1 scales the distribution's mean: poisson lambda * stretch, geometric mean / stretch of p,
    binomial p * stretch (capped at 1), uniform [low - 1/2, high + 1/2] * stretch rounded to the nearest
    integer, fixed k * stretch rounded up or down with the probabilities that keep the mean.
    """
    kind = word.distribution
    if kind == "poisson":
        lam = word.poisson_lambda * stretch
        k = np.arange(int(lam + 12 * math.sqrt(lam) + 20))
        log_fact = np.array([math.lgamma(i + 1.0) for i in k])
        pmf = _at_least_one(np.exp(k * math.log(lam) - lam - log_fact))
    elif kind == "geometric":
        p = min(1.0, word.geometric_p / stretch)
        kmax = 1 if p >= 1.0 else int(math.ceil(math.log(1e-17) / math.log1p(-p))) + 1
        pmf = p * (1.0 - p) ** np.arange(kmax)
    elif kind == "binomial":
        n, p = word.binomial_n, min(1.0, word.binomial_p * stretch)
        k = np.arange(n + 1)
        if p >= 1.0:
            pmf = np.zeros(n + 1)
            pmf[n] = 1.0
        else:
            log_choose = np.array([math.lgamma(n + 1.0) - math.lgamma(i + 1.0) - math.lgamma(n - i + 1.0) for i in k])
            pmf = np.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p))
        pmf = _at_least_one(pmf)
    elif kind == "uniform":
        low, high = (word.uniform_low - 0.5) * stretch, (word.uniform_high + 0.5) * stretch
        k = np.arange(1, int(math.ceil(high)) + 2, dtype=np.float64)
        pmf = np.clip(np.minimum(k + 0.5, high) - np.maximum(k - 0.5, low), 0, None) / (high - low)
        pmf[0] += max(0.0, min(0.5, high) - low) / (high - low)
    elif kind == "fixed":
        mean = word.fixed_k * stretch
        whole = int(math.floor(mean))
        pmf = np.zeros(whole + 1)
        pmf[whole - 1] = 1.0 - (mean - whole)
        pmf[whole] = mean - whole
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(f"unknown span length distribution {kind!r}")
    cdf = np.cumsum(pmf)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def span_lengths(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.searchsorted(cdf, u, side="right").astype(np.int64) + 1


# -- the shard's words ------------------------------------------------------------------------------

@dataclass
class _Words:
    """Word alignments grouped by utterance: utterance i holds rows first_row[i] .. first_row[i] + n[i] - 1."""

    table: pa.Table  # utterance_id, word_index, word, start, end; rows grouped by utterance, in word order
    ids: pa.Array  # one per utterance, in row order
    first_row: np.ndarray
    n: np.ndarray
    start: np.ndarray
    end: np.ndarray
    word: pa.Array  # the `word` column as one array

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


def _runs(table: pa.Table) -> tuple[np.ndarray, np.ndarray, pa.Array, bool]:
    ids = table.column("utterance_id").combine_chunks()
    if not len(ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), ids, True
    change = np.ones(len(ids), bool)
    change[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    first_row = np.flatnonzero(change)
    n = np.diff(np.append(first_row, len(ids)))
    run_ids = ids.take(pa.array(first_row))
    word_index = table.column("word_index").to_numpy()
    in_order = np.array_equal(word_index, np.arange(len(ids)) - np.repeat(first_row, n))
    # one run per utterance: certain when the ids ascend (the usual case), else counted
    ascending = len(run_ids) < 2 or pc.all(pc.less(run_ids[:-1], run_ids[1:])).as_py()
    return first_row, n, run_ids, in_order and (ascending or len(pc.unique(run_ids)) == len(run_ids))


def group_words(word_alignments: pa.Table) -> _Words:
    """The word alignments grouped by utterance in word order (sorted only when they are not already)."""
    table = word_alignments.select(["utterance_id", "word_index", "word", "start", "end"])
    first_row, n, ids, grouped = _runs(table)
    if not grouped:
        table = table.sort_by([("utterance_id", "ascending"), ("word_index", "ascending")])
        first_row, n, ids, grouped = _runs(table)
        if not grouped:
            word_index = table.column("word_index").to_numpy()
            bad = np.flatnonzero(word_index != np.arange(len(word_index)) - np.repeat(first_row, n))[0]
            raise ValueError(f"word_alignments: utterance {table.column('utterance_id')[bad]}: word indices are "
                             f"not 0..n-1 (a word is missing or repeated near word_index {word_index[bad]})")
    return _Words(table, ids, first_row, n, table.column("start").to_numpy(), table.column("end").to_numpy(),
                  table.column("word").combine_chunks())


def _rows_of(first_row: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The row indices of the given utterances, concatenated."""
    total = int(n.sum())
    return np.arange(total) - np.repeat(np.cumsum(n) - n - first_row, n)


# -- segmentation per strategy ----------------------------------------------------------------------
# Each returns the segments of its utterances as (utterance, first word, last word, is speech, rank), with
# word indices relative to the utterance and rank the segment's place in it; they cover its words once.

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
_PUNCTUATION = ".,;:!?'\"()[]{}<>-\u2013\u2014\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026/\\*_~`^|"


def _normalised(strings: pa.Array) -> pa.Array:
    """Lower case without leading/trailing punctuation: how a transcript word and an entity token match."""
    return pc.utf8_trim(pc.utf8_lower(strings), characters=_PUNCTUATION)


def entity_word_mask(words: _Words, entities: pa.Array) -> np.ndarray:
    """is_entity[row]: the word lies inside a mention of one of its utterance's `entities`.

    A mention is the entity's words (jstip.tasks.text's definition) appearing in a row in the transcript,
    compared in lower case without leading/trailing punctuation; every occurrence counts. `entities` has
    one (possibly null) list per utterance of `words`.
    """
    W = words.num_rows
    is_entity = np.zeros(W, bool)
    count = pc.list_value_length(entities).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not count.sum():
        return is_entity
    entity_utt = np.repeat(np.arange(len(count)), count)
    tokens = pc.utf8_split_whitespace(pc.list_flatten(entities))
    token_entity = np.repeat(np.arange(len(tokens)),
                             pc.list_value_length(tokens).fill_null(0).to_numpy(zero_copy_only=False))
    token_text = pc.list_flatten(tokens)
    spoken = pc.match_substring_regex(token_text, r"[\pL\pN_]").to_numpy(zero_copy_only=False)
    token_entity, token_text = token_entity[spoken], token_text.filter(pa.array(spoken))
    size = np.bincount(token_entity, minlength=len(tokens))
    token_first = np.cumsum(size) - size

    has = count > 0
    rows = _rows_of(words.first_row[has], words.n[has])
    encoded = pc.dictionary_encode(words.word.take(pa.array(rows)))
    vocabulary = _normalised(encoded.dictionary)
    ids = pc.dictionary_encode(pa.concat_arrays([vocabulary, _normalised(token_text)])).indices.to_numpy()
    word_id = np.full(W, -1, np.int64)
    word_id[rows] = ids[:len(vocabulary)][encoded.indices.to_numpy()]
    token_id = ids[len(vocabulary):]

    # every (entity, start position) with room for the entity whose first word matches; then word by word
    usable = np.flatnonzero((size > 0) & (words.n[entity_utt] >= size))
    room = words.n[entity_utt[usable]] - size[usable] + 1
    start = np.cumsum(room) - room
    row = np.arange(int(room.sum())) - np.repeat(start - words.first_row[entity_utt[usable]], room)
    entity = np.repeat(usable, room)
    head = np.flatnonzero(word_id[row] == token_id[token_first[entity]])
    entity, row = entity[head], row[head]
    for j in range(1, int(size.max())):
        longer = size[entity] > j
        keep = ~longer | (word_id[np.minimum(row + j, W - 1)] == token_id[np.minimum(token_first[entity] + j,
                                                                                      len(token_id) - 1)])
        entity, row = entity[keep], row[keep]
    edges = np.bincount(row, minlength=W + 1) - np.bincount(row + size[entity], minlength=W + 1)
    return np.cumsum(edges)[:W] > 0


# -- planning a shard -------------------------------------------------------------------------------

def _lookup(ids: pa.Array, table: pa.Table) -> np.ndarray:
    """Row of each id in table.utterance_id; -1 where absent."""
    if table.num_rows == 0:
        return np.full(len(ids), -1, np.int64)
    return pc.index_in(ids, value_set=table.column("utterance_id").combine_chunks()).fill_null(-1).to_numpy()


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

def _np(table: pa.Table, column: str, fill=None) -> np.ndarray:
    col = table.column(column)
    if fill is not None:
        col = col.fill_null(fill)
    return col.to_numpy()


def check_plan_invariants(spans: pa.Table, word_alignments: pa.Table, audio: pa.Table) -> pa.Table:
    """Every violation of the plan invariants, one row each (utterance_id, plan_id, invariant, detail);
    an empty table when the plans are sound.

    Per (plan_id, utterance_id), spans in span_index order:
    - span_index: 0, 1, 2, ...; modality_role: role speech is modality speech, roles text and transcript are
      modality text;
    - coverage: the speech and text spans cover words 0..n-1 exactly once, in order (every format); a
      text-only sequence (strategy text) is one text span;
    - transcript: a transcript span repeats the words of the speech span just before it; in F1 every speech
      span has one; F2 has none (an ASR pair is F1);
    - audio: speech spans have audio bounds inside the audio (seconds and samples, start < end, samples
      within one sample of seconds x rate); other spans have none;
    - word_boundaries: a speech span starts at or before its first word and after the previous word's end,
      and ends at or after its last word and before the next word's start (with overlapping neighbours:
      anywhere in the overlap);
    - order: speech spans do not overlap and come in time order;
    - text: the span text is as long as its words joined by single spaces;
    - word_alignments: an utterance's plan has word alignments (text-only sequences excepted).
    """
    return _violations(spans, group_words(word_alignments), audio)


_VIOLATIONS = pa.schema([("utterance_id", pa.string()), ("plan_id", pa.string()), ("invariant", pa.string()),
                         ("detail", pa.string())])


def _violations(spans: pa.Table, words: _Words, audio: pa.Table) -> pa.Table:
    schema = _VIOLATIONS
    if spans.num_rows == 0:
        return schema.empty_table()
    if "strategy" not in spans.column_names:
        spans = spans.append_column("strategy", pa.nulls(spans.num_rows, pa.string()))
    if "format" not in spans.column_names:
        spans = spans.append_column("format", pa.nulls(spans.num_rows, pa.string()))
    runs = _span_runs(spans)
    if runs is None:
        spans = spans.sort_by([("plan_id", "ascending"), ("utterance_id", "ascending"), ("span_index", "ascending")])
        runs = _span_runs(spans, sorted_=True)
    plan_ids, utt_ids, new_run, index = runs
    run_first = np.flatnonzero(new_run)

    S = spans.num_rows
    run_len = np.diff(np.append(run_first, S))
    run = np.repeat(np.arange(len(run_first)), run_len)  # each span's run (plan)
    pos = np.arange(S) - run_first[run]
    modality, role = spans.column("modality"), spans.column("role")
    # integer codes, one hash pass per column: modality 0 speech / 1 text, role 0 speech / 1 text / 2 transcript
    modality_code = pc.index_in(modality, value_set=_MODALITIES).fill_null(-1).to_numpy()
    role_code = pc.index_in(role, value_set=_ROLES).fill_null(-1).to_numpy()
    r_speech, r_text, r_transcript = role_code == 0, role_code == 1, role_code == 2
    text_only = pc.fill_null(pc.equal(spans.column("strategy"), "text"), False).to_numpy(zero_copy_only=False)
    format_code = pc.index_in(spans.column("format"), value_set=pa.array(["F1", "F2"])).fill_null(-1).to_numpy()
    first, last = _np(spans, "first_word").astype(np.int64), _np(spans, "last_word").astype(np.int64)
    num_words = _np(spans, "num_words").astype(np.int64)

    # per run (plan), then spread over its spans
    run_utt = utt_ids.take(pa.array(run_first))
    w_run = pc.index_in(run_utt, value_set=words.ids).fill_null(-1).to_numpy() if len(words.n) else \
        np.full(len(run_first), -1)
    n_run = np.where(w_run >= 0, words.n[np.maximum(w_run, 0)] if len(words.n) else 0, -1)
    base_run = np.where(w_run >= 0, words.first_row[np.maximum(w_run, 0)] if len(words.n) else 0, 0)
    n, base, has_words = np.repeat(n_run, run_len), np.repeat(base_run, run_len), np.repeat(w_run >= 0, run_len)

    problems: list[tuple[np.ndarray, str, object]] = []

    def flag(mask: np.ndarray, invariant: str, detail) -> None:
        if mask.any():
            problems.append((np.flatnonzero(mask), invariant, detail))

    def flag_at(where: np.ndarray, invariant: str, detail) -> None:
        if len(where):
            problems.append((where, invariant, detail))

    flag(index != pos, "span_index", lambda i: f"span {index[i]} at position {pos[i]}")
    flag((role_code < 0) | (modality_code != np.minimum(role_code, 1)), "modality_role",
         lambda i: f"span {index[i]}: modality {modality[i]} with role {role[i]}")
    flag_at(run_first[(w_run < 0) & ~text_only[run_first]], "word_alignments",
            lambda i: "no word alignments for this utterance")
    flag((first < 0) | (last < first) | (num_words != last - first + 1) | (has_words & (last >= n)), "word_range",
         lambda i: f"span {index[i]}: words {first[i]}..{last[i]}, num_words {num_words[i]}, utterance has {n[i]}")

    # coverage: speech and text spans, in order, tile 0..n-1
    t_idx = np.flatnonzero(~r_transcript)
    t_run = run[t_idx]
    opens_run = np.ones(len(t_idx), bool)
    opens_run[1:] = t_run[1:] != t_run[:-1]
    expected = np.where(opens_run, 0, np.append(-1, last[t_idx][:-1] + 1))
    bad = t_idx[first[t_idx] != expected]
    ends = t_idx[np.append(opens_run[1:], True)]
    covered = np.zeros(len(run_first), bool)
    covered[t_run] = True
    bad = np.unique(np.concatenate([bad, ends[has_words[ends] & (last[ends] != n[ends] - 1)], run_first[~covered]]))
    flag_at(bad[~text_only[bad]], "coverage", lambda i: f"span {index[i]} (words {first[i]}..{last[i]}) breaks the "
            f"tiling of words 0..{n[i] - 1}")
    text_runs = run_first[text_only[run_first]]
    flag_at(text_runs[(run_len[run[text_runs]] != 1) | ~r_text[text_runs]
                      | (first[text_runs] != 0)], "coverage", lambda i: "a text-only sequence must be one text span "
            "from word 0")

    # transcripts: right after a speech span with the same words; every F1 speech span has one; F2 none
    tr = np.flatnonzero(r_transcript)
    before = np.maximum(tr - 1, 0)
    good = (pos[tr] > 0) & r_speech[before] & (first[before] == first[tr]) & (last[before] == last[tr])
    flag_at(tr[~good], "transcript", lambda i: f"transcript span {index[i]} does not follow a speech span with its "
            "words")
    sp = np.flatnonzero(r_speech)
    after = np.minimum(sp + 1, S - 1)
    has_transcript = ((pos[sp] < run_len[run[sp]] - 1) & r_transcript[after]
                      & (first[after] == first[sp]) & (last[after] == last[sp]))
    run_has_transcript = np.zeros(len(run_first), bool)
    run_has_transcript[run[tr]] = True
    f1_like = (format_code[sp] == 0) | ((format_code[sp] < 0) & run_has_transcript[run[sp]])
    flag_at(sp[f1_like & ~has_transcript], "transcript", lambda i: f"F1 speech span {index[i]} has no transcript")
    flag_at(tr[format_code[tr] == 1], "transcript", lambda i: f"F2 plan has transcript span {index[i]}")

    # audio bounds: speech spans have them, inside the audio; other spans have none
    bounds = [spans.column(c) for c in ("audio_start", "audio_end", "start_sample", "end_sample")]
    valid = [c.is_valid().to_numpy(zero_copy_only=False) for c in bounds]
    flag(~r_speech & (valid[0] | valid[1] | valid[2] | valid[3]), "audio",
         lambda i: f"{role[i]} span {index[i]} has audio bounds")
    # from here on, arrays are over the speech spans `sp`
    t0, t1 = (c.fill_null(np.nan).to_numpy()[sp] for c in bounds[:2])
    x0, x1 = (c.fill_null(-1).to_numpy()[sp] for c in bounds[2:])
    a = _lookup(run_utt, audio)[run[sp]]
    has_audio = a >= 0
    a = np.maximum(a, 0)
    dur = np.where(has_audio, _np(audio, "duration")[a], np.nan) if audio.num_rows else np.full(len(sp), np.nan)
    rate = np.where(has_audio, _np(audio, "sampling_rate")[a], 0) if audio.num_rows else np.zeros(len(sp))
    total = np.where(has_audio, _np(audio, "num_samples")[a], -1) if audio.num_rows else np.full(len(sp), -1)
    with np.errstate(invalid="ignore"):
        inside = (valid[0][sp] & valid[1][sp] & valid[2][sp] & valid[3][sp] & has_audio & (t0 >= 0) & (t0 < t1)
                  & (t1 <= dur + _EPS) & (x0 >= 0) & (x0 < x1) & (x1 <= total) & (np.abs(x0 - t0 * rate) <= 1)
                  & (np.abs(x1 - t1 * rate) <= 1))
    if not inside.all():
        problems.append((sp[~inside], "audio", lambda i: (
            f"speech span {index[i]}: {bounds[0][i]}..{bounds[1][i]} s, samples {bounds[2][i]}..{bounds[3][i]}: "
            "missing, empty, outside the utterance's audio or not seconds x sampling rate")))

    # speech spans on word boundaries, in order, not overlapping
    f_sp, l_sp, n_sp = first[sp], last[sp], n[sp]
    W = words.num_rows
    if W:
        wf, wl = np.clip(base[sp] + f_sp, 0, W - 1), np.clip(base[sp] + l_sp, 0, W - 1)
        # word times clipped to the audio: checks let a word end a frame past it (CheckConfig.word_time_tolerance_s)
        with np.errstate(invalid="ignore"):
            s_first, e_last = np.minimum(words.start[wf], dur), np.minimum(words.end[wl], dur)
            e_before = np.minimum(words.end[np.maximum(wf - 1, 0)], dur)
            s_after = np.minimum(words.start[np.minimum(wl + 1, W - 1)], dur)
            # between two words: anywhere from the earlier word's end to the later one's start (or in their overlap)
            ok_start = np.where(f_sp == 0, t0 <= s_first + _EPS, (t0 >= np.minimum(e_before, s_first) - _EPS)
                                & (t0 <= np.maximum(e_before, s_first) + _EPS))
            ok_end = np.where(l_sp == n_sp - 1, t1 >= e_last - _EPS, (t1 >= np.minimum(e_last, s_after) - _EPS)
                              & (t1 <= np.maximum(e_last, s_after) + _EPS))
        checked = has_words[sp] & inside & (l_sp < n_sp) & (f_sp >= 0) & (l_sp >= f_sp)
        if (checked & ~(ok_start & ok_end)).any():
            problems.append((sp[checked & ~(ok_start & ok_end)], "word_boundaries", lambda i: (
                f"speech span {index[i]} ({bounds[0][i]}..{bounds[1][i]} s) cuts into a word of "
                f"{first[i]}..{last[i]}")))
        offsets, _ = _string_buffers(words.word)
        prefix = np.concatenate([[0], np.cumsum(np.diff(offsets))])
        wf_all, wl_all = np.clip(base + first, 0, W - 1), np.clip(base + last, 0, W - 1)
        expected_len = prefix[wl_all + 1] - prefix[wf_all] + (last - first)
        text_len = np.diff(_string_buffers(spans.column("text"))[0])
        flag(has_words & (first >= 0) & (last < n) & (last >= first) & (text_len != expected_len), "text",
             lambda i: f"span {index[i]}: text of {text_len[i]} bytes, its words joined take {expected_len[i]}")
    ok = np.flatnonzero(inside)
    same_run = run[sp[ok]][1:] == run[sp[ok]][:-1]
    overlap = sp[ok][1:][same_run & (t0[ok][1:] < t1[ok][:-1] - _EPS)]
    if len(overlap):
        problems.append((overlap, "order", lambda i: f"speech span {index[i]} starts at {bounds[0][i]} s, before "
                         "the previous speech span ends"))

    rows = {"utterance_id": [], "plan_id": [], "invariant": [], "detail": []}
    for where, invariant, detail in problems:
        for i in where.tolist():
            rows["utterance_id"].append(utt_ids[i].as_py())
            rows["plan_id"].append(plan_ids[i].as_py())
            rows["invariant"].append(invariant)
            rows["detail"].append(detail(i))
    return pa.table(rows, schema=schema)


def _span_runs(spans: pa.Table, sorted_: bool = False):
    """(plan ids, utterance ids, first-span-of-a-run flags, span_index), or None when the spans of one plan
    are not together in span_index order (then the caller sorts them)."""
    plan_ids, utt_ids = spans.column("plan_id").combine_chunks(), spans.column("utterance_id").combine_chunks()
    new_run = np.ones(spans.num_rows, bool)
    new_run[1:] = (pc.not_equal(plan_ids[1:], plan_ids[:-1]).to_numpy(zero_copy_only=False)
                   | pc.not_equal(utt_ids[1:], utt_ids[:-1]).to_numpy(zero_copy_only=False))
    index = _np(spans, "span_index").astype(np.int64)
    if not sorted_:
        if not np.all(np.diff(index)[~new_run[1:]] > 0):
            return None
        first = pa.array(np.flatnonzero(new_run))
        run_plans, run_utts = plan_ids.take(first), utt_ids.take(first)
        # runs in (plan, utterance) order are distinct; otherwise count the distinct ones
        later = pc.or_(pc.greater(run_plans[1:], run_plans[:-1]),
                       pc.and_(pc.equal(run_plans[1:], run_plans[:-1]), pc.greater(run_utts[1:], run_utts[:-1])))
        if not pc.all(later).as_py():  # (true for no pairs)
            run_keys = pc.binary_join_element_wise(run_plans, run_utts, "\x00")
            if len(pc.unique(run_keys)) != len(run_keys):
                return None
    return plan_ids, utt_ids, new_run, index
