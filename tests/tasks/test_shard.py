"""Content-defined sharding: appends and small edits keep every other shard's key (and cache)."""

from __future__ import annotations

import pyarrow as pa

from jstip.schemas import from_rows
from jstip.tasks.shard import shard_boundaries, shard_key, split_shards


def _utterances(ids: list[str]) -> pa.Table:
    return from_rows("utterances", [dict(utterance_id=i, recording_id=i, audio_path=f"/nowhere/{i}.wav", start=0.0,
                                         text="hello", source=f"m:{k}") for k, i in enumerate(ids)])


def test_shards_cover_everything_in_order_with_bounded_size():
    ids = [f"utt-{k:05d}" for k in range(5000)]
    shards = shard_boundaries(ids, 50)
    assert shards[0][0] == 0 and sum(length for _, length in shards) == 5000
    assert all(a + n == b for (a, n), (b, _) in zip(shards, shards[1:]))
    assert all(1 <= n <= 100 for _, n in shards)
    assert 70 <= len(shards) <= 140  # about one shard per 50 utterances


def test_appending_one_percent_changes_only_the_tail():
    ids = [f"utt-{k:05d}" for k in range(3000)]
    before = [shard_key(s) for s in split_shards(_utterances(ids), 100)]
    after = [shard_key(s) for s in split_shards(_utterances(ids + [f"new-{k}" for k in range(30)]), 100)]
    kept = set(before) & set(after)
    assert len(kept) >= len(before) - 1  # at most the last shard changed
    assert after[:len(before) - 1] == before[:-1]


def test_removing_a_line_changes_only_its_shard():
    ids = [f"utt-{k:05d}" for k in range(3000)]
    table = _utterances(ids)
    before = {shard_key(s) for s in split_shards(table, 100)}
    edited = pa.concat_tables([table.slice(0, 1500), table.slice(1501)])
    after = {shard_key(s) for s in split_shards(edited, 100)}
    # only shards up to the next content boundary change (a long unmarked run is cut in fixed pieces,
    # which the removal shifts); all the others keep their keys
    assert 1 <= len(before - after) <= 2 and 1 <= len(after - before) <= 2
    assert len(before & after) >= len(before) - 2


def test_same_input_same_shards():
    table = _utterances([f"u{k}" for k in range(500)])
    assert [shard_key(s) for s in split_shards(table, 40)] == [shard_key(s) for s in split_shards(table, 40)]


def test_keys_depend_on_rows_not_on_how_the_table_is_chunked():
    table = _utterances([f"u{k}" for k in range(300)])
    rechunked = pa.concat_tables([table.slice(0, 7), table.slice(7, 150), table.slice(157)])
    assert [shard_key(s) for s in split_shards(table, 20)] == [shard_key(s) for s in split_shards(rechunked, 20)]
