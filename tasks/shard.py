"""Sharding: cut the ingested utterances into shard-sized tables, each named by its content.

Shards follow the manifest's order and end where the content says, not at fixed counts: a shard ends
after an utterance whose id hashes to 0 modulo `shard_size` (content-defined chunking, as rsync and
dedup stores do), or when it reaches twice `shard_size`. Appending utterances to a manifest (the nightly
case) therefore changes only the last shard and adds new ones, and inserting or removing a few lines
changes only the shards around them: every other shard keeps its key and its cached stage results.
Shards average about `shard_size` utterances.

A shard's key hashes its rows (Arrow IPC bytes), which hold what identifies each utterance by content:
its transcript and metadata, its audio path relative to the corpus root, and the sha256 of its audio file's
bytes (`audio_sha256`, from ingest). Never an absolute path, a size or an mtime: touching or moving a corpus
keeps every key (and so every cached stage result and the version id), and new bytes under the same name,
size and mtime change the key of that shard only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids),
                       dtype=np.uint64, count=len(ids))


def shard_boundaries(ids: list[str], shard_size: int) -> list[tuple[int, int]]:
    """[(offset, length)] of the shards of `ids`, in order."""
    n = len(ids)
    if n == 0:
        return []
    ends = np.flatnonzero(_id_hashes(ids) % np.uint64(shard_size) == 0) + 1  # cut after a marked id
    cuts = np.unique(np.r_[ends[ends < n], n])
    shards, start = [], 0
    for end in cuts:
        while end - start > 2 * shard_size:  # a long unmarked run: fixed-size pieces
            shards.append((start, shard_size))
            start += shard_size
        shards.append((start, int(end - start)))
        start = int(end)
    return shards


def split_shards(utterances: pa.Table, shard_size: int) -> list[pa.Table]:
    """Content-defined shards of the utterances, in manifest order."""
    ids = utterances.column("utterance_id").to_pylist()
    return [utterances.slice(offset, length) for offset, length in shard_boundaries(ids, shard_size)]


def shard_key(shard: pa.Table) -> str:
    digest = hashlib.sha256()
    # IPC bytes of a slice depend on the table it was cut from (buffer offsets, chunking); `take` makes
    # fresh, canonical buffers, so equal rows give equal bytes
    canonical = shard.take(pa.array(range(shard.num_rows), pa.int64()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        writer.write_table(canonical)
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()[:24]
