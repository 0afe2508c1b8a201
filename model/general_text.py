"""General English text made offline: sentences sampled from the trigram language model in the
pocketsphinx wheel, for pretraining the LLM prior (jstip.model.pretraining).

The model is `pocketsphinx/model/en-us/en-us.lm.bin`: CMU Sphinx's general US-English trigram LM
(72,547 words, 2,051,541 bigrams, 1,669,625 trigrams), stored in pocketsphinx's binary trie format
(ported from KenLM). pocketsphinx itself cannot export it: its header declares 2,051,547 bigrams while
the trie holds 2,051,541, and `NGramModel.write(..., arpa)` crashes on that (cmusphinx/pocketsphinx#502).
So this module reads the trie directly, with NumPy, following pocketsphinx 5.1.1's src/lm/lm_trie.c,
lm_trie_quant.c, bitarr.c and ngram_model_trie.c:

    "Trie Language Model"  uint8 order  uint32 counts[order]
    int32 (unused)  float32 quantisation tables: per middle order 2^16 probabilities + 2^16 backoffs,
                    then 2^16 probabilities of the highest order
    unigrams: (counts[0] + 1) x {float32 prob, float32 backoff, uint32 next}
    bit-packed n-gram arrays, little-endian, one entry per n-gram of each order above 1:
        middle orders: word (ceil(log2(V)) bits) | backoff bin (16) | prob bin (16) | next (bits of counts[n])
        highest order: word | prob bin (16)
        each array ends with one more entry's worth of bits and 8 bytes of padding
    uint32 size + NUL-separated word strings

Probabilities are pocketsphinx "log floats" (logarithms to base 1.0001). The trie is reversed, as in
KenLM: a unigram node is the *last* word of an n-gram and its children are the words before it, so
the bigram entry under unigram w with word h is P(w | h), and that entry's children u give P(w | u h).
The reader checks itself against pocketsphinx's own `NGramModel.prob` in tests/test_pretrain_lm.py.

Sampling draws each word from the backoff distribution exactly: with the history (u, v), a word with an
explicit trigram is drawn with its trigram probability; otherwise the model backs off to P(. | v)
restricted to words without that trigram (and from there to the unigrams the same way), so a sentence
is a sample of the LM itself. Sentences start after <s> and end at </s>. They are lowercase words
without punctuation, as the LM has them; `sample_sentences` keeps those of `min_words`..`max_words`
plain words (letters and apostrophes; no "a." initials or <UNK>) and writes them as sentences: the first
letter and the pronoun "i" capitalised, a final period.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TRIE_HEADER = b"Trie Language Model"
LOG_BASE = 1.0001  # pocketsphinx's logmath base for stored probabilities
_QUANT_BITS = 16
_PLAIN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def pocketsphinx_lm_path() -> Path:
    """The general US-English trigram LM shipped in the pocketsphinx wheel."""
    import pocketsphinx

    return Path(pocketsphinx.__file__).parent / "model" / "en-us" / "en-us.lm.bin"


class NGramFormatError(ValueError):
    pass


def _required_bits(max_value: int) -> int:
    return int(max_value).bit_length()


def _read_bits(mem: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """Little-endian bit fields of `width` (<= 57) bits starting at bit `offsets` of `mem`."""
    byte = (offsets >> 3).astype(np.int64)
    padded = np.concatenate([mem, np.zeros(8, np.uint8)])
    words = padded[byte[:, None] + np.arange(8, dtype=np.int64)].copy().view("<u8")[:, 0]
    return (words >> (offsets & 7).astype(np.uint64)) & np.uint64((1 << width) - 1)


@dataclass
class TrigramLM:
    """A backoff trigram LM as flat arrays; probabilities as natural logs.

    unigram_*: per word id. bigram_*: sorted by (history, word); bigram_first[h]:bigram_first[h + 1] are
    the bigrams with history h. trigram_*: sorted by (history bigram, word); the trigrams of history
    bigram k are trigram_first[k]:trigram_first[k + 1]."""

    words: list[str]
    unigram_logp: np.ndarray
    unigram_backoff: np.ndarray
    bigram_word: np.ndarray
    bigram_logp: np.ndarray
    bigram_backoff: np.ndarray
    bigram_first: np.ndarray  # (V + 1,)
    trigram_word: np.ndarray
    trigram_logp: np.ndarray
    trigram_first: np.ndarray  # (bigrams + 1,)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def word_id(self, word: str) -> int:
        if not hasattr(self, "_ids"):
            self._ids = {w: i for i, w in enumerate(self.words)}
        return self._ids[word]

    def _bigram_index(self, history: int, word: int) -> int | None:
        s, e = int(self.bigram_first[history]), int(self.bigram_first[history + 1])
        k = s + int(np.searchsorted(self.bigram_word[s:e], word))
        return k if k < e and int(self.bigram_word[k]) == word else None

    def log_prob(self, word: str, history: tuple[str, ...] = ()) -> float:
        """log P(word | history) (natural log) with backoff; history: up to two preceding words."""
        w = self.word_id(word)
        history = tuple(history)[-2:]
        if len(history) == 2:
            u, v = (self.word_id(h) for h in history)
            k = self._bigram_index(u, v)
            if k is not None:
                s, e = int(self.trigram_first[k]), int(self.trigram_first[k + 1])
                j = s + int(np.searchsorted(self.trigram_word[s:e], w))
                if j < e and int(self.trigram_word[j]) == w:
                    return float(self.trigram_logp[j])
                return float(self.bigram_backoff[k]) + self.log_prob(word, history[1:])
            return self.log_prob(word, history[1:])
        if len(history) == 1:
            v = self.word_id(history[0])
            k = self._bigram_index(v, w)
            if k is not None:
                return float(self.bigram_logp[k])
            return float(self.unigram_backoff[v]) + float(self.unigram_logp[w])
        return float(self.unigram_logp[w])


def read_trie_lm(path: str | Path | None = None) -> TrigramLM:
    """Read a pocketsphinx binary trie LM of order 3 (the format in the module docstring)."""
    path = Path(path) if path is not None else pocketsphinx_lm_path()
    data = path.read_bytes()
    if not data.startswith(TRIE_HEADER):
        raise NGramFormatError(f"{path}: not a pocketsphinx trie LM (no {TRIE_HEADER!r} header)")
    pos = len(TRIE_HEADER)
    order = data[pos]
    pos += 1
    if order != 3:
        raise NGramFormatError(f"{path}: an order-{order} LM; only trigram LMs are read")
    counts = struct.unpack_from("<3I", data, pos)
    pos += 12 + 4  # counts, then an unused int32 (formerly the quantisation type)
    table = 2 ** _QUANT_BITS
    quant = np.frombuffer(data, "<f4", 3 * table, pos).astype(np.float64)
    pos += 4 * 3 * table
    mid_prob, mid_backoff, top_prob = quant[:table], quant[table:2 * table], quant[2 * table:]
    unigrams = np.frombuffer(data, np.dtype([("prob", "<f4"), ("bo", "<f4"), ("next", "<u4")]), counts[0] + 1, pos)
    pos += 12 * (counts[0] + 1)

    word_bits = _required_bits(counts[0])
    next_bits = _required_bits(counts[2])
    mid_bits = word_bits + 2 * _QUANT_BITS + next_bits
    top_bits = word_bits + _QUANT_BITS
    mid_size = ((1 + counts[1]) * mid_bits + 7) // 8 + 8
    top_size = ((1 + counts[2]) * top_bits + 7) // 8 + 8
    mem = np.frombuffer(data, np.uint8, mid_size + top_size, pos)
    pos += mid_size + top_size
    (string_bytes,) = struct.unpack_from("<I", data, pos)
    pos += 4
    words = [w.decode("utf-8", "replace") for w in data[pos:pos + string_bytes].split(b"\0")[:-1]]
    if pos + string_bytes != len(data) or len(words) != counts[0]:
        raise NGramFormatError(f"{path}: sizes do not add up ({len(words)} words for {counts[0]} unigrams, "
                               f"{len(data) - pos - string_bytes} bytes left over)")

    # The unigrams' `next` pointers say how many bigram entries the trie really holds (the header may
    # count more: pocketsphinx#502); entry i of a middle order has its children at next[i]:next[i + 1].
    ug_next = unigrams["next"].astype(np.int64)
    n_bigrams = int(ug_next[-1])
    mid, top = mem[:mid_size], mem[mid_size:]
    at = np.arange(n_bigrams + 1, dtype=np.uint64) * np.uint64(mid_bits)
    b_prev = _read_bits(mid, at[:-1], word_bits).astype(np.int64)
    quant_bins = _read_bits(mid, at[:-1] + np.uint64(word_bits), 2 * _QUANT_BITS)
    b_next = _read_bits(mid, at + np.uint64(word_bits + 2 * _QUANT_BITS), next_bits).astype(np.int64)
    b_logp = mid_prob[(quant_bins >> np.uint64(_QUANT_BITS)).astype(np.int64)]
    b_backoff = mid_backoff[(quant_bins & np.uint64(table - 1)).astype(np.int64)]
    b_last = np.repeat(np.arange(counts[0], dtype=np.int64), np.diff(ug_next))
    n_trigrams = int(b_next[-1])
    at3 = np.arange(n_trigrams, dtype=np.uint64) * np.uint64(top_bits)
    t_first = _read_bits(top, at3, word_bits).astype(np.int64)
    t_logp = top_prob[_read_bits(top, at3 + np.uint64(word_bits), _QUANT_BITS).astype(np.int64)]
    t_bigram = np.repeat(np.arange(n_bigrams, dtype=np.int64), np.diff(b_next))

    to_ln = np.log(LOG_BASE)
    # Re-key by history: bigrams (prev, last) sorted by prev then last; trigrams by their history bigram
    # (first, prev) then last.
    order2 = np.lexsort((b_last, b_prev))
    rank2 = np.empty(n_bigrams, np.int64)
    rank2[order2] = np.arange(n_bigrams)
    bigram_first = np.searchsorted(b_prev[order2], np.arange(counts[0] + 1))
    # history bigram of trigram (first, prev, last) = the bigram entry (first -> prev)
    hist_key = t_first * counts[0] + b_prev[t_bigram]
    bigram_keys = b_prev[order2] * counts[0] + b_last[order2]
    hist = np.searchsorted(bigram_keys, hist_key)
    hist_found = (hist < n_bigrams) & (bigram_keys[np.minimum(hist, n_bigrams - 1)] == hist_key)
    if not hist_found.all():
        # every trigram's history is a bigram of the trie (pocketsphinx inserts the missing ones)
        raise NGramFormatError(f"{path}: {int((~hist_found).sum())} trigrams without a history bigram")
    t_last = b_last[t_bigram]
    order3 = np.lexsort((t_last, hist))
    trigram_first = np.searchsorted(hist[order3], np.arange(n_bigrams + 1))
    return TrigramLM(
        words=words,
        unigram_logp=unigrams["prob"][:-1].astype(np.float64) * to_ln,
        unigram_backoff=unigrams["bo"][:-1].astype(np.float64) * to_ln,
        bigram_word=b_last[order2], bigram_logp=b_logp[order2] * to_ln, bigram_backoff=b_backoff[order2] * to_ln,
        bigram_first=bigram_first,
        trigram_word=t_last[order3], trigram_logp=t_logp[order3] * to_ln, trigram_first=trigram_first,
    )


@lru_cache(maxsize=1)
def default_lm() -> TrigramLM:
    """The pocketsphinx en-us LM, read once per process (~100 MB of arrays, several seconds to read)."""
    return read_trie_lm()


class _Sampler:
    """Draws words from a TrigramLM (see the module docstring). Cumulative probabilities are kept per
    array, so a draw from any n-gram group is one binary search."""

    def __init__(self, lm: TrigramLM):
        self.lm = lm
        self.bos, self.eos = lm.word_id("<s>"), lm.word_id("</s>")
        unigram_p = np.exp(lm.unigram_logp)
        unigram_p[self.bos] = 0.0  # <s> is never predicted
        self.unigram_cum = np.cumsum(unigram_p)
        self.bigram_cum = np.concatenate([[0.0], np.cumsum(np.exp(lm.bigram_logp))])
        self.trigram_cum = np.concatenate([[0.0], np.cumsum(np.exp(lm.trigram_logp))])

    @staticmethod
    def _draw(cum: np.ndarray, start: int, end: int, rng: np.random.Generator) -> tuple[int, float]:
        """An index of [start, end) drawn by probability, and the group's total probability."""
        low, high = cum[start], cum[end]
        index = int(np.searchsorted(cum, low + rng.random() * (high - low), side="right")) - 1
        return min(max(index, start), end - 1), high - low

    def _unigram_outside(self, bigram_words: np.ndarray, rng) -> int:
        """A draw from the unigrams restricted to words without an explicit bigram (the backoff branch)."""
        for _ in range(100):
            w = int(np.searchsorted(self.unigram_cum, rng.random() * self.unigram_cum[-1], side="right"))
            w = min(w, len(self.unigram_cum) - 1)
            if not _contains(bigram_words, w):
                break
        return w

    def _given_word(self, v: int, exclude: np.ndarray | None, rng) -> int:
        """A draw from P(. | v) conditioned on not being in `exclude` (words with an explicit trigram
        for the current history): rejection sampling."""
        lm = self.lm
        s, e = int(lm.bigram_first[v]), int(lm.bigram_first[v + 1])
        for _ in range(100):
            w = None
            if e > s:
                k, mass = self._draw(self.bigram_cum, s, e, rng)
                if rng.random() < mass:
                    w = int(lm.bigram_word[k])
            if w is None:
                w = self._unigram_outside(lm.bigram_word[s:e], rng)
            if exclude is None or not _contains(exclude, w):
                break
        return w

    def next_word(self, u: int, v: int, rng: np.random.Generator) -> int:
        lm = self.lm
        k = lm._bigram_index(u, v)
        if k is None:
            return self._given_word(v, None, rng)
        s, e = int(lm.trigram_first[k]), int(lm.trigram_first[k + 1])
        if e > s:
            j, mass = self._draw(self.trigram_cum, s, e, rng)
            if rng.random() < mass:
                return int(lm.trigram_word[j])
        return self._given_word(v, lm.trigram_word[s:e], rng)

    def sentence(self, max_words: int, rng: np.random.Generator) -> list[str]:
        u, v, out = self.bos, self.bos, []
        for _ in range(max_words + 1):
            w = self.next_word(u, v, rng) if out else self._given_word(self.bos, None, rng)
            if w == self.eos:
                return out
            out.append(self.lm.words[w])
            u, v = v, w
        return out  # too long: the caller drops it


