"""Benchmark: the JSTIP paper's two claims, tested on synthetic medical/banking speech with intervals.

    .venv/bin/python benchmarks/jstip_ablation.py [--utterances 1200] [--test-utterances 120] [--steps 1500]
        [--seeds 3] [--workers 2] [--arms a,b] [--out benchmarks/out/jstip_ablation] [--store DIR] [--write]
    .venv/bin/python benchmarks/jstip_ablation.py --from-results benchmarks/out/jstip_ablation/results.json --write

The claims (arXiv 2607.01733, abstract):
  1. interleaved speech-text pretraining improves entity accuracy over ASR-only and over plain joint
     speech-text training;
  2. for domain adaptation, domain *text* (interleaving-ready transcription text) gives entity recognition
     on par with synthetic TTS speech-text pairs of the same sentences.

Data (jstip.synth, espeak-ng):
- training speech: `--utterances` utterances (seed 0) drawing named entities (drugs, conditions,
  procedures, clinicians, bank products, merchants) from the default lists only;
- domain text: as many sentences again from the same templates with half of the named-entity slots
  filled from NOVEL_FILLERS: entities that occur in this text but in no training audio;
- test set: `--test-utterances` utterances (seed 1000: other voices, fillers, amounts) with 30% of the
  named-entity slots novel, built as its own dataset version ("ablation-test"); it never overlaps the
  training audio;
- TTS pairs: the domain sentences spoken by espeak-ng (voices, rates, pitches drawn as for the corpus).

Model: the default CPU speech-LLM (jstip.model.config: conv encoder, character CTC head, tiny Llama-style LM)
started, in every arm and seed, from one LM prior pretrained (jstip.model.pretraining) on the training
transcripts plus general English sampled from the pocketsphinx trigram LM: so no arm's LLM has seen the
domain text or a novel entity unless its arm gives it. `--steps` steps x batch 8, `--seeds` training seeds.

Why these defaults (measured with single-seed runs of one arm at a time while choosing them): the cost of a run is
its steps, not its data, so the corpus is as large as a cheap build allows. At 400 utterances (31 min of audio)
1500 steps pass over each utterance ~30 times: the training CTC loss falls to 0.003, the encoder memorises the
training voices and asr_only (seed 0) reaches only WER 0.409 (CTC head alone 0.735) on the test set. At 1200
utterances (94 min; the word + test builds took 213 s instead of 62 s) the same 1500 steps give asr_only 0.190
and word 0.206 (CTC head alone 0.56), at the same ~200 CPU-s of training + ~30 CPU-s of decoding per run: 21
runs on 2 workers: the full run took 61.8 min (BENCHMARKS.md "JSTIP ablation").
All seven arms at seed 0: 0.18-0.22, tts_pairs 0.05. What remains is concentrated in the test utterances
with a novel entity (39 of 117): asr_only WER 0.48 there vs 0.05 on the others (the split column of the
table). A model that never heard or read the name misses it, but those names are only 56 of the 1386 test
words (~0.04 of WER): the rest is the joint search going off track around a word the LLM never read. The decoding stays the demo's (CTC weight 0.3: 0.5 and 0.7 were
worse for the 400-utterance asr_only model, 0.476 and 0.583).

Arms (dataset versions are build-config defaults except the plan; mix = sampling weights of the
interleaved / asr / text pools, jstip.model.sequence_pools):
- asr_only:    word version; asr 1
- joint:       word version; asr 0.7, text 0.3 with transcripts_as_text (plain joint speech-text training)
- word:        word-level plans (F1, Poisson(3)-word spans, eta 0.5); asr 0.7, interleaved 0.3
- segment:     segment-level plans (~3 s segments); asr 0.7, interleaved 0.3
- mixed:       per utterance word 0.4 / segment 0.4 / asr 0.2, no domain text; asr 0.7, interleaved 0.3
- domain_text: the mixed arm + every domain sentence as a text-only sequence; asr 0.7, interleaved 0.3, text 0.2
- tts_pairs:   the mixed arm on the training speech + the TTS pairs (in the asr and interleaved pools);
               asr 0.7, interleaved 0.3
Claim 1 compares word/segment/mixed (pooled: "interleaving") with asr_only and joint; claim 2 compares
domain_text with tts_pairs, on the novel entities. Only the data version and the mix differ between arms.

Scoring: every model decodes the test set greedily (LLM alone), with its CTC head alone, and jointly
(CTC/LLM beam 4, lambda 0.3: the decoding the verdicts use). Intervals are 95% percentile intervals of
a bootstrap (jstip.model.significance.bootstrap_ratios): each replicate draws the test utterances with
replacement, the same draw for every arm (paired), and each arm's training seeds with replacement; a
statistic is a ratio of sums over the drawn seeds and utterances. Verdicts (jstip.model.significance):
- claim 1: `superiority_verdict` of interleaving minus asr_only and interleaving minus joint (entity
  accuracy, all entities): reproduced if both intervals lie above 0, contradicted if either lies below 0,
  undecided otherwise;
- claim 2: `equivalence_verdict` of domain_text minus tts_pairs (entity accuracy on the novel entities:
  those with a word no training transcript contains) with margin --equivalence-margin (0.05): reproduced
  ("on par") if the interval lies within the margin, contradicted if it lies wholly outside it, undecided
  otherwise;
- a claim whose arms do not all reach WER 0.25 (joint decoding) gets no verdict ("undecided").

Runs go to worker processes (`--workers`, torch on one thread each) that die with the benchmark's process
(killed or crashed, it leaves no training process behind: _runs.worker_pool). Writes `<out>/results.json` (every
run's metrics, the intervals, the verdicts and the run's facts) and, with --write, the "JSTIP ablation"
section of BENCHMARKS.md. `--from-results` renders a saved run again without training.
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
from dataclasses import dataclass
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import REPO, write_section  # noqa: E402  (benchmarks/ is the script's directory)
from _runs import worker_pool  # noqa: E402

SECTION = "JSTIP ablation"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "jstip_ablation"
TRAIN_SEED, TEST_SEED, TTS_SEED_STREAM = 0, 1000, 7
# Share of the named-entity slots drawn from NOVEL_FILLERS: in the domain text (so every novel entity occurs
# there several times) and in the test set (enough novel occurrences for an interval, few enough that the
# arms that cannot know them still transcribe the rest: a model that never heard or read a name misses it)
DOMAIN_NOVEL_SHARE, TEST_NOVEL_SHARE = 0.5, 0.3
VERDICT_DECODING = "joint-ctc0.3-beam4"
DECODINGS = ("greedy", "ctc-greedy", VERDICT_DECODING)
WER_TARGET = 0.25
INTERLEAVING = ("word", "segment", "mixed")
METRICS = ("wer", "entity_accuracy", "novel_entity_accuracy", "wer_novel_utterances", "wer_other_utterances")
BASELINES = ("asr_only", "joint")


@dataclass(frozen=True)
class Arm:
    name: str
    version: str
    mix: dict


ARMS = (
    Arm("asr_only", "word", dict(interleaved=0.0, asr=1.0, text=0.0)),
    Arm("joint", "word", dict(interleaved=0.0, asr=0.7, text=0.3, transcripts_as_text=True)),
    Arm("word", "word", dict(interleaved=0.3, asr=0.7, text=0.0)),
    Arm("segment", "segment", dict(interleaved=0.3, asr=0.7, text=0.0)),
    Arm("mixed", "mixed", dict(interleaved=0.3, asr=0.7, text=0.0)),
    Arm("domain_text", "domtext", dict(interleaved=0.3, asr=0.7, text=0.2)),
    Arm("tts_pairs", "tts", dict(interleaved=0.3, asr=0.7, text=0.0)),
)

# plan section per version (everything else: the build config defaults); text_share 0.5 takes every
# domain sentence as a text-only sequence (as many as utterances)
VERSIONS = {
    "word": dict(strategy="word"),
    "segment": dict(strategy="segment"),
    "mixed": dict(strategy="mixed", text_share=0.0),
    "domtext": dict(strategy="mixed", text_share=0.5),
    "tts": dict(strategy="mixed", text_share=0.0),
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_config(name: str, plan_update: dict | None):
    from jstip.config import load_config

    config = load_config(None, name=name)
    if plan_update:
        data = config.model_dump()
        data["plan"].update(plan_update)
        config = type(config).model_validate(data)
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def synthesize_tts_pairs(corpus_dir: Path, sentences: list[dict], seed: int) -> list[dict]:
    """Speak each domain sentence with espeak-ng; NeMo manifest rows of the WAVs (under corpus_dir/tts)."""
    import numpy as np
    import soundfile as sf

    from jstip.synth import (EDGE_SILENCE_S, PITCH, PITCH_RANGE, RATE_WPM, VOICES, DemoUtterance,
                                   synthesize_in_fresh_process)

    scripts = []
    for j, row in enumerate(sentences):
        rng = np.random.default_rng([seed, TTS_SEED_STREAM, j])
        scripts.append(DemoUtterance(
            id=f"tts-{'med' if row['domain'] == 'medical' else 'bank'}-{j:04d}", domain=row["domain"], text=row["text"],
            entities=tuple(row["entities"]), voice=str(rng.choice(VOICES)),
            rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)), pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            lead_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            trail_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            noise_seed=int(rng.integers(1, 2**31 - 1))))
    audio_dir = corpus_dir / "tts"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for utt, synthesis in zip(scripts, synthesize_in_fresh_process(scripts)):
        sr = synthesis.sample_rate
        lead, trail = round(utt.lead_silence_s * sr), round(utt.trail_silence_s * sr)
        audio = np.concatenate([np.zeros(lead, np.int16), synthesis.samples, np.zeros(trail, np.int16)])
        wav = audio_dir / f"{utt.id}.wav"
        sf.write(wav, audio, sr, subtype="PCM_16", format="WAV")
        rows.append({"audio_filepath": str(wav), "text": utt.text, "duration": round(len(audio) / sr, 6),
                     "id": utt.id, "domain": utt.domain, "entities": list(utt.entities)})
    return rows


def run_arm(store: str, version_id: str, test_version: str, arm: dict, seed: int, steps: int, batch_size: int,
            prior_id: str) -> dict:
    """One training run of an arm and its evaluation, in a worker process (torch on one thread)."""
    from _runs import train_and_evaluate

    config = dict(steps=steps, batch_size=batch_size, seed=seed, mix=arm["mix"],
                  model={"ctc_weight": 1.0, "llm": {"path": prior_id}})
    run = train_and_evaluate(store, version_id, test_version, config, f"ablation-{arm['name']}", list(DECODINGS))
    return {"arm": arm["name"], "seed": seed, **run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=1200,
                        help="training utterances (see the docstring: why 1200)")
    parser.add_argument("--test-utterances", type=int, default=120)
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="train each arm with TrainConfig.seed 0..K-1")
    parser.add_argument("--workers", type=int, default=2, help="training runs in parallel (one core each)")
    parser.add_argument("--prior-steps", type=int, default=None, help="default: PretrainConfig's")
    parser.add_argument("--general-sentences", type=int, default=None, help="default: PretrainConfig's")
    parser.add_argument("--equivalence-margin", type=float, default=0.05,
                        help="claim 2: 'on par' means within this much entity accuracy")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--arms", default=None, help="comma-separated subset of arms (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--store", type=Path, default=None, help="keep corpora + store here (default: temporary)")
    parser.add_argument("--from-results", type=Path, default=None,
                        help="train nothing: print (and with --write record) the section of a saved results.json")
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()
    if args.from_results:
        publish(json.loads(args.from_results.read_text()), args.write)
        return

    import torch

    from jstip.model.config import PretrainConfig
    from jstip.model.pretraining import pretrain_lm
    from jstip.tasks.stages import build_in_process
    from jstip.synth import synthesize_corpus

    arms = list(ARMS)
    if args.arms:
        wanted = set(args.arms.split(","))
        unknown = wanted - {a.name for a in arms}
        if unknown:
            parser.error(f"unknown arms {sorted(unknown)}; known: {[a.name for a in arms]}")
        arms = [a for a in arms if a.name in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="jstip-ablation-") if args.store is None else None
    root = Path(tmp.name) if tmp else args.store.resolve()
    root.mkdir(parents=True, exist_ok=True)
    store = str(root / "store")
    started, cpu_started = time.perf_counter(), time.process_time()
    results: dict = {"runs": []}
    try:
        # -- data ------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        synth = synthesize_corpus(root / "corpus", utterances=args.utterances, seed=TRAIN_SEED,
                                  novel_entities=0.0, text_novel_entities=DOMAIN_NOVEL_SHARE)
        test = synthesize_corpus(root / "test_corpus", utterances=args.test_utterances, seed=TEST_SEED,
                                 novel_entities=TEST_NOVEL_SHARE, text_sentences=0)
        train_rows = read_jsonl(synth.nemo_manifest)
        test_rows = read_jsonl(test.nemo_manifest)
        domain_rows = read_jsonl(synth.out_dir / "text_corpus.jsonl")
        needed = {a.version for a in arms}
        tts_manifest, tts_seconds = None, 0.0
        if "tts" in needed:
            tts_rows = synthesize_tts_pairs(synth.out_dir, domain_rows, TRAIN_SEED)
            tts_seconds = sum(r["duration"] for r in tts_rows)
            tts_manifest = synth.out_dir / "manifest_with_tts.jsonl"
            tts_manifest.write_text("".join(json.dumps(r) + "\n" for r in train_rows + tts_rows))
        synth_s = time.perf_counter() - t0
        say(f"synthesised {len(train_rows)} training utterances ({synth.audio_seconds / 60:.1f} min), "
            f"{len(test_rows)} test utterances ({test.audio_seconds / 60:.1f} min), {len(domain_rows)} domain "
            f"sentences" + (f" and their TTS ({tts_seconds / 60:.1f} min)" if tts_manifest else "") + f" in {synth_s:.0f} s")

        t0 = time.perf_counter()
        test_version = build_in_process(str(test.nemo_manifest), None, store, build_config("ablation-test", None))
        versions = {}
        for key, plan in VERSIONS.items():
            if key not in needed and not (key == "word"):
                continue
            manifest = tts_manifest if key == "tts" else synth.nemo_manifest
            text_corpus = str(synth.text_corpus) if key == "domtext" else None
            versions[key] = build_in_process(str(manifest), text_corpus, store, build_config(f"ablation-{key}", plan))
            say(f"version {key}: {versions[key].version_id}, {versions[key].accepted} accepted of "
                f"{versions[key].ingested}, {versions[key].row_counts['interleave_plans']} plans")
        build_s = time.perf_counter() - t0
        say(f"test version {test_version.version_id}: {test_version.accepted} accepted; builds took {build_s:.0f} s")

        # -- the LM prior every arm starts from: training transcripts + general English ------------------
        t0 = time.perf_counter()
        torch.set_num_threads(max(1, args.workers))
        overrides = {k: v for k, v in (("steps", args.prior_steps), ("general_sentences", args.general_sentences))
                     if v is not None}
        prior = pretrain_lm(store, versions["word"].version_id,
                            PretrainConfig(domain_text="transcripts", **overrides), name="ablation-prior", on_log=say)
        prior_s = time.perf_counter() - t0

        # -- arms x seeds ----------------------------------------------------------------------------
        t0 = time.perf_counter()
        jobs = [(arm, seed) for seed in range(args.seeds) for arm in arms]
        with worker_pool(args.workers) as pool:
            futures = [pool.submit(run_arm, store, versions[arm.version].version_id, test_version.version_id,
                                   {"name": arm.name, "mix": arm.mix}, seed, args.steps, args.batch_size,
                                   prior.model_id) for arm, seed in jobs]
            for future in futures:
                run = future.result()
                joint = run["overall"][VERDICT_DECODING]
                say(f"{run['arm']} seed {run['seed']}: trained {run['train_wall_s']:.0f} s (CPU {run['train_cpu_s']:.0f} s), "
                    f"loss {run['first_loss']:.2f} -> {run['final_loss']:.2f}; WER greedy "
                    f"{run['overall']['greedy']['wer']:.3f}, CTC {run['overall']['ctc-greedy']['wer']:.3f}, joint "
                    f"{joint['wer']:.3f}; entity accuracy joint {joint['entity_accuracy']:.3f}")
                results["runs"].append(run)
        runs_s = time.perf_counter() - t0

        # -- what the verdicts are computed from: per-utterance counts, all entities and novel ones -----
        novel = novel_entities(train_rows, domain_rows)
        results["per_utterance"] = per_utterance_counts(results["runs"], set(novel))
        results["meta"] = dict(
            command=" ".join([".venv/bin/python benchmarks/jstip_ablation.py",
                              *map(shlex.quote, [a for a in sys.argv[1:] if a != "--write"]), "--write"]),
            utterances=args.utterances, test_utterances=args.test_utterances, steps=args.steps,
            batch_size=args.batch_size, seeds=args.seeds, workers=args.workers, resamples=args.resamples,
            equivalence_margin=args.equivalence_margin, arms=[a.name for a in arms],
            mixes={a.name: a.mix for a in arms}, train_audio_s=synth.audio_seconds, test_audio_s=test.audio_seconds,
            domain_sentences=len(domain_rows), tts_audio_s=tts_seconds,
            test_in_training=sum(r["text"] in {t["text"] for t in train_rows} for r in test_rows),
            test_in_domain_text=sum(r["text"] in {d["text"] for d in domain_rows} for r in test_rows),
            novel_entities=novel, test_entity_occurrences=sum(len(r["entities"]) for r in test_rows),
            test_novel_occurrences=sum(e in set(novel) for r in test_rows for e in r["entities"]),
            prior={"model_id": prior.model_id, **{k: prior.metrics[k] for k in (
                "domain_sentences", "general_sentences", "vocab_size", "parameters", "domain_val_loss",
                "general_val_loss", "train_seconds")}},
            test_version=test_version.version_id, versions={k: v.version_id for k, v in versions.items()},
            synth_s=synth_s, build_s=build_s, prior_s=prior_s, runs_s=runs_s,
            total_s=time.perf_counter() - started, main_cpu_s=time.process_time() - cpu_started,
            load_average_end=os.getloadavg(),
            machine=(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
                     f"{torch.__version__}, {args.workers} worker processes on 1 thread each (CPU)"))
    finally:
        if tmp:
            tmp.cleanup()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    publish(results, args.write)
    print(f"jstip_ablation: {len(arms)} arms x {args.seeds} seeds, {args.steps} steps each, "
          f"{results['meta']['total_s'] / 60:.1f} min; results in {args.out / 'results.json'}")


def novel_entities(train_rows: list[dict], domain_rows: list[dict]) -> list[str]:
    """Entities of the domain text that no training audio can teach: with a word (as scored,
    jstip.model.metrics.normalize_for_wer) that no training transcript contains. Amounts and dates made of
    words the training speech has are not novel, even when that exact amount was never spoken."""
    from jstip.model.metrics import normalize_for_wer

    heard = {w for r in train_rows for w in normalize_for_wer(r["text"]).split()}
    return sorted({e for r in domain_rows for e in r["entities"]
                   if any(w not in heard for w in normalize_for_wer(e).split())})


def per_utterance_counts(runs: list[dict], novel: set[str]) -> dict:
    """arm -> decoding -> {utterance_ids, seeds: [{metric: [numerator, denominator] per utterance}]} from the
    hypotheses each run's evaluation wrote (the same utterance order for every run)."""
    import numpy as np
    import pyarrow.parquet as pq

    from jstip.model.metrics import ratio_counts, utterance_scores

    out: dict = {}
    for run in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        for decoding, path in run["hypotheses"].items():
            table = pq.read_table(path).sort_by("utterance_id")
            rows = table.select(["utterance_id", "reference", "hypothesis", "entities"]).to_pylist()
            novel_rows = [{**r, "entities": [e for e in r["entities"] if e in novel]} for r in rows]
            counts = {}
            for metric, source in (("wer", table), ("entity_accuracy", table),
                                   ("novel_entity_accuracy", utterance_scores(novel_rows))):
                num, den = ratio_counts(source, "entity_accuracy" if metric.startswith("novel") else metric)
                counts[metric] = [num.tolist(), den.tolist()]
            # WER apart on the utterances that hold a novel entity: the joint search goes off track around a
            # word the LLM never read, so most of their errors fall outside the entity itself
            with_novel = np.array([bool(r["entities"]) for r in novel_rows])
            num, den = (np.asarray(c) for c in counts["wer"])
            counts["wer_novel_utterances"] = [(num * with_novel).tolist(), (den * with_novel).tolist()]
            counts["wer_other_utterances"] = [(num * ~with_novel).tolist(), (den * ~with_novel).tolist()]
            entry = out.setdefault(run["arm"], {}).setdefault(decoding, {"utterance_ids": [r["utterance_id"] for r in rows],
                                                                         "seeds": []})
            if entry["utterance_ids"] != [r["utterance_id"] for r in rows]:
                raise ValueError(f"run {run['model_id']} was scored on other utterances than the first run of {run['arm']}")
            entry["seeds"].append(counts)
    return out


