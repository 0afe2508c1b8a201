"""The training sequence index of a 38k-hour version: build time, size, and what it costs a rank's memory.

    .venv/bin/python benchmarks/sequence_index_scale.py --utterances 13700000 [--workers 2] [--write]

A metadata-only version (no audio files) is generated shard by shard with the planning benchmark's generator
(benchmarks/plan_scale.py: ids, words, word times, durations, domains, entities) and planned with the 38k
configuration (configs/38k.yaml); each shard's `utterances` (with the transcript as text), `normalized_audio`
(a FLAC path per utterance, relative to the store root, never opened), `interleave_plans` and `spans` are
written as zstd Parquet. Then, each in a process of its own:

1. rank 0 builds the sequence index (jstip.model.sequence_index.build_index: DuckDB, streamed, spilling beyond
   JSTIP_INDEX_BUILD_MEMORY) — its wall time and peak RSS;
2. two ranks of a 2-process job open the index at the same time and draw their shares of `--steps` global
   batches of `--batch-size` sequences from the BucketSampler (sequences materialised as Python objects, as
   a DataLoader worker does before reading audio) — per rank, from /proc/<pid>/status: RssAnon (its own heap:
   what a rank adds to the machine's memory), RssFile (pages of mapped files resident in it: the index's,
   which live in the page cache, are shared by every rank and worker of the machine and are dropped under
   memory pressure) and their sum, the RSS; and the time per batch.

With `--out DIR` the generated version, the index and the figures of steps 1-2 stay in DIR; a rerun with the
same DIR and `--utterances` measures the ranks again on them (the generation and build figures are those
recorded). The last line is `sequence_index_scale: N utts, S sequences, build B s, build_peak_rss R GiB,
index I GiB, rank_anon A GiB, rank_rss V GiB`, the rank figures the larger of the two ranks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_scale  # noqa: E402  (the generator and the 38k plan configuration)

from jstip.tasks.plan import plan_shard  # noqa: E402

TABLES = ("utterances", "normalized_audio", "interleave_plans", "spans")


def _write_shard(job: tuple[int, int, str]) -> dict:
    index, size, out = job
    if plan_scale._VOCABULARY is None:
        plan_scale._VOCABULARY = plan_scale._vocabulary()
    utterances, words, audio = plan_scale.generate_shard(index, size, plan_scale._VOCABULARY)
    result = plan_shard(utterances, words, audio, plan_scale.CONFIG)
    # the transcript: the utterance's words joined (word_alignments are grouped by utterance, in order)
    counts = np.bincount(pc.dictionary_encode(words.column("utterance_id")).combine_chunks().indices.to_numpy())
    assert len(counts) == utterances.num_rows
    offsets = pa.array(np.append(0, np.cumsum(counts)).astype(np.int32))
    text = pc.binary_join(pa.ListArray.from_arrays(offsets, words.column("word").combine_chunks()), " ")
    ids = utterances.column("utterance_id")
    tables = {
        "utterances": pa.table({"utterance_id": ids, "domain": utterances.column("domain"), "text": text}),
        "normalized_audio": pa.table({
            "utterance_id": ids,
            "flac_path": pc.binary_join_element_wise(f"audio/{index:05d}/", ids, ".flac", ""),
            "num_samples": audio.column("num_samples"), "sampling_rate": audio.column("sampling_rate")}),
        "interleave_plans": result.interleave_plans, "spans": result.spans,
    }
    for name, table in tables.items():
        pq.write_table(table, Path(out) / name / f"part-{index:05d}.parquet", compression="zstd")
    return {"utterances": size, "hours": float(pc.sum(audio.column("duration")).as_py()) / 3600}


def generate(utterances: int, workers: int, version_dir: Path) -> dict:
    for table in TABLES:
        (version_dir / table).mkdir(parents=True, exist_ok=True)
    size = plan_scale.SHARD_SIZE
    jobs = [(i, min(size, utterances - i * size), str(version_dir)) for i in range((utterances + size - 1) // size)]
    started = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        results = list(pool.imap_unordered(_write_shard, jobs))
    return {"hours": sum(r["hours"] for r in results), "generate_s": time.perf_counter() - started,
            "parquet_bytes": sum(p.stat().st_size for p in version_dir.rglob("*.parquet"))}


def _version(root: Path):
    from jstip.storage.store import DatasetVersion

    return DatasetVersion(version_id="bench38k", name="bench38k", parent_version=None,
                          created_at=datetime.now(timezone.utc), config_json="{}", code_version="", input_hash="",
                          row_counts={}, status="published", path=root / "datasets" / "bench38k")


def _build(root: str, directory: str, queue) -> None:
    from jstip.storage.store import DatasetStore
    from jstip.model.sequence_index import build_index

    started = time.perf_counter()
    meta = build_index(DatasetStore(root), _version(Path(root)), Path(directory), True, "Transcribe the speech.")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put({"build_s": time.perf_counter() - started, "meta": meta, "build_cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def _status_gib() -> dict[str, float]:
    """RssAnon / RssFile / VmRSS of this process, GiB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmRSS"):
            fields[name] = int(value.split()[0]) / 2**20  # kB
    return fields


