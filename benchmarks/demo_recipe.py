"""Benchmark: what made the demo model transcribe. The demo's training recipe built up one change at a
time, each variant trained and scored on the same held-out test set (issue #17).

    .venv/bin/python benchmarks/demo_recipe.py [--utterances 400] [--test-utterances 40] [--workers 2]
        [--out benchmarks/out/demo_recipe] [--store DIR] [--write]
    .venv/bin/python benchmarks/demo_recipe.py --from-results benchmarks/out/demo_recipe/results.json --write

Data: the demo corpus (jstip.synth seed 0, with its domain text) at `--utterances`, and at the size
the demo had before (50); the demo's held-out test set (seed 1000, `--test-utterances`). Versions use the
demo build config (word-level plans).

Variants, each the one before plus one change (the last is the demo's default, jstip.model.config):
- before:      the demo before issue #17: 50 utterances, 300 steps, no CTC head, mix interleaved 0.5 / asr
               0.3 / text 0.2, a tiny LM built from scratch on the version's text
- more data:   `--utterances` utterances, 1000 steps
- token CTC:   + a CTC head on the LLM's tokens (ctc_weight 1) and joint CTC/LLM decoding
- char CTC:    + the CTC head on characters instead (jstip.model.ctc)
- ASR-heavy:   + mix interleaved 0.3 / asr 0.7 / text 0 (more of the inference format, no text-only steps)
- LM prior:    + the LLM started from an LM prior (jstip pretrain-lm on the version's domain text and
               transcripts + 20,000 general English sentences): the demo's recipe
Every variant is decoded greedily (LLM alone), with beam 4, with its CTC head alone and jointly (when it has
a CTC head); the table gives each decoding's WER and the best decoding's entity accuracy, and for each
change the paired difference in WER of the best decoding against the variant before it (95% bootstrap
interval over the test utterances; one training seed, so training noise is not in it).

The LM prior's effect (issue #17: the same run with and without it) is measured on more seeds: the last two
variants are trained with seeds 0..`--prior-seeds`-1, and their differences (WER and entity accuracy of the
joint decoding, WER of the LLM alone) get intervals from a bootstrap over test utterances (paired) and
training seeds (jstip.model.significance.bootstrap_ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import REPO, write_section  # noqa: E402  (benchmarks/ is the script's directory)
from _runs import train_and_evaluate  # noqa: E402

SECTION = "demo recipe: what made the model transcribe"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "demo_recipe"
OLD_UTTERANCES, OLD_STEPS = 50, 300
OLD_MIX = dict(interleaved=0.5, asr=0.3, text=0.2)


def variants(steps: int, prior: str) -> list[tuple[str, str, str, dict]]:
    """(name, change, corpus: small | full, TrainConfig dict)."""
    old = dict(mix=OLD_MIX, model={"ctc_weight": 0.0})
    token = dict(mix=OLD_MIX, model={"ctc_weight": 1.0, "ctc_units": "llm_tokens"}, steps=steps)
    char = dict(mix=OLD_MIX, model={"ctc_weight": 1.0, "ctc_units": "characters"}, steps=steps)
    asr = dict(char, mix=dict(interleaved=0.3, asr=0.7, text=0.0))
    return [
        ("before", f"the demo before: {OLD_UTTERANCES} utterances, {OLD_STEPS} steps, no CTC head", "small",
         dict(old, steps=OLD_STEPS)),
        ("more data", f"the full corpus, {steps} steps", "full", dict(old, steps=steps)),
        ("token CTC", "+ CTC head on LLM tokens, joint decoding", "full", token),
        ("char CTC", "+ CTC head on characters", "full", char),
        ("ASR-heavy", "+ mix 0.3 / 0.7 / 0 (interleaved / asr / text)", "full", asr),
        ("LM prior", "+ LLM started from the LM prior (the demo's recipe)", "full",
         dict(asr, model={**asr["model"], "llm": {"path": prior}})),
    ]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--test-utterances", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's (TrainConfig().steps)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prior-seeds", type=int, default=3, help="seeds of the runs without / with the LM prior")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--from-results", type=Path, default=None)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.from_results:
        publish(json.loads(args.from_results.read_text()), args.write)
        return

    import torch

    from jstip.config import load_config
    from jstip.model.config import TrainConfig
    from jstip.model.pretraining import pretrain_lm
    from jstip.tasks.stages import build_in_process
    from jstip.synth import synthesize_corpus

    steps = args.steps or TrainConfig().steps
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="jstip-demo-recipe-") if args.store is None else None
    root = Path(tmp.name) if tmp else args.store.resolve()
    store = str(root / "store")
    started = time.perf_counter()
    try:
        corpora = {"small": synthesize_corpus(root / "small", utterances=OLD_UTTERANCES, seed=0),
                   "full": synthesize_corpus(root / "full", utterances=args.utterances, seed=0)}
        test = synthesize_corpus(root / "test", utterances=args.test_utterances, seed=1000, text_sentences=0)
        versions = {k: build_in_process(str(c.nemo_manifest), str(c.text_corpus), store, load_config(None, name=f"demo-{k}"))
                    for k, c in corpora.items()}
        test_version = build_in_process(str(test.nemo_manifest), None, store, load_config(None, name="demo-test"))
        say(f"versions: {', '.join(f'{k} {v.version_id} ({v.accepted} utterances)' for k, v in versions.items())}, "
            f"test {test_version.version_id} ({test_version.accepted})")
        torch.set_num_threads(max(1, args.workers))
        prior = pretrain_lm(store, versions["full"].version_id, on_log=say)
        runs = []
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            plan = variants(steps, prior.model_id)
            jobs = [(v, seed) for i, v in enumerate(plan)
                    for seed in range(args.prior_seeds if i >= len(plan) - 2 else 1)]
            futures = [pool.submit(train_and_evaluate, store, versions[corpus].version_id, test_version.version_id,
                                   dict(config, seed=seed), "recipe") for (_, _, corpus, config), seed in jobs]
            for ((name, change, corpus, config), seed), future in zip(jobs, futures):
                run = future.result()
                runs.append({"variant": name, "change": change, "corpus": corpus, "config": config, "seed": seed, **run})
                say(f"{name} seed {seed}: " + ", ".join(f"{d} WER {o['wer']:.3f}" for d, o in run["overall"].items()))
        meta = dict(
            command=" ".join([".venv/bin/python benchmarks/demo_recipe.py",
                              *map(shlex.quote, [a for a in sys.argv[1:] if a != "--write"]), "--write"]),
            utterances=args.utterances, test_utterances=args.test_utterances, steps=steps,
            audio_s={k: c.audio_seconds for k, c in corpora.items()}, test_audio_s=test.audio_seconds,
            prior={"model_id": prior.model_id, **prior.metrics}, total_s=time.perf_counter() - started,
            load_average_end=os.getloadavg(),
            machine=(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
                     f"{torch.__version__}, {args.workers} worker processes on 1 thread each (CPU)"))
        results = {"meta": meta, "runs": runs}
        results["comparisons"] = compare([r for r in runs if r["seed"] == 0])
        results["prior_effect"] = prior_effect([r for r in runs if r["variant"] == "ASR-heavy"],
                                               [r for r in runs if r["variant"] == "LM prior"])
    finally:
        if tmp:
            tmp.cleanup()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    publish(results, args.write)


def best_decoding(run: dict) -> str:
    return min(run["overall"], key=lambda d: run["overall"][d]["wer"])


def compare(runs: list[dict]) -> list[dict | None]:
    """Per variant after the first: the paired WER difference of its best decoding against the variant
    before's best decoding (the hypotheses files must still exist: run before the store is removed)."""
    import pyarrow.parquet as pq

    from jstip.model.significance import paired_comparison

    out: list[dict | None] = [None]
    for before, after in zip(runs, runs[1:]):
        a = pq.read_table(after["hypotheses"][best_decoding(after)])
        b = pq.read_table(before["hypotheses"][best_decoding(before)])
        out.append(paired_comparison(a, b, "wer").as_dict())
    return out