def analyse(results: dict) -> dict:
    """Intervals for every arm and the claims' differences, and the verdicts, from the per-utterance counts."""
    import numpy as np

    from jstip.model.significance import bootstrap_ratios, equivalence_verdict, percentile_interval, superiority_verdict

    meta, counts = results["meta"], results["per_utterance"]
    arms = [a for a in meta["arms"] if a in counts]
    out: dict = {"arms": {}, "claims": {}}

    def groups(metric: str, decoding: str) -> dict:
        g = {}
        for arm in arms:
            seeds = counts[arm][decoding]["seeds"]
            g[arm] = (np.array([s[metric][0] for s in seeds]), np.array([s[metric][1] for s in seeds]))
        pooled = [a for a in INTERLEAVING if a in g]
        if pooled:  # the interleaving arms as one system whose "seeds" are all their runs
            g["interleaving"] = (np.concatenate([g[a][0] for a in pooled]), np.concatenate([g[a][1] for a in pooled]))
        return g

    def value(num, den) -> float:
        return float(num.sum() / den.sum()) if den.sum() else float("nan")

    reps: dict = {}
    for decoding in DECODINGS:
        # (results saved before the split WER was recorded have no wer_*_utterances)
        for metric in [m for m in METRICS if m in counts[arms[0]][decoding]["seeds"][0]]:
            g = groups(metric, decoding)
            reps[decoding, metric] = (g, bootstrap_ratios(g, resamples=meta["resamples"], seed=0))
            for name, (num, den) in g.items():
                iv = percentile_interval(value(num, den), reps[decoding, metric][1][name])
                out["arms"].setdefault(name, {}).setdefault(decoding, {})[metric] = iv.__dict__

    def difference(metric: str, a: str, b: str):
        g, r = reps[VERDICT_DECODING, metric]
        return percentile_interval(value(*g[a]) - value(*g[b]), r[a] - r[b])

    def transcribe(names) -> bool:  # a comparison of models that do not transcribe tests nothing
        return all(out["arms"][n][VERDICT_DECODING]["wer"]["value"] <= WER_TARGET for n in names)

    if "interleaving" in out["arms"] and all(b in arms for b in BASELINES):
        diffs = {b: difference("entity_accuracy", "interleaving", b) for b in BASELINES}
        per_variant = {f"{v} - {b}": difference("entity_accuracy", v, b).__dict__
                       for v in INTERLEAVING if v in arms for b in BASELINES}
        gated = transcribe([*INTERLEAVING, *BASELINES])
        out["claims"]["interleaving"] = {
            "verdict": superiority_verdict(list(diffs.values())) if gated else "undecided",
            "transcribe": gated,
            "differences": {f"interleaving - {b}": d.__dict__ for b, d in diffs.items()},
            "per_variant": per_variant,
            "wer_differences": {f"interleaving - {b}": difference("wer", "interleaving", b).__dict__ for b in BASELINES}}
    if "domain_text" in arms and "tts_pairs" in arms:
        novel = difference("novel_entity_accuracy", "domain_text", "tts_pairs")
        gated = transcribe(["domain_text", "tts_pairs"])
        out["claims"]["domain_text"] = {
            "verdict": equivalence_verdict(novel, meta["equivalence_margin"]) if gated else "undecided",
            "transcribe": gated,
            "difference": {"domain_text - tts_pairs": novel.__dict__},
            "all_entities": {"domain_text - tts_pairs": difference("entity_accuracy", "domain_text", "tts_pairs").__dict__},
            "vs_mixed": {"domain_text - mixed": difference("novel_entity_accuracy", "domain_text", "mixed").__dict__}
            if "mixed" in arms else {}}
    return out


