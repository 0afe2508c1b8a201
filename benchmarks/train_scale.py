"""Training throughput on 1 and 2 processes (torchrun, DDP over gloo on CPU): sequences/s and speech-seconds/s.

    .venv/bin/python benchmarks/train_scale.py [--utterances 100] [--steps 40] [--batch-size 16] [--repeats 3] [--write]

Steps: synthesise `--utterances` espeak-ng utterances and their domain text (jstip.synth), build one
dataset version in process (plan strategy mixed: interleaved, asr and text pools), then train the default CPU
speech-LLM (jstip.model.config defaults: conv encoder, character CTC head, tiny Llama-style LM) for `--steps`
steps of a global batch of `--batch-size` sequences, each run through the entry point users run
(`python -m torch.distributed.run --nproc-per-node N -m jstip train`) on a store of its own:

| run | processes x torch threads | global batch |
|---|---|---|
| 1 process, 2 threads | 1 x 2 | B |
| 1 process, 1 thread  | 1 x 1 | B |
| 2 processes (DDP)    | 2 x 1 | B (B/2 per rank) |
| 1 process, half batch | 1 x 1 | B/2: one rank's share of the work, without the other rank |

Each process has one DataLoader worker (the default `loader.workers`), which decodes the batch's FLAC spans
while the step runs. The rates come from the step loop (train_log.csv: `elapsed_s`, `sequences`,
`speech_seconds`), after `--skip` warm-up steps; the whole run's wall time (process start, imports, the
tiny LM and sequence index, checkpoints) is shown apart. The difference between the 2-process step and the
half-batch step is what data parallelism adds to a rank's step here: the all-reduce of the gradients (the
model's trainable parameters, fp32) and of the batch counts, and the two ranks sharing the machine's memory
bandwidth and its 2 cores with the loader workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import write_section  # noqa: E402  (benchmarks/ is the script's directory)

SECTION = "training scale (1 and 2 processes)"
RUNS = (  # name, processes, threads per process, share of the global batch per step
    ("1 process, 2 threads", 1, 2, 1.0),
    ("1 process, 1 thread", 1, 1, 1.0),
    ("2 processes (DDP), 1 thread each", 2, 1, 1.0),
    ("1 process, 1 thread, half batch", 1, 1, 0.5),
)


def run_one(store: Path, version: str, config_path: Path, processes: int, threads: int) -> dict:
    from jstip.storage.registry import ModelRegistry
    from jstip.model.distributed import LaunchSpec, launch_command, run_launcher

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    lines: list[str] = []
    started = time.perf_counter()
    run_launcher(launch_command(LaunchSpec(nproc_per_node=processes),
                                ["train", "--store", str(store), "--version", version, "--config", str(config_path)]),
                 lines.append, env=env)
    wall = time.perf_counter() - started
    (model,) = ModelRegistry(store).models()
    with (model.path.parent / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {"wall_s": wall, "rows": rows, "metrics": model.metrics, "model_id": model.model_id}


def _median_run(runs: list[dict]) -> dict:
    """The run of median step time, with the range of sequences/s over all runs."""
    ordered = sorted(runs, key=lambda r: r["step_ms"])
    median = dict(ordered[len(ordered) // 2])
    median["range"] = (min(r["sequences_per_s"] for r in runs), max(r["sequences_per_s"] for r in runs))
    median["loads"] = [r["load"] for r in runs]
    median["repeats"] = len(runs)
    return median


def rates(rows: list[dict], skip: int) -> dict:
    """Throughput of steps skip+1 .. last (elapsed_s is cumulative from the loop's start)."""
    measured = rows[skip:]
    seconds = float(rows[-1]["elapsed_s"]) - float(rows[skip - 1]["elapsed_s"]) if skip else float(rows[-1]["elapsed_s"])
    sequences = sum(int(r["sequences"]) for r in measured)
    speech = sum(float(r["speech_seconds"]) for r in measured)
    wait = sum(float(r["data_wait_s"] or 0) for r in measured)
    return {"steps": len(measured), "seconds": seconds, "step_ms": 1000 * seconds / len(measured),
            "sequences_per_s": sequences / seconds, "speech_s_per_s": speech / seconds,
            "data_wait_share": wait / seconds, "sequences": sequences, "speech_s": speech}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (sequences per step)")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the rates")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the 4 runs; the median run is reported")
    parser.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = parser.parse_args()
    if args.batch_size % 2:
        parser.error("--batch-size must be even (it is split over 2 processes)")

    import torch

    from jstip.config import load_config
    from jstip.model.config import TrainConfig
    from jstip.tasks.stages import build_in_process
    from jstip.synth import synthesize_corpus

    root = Path(tempfile.mkdtemp(prefix="train_scale-"))
    try:
        synth = synthesize_corpus(root / "corpus", utterances=args.utterances, seed=args.seed)
        config = load_config(None, name="train-scale")
        config = config.model_copy(update={"plan": config.plan.model_copy(update={"strategy": "mixed"})})
        built = time.perf_counter()
        published = build_in_process(str(synth.nemo_manifest), str(synth.text_corpus), str(root / "store"), config)
        build_s = time.perf_counter() - built
        measured: dict[str, list[dict]] = {name: [] for name, *_ in RUNS}
        for round_ in range(args.repeats):  # rounds of every run, so that a burst of load hits all of them alike
            for name, processes, threads, share in RUNS:
                batch = int(args.batch_size * share)
                train_config = root / f"train-{batch}.yaml"
                train_config.write_text(json.dumps({"steps": args.steps, "batch_size": batch,
                                                    "checkpoint_every": args.steps, "log_every": args.steps}))
                store = root / f"store-{round_}-{processes}-{threads}-{batch}"
                shutil.copytree(root / "store", store, symlinks=True)
                run = run_one(store, published.version_id, train_config, processes, threads)
                r = rates(run["rows"], args.skip)
                measured[name].append({"name": name, "processes": processes, "threads": threads, "batch": batch,
                                       "wall_s": run["wall_s"], "load": os.getloadavg()[0], **r})
                print(f"round {round_ + 1}, {name}: batch {batch}, {r['step_ms']:.0f} ms/step, "
                      f"{r['sequences_per_s']:.1f} sequences/s, {r['speech_s_per_s']:.1f} speech-s/s, data wait "
                      f"{100 * r['data_wait_share']:.1f}% (run wall {run['wall_s']:.1f} s)", flush=True)
                shutil.rmtree(store, ignore_errors=True)
        results = [_median_run(runs) for runs in measured.values()]
        trainable = _trainable_parameters(published, root / "store")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    by_name = {r["name"]: r for r in results}
    two = by_name["2 processes (DDP), 1 thread each"]
    half = by_name["1 process, 1 thread, half batch"]
    one = by_name["1 process, 1 thread"]
    overhead_ms = two["step_ms"] - half["step_ms"]
    speedup = two["sequences_per_s"] / one["sequences_per_s"]
    print(f"2 processes vs 1 (1 thread each): x{speedup:.2f} sequences/s; a rank's step {two['step_ms']:.0f} ms "
          f"vs {half['step_ms']:.0f} ms for its half batch alone (+{overhead_ms:.0f} ms: all-reduce of "
          f"{trainable / 1e6:.2f} M fp32 gradients and sharing the machine)")
    command = (f".venv/bin/python benchmarks/train_scale.py --utterances {args.utterances} --steps {args.steps} "
               f"--batch-size {args.batch_size} --repeats {args.repeats} --write")
    body = _markdown(results, args, command, build_s, trainable, overhead_ms, speedup,
                     torch.__version__, TrainConfig().loader.workers)
    if args.write:
        write_section(SECTION, body)
    print(f"train_scale: 1 process {one['sequences_per_s']:.1f} seq/s {one['speech_s_per_s']:.1f} speech-s/s; "
          f"2 processes {two['sequences_per_s']:.1f} seq/s {two['speech_s_per_s']:.1f} speech-s/s; "
          f"speedup x{speedup:.2f}; ddp overhead {overhead_ms:.0f} ms/step")


