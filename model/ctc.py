"""What the CTC head predicts: characters (default) or the LLM's own tokens.

Characters are learned from little audio far faster than BPE tokens: a character is shared by every word
that contains it, while a whole-word token of a 1k-token vocabulary is seen only when that word is spoken.
Measured on 400 synthetic utterances (encoder + CTC head alone, 600 steps of 8, BENCHMARKS.md "train
demo"): character CTC spelled the test sentences nearly right while token CTC still emitted a few
frequent words.

Character units: `CHARACTERS` (lowercase a-z, digits, apostrophe) plus a word separator; every other
character of a text (punctuation, hyphens, symbols, other scripts) separates words, letters with accents
lose them (NFKD), and separators collapse: "Follow-up, Dr. O'Brien!" -> "follow up dr o'brien". The
target of a text is that string; `TokenUnits` maps each LLM token to the units it adds, so joint CTC/LLM
decoding can score the LLM's token hypotheses with the character CTC (jstip.model.decode).

Token units: the CTC vocabulary is the LLM's, the target of a text is its token ids (as the LLM sees
the text), and a token adds itself.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789'"
SEPARATOR = " "
ALPHABET = SEPARATOR + CHARACTERS  # unit i is ALPHABET[i]; the blank is len(ALPHABET)
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
SEPARATOR_ID = _INDEX[SEPARATOR]


def _fold(char: str) -> str:
    """A character as units: '' (dropped: combining marks), or letters/digits/apostrophes, or a separator."""
    out = []
    for c in unicodedata.normalize("NFKD", char.lower()):
        if unicodedata.combining(c):
            continue
        out.append(c if c in _INDEX and c != SEPARATOR else SEPARATOR)
    return "".join(out)


def character_string(text: str) -> str:
    """The character-unit string of a text: folded, separators collapsed, none at the ends."""
    return " ".join("".join(_fold(c) for c in text).split())


def character_targets(text: str) -> list[int]:
    return [_INDEX[c] for c in character_string(text)]


@dataclass(frozen=True)
class UnitState:
    """Where a unit sequence stands after some tokens: the last unit emitted (None: none yet) and whether a
    separator is pending (emitted only before the next character, so no text ends or starts with one and
    separators never repeat)."""

    last: int | None = None
    pending_separator: bool = False


class TokenUnits:
    """The units each LLM token adds to a hypothesis (see the module docstring)."""

    def __init__(self, tokenizer, kind: str):
        import numpy as np

        self.kind = kind
        vocab = len(tokenizer)
        if kind == "llm_tokens":
            self.size = vocab
            self._raw = None
            return
        self.size = len(ALPHABET)
        special = set(tokenizer.all_special_ids)
        self._raw: list[str] = []
        for token_id in range(vocab):
            text = "" if token_id in special else tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            self._raw.append("".join(_fold(c) for c in text))
        # per token: its first character unit (-1: the token adds no character), and whether a separator
        # comes before it (then, after some text, its first unit is the separator)
        chars = [raw.replace(SEPARATOR, "") for raw in self._raw]
        self._first_char = np.array([_INDEX[c[0]] if c else -1 for c in chars])
        self._leading_separator = np.array([bool(raw) and raw[0] == SEPARATOR for raw in self._raw])

    def first_units(self, state: UnitState):
        """The first unit every token of the vocabulary would add after `state` (-1: none), as an array."""
        import numpy as np

        if self.kind == "llm_tokens":
            return np.arange(self.size)
        separator_first = (self._first_char >= 0) & (state.last is not None) & (
            state.pending_separator | self._leading_separator)
        return np.where(separator_first, SEPARATOR_ID, self._first_char)

    @property
    def blank(self) -> int:
        return self.size

    def targets(self, text: str, tokenizer) -> list[int]:
        """The CTC target of a text."""
        if self.kind == "llm_tokens":
            from jstip.model.batching import text_ids

            return text_ids(tokenizer, text)
        return character_targets(text)

    def extend(self, state: UnitState, token: int) -> tuple[list[int], UnitState]:
        """The units `token` appends after `state`, and the state after it."""
        if self.kind == "llm_tokens":
            return [token], UnitState(token, False)
        units, last, pending = [], state.last, state.pending_separator
        for c in self._raw[token]:
            if c == SEPARATOR:
                pending = pending or last is not None  # never a leading separator
                continue
            if pending:
                units.append(SEPARATOR_ID)
                pending = False
            last = _INDEX[c]
            units.append(last)
        return units, UnitState(last, pending)
