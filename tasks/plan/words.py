"""What the planner and the invariant checker share: an aligned shard's words as NumPy arrays grouped by
utterance (`group_words`), which of them are entity words (`entity_word_mask`), row lookups, the span
vocabularies and the time tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ROLES = pa.array(["speech", "text", "transcript"])
_MODALITIES = pa.array(["speech", "text"])
# Tolerance of the time invariants, seconds (aligners keep word ends within 1e-9 s of the audio's end).
_EPS = 1e-6


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
