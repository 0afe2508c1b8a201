"""How a transcript is split into words. Every table that holds a `word_index` counts words this way."""

from __future__ import annotations

import re

# A word is a whitespace-separated token holding at least one letter or digit; a token of punctuation
# only ("-", "&", "...") is not a word and gets no index, no alignment and no span of its own.
_TOKEN = re.compile(r"\S+")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)


def split_words(text: str) -> list[str]:
    """The transcript's words, as written (case and punctuation kept)."""
    return [m.group(0) for m in _TOKEN.finditer(text) if _SPEAKABLE.search(m.group(0))]


def word_char_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each word of split_words(text), end exclusive."""
    return [m.span() for m in _TOKEN.finditer(text) if _SPEAKABLE.search(m.group(0))]
