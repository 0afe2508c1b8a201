"""Benchmark: incremental builds. A full build, an unchanged rerun, and a rerun with ~1% new utterances
appended to the manifest (the nightly case), on a synthetic corpus.

    .venv/bin/python benchmarks/incremental.py [--utterances 400] [--shard-size 8] [--write]

Prints each wall time and the ratios; the target is that the +1% run costs <= 5% of the full build
beyond the fixed start-up overhead (taken as the unchanged rerun's time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import write_section  # noqa: E402  (benchmarks/ is the script's directory)

SECTION = "incremental builds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()

    from jstip.flows.build_interleaved import build_interleaved
    from jstip.synth import synthesize_corpus

    extra = max(1, round(args.utterances / 100))
    with tempfile.TemporaryDirectory(prefix="jstip-incremental-") as tmp:
        synth = synthesize_corpus(Path(tmp) / "corpus", utterances=args.utterances + extra, seed=0)
        lines = synth.nemo_manifest.read_text().splitlines()
        manifest = Path(tmp) / "manifest.jsonl"
        audio_s = sum(json.loads(line)["duration"] for line in lines[:args.utterances])

        store = str(Path(tmp) / "data")
        timings = {}
        # the nightly case: new lines appended to the same manifest file
        for label, count in (("full build", args.utterances), ("unchanged rerun", args.utterances),
                             (f"+{extra} utterances (1%)", len(lines))):
            manifest.write_text("\n".join(lines[:count]) + "\n")
            t0 = time.perf_counter()
            published = build_interleaved(manifest=str(manifest), store=store, shard_size=args.shard_size)
            timings[label] = (time.perf_counter() - t0, published)
        shards = len(list((Path(store) / "work" / "align").iterdir()))

    (full, v_full), (rerun, v_rerun), (grown_s, v_grown) = timings.values()
    assert v_rerun.version_id == v_full.version_id and v_grown.parent_version == v_full.version_id
    incremental_share = (grown_s - rerun) / (full - rerun)
    rows = [(label, s, f"{s / full:.1%} of full") for label, (s, _) in timings.items()]
    table = "| build | wall s | share |\n|---|---|---|\n" + "\n".join(f"| {a} | {b:.1f} | {c} |" for a, b, c in rows)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    body = (f"`.venv/bin/python benchmarks/incremental.py --utterances {args.utterances} --shard-size "
            f"{args.shard_size} --write`\n\n{args.utterances} synthetic utterances ({audio_s:.0f} s of audio), then "
            f"{extra} appended; demo config, shard_size {args.shard_size} ({shards} align shard results in the "
            f"cache at the end); {machine}.\n\n{table}\n\nThe +1% run beyond the fixed overhead (the unchanged "
            f"rerun): {incremental_share:.1%} of the full build's work (target <= 5%).\n")
    print(body)
    print(f"incremental: full {full:.1f} s, rerun {rerun:.1f} s, +1% {grown_s:.1f} s, "
          f"+1% beyond overhead {incremental_share:.1%} of full")
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
