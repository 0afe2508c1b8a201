"""Sharding: cut the ingested utterances into shard-sized tables, each named by its content.

Shards follow the manifest's order and end where the content says, not at fixed counts: a shard ends
after an utterance whose id hashes to 0 modulo `shard_size` (content-defined chunking, as rsync and
dedup stores do), or when it reaches twice `shard_size`. Appending utterances to a manifest (the nightly
case) therefore changes only the last shard and adds new ones, and inserting or removing a few lines
changes only the shards around them: every other shard keeps its key and its cached stage results.
Shards average about `shard_size` utterances.

A shard's key hashes its rows (Arrow IPC bytes) and the size and modification time of each audio file
it reads, so a shard whose manifest lines and audio are unchanged keeps its key across reruns.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
    for path in pc.unique(shard.column("audio_path")).to_pylist():
        try:
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}:missing".encode())
    return digest.hexdigest()[:24]