def prior_effect(without: list[dict], with_prior: list[dict]) -> dict:
    """with minus without, over seeds and test utterances (paired), per metric and decoding."""
    import numpy as np
    import pyarrow.parquet as pq

    from jstip.model.metrics import ratio_counts
    from jstip.model.significance import bootstrap_ratios, percentile_interval

    out = {"seeds": [len(without), len(with_prior)]}
    for decoding, metric in (("joint-ctc0.3-beam4", "wer"), ("joint-ctc0.3-beam4", "entity_accuracy"),
                             ("greedy", "wer")):
        groups = {}
        for name, runs in (("without", without), ("with", with_prior)):
            counts = [ratio_counts(pq.read_table(r["hypotheses"][decoding]).sort_by("utterance_id"), metric)
                      for r in runs]
            groups[name] = (np.stack([c[0] for c in counts]), np.stack([c[1] for c in counts]))
        reps = bootstrap_ratios(groups, resamples=2000)
        value = {k: float(n.sum() / d.sum()) for k, (n, d) in groups.items()}
        out[f"{decoding} {metric}"] = {
            "without": value["without"], "with": value["with"],
            "difference": percentile_interval(value["with"] - value["without"], reps["with"] - reps["without"]).__dict__}
    return out


def publish(results: dict, write: bool) -> None:
    body = render(results)
    print()
    print(body)
    if write:
        write_section(SECTION, body)


