"""Counter-based randomness for planning: every draw is splitmix64 of (key, stream, counter), with key =
splitmix64(hash(utterance id) ^ splitmix64(seed)), turned into a uniform number and, for span lengths, into an
integer through an inverse-CDF table. No generator state is shared between utterances: a plan depends on
(seed, utterance id, config) only, never on the shard, the order of its rows or the number of workers."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyarrow as pa

from jstip.config import WordLevelConfig


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
