"""Interleave planning at 38k-hour scale, without audio: plan, write Parquet, query the statistics views.

    .venv/bin/python benchmarks/plan_scale.py --utterances 13700000 [--workers 2] [--write]

38k hours is ~13.7 M utterances of ~10 s and ~25 words. The script generates metadata-only aligned
utterances shard by shard (ids, words from a 5000-word vocabulary, word times with pauses, durations,
domains, entities for a third of the utterances; NumPy, seeded by shard index), plans each shard with
`plan_shard` (which also checks every invariant of every plan), writes `interleave_plans` and `spans`
as zstd Parquet (one file per shard: memory stays bounded by the shard, not the dataset), then runs
every statistics view of storage/views.py over the files with DuckDB and times each.

Planning rate = utterances / CPU seconds inside plan_shard (input generation and Parquet writing
excluded), i.e. per core; wall = the whole run. The last line is
`plan_scale: N utts, planning U utt/s, wall W s, peak_rss R GiB, slowest_query Q s`, where U is per core
and R adds up the peak RSS of every process (workers + this one), an upper bound of what
was resident at once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jstip.config import PlanConfig, load_config
from jstip.schemas import DATASET_TABLES, empty
from jstip.storage import DatasetStore
from jstip.storage.views import DERIVED_VIEWS
from jstip.tasks.plan import plan_shard

# The planner configuration measured: what a 38k-hour JSTIP build would use (mixed word/segment/ASR, F1,
# slamkit's Poisson(10) word spans at eta = 0.3; segments of ~3 s).
CONFIG = load_config(Path(__file__).resolve().parents[1] / "configs" / "38k.yaml").plan
SHARD_SIZE = 50_000
VOCABULARY = 5000
DOMAINS = ["medical", "banking", "legal", "general"]


def _vocabulary() -> pa.Array:
    """VOCABULARY words of 2-9 letters, then the same words with a full stop."""
    rng = np.random.default_rng(12345)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(VOCABULARY)]
    return pa.array(words + [w + "." for w in words])


def _fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """A string array from a (rows, width) uint8 matrix of ASCII characters."""
    rows, width = chars.shape
    offsets = pa.py_buffer((np.arange(rows + 1, dtype=np.int32) * width).tobytes())
    return pa.StringArray.from_buffers(rows, offsets, pa.py_buffer(np.ascontiguousarray(chars).tobytes()))


def generate_shard(index: int, size: int, vocabulary: pa.Array) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(utterances, word_alignments, normalized_audio) of `size` metadata-only utterances, only the
    columns the planner reads."""
    rng = np.random.default_rng([7, index])
    n = np.clip(rng.poisson(25, size), 3, 80)
    W = int(n.sum())
    first_row = np.cumsum(n) - n
    word_index = np.arange(W) - np.repeat(first_row, n)
    number = np.arange(size, dtype=np.int64) + index * SHARD_SIZE
    chars = np.empty((size, 13), np.uint8)  # "utt-" and 9 digits
    chars[:, :4] = np.frombuffer(b"utt-", np.uint8)
    chars[:, 4:] = (number[:, None] // 10 ** np.arange(8, -1, -1) % 10 + ord("0")).astype(np.uint8)
    ids = _fixed_width_strings(chars)

    length = rng.uniform(0.2, 0.45, W)
    gap = np.where(rng.random(W) < 0.06, rng.uniform(0.25, 0.8, W), rng.uniform(0.0, 0.08, W))
    gap[first_row] = rng.uniform(0.05, 0.3, size)  # leading silence
    step = length + gap
    cum = np.cumsum(step)
    start = cum - length - np.repeat(cum[first_row] - step[first_row], n)
    end = start + length
    duration = np.round(end[first_row + n - 1] + rng.uniform(0.05, 0.3, size), 4)

    # sentence-final words end with a full stop: the utterance's last one, and ~4% of the others
    stop = rng.random(W) < 0.04
    stop[first_row + n - 1] = True
    words = vocabulary.take(pa.array(rng.integers(0, VOCABULARY, W) + VOCABULARY * stop))
    word_alignments = pa.table({"utterance_id": _fixed_width_strings(
                                    np.repeat(chars.view("V13").ravel(), n).view(np.uint8).reshape(W, 13)),
                                "word_index": pa.array(word_index, pa.int32()), "word": words,
                                "start": start, "end": end})

    # entities: a third of the utterances mention one or two, of one or two words, taken from the transcript
    count = np.where(rng.random(size) < 1 / 3, rng.integers(1, 3, size), 0)
    owner = np.repeat(np.arange(size), count)
    span = np.minimum(rng.integers(1, 3, len(owner)), n[owner])
    at = first_row[owner] + (rng.random(len(owner)) * (n[owner] - span + 1)).astype(np.int64)
    rows = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span - at, span)
    entity = pc.binary_join(pa.ListArray.from_arrays(pa.array(np.append(np.cumsum(span) - span, span.sum())
                                                              .astype(np.int32)), words.take(pa.array(rows))), " ")
    entities = pa.ListArray.from_arrays(pa.array(np.append(0, np.cumsum(count)).astype(np.int32)), entity)
    utterances = pa.table({"utterance_id": ids,
                           "domain": pa.array(DOMAINS).take(pa.array(rng.integers(0, len(DOMAINS), size))),
                           "entities": entities})
    audio = pa.table({"utterance_id": ids, "duration": duration,
                      "sampling_rate": pa.array(np.full(size, 16000), pa.int32()),
                      "num_samples": pa.array(np.rint(duration * 16000).astype(np.int64))})
    return utterances, word_alignments, audio