def render(results: dict) -> str:
    meta, runs = results["meta"], results["runs"]
    decodings = ["greedy", "beam4", "ctc-greedy", "joint-ctc0.3-beam4"]
    rows = []
    for run, comparison in zip([r for r in runs if r["seed"] == 0], results["comparisons"]):
        best = best_decoding(run)
        cells = [run["variant"], run["change"]]
        cells += [f"{run['overall'][d]['wer']:.3f}" if d in run["overall"] else "" for d in decodings]
        cells += [f"{run['overall'][best]['entity_accuracy']:.3f} ({best})"]
        if comparison:
            d = comparison["difference"]
            cells.append(f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        else:
            cells.append("")
        cells.append(f"{run['train_cpu_s']:.0f}")
        rows.append("| " + " | ".join(cells) + " |")
    prior = meta["prior"]
    load = ", ".join(f"{x:.1f}" for x in meta["load_average_end"])
    effect = results["prior_effect"]
    effect_lines = "\n".join(
        f"| {key.replace('joint-ctc0.3-beam4', 'joint').replace('greedy', 'greedy (LLM alone)')} | {e['without']:.3f} | "
        f"{e['with']:.3f} | {e['difference']['value']:+.3f} [{e['difference']['low']:+.3f}, {e['difference']['high']:+.3f}] |"
        for key, e in effect.items() if key != "seeds")
    return f"""`{meta['command']}`

The demo's training recipe, one change at a time, each variant trained once (seed 0) and scored on the same held-out test set ({meta['test_utterances']} utterances, {meta['test_audio_s'] / 60:.1f} min, seed 1000). Corpora: the demo corpus at {OLD_UTTERANCES} utterances ({meta['audio_s']['small'] / 60:.1f} min) and at {meta['utterances']} ({meta['audio_s']['full'] / 60:.1f} min). The LM prior: {prior['parameters']:,} parameters, vocabulary {prior['vocab_size']}, {prior['domain_sentences']} domain sentences + {prior['general_sentences']} general English sentences, held-out loss {prior['domain_val_loss']:.2f} (domain) / {prior['general_val_loss']:.2f} (general) nats per token. WER per decoding (greedy and beam4: the LLM alone; ctc-greedy: the CTC head alone; joint: CTC + LLM beam 4, lambda 0.3); entity accuracy of the best decoding; the change's effect: the WER difference of the best decoding against the variant before, with its 95% paired-bootstrap interval over test utterances. {meta['machine']}; whole run {meta['total_s'] / 60:.1f} min, load average at the end {load} (a shared machine: CPU seconds are steadier than wall time).

| variant | change | WER greedy | WER beam4 | WER ctc-greedy | WER joint | entity accuracy (best) | WER change [95%] | train CPU s |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The LM prior's effect, the same runs without and with it ({effect['seeds'][0]} and {effect['seeds'][1]} training seeds; intervals over test utterances, paired, and seeds):

| decoding, metric | without the prior | with it | with minus without [95%] |
|---|---|---|---|
{effect_lines}
"""


if __name__ == "__main__":
    main()