def _contains(sorted_words: np.ndarray, w: int) -> bool:
    i = int(np.searchsorted(sorted_words, w))
    return i < len(sorted_words) and int(sorted_words[i]) == w


_CAPITAL_I = {"i": "I", "i'm": "I'm", "i've": "I've", "i'll": "I'll", "i'd": "I'd"}


def _as_sentence(words: list[str]) -> str:
    text = " ".join(_CAPITAL_I.get(w, w) for w in words)
    return text[0].upper() + text[1:] + "."


def sample_sentences(count: int, seed: int = 0, *, min_words: int = 4, max_words: int = 24,
                     lm: TrigramLM | None = None) -> list[str]:
    """`count` sentences sampled from the trigram LM (None: the pocketsphinx en-us LM), with
    min_words..max_words plain words each (see the module docstring). Draw k uses default_rng([seed, k])
    and unusable draws are skipped, so the same seed gives the same list and a list of N sentences is a
    prefix of the list of N + 1."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    lm = lm or default_lm()
    sampler = _Sampler(lm)
    out: list[str] = []
    attempt = 0
    while len(out) < count:
        rng = np.random.default_rng([seed, attempt])
        attempt += 1
        if attempt > 50 * count + 1000:
            raise RuntimeError(f"only {len(out)} of {count} usable sentences after {attempt} draws")
        words = sampler.sentence(max_words, rng)
        if min_words <= len(words) <= max_words and all(_PLAIN_WORD.fullmatch(w) for w in words):
            out.append(_as_sentence(words))
    return out
