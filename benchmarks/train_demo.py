"""Benchmark: train the default CPU speech-LLM on a larger synthetic corpus for a time budget, and plot its
loss curve (issue #9).

    .venv/bin/python benchmarks/train_demo.py [--utterances 400] [--seed 0] [--strategy mixed]
        [--steps N | --minutes M] [--batch-size 8] [--out benchmarks/out/train_demo] [--write]

Steps: synthesise `--utterances` espeak-ng utterances (medical/banking, jstip.synth) plus their domain
text corpus; build one dataset version in process (jstip.tasks.stages.build_in_process; plan strategy
`--strategy`, default mixed so that the interleaved, asr and text pools are all non-empty); train the
default model (jstip.model.config.TrainConfig defaults: conv encoder + character CTC head + tiny
Llama-style LM built from the version's text, batch 8) for `--steps` (default: TrainConfig's, the demo's),
or, with `--minutes M`, for as many steps as fit M minutes at the rate of a short calibration run
(`--calibration-steps`, a separate model whose steps are not counted). The learning-rate schedule needs
the step count up front, hence the calibration rather than stopping on the clock; the steps chosen are
printed, and `--steps N` reproduces that model. On a shared machine the calibration is only as good as the
load during its few seconds, which is why a fixed step count is the default.

Writes to `--out`: loss_curve.csv (the train_log.csv rows plus moving averages of loss and llm_loss),
loss_curve.png (raw and smoothed loss and llm_loss vs step; loss = llm_loss + ctc_weight x ctc_loss) and
summary.json. The dataset store is a temporary directory unless `--store` names one.

Peak RSS is this process's maximum resident set (resource.getrusage; the espeak-ng synthesis runs in a
child process and is not included); it is read after the build and again after training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import REPO, write_section  # noqa: E402  (benchmarks/ is the script's directory)

SECTION = "train demo"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "train_demo"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def read_log(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def write_curve(rows: list[dict], out: Path, window: int, title: str) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    llm = [float(r["llm_loss"]) for r in rows]
    loss_s, llm_s = moving_average(loss, window), moving_average(llm, window)
    csv_path = out / "loss_curve.csv"
    with csv_path.open("w", newline="") as f:
        fields = list(rows[0].keys()) + ["loss_smoothed", "llm_loss_smoothed"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r, a, b in zip(rows, loss_s, llm_s):
            writer.writerow({**r, "loss_smoothed": round(a, 6), "llm_loss_smoothed": round(b, 6)})

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(steps, loss, color="tab:blue", alpha=0.2, linewidth=0.8, label="loss (per step)")
    ax.plot(steps, loss_s, color="tab:blue", linewidth=1.8, label=f"loss ({window}-step mean)")
    ax.plot(steps, llm, color="tab:orange", alpha=0.2, linewidth=0.8, label="llm_loss (per step)")
    ax.plot(steps, llm_s, color="tab:orange", linewidth=1.4, linestyle="--", label=f"llm_loss ({window}-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / label token)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = out / "loss_curve.png"
    fig.savefig(png_path)
    plt.close(fig)
    return csv_path, png_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (the training seed is TrainConfig's, 0)")
    parser.add_argument("--strategy", default="mixed", choices=["word", "segment", "asr", "mixed"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: TrainConfig's; "
                                                                 "ignored with --minutes)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train for about this long instead: the step count from a calibration run")
    parser.add_argument("--calibration-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smooth", type=int, default=None,
                        help="moving-average window of the plotted curve (default: steps / 40, at least 10)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--store", type=Path, default=None, help="keep the dataset store here (default: temporary)")
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()

    import torch

    from jstip.config import load_config
    from jstip.model.config import TrainConfig
    from jstip.tasks.stages import build_in_process
    from jstip.synth import synthesize_corpus
    from jstip.model.training import train

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="jstip-train-demo-") if args.store is None else None
    root = Path(tmp.name) if tmp else args.store.resolve()
    root.mkdir(parents=True, exist_ok=True)
    store = str(root / "store")
    try:
        t0 = time.perf_counter()
        synth = synthesize_corpus(root / "corpus", utterances=args.utterances, seed=args.seed)
        synth_s = time.perf_counter() - t0
        print(f"synthesised {synth.utterances} utterances ({synth.audio_seconds / 3600:.3f} h) and "
              f"{synth.text_sentences} domain sentences in {synth_s:.1f} s", flush=True)

        config = load_config(None, name=f"train-demo-{args.strategy}")
        config = config.model_copy(update={"plan": config.plan.model_copy(update={"strategy": args.strategy})})
        config = type(config).model_validate(config.model_dump())
        t0 = time.perf_counter()
        published = build_in_process(str(synth.nemo_manifest), str(synth.text_corpus), store, config)
        build_s = time.perf_counter() - t0
        rss_build = peak_rss_mib()
        print(f"built version {published.version_id}: {published.accepted} accepted of {published.ingested} "
              f"in {build_s:.1f} s", flush=True)

        base = TrainConfig(batch_size=args.batch_size)
        calibration = None
        if args.minutes is not None:
            # a throwaway model (other step count, so another model id): seconds per step after the first
            probe = base.model_copy(update={"steps": 100_000})
            probed = train(store, published.version_id, probe, name="train-demo-calibration",
                           stop_after=args.calibration_steps, on_log=lambda _: None)
            probe_log = read_log(Path(store) / "models" / probed.model_id / "train_log.csv")
            first, last = float(probe_log[0]["elapsed_s"]), float(probe_log[-1]["elapsed_s"])
            per_step = (last - first) / max(1, len(probe_log) - 1)
            steps = max(base.warmup_steps + 10, int(args.minutes * 60 / per_step) // 10 * 10)
            calibration = {"steps": len(probe_log), "seconds_per_step": round(per_step, 4)}
            print(f"calibration: {per_step * 1000:.0f} ms per step over {len(probe_log)} steps -> {steps} steps "
                  f"for {args.minutes:g} min", flush=True)
        else:
            steps = args.steps or base.steps
        config_t = base.model_copy(update={"steps": steps})
        config_t = TrainConfig.model_validate(config_t.model_dump())

        t0 = time.perf_counter()
        result = train(store, published.version_id, config_t, name="train-demo",
                       on_log=lambda m: print(m, flush=True) if "00/" in m or "trained" in m or "training" in m
                       else None)
        train_wall = time.perf_counter() - t0
        rss_train = peak_rss_mib()
        log_path = Path(store) / "models" / result.model_id / "train_log.csv"
        rows = read_log(log_path)
    finally:
        if tmp:
            tmp.cleanup()

    metrics = result.metrics
    loop_s = float(rows[-1]["elapsed_s"])
    speech_s = sum(float(r["speech_seconds"]) for r in rows)
    label_tokens = sum(int(r["label_tokens"]) for r in rows)
    pools = metrics["sequences_per_pool"]
    title = (f"default CPU speech-LLM, {args.utterances} synthetic utterances ({args.strategy}), "
             f"{steps} steps x {args.batch_size}")
    window = args.smooth or max(10, steps // 40)
    csv_path, png_path = write_curve(rows, args.out, window, title)
    summary = {
        "utterances": args.utterances, "corpus_hours": synth.audio_seconds / 3600,
        "domain_sentences": synth.text_sentences, "version_id": published.version_id, "strategy": args.strategy,
        "accepted": published.accepted, "sequences_per_pool": pools, "steps": steps,
        "batch_size": args.batch_size, "mix": config_t.mix.model_dump(), "calibration": calibration,
        "train_wall_s": train_wall, "train_loop_s": loop_s, "sequences_per_second": metrics["sequences_per_second"],
        "speech_seconds_per_second": speech_s / loop_s, "label_tokens_per_second": label_tokens / loop_s,
        "first_loss": metrics["first_loss"], "final_loss": metrics["final_loss"],
        "peak_rss_mib_after_build": rss_build, "peak_rss_mib_after_train": rss_train,
        "synth_s": synth_s, "build_s": build_s, "model_id": result.model_id, "torch_threads": torch.get_num_threads(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    argv = [a for a in sys.argv[1:] if a != "--write"]
    command = " ".join(["python benchmarks/train_demo.py", *map(shlex.quote, argv), "--write"]).replace(
        "python", ".venv/bin/python", 1)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"torch {torch.__version__} on {torch.get_num_threads()} threads, device {metrics['device']}")
    how = (f"{steps} steps: the most that fit {args.minutes:g} min at the calibration run's "
           f"{calibration['seconds_per_step'] * 1000:.0f} ms per step ({calibration['steps']} steps of a throwaway "
           f"model); `--steps {steps}` trains exactly this model again" if calibration
           else f"{steps} steps")
    table_rows = [
        ("corpus", f"{args.utterances} synthetic utterances (seed {args.seed}), {synth.audio_seconds / 3600:.3f} h "
                   f"of audio, {published.accepted} accepted; {synth.text_sentences} domain-text sentences"),
        ("dataset version", f"plan strategy {args.strategy} (other plan settings: defaults); built in "
                            f"{build_s:.0f} s"),
        ("sequences per pool", ", ".join(f"{k} {v}" for k, v in pools.items())),
        ("mix (sampling weights)", ", ".join(f"{k} {v}" for k, v in config_t.mix.model_dump().items())),
        ("steps x batch size", f"{steps} x {args.batch_size} ({steps * args.batch_size} sequences)"),
        ("training wall time", f"{train_wall:.0f} s ({loop_s:.0f} s in the step loop; the rest: tokenizer + "
                               "LM construction, checkpoints, saving)"),
        ("sequences / s", f"{metrics['sequences_per_second']:.1f}"),
        ("speech seconds / s", f"{speech_s / loop_s:.1f} (speech in the batches; {speech_s / 3600:.2f} h seen)"),
        ("label tokens / s", f"{label_tokens / loop_s:.0f}"),
        ("first loss -> final loss", f"{metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f} (means of the "
                                     "first / last 10 steps)"),
        ("peak RSS", f"{rss_train:.0f} MiB ({rss_build:.0f} MiB after the build, before training)"),
    ]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in table_rows)
    body = (f"`{command}`\n\nThe default CPU speech-LLM (jstip.model.config defaults: conv encoder, character CTC "
            f"head, tiny Llama-style LM with a BPE tokenizer built from the version's text) trained from scratch "
            f"(no LM prior); {how}; "
            f"{machine}. Loss curve: `{png_path.relative_to(REPO) if png_path.is_relative_to(REPO) else png_path}` "
            f"and `loss_curve.csv` beside it (not in git; rerun the command).\n\n{table}\n\n"
            "Wall times are of a shared 2-core machine: other processes running at the same time slow the step "
            "loop several-fold, so the wall time and the rates vary from run to run (the batches and the dropout "
            "of each step are seeded, so the losses of a given `--steps` do not depend on the load).\n")
    print()
    print(body)
    print(f"train_demo: {steps} steps in {train_wall:.0f} s, {metrics['sequences_per_second']:.1f} seq/s, "
          f"{speech_s / loop_s:.1f} speech s/s, loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}, "
          f"peak RSS {rss_train:.0f} MiB; {csv_path}, {png_path}")
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