def _rank(root: str, directory: str, rank: int, world_size: int, steps: int, batch_size: int, queue, go) -> None:
    from jstip.model.config import TrainConfig
    from jstip.model.sequence_index import SequenceIndex
    from jstip.model.sequence_pools import POOLS, BucketSampler, _open_pools

    config = TrainConfig()
    before = _status_gib()
    go.wait()  # both ranks open the index at once
    opened = time.perf_counter()
    index = SequenceIndex(directory, root)
    pools = _open_pools(index, "bench38k", config.asr_prompt, "error", ())
    sampler = BucketSampler(pools.pools, config.mix.model_dump(), batch_size, config.length_buckets, config.seed)
    open_s = time.perf_counter() - opened
    drawn, sequences, segments, growth = time.perf_counter(), 0, 0, {}
    for step in range(steps):
        batch = sampler.rank_batch(step, rank, world_size)
        sequences += len(batch)
        segments += sum(len(s.segments) for s in batch)
        if step + 1 in (10, 100, 1000, 10000, 100000):
            growth[step + 1] = _status_gib()["RssFile"]
    draw_s = time.perf_counter() - drawn
    after = _status_gib()
    queue.put({"rank": rank, "open_s": open_s, "batch_ms": 1000 * draw_s / steps, "sequences": sequences,
               "segments": segments, "pool_sizes": {p: len(pools.pools[p]) for p in POOLS},
               "anon_gib": after["RssAnon"], "file_gib": after["RssFile"], "rss_gib": after["VmRSS"],
               "anon_before_gib": before["RssAnon"], "file_gib_after": growth,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def run(utterances: int, workers: int, out: Path, steps: int, batch_size: int) -> dict:
    root = out / "store"
    directory = root / "work" / "sequence_index" / "bench38k"
    recorded = out / "generate_and_build.json"
    ctx = mp.get_context("spawn")  # measured processes start clean, as a torchrun rank does
    queue = ctx.Queue()
    previous = json.loads(recorded.read_text()) if recorded.is_file() else None
    reused = previous is not None and previous["utterances"] == utterances and (directory / "index.json").is_file()
    if reused:
        generated, built = previous["generated"], previous["built"]
    else:
        shutil.rmtree(root, ignore_errors=True)
        generated = generate(utterances, workers, root / "datasets" / "bench38k")
        builder = ctx.Process(target=_build, args=(str(root), str(directory), queue))
        builder.start()
        built = queue.get()
        builder.join()
        recorded.write_text(json.dumps({"utterances": utterances, "workers": workers, "generated": generated,
                                        "built": built}))
    go = ctx.Event()
    ranks = [ctx.Process(target=_rank, args=(str(root), str(directory), r, 2, steps, batch_size, queue, go))
             for r in range(2)]
    for p in ranks:
        p.start()
    go.set()
    measured = sorted((queue.get() for _ in ranks), key=lambda m: m["rank"])
    for p in ranks:
        p.join()
    index_bytes = sum(p.stat().st_size for p in directory.iterdir())
    return {"utterances": utterances, "workers": workers, **generated, **built, "index_bytes": index_bytes,
            "reused": reused,
            "ranks": measured, "steps": steps, "batch_size": batch_size}


def _markdown(m: dict, command: str) -> str:
    meta = m["meta"]
    sequences = sum(meta["sequences"].values())
    lines = [
        f"`{command}`",
        "",
        f"{m['utterances']:,} metadata-only utterances ({m['hours']:,.0f} h of audio; benchmarks/plan_scale.py's "
        f"generator, planned with configs/38k.yaml, {m['parquet_bytes'] / 2**30:.2f} GiB of zstd Parquet); index "
        f"built with mix.transcripts_as_text on (every transcript is also a text sequence: the largest index); "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, DuckDB memory limit "
        f"{os.environ.get('JSTIP_INDEX_BUILD_MEMORY', '4GB')}. The machine is shared with other sessions: wall "
        f"times vary with their load, CPU times much less.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| sequences (interleaved / asr / text) | {meta['sequences']['interleaved']:,} / {meta['sequences']['asr']:,} "
        f"/ {meta['sequences']['text']:,} = {sequences:,} |",
        f"| segment rows | {meta['segments']:,} |",
        f"| index build (rank 0, once per version and mix): wall / CPU (all DuckDB threads) / peak RSS | "
        f"{m['build_s']:.0f} s / {m['build_cpu_s']:.0f} s / {m['peak_rss_gib']:.2f} GiB |",
        f"| index files on disk (mapped: page cache, shared by every rank and worker of a machine) | "
        f"{m['index_bytes'] / 2**30:.2f} GiB |",
    ]
    lines.append(f"| ranks measured | {'on a rerun over the recorded index: its pages were in the page cache' if m['reused'] else 'right after the build'} |")
    for r in m["ranks"]:
        growth = ", ".join(f"{gib:.1f} GiB after {steps:,}" for steps, gib in r["file_gib_after"].items())
        lines.append(f"| rank {r['rank']} of 2: the index's pages resident in it (RssFile) as batches are drawn | "
                     f"{growth} |")
        lines.append(
            f"| rank {r['rank']} of 2: open / {m['steps']:,} batches of its {m['batch_size'] // 2} of "
            f"{m['batch_size']} sequences | {r['open_s']:.2f} s / {r['batch_ms']:.2f} ms per batch |")
        lines.append(
            f"| rank {r['rank']} of 2 after drawing: own heap (RssAnon) + the index's mapped pages (RssFile, "
            f"shared page cache) = RSS | {r['anon_gib']:.2f} + {r['file_gib']:.2f} = {r['rss_gib']:.2f} GiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=2000, help="global batches each rank draws its share of")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per global batch")
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a temporary "
                        "directory, removed afterwards)")
    parser.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sequence_index_scale-"))
    try:
        m = run(args.utterances, args.workers, out, args.steps, args.batch_size)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    command = (f".venv/bin/python benchmarks/sequence_index_scale.py --utterances {args.utterances} --steps "
               f"{args.steps} --batch-size {args.batch_size} --write")
    print(_markdown(m, command))
    if args.write:
        from _report import write_section

        write_section("sequence index at 38k hours", _markdown(m, command))
    worst = max(m["ranks"], key=lambda r: r["anon_gib"])
    print(f"sequence_index_scale: {m['utterances']} utts, {sum(m['meta']['sequences'].values())} sequences, build "
          f"{m['build_s']:.1f} s, build_peak_rss {m['peak_rss_gib']:.2f} GiB, index {m['index_bytes'] / 2**30:.2f} "
          f"GiB, rank_anon {worst['anon_gib']:.2f} GiB, rank_rss {max(r['rss_gib'] for r in m['ranks']):.2f} GiB")


if __name__ == "__main__":
    main()