def _trainable_parameters(published, store: Path) -> int:
    """Trainable parameters of the default model on this version's text (what DDP all-reduces each step)."""
    from jstip.model.config import TrainConfig
    from jstip.model.speech_llm import build_speech_llm
    from jstip.model.tiny_lm import build_tiny_lm
    from jstip.storage.store import DatasetStore
    from jstip.model.sequence_pools import build_sequences

    config = TrainConfig()
    pools = build_sequences(DatasetStore(store), published.version_id, config.mix, config.asr_prompt)
    llm = store / "bench-llm"
    build_tiny_lm(llm, pools.texts, config.model.llm.tiny, seed=config.seed)
    model = build_speech_llm(config.model, llm, seed=config.seed)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _markdown(results, args, command, build_s, trainable, overhead_ms, speedup, torch_version, workers) -> str:
    lines = [
        f"`{command}`",
        "",
        f"The default CPU speech-LLM ({trainable / 1e6:.2f} M trainable parameters) on {args.utterances} synthetic "
        f"utterances (plan strategy mixed; built in {build_s:.0f} s), {args.steps} steps of a global batch of "
        f"{args.batch_size} sequences, rates over steps {args.skip + 1}-{args.steps}; each run through torchrun "
        f"(`python -m torch.distributed.run --nproc-per-node N -m jstip train`), gloo, {workers} DataLoader worker "
        f"per process; {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch_version}. No GPU in this session: nothing here is a GPU figure.",
        "",
        f"Each run {results[0]['repeats']} times, in rounds of all four; the median run (by step time) is shown, "
        "with the range of sequences/s over the repeats and the 1-minute load average after each repeat.",
        "",
        "| run | global batch | ms / step | sequences / s (range) | speech-seconds / s | step waiting for data | "
        "run wall | load average after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        low, high = r["range"]
        lines.append(f"| {r['name']} | {r['batch']} | {r['step_ms']:.0f} | {r['sequences_per_s']:.1f} "
                     f"({low:.1f}-{high:.1f}) | {r['speech_s_per_s']:.1f} | {100 * r['data_wait_share']:.1f}% | "
                     f"{r['wall_s']:.0f} s | {', '.join(f'{x:.1f}' for x in r['loads'])} |")
    lines += [
        "",
        f"2 processes against 1 process of 1 thread: x{speedup:.2f} sequences/s. A rank's step took "
        f"{overhead_ms:.0f} ms more than the same half batch trained alone: the all-reduce of "
        f"{trainable / 1e6:.2f} M fp32 gradients ({4 * trainable / 2**20:.1f} MiB) and of the step's counts over "
        "gloo, and two ranks plus their loader workers sharing 2 cores. The run wall time adds process start, "
        "imports, the tiny LM and the sequence index, checkpoints and the final model.",
        "",
        "Wall times are of a 2-core machine shared with other sessions (the 1-minute load average after each run "
        "is shown); rates vary with that load from run to run. Two torch threads in one process are much slower "
        "than one here: an operation's OpenMP threads wait for each other, and with the cores shared one of "
        "them is often descheduled. Give a process as many threads "
        "(`OMP_NUM_THREADS`) as cores it really has; torchrun sets 1 per process when it starts several.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
