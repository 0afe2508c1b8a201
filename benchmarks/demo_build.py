"""Benchmark: the demo build, cold (fresh store) and warm (unchanged rerun, every shard cached).

    .venv/bin/python benchmarks/demo_build.py [--utterances 50] [--write]

Prints wall times and audio throughput; with --write, records them in BENCHMARKS.md (section "demo build").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _report import REPO, write_section

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

SECTION = "demo build"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()

    from jstip.flows.build_interleaved import build_interleaved
    from jstip.synth import synthesize_corpus

    with tempfile.TemporaryDirectory(prefix="jstip-bench-") as tmp:
        t0 = time.perf_counter()
        synth = synthesize_corpus(Path(tmp) / "corpus", utterances=args.utterances, seed=0)
        synth_s = time.perf_counter() - t0

        store = str(Path(tmp) / "data")
        kwargs = dict(manifest=str(synth.cuts), store=store, text_corpus=str(synth.text_corpus))
        t0 = time.perf_counter()
        cold = build_interleaved(**kwargs)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = build_interleaved(**kwargs)
        warm_s = time.perf_counter() - t0
        assert warm.version_id == cold.version_id

    audio_s = synth.audio_seconds
    rows = [
        ("synthesise corpus", synth_s, f"{audio_s / synth_s:.0f}x real time"),
        ("build, cold store (incl. Prefect server start)", cold_s, f"{audio_s / cold_s:.1f}x real time"),
        ("build, unchanged rerun (all shards cached)", warm_s, f"{warm_s / cold_s:.0%} of cold"),
    ]
    table = "| step | wall s | rate |\n|---|---|---|\n" + "\n".join(f"| {n} | {s:.1f} | {r} |" for n, s, r in rows)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    body = (f"`.venv/bin/python benchmarks/demo_build.py --utterances {args.utterances} --write`\n\n"
            f"{args.utterances} synthetic utterances, {audio_s:.0f} s of audio, demo config (pocketsphinx, "
            f"shard_size 16, 2 threads); {machine}.\n\n{table}\n")
    print(body)
    if args.write:
        write_section(SECTION, body)
        print(f"wrote {REPO / 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
