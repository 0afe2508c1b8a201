"""Sharding: cut the ingested utterances into shard-sized tables, each named by its content.

A shard's key hashes its rows (Arrow IPC bytes) and the size and modification time of each audio file
it reads, so a shard whose manifest lines and audio are unchanged keeps its key, and every stage result
cached under it, across reruns.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.compute as pc


def split_shards(utterances: pa.Table, shard_size: int) -> list[pa.Table]:
    """Deterministic shards of at most `shard_size` utterances, in utterance id order."""
    ordered = utterances.sort_by("utterance_id")
    return [ordered.slice(offset, shard_size) for offset in range(0, ordered.num_rows, shard_size)]


def shard_key(shard: pa.Table) -> str:
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, shard.schema) as writer:
        writer.write_table(shard)
    digest.update(sink.getvalue().to_pybytes())
    for path in pc.unique(shard.column("audio_path")).to_pylist():
        try:
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}:missing".encode())
    return digest.hexdigest()[:24]