_VOCABULARY: pa.Array | None = None


def _run_shard(job: tuple[int, int, str, PlanConfig]) -> dict:
    global _VOCABULARY
    index, size, out, config = job
    if _VOCABULARY is None:
        _VOCABULARY = _vocabulary()
    t0 = time.perf_counter()
    utterances, words, audio = generate_shard(index, size, _VOCABULARY)
    t1, cpu = time.perf_counter(), time.process_time()
    result = plan_shard(utterances, words, audio, config)
    t2, cpu = time.perf_counter(), time.process_time() - cpu
    for name, table in (("interleave_plans", result.interleave_plans), ("spans", result.spans)):
        pq.write_table(table, Path(out) / name / f"part-{index:05d}.parquet", compression="zstd")
    t3 = time.perf_counter()
    return dict(pid=os.getpid(), utterances=size, words=words.num_rows, spans=result.spans.num_rows,
                audio_hours=float(pc.sum(audio.column("duration")).as_py()) / 3600, generate=t1 - t0,
                plan=t2 - t1, plan_cpu=cpu, write=t3 - t2, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(utterances: int, workers: int, out: Path, config: PlanConfig = CONFIG) -> dict:
    start = time.perf_counter()
    version = out / "version"
    for table in DATASET_TABLES:
        (version / table).mkdir(parents=True, exist_ok=True)
        if table not in ("interleave_plans", "spans"):
            pq.write_table(empty(table), version / table / "part-00000.parquet")
    jobs = [(i, min(SHARD_SIZE, utterances - i * SHARD_SIZE), str(version), config)
            for i in range((utterances + SHARD_SIZE - 1) // SHARD_SIZE)]
    results = []
    with mp.get_context("fork").Pool(workers, maxtasksperchild=None) as pool:
        for r in pool.imap_unordered(_run_shard, jobs):
            results.append(r)
    planned = time.perf_counter()

    import duckdb

    queries = {}
    with duckdb.connect() as con:
        DatasetStore._create_views(con, "main", version)
        for view in DERIVED_VIEWS:
            if not view.startswith("stats_"):
                continue
            t = time.perf_counter()
            con.execute(f'SELECT * FROM "{view}"').fetchall()
            queries[view] = time.perf_counter() - t
    wall = time.perf_counter() - start
    peaks: dict[int, int] = {}
    for r in results:
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0), r["rss"])
    rss_kib = sum(peaks.values()) + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    plan_cpu = sum(r["plan_cpu"] for r in results)
    return dict(
        utterances=utterances, workers=workers, shards=len(jobs), words=sum(r["words"] for r in results),
        spans=sum(r["spans"] for r in results), audio_hours=sum(r["audio_hours"] for r in results),
        generate_s=sum(r["generate"] for r in results), plan_s=sum(r["plan"] for r in results), plan_cpu_s=plan_cpu,
        write_s=sum(r["write"] for r in results),
        planning_rate=utterances / plan_cpu if plan_cpu else 0.0, plan_phase_wall=planned - start, wall=wall,
        peak_rss_gib=rss_kib / 2**20, queries=queries,
        parquet_bytes=sum(p.stat().st_size for p in version.rglob("*.parquet")),
    )


def _describe(config: PlanConfig) -> str:
    if config == CONFIG:
        return ("strategy mixed (word 0.4 / segment 0.4 / asr 0.2), F1, eta 0.3, word spans max(1, Poisson(10)), "
                "segments ~3 s")
    return f"plan section {config.model_dump_json()}"


def _markdown(m: dict, command: str, config: PlanConfig) -> str:
    lines = [
        f"`{command}`",
        "",
        f"{m['utterances']:,} metadata-only utterances ({m['audio_hours']:,.0f} h of audio, {m['words']:,} words) in "
        f"{m['shards']} shards of {SHARD_SIZE:,}, {m['workers']} worker processes; config: {_describe(config)}; "
        f"every plan checked against the invariants; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| planning rate per core (utterances / CPU s inside plan_shard, invariant checks included) | "
        f"{m['planning_rate']:,.0f} |",
        f"| wall, whole run (generate + plan + write Parquet, then the statistics queries) | {m['wall']:.1f} s |",
        f"| generating / planning / writing Parquet, seconds summed over workers | "
        f"{m['generate_s']:.1f} / {m['plan_s']:.1f} (CPU {m['plan_cpu_s']:.1f}) / {m['write_s']:.1f} |",
        f"| spans written | {m['spans']:,} ({m['parquet_bytes'] / 2**30:.2f} GiB of zstd Parquet) |",
        f"| peak RSS, all processes added up | {m['peak_rss_gib']:.2f} GiB |",
    ]
    for view, seconds in m["queries"].items():
        lines.append(f"| query `{view}` | {seconds:.2f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="directory for the Parquet files (default: a "
                        "temporary directory, removed afterwards)")
    parser.add_argument("--config", type=Path, default=None, help="a YAML build config whose `plan:` section to "
                        "plan with (default: the 38k-hour configuration above)")
    parser.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="plan_scale-"))
    try:
        config = CONFIG if args.config is None else load_config(args.config).plan
        m = run(args.utterances, args.workers, out, config)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    for view, seconds in m["queries"].items():
        print(f"  {view}: {seconds:.2f} s")
    print(f"  generate {m['generate_s']:.1f} s, plan {m['plan_s']:.1f} s, write {m['write_s']:.1f} s (CPU, all "
          f"workers); {m['spans']:,} spans, {m['parquet_bytes'] / 2**30:.2f} GiB Parquet")
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        extra = f" --config {args.config}" if args.config else ""
        command = f".venv/bin/python benchmarks/plan_scale.py --utterances {args.utterances}{extra} --write"
        title = "interleave planning at scale" + (f" ({args.config.name})" if args.config else "")
        write_section(title, _markdown(m, command, config))
    slowest = max(m["queries"].values(), default=0.0)
    print(f"plan_scale: {m['utterances']} utts, planning {m['planning_rate']:.0f} utt/s, wall {m['wall']:.1f} s, "
          f"peak_rss {m['peak_rss_gib']:.2f} GiB, slowest_query {slowest:.2f} s")


if __name__ == "__main__":
    main()