def publish(results: dict, write: bool) -> None:
    """Print the BENCHMARKS.md section of a run's results (and record it with `write`)."""
    results["analysis"] = analyse(results)
    body = render(results)
    print()
    print(body)
    if write:
        write_section(SECTION, body)


def _iv(d: dict, digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def _diff(d: dict) -> str:
    return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def render(results: dict) -> str:
    meta, analysis, runs = results["meta"], results["analysis"], results["runs"]
    arms = [a for a in meta["arms"] if a in analysis["arms"]]

    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    split = "wer_novel_utterances" in analysis["arms"][arms[0]][VERDICT_DECODING]
    rows = []
    for arm in arms + (["interleaving"] if "interleaving" in analysis["arms"] else []):
        a = analysis["arms"][arm]
        arm_runs = [r for r in runs if r["arm"] in (INTERLEAVING if arm == "interleaving" else (arm,))]
        cells = [arm if arm != "interleaving" else "interleaving (word+segment+mixed pooled)",
                 _iv(a[VERDICT_DECODING]["wer"]), _iv(a[VERDICT_DECODING]["entity_accuracy"]),
                 _iv(a[VERDICT_DECODING]["novel_entity_accuracy"]), f"{a['greedy']['wer']['value']:.3f}",
                 f"{a['ctc-greedy']['wer']['value']:.3f}",
                 *([f"{a[VERDICT_DECODING]['wer_novel_utterances']['value']:.3f} / "
                    f"{a[VERDICT_DECODING]['wer_other_utterances']['value']:.3f}"] if split else []),
                 "" if arm == "interleaving" else f"{mean([r['train_cpu_s'] for r in arm_runs]):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    worst = max(analysis["arms"][a][VERDICT_DECODING]["wer"]["value"] for a in arms)
    per_seed = {a: [r["overall"][VERDICT_DECODING]["wer"] for r in runs if r["arm"] == a] for a in arms}
    worst_seed = max(w for ws in per_seed.values() for w in ws)
    lines = []
    claim1 = analysis["claims"].get("interleaving")
    if claim1:
        d = claim1["differences"]
        lines.append(f"**Claim 1, interleaving beats ASR-only and joint training on entity accuracy: "
                     f"{claim1['verdict'].upper()}.** Entity accuracy, interleaving minus asr_only "
                     f"{_diff(d['interleaving - asr_only'])}, minus joint {_diff(d['interleaving - joint'])} "
                     f"(reproduced needs both intervals above 0; contradicted, either below 0). Per variant: "
                     + "; ".join(f"{k} {_diff(v)}" for k, v in claim1["per_variant"].items())
                     + ("" if claim1["transcribe"] else
                        f". Not all of these arms reach WER {WER_TARGET}: no verdict (models that do not transcribe "
                        "test nothing)")
                     + ". WER, interleaving minus asr_only "
                     f"{_diff(claim1['wer_differences']['interleaving - asr_only'])}, minus joint "
                     f"{_diff(claim1['wer_differences']['interleaving - joint'])}.")
    claim2 = analysis["claims"].get("domain_text")
    if claim2:
        d = claim2["difference"]["domain_text - tts_pairs"]
        margin = meta["equivalence_margin"]
        lines.append(f"**Claim 2, domain text is on par with TTS pairs for entities known only from that text: "
                     f"{claim2['verdict'].upper()}.** Novel-entity accuracy, domain_text minus tts_pairs {_diff(d)} "
                     f"(on par = the interval within ±{margin}; contradicted = wholly outside it). All entities: "
                     f"{_diff(claim2['all_entities']['domain_text - tts_pairs'])}"
                     + (f"; domain_text minus mixed (what the text adds), novel entities "
                        f"{_diff(claim2['vs_mixed']['domain_text - mixed'])}" if claim2.get("vs_mixed") else "")
                     + ("" if claim2["transcribe"] else f". Not both arms reach WER {WER_TARGET}: no verdict")
                     + ". The TTS pairs are spoken by the same synthesiser and voices as the test set, which favours "
                       "them far more than real test speech would.")
    lines.append(f"Every arm's WER (joint decoding, all seeds pooled): at most {worst:.3f}; worst single run "
                 f"{worst_seed:.3f} (target <= {WER_TARGET}). Greedy (the LLM alone) and CTC-greedy (the CTC head "
                 "alone) show what each half of the model contributes; the joint search is the model's decoding.")
    prior = meta["prior"]
    pools = "; ".join(f"{a} " + "/".join(str(v) for v in next(r for r in runs if r["arm"] == a)["sequences_per_pool"].values())
                      for a in arms)
    load = ", ".join(f"{x:.1f}" for x in meta["load_average_end"])
    return f"""`{meta['command']}`

Data: {meta['utterances']} synthetic medical/banking training utterances ({meta['train_audio_s'] / 60:.1f} min of audio, default entity lists only); domain text: {meta['domain_sentences']} sentences from the same templates, {DOMAIN_NOVEL_SHARE:.0%} of their named-entity slots drawn from a list no training utterance draws from ({TEST_NOVEL_SHARE:.0%} in the test set); novel entities, those with a word no training transcript has: {len(meta['novel_entities'])} ({', '.join(meta['novel_entities'])}); TTS pairs: those sentences spoken by espeak-ng ({meta['tts_audio_s'] / 60:.1f} min). Test set: {meta['test_utterances']} held-out utterances (seed {TEST_SEED}, {meta['test_audio_s'] / 60:.1f} min) with {meta['test_entity_occurrences']} entity occurrences, {meta['test_novel_occurrences']} of them novel (in the domain text, in no training audio); test transcripts also among the training transcripts: {meta['test_in_training']}, in the domain text: {meta['test_in_domain_text']}.

Model: the default CPU speech-LLM (conv encoder, character CTC head with ctc_weight 1.0, tiny Llama-style LM), every run started from one LM prior (`jstip pretrain-lm`: {prior['parameters']:,} parameters, vocabulary {prior['vocab_size']}, pretrained on the {prior['domain_sentences']} distinct training transcripts + {prior['general_sentences']} general English sentences sampled from the pocketsphinx trigram LM; no domain text, no novel entity); {meta['steps']} steps x batch {meta['batch_size']}, training seeds 0..{meta['seeds'] - 1} per arm. Mix weights (interleaved / asr / text): {'; '.join(f"{a} {m.get('interleaved', 0)}/{m.get('asr', 0)}/{m.get('text', 0)}" + (' (text = transcripts)' if m.get('transcripts_as_text') else '') for a, m in meta['mixes'].items())}. Sequences per pool: {pools}.

Intervals: 95% percentile bootstrap, {meta['resamples']} replicates, over test utterances (paired across arms) and training seeds (per arm). Decoding: joint CTC/LLM beam 4, lambda 0.3 (greedy and CTC-greedy WER beside it). {meta['machine']}; whole run {meta['total_s'] / 60:.1f} min (synthesis {meta['synth_s']:.0f} s, builds {meta['build_s']:.0f} s, LM prior {meta['prior_s']:.0f} s, {len(runs)} runs {meta['runs_s'] / 60:.1f} min); load average at the end {load} (the machine was shared: wall times vary with load, CPU seconds less).

| arm | WER | entity accuracy | novel-entity accuracy | WER greedy (LLM alone) | WER CTC-greedy |{' WER on utterances with a novel entity / the others |' if split else ''} train CPU s per run |
|---|---|---|---|---|---|{'---|' if split else ''}---|
{chr(10).join(rows)}

{chr(10).join('- ' + line for line in lines)}
"""


if __name__ == "__main__":
    main()
