"""Benchmark: a miniature of the JSTIP paper's comparison (issue #7). The same speech-LLM, step budget and
seed trained on the synthetic medical/banking corpus in seven ways, each scored on one held-out test set.

    .venv/bin/python benchmarks/jstip_ablation.py [--utterances 240] [--test-utterances 40] [--steps N]
        [--seeds 1] [--ctc-weight 0] [--out benchmarks/out/jstip_ablation] [--store DIR] [--write]

Data
- training corpus: `--utterances` espeak-ng utterances (jstip.tasks.synth, seed 0), alternately medical
  and banking; its domain text is the corpus's text_corpus.tsv: as many sentences again, drawn from the
  same templates (with other fillers), none of them a training transcript.
- test set: `--test-utterances` utterances synthesised with seed 1000 (other voices, fillers, entities),
  built as its own dataset version with the default build config; every arm is scored on it.
- TTS pairs: the domain-text sentences spoken by espeak-ng (voice, rate, pitch and edge silences drawn
  per sentence from the same ranges as the corpus, seeded), appended to the training manifest.

Dataset versions (jstip.tasks.stages.build_in_process; build config defaults except the plan):
- word:    strategy word (word-level F1 interleaving, Poisson(3)-word spans, eta 0.5)
- segment: strategy segment (segments of ~3 s, F1)
- mixed:   strategy mixed (per utterance word 0.4 / segment 0.4 / asr 0.2) + domain text at text_share 0.1
- domtext: strategy mixed with per-utterance probabilities word 1 / segment 0 / asr 0 (i.e. the word
           version's plans) + the domain text at text_share 0.5, which takes every domain sentence
- tts:     strategy word on the training manifest + the TTS pairs (no domain text plans)

Arms: same TrainConfig (defaults: conv encoder + tiny Llama-style LM, batch 8, lr 2e-3, `--steps`) except
for `mix` (sampling weights of the pools interleaved / asr / text; jstip.tasks.sequences):
- asr_only:    word version; asr 1 (prompt + whole utterance -> transcript)
- joint:       word version; asr 1, text 1 with transcripts_as_text (the transcripts as LM text as well:
               plain, non-interleaved joint speech-text training)
- word:        word version; interleaved 0.5, asr 0.5
- segment:     segment version; interleaved 0.5, asr 0.5
- mixed:       mixed version; interleaved 0.4, asr 0.4, text 0.2 (text = its domain-text sentences)
- domain_text: domtext version; interleaved 0.4, asr 0.4, text 0.2 (word-level interleaving + all the
               domain text as text-only sequences)
- tts_pairs:   tts version; interleaved 0.4, asr 0.4 (word-level interleaving; the same domain sentences as
               speech, in both the asr and the interleaved pool)
And `mixed_ctc`: the mixed arm with model.ctc_weight 0.3 (a CTC head trained jointly), decoded LLM-only
(beam 4) and jointly (CTC/LLM beam 4, lambda 0.3), for the second table.

`--ctc-weight W` (default 0) gives every arm a CTC head of weight W instead: then there is no separate
mixed_ctc arm, every arm is also decoded jointly (beam 4, lambda 0.3; two more columns), the second table
is the mixed arm's, and the BENCHMARKS.md section is "JSTIP ablation (ctc_weight W in every arm)".

The tiny LM's tokenizer is trained on the text of every pool of the version the arm trains on (its mix
weights aside), so arms on different versions also differ in their tokenizer. Every arm is evaluated with
greedy and beam-4 decoding (jstip.tasks.evaluate; the results also go to the catalog's eval_results).
With `--seeds K` each arm is trained with TrainConfig.seed 0..K-1 (same data) and the means are reported.

Writes `<out>/results.json` (every metric of every arm, seed and decoding, plus the run's facts) and, with
--write, the "JSTIP ablation" section of BENCHMARKS.md. `--from-results <out>/results.json [--write]`
trains nothing and renders the section of a saved run again (e.g. after a change to the report's wording).
"""

from __future__ import annotations

import argparse
import json
import math
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

SECTION = "JSTIP ablation"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "jstip_ablation"
TRAIN_SEED, TEST_SEED, TTS_SEED_STREAM = 0, 1000, 7
LEARNED_WER = 0.8  # an arm whose WER is above this everywhere has not learned to transcribe


@dataclass(frozen=True)
class Arm:
    name: str
    version: str
    mix: dict
    ctc_weight: float = 0.0


ARMS = (
    Arm("asr_only", "word", dict(interleaved=0.0, asr=1.0, text=0.0)),
    Arm("joint", "word", dict(interleaved=0.0, asr=1.0, text=1.0, transcripts_as_text=True)),
    Arm("word", "word", dict(interleaved=0.5, asr=0.5, text=0.0)),
    Arm("segment", "segment", dict(interleaved=0.5, asr=0.5, text=0.0)),
    Arm("mixed", "mixed", dict(interleaved=0.4, asr=0.4, text=0.2)),
    Arm("domain_text", "domtext", dict(interleaved=0.4, asr=0.4, text=0.2)),
    Arm("tts_pairs", "tts", dict(interleaved=0.4, asr=0.4, text=0.0)),
)
CTC_ARM = Arm("mixed_ctc", "mixed", dict(interleaved=0.4, asr=0.4, text=0.2), ctc_weight=0.3)

# plan section updates per version (everything else: the build config defaults)
VERSIONS = {
    "word": dict(strategy="word"),
    "segment": dict(strategy="segment"),
    "mixed": dict(strategy="mixed"),
    "domtext": dict(strategy="mixed", mixed=dict(word=1.0, segment=0.0, asr=0.0), text_share=0.5),
    "tts": dict(strategy="word"),
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_config(name: str, plan_update: dict | None):
    from jstip.config import load_config

    config = load_config(None, name=name)
    if plan_update:
        data = config.model_dump()
        for key, value in plan_update.items():
            if isinstance(value, dict):
                data["plan"][key].update(value)
            else:
                data["plan"][key] = value
        config = type(config).model_validate(data)
    return config


def domain_sentences(text_corpus: Path, count: int, seed: int, spoken: set[str]) -> list[tuple[str, str, list[str]]]:
    """(domain, sentence, entities) of text_corpus.tsv. The entities are recovered by drawing the sentences
    again the way jstip.tasks.synth.text_corpus_sentences does; a sentence that does not match gets none."""
    import numpy as np

    from jstip.tasks.synth import DOMAINS, compose_sentence

    lines = [line.split("\t", 1) for line in text_corpus.read_text(encoding="utf-8").splitlines() if line]
    drawn, seen, draw = [], set(spoken), 0
    while len(drawn) < count and draw < 20 * count + 1000:
        rng = np.random.default_rng([seed, 1, draw])
        draw += 1
        text, entities = compose_sentence(DOMAINS[len(drawn) % 2], rng)
        if text not in seen:
            seen.add(text)
            drawn.append((text, entities))
    entity_of = {text: entities for text, entities in drawn}
    return [(domain, sentence, list(entity_of.get(sentence, []))) for domain, sentence in lines]


def synthesize_tts_pairs(corpus_dir: Path, sentences: list[tuple[str, str, list[str]]], seed: int) -> list[dict]:
    """Speak each domain sentence with espeak-ng; NeMo manifest rows of the WAVs (under corpus_dir/tts)."""
    import numpy as np
    import soundfile as sf

    from jstip.tasks.synth import (EDGE_SILENCE_S, PITCH, PITCH_RANGE, RATE_WPM, VOICES, DemoUtterance,
                                   synthesize_in_fresh_process)

    scripts = []
    for j, (domain, text, entities) in enumerate(sentences):
        rng = np.random.default_rng([seed, TTS_SEED_STREAM, j])
        scripts.append(DemoUtterance(
            id=f"tts-{'med' if domain == 'medical' else 'bank'}-{j:04d}", domain=domain, text=text,
            entities=tuple(entities), voice=str(rng.choice(VOICES)),
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


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=240)
    parser.add_argument("--test-utterances", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1, help="train each arm with TrainConfig.seed 0..K-1")
    parser.add_argument("--ctc-weight", type=float, default=0.0,
                        help="model.ctc_weight of every arm (0: none, plus the separate mixed_ctc arm)")
    parser.add_argument("--arms", default=None, help="comma-separated subset of arms (default: all + mixed_ctc)")
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

    from jstip.model.config import MixConfig, SpeechLLMConfig, TrainConfig
    from jstip.model.decode import DecodeOptions
    from jstip.tasks.evaluate import evaluate
    from jstip.tasks.stages import build_in_process
    from jstip.tasks.synth import synthesize_corpus
    from jstip.tasks.train import train

    if args.ctc_weight > 0:
        arms = [Arm(a.name, a.version, a.mix, ctc_weight=args.ctc_weight) for a in ARMS]
    else:
        arms = list(ARMS) + [CTC_ARM]
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
    started = time.perf_counter()
    results: dict = {"arms": {}}
    try:
        # -- data ------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        synth = synthesize_corpus(root / "corpus", utterances=args.utterances, seed=TRAIN_SEED)
        test = synthesize_corpus(root / "test_corpus", utterances=args.test_utterances, seed=TEST_SEED,
                                 text_sentences=0)
        train_lines = synth.nemo_manifest.read_text().splitlines()
        spoken = {json.loads(line)["text"] for line in train_lines}
        test_texts = [json.loads(line)["text"] for line in test.nemo_manifest.read_text().splitlines()]
        sentences = domain_sentences(synth.text_corpus, synth.text_sentences, TRAIN_SEED, spoken)
        needed = {a.version for a in arms}
        tts_manifest, tts_seconds = None, 0.0
        if "tts" in needed:
            tts_rows = synthesize_tts_pairs(synth.out_dir, sentences, TRAIN_SEED)
            tts_seconds = sum(r["duration"] for r in tts_rows)
            tts_manifest = synth.out_dir / "manifest_with_tts.jsonl"
            tts_manifest.write_text("\n".join(train_lines + [json.dumps(r) for r in tts_rows]) + "\n")
        say(f"synthesised {synth.utterances} training utterances ({synth.audio_seconds / 60:.1f} min), "
            f"{test.utterances} test utterances ({test.audio_seconds / 60:.1f} min), {len(sentences)} domain "
            f"sentences" + (f" and their TTS ({tts_seconds / 60:.1f} min)" if tts_manifest else "")
            + f" in {time.perf_counter() - t0:.0f} s")
        overlap_text = sum(t in {s for _, s, _ in sentences} for t in test_texts)
        overlap_train = sum(t in spoken for t in test_texts)

        t0 = time.perf_counter()
        test_version = build_in_process(str(test.nemo_manifest), None, store, build_config("ablation-test", None))
        versions = {}
        for key in VERSIONS:
            if key not in needed:
                continue
            manifest = tts_manifest if key == "tts" else synth.nemo_manifest
            versions[key] = build_in_process(str(manifest), str(synth.text_corpus), store,
                                             build_config(f"ablation-{key}", VERSIONS[key]))
            say(f"version {key}: {versions[key].version_id}, {versions[key].accepted} accepted of "
                f"{versions[key].ingested}, {versions[key].row_counts['interleave_plans']} plans")
        build_s = time.perf_counter() - t0
        say(f"test version {test_version.version_id}: {test_version.accepted} accepted; builds took {build_s:.0f} s")

        # -- arms ------------------------------------------------------------------------------------
        for arm in arms:
            per_seed = []
            for seed in range(args.seeds):
                config = TrainConfig.model_validate(dict(
                    steps=args.steps, batch_size=args.batch_size, seed=seed, mix=MixConfig(**arm.mix).model_dump(),
                    model=SpeechLLMConfig(ctc_weight=arm.ctc_weight).model_dump()))
                say(f"arm {arm.name} seed {seed}: training {args.steps} steps on version {arm.version} ...")
                t0 = time.perf_counter()
                trained = train(store, versions[arm.version].version_id, config, name=f"ablation-{arm.name}",
                                on_log=lambda _: None)
                train_s = time.perf_counter() - t0
                decodings = [DecodeOptions(beam_size=1), DecodeOptions(beam_size=4)]
                if arm.ctc_weight > 0:
                    decodings.append(DecodeOptions(beam_size=4, ctc_weight=0.3))
                t0 = time.perf_counter()
                report = evaluate(store, trained.model_id, test_version.version_id, test_set="ablation-test",
                                  decodings=decodings, on_log=lambda _: None)
                eval_s = time.perf_counter() - t0
                per_seed.append({"seed": seed, "model_id": trained.model_id, "train_s": train_s, "eval_s": eval_s,
                                 "first_loss": trained.metrics["first_loss"],
                                 "final_loss": trained.metrics["final_loss"],
                                 "sequences_per_pool": trained.metrics["sequences_per_pool"],
                                 "overall": report.overall})
                b4 = report.overall["beam4"]
                say(f"arm {arm.name} seed {seed}: trained {train_s:.0f} s (loss {trained.metrics['first_loss']:.2f} "
                    f"-> {trained.metrics['final_loss']:.2f}), evaluated {eval_s:.0f} s: WER greedy "
                    f"{report.overall['greedy']['wer']:.3f} beam4 {b4['wer']:.3f}, entity acc {b4['entity_accuracy']:.3f}"
                    + (f"; joint CTC WER {report.overall['joint-ctc0.3-beam4']['wer']:.3f} entity acc "
                       f"{report.overall['joint-ctc0.3-beam4']['entity_accuracy']:.3f}" if arm.ctc_weight else ""))
            results["arms"][arm.name] = per_seed
    finally:
        if tmp:
            tmp.cleanup()
    total_s = time.perf_counter() - started

    argv = [a for a in sys.argv[1:] if a != "--write"]
    results["meta"] = dict(
        command=" ".join([".venv/bin/python benchmarks/jstip_ablation.py", *map(shlex.quote, argv), "--write"]),
        utterances=args.utterances, test_utterances=args.test_utterances, steps=args.steps,
        batch_size=args.batch_size, seeds=args.seeds, ctc_weight=args.ctc_weight,
        train_audio_s=synth.audio_seconds, test_audio_s=test.audio_seconds, domain_sentences=len(sentences),
        tts_audio_s=tts_seconds, test_in_training=overlap_train, test_in_domain_text=overlap_text,
        total_s=total_s, build_s=build_s, test_version=test_version.version_id,
        versions={k: v.version_id for k, v in versions.items()},
        machine=(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
                 f"{torch.__version__} on {torch.get_num_threads()} threads (CPU)"))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    publish(results, args.write)
    print(f"jstip_ablation: {len(results['arms'])} arms x {args.seeds} seed(s), "
          f"{args.steps} steps each, {total_s / 60:.1f} min; results in {args.out / 'results.json'}")


def publish(results: dict, write: bool) -> None:
    """Print the BENCHMARKS.md section of a run's results (and record it with `write`)."""
    title, body = render(results)
    print()
    print(body)
    if write:
        write_section(title, body)


def render(results: dict) -> tuple[str, str]:
    """(section title, section body) of a run's results.json."""
    meta = results["meta"]

    def avg(runs, decoding, metric):
        return mean([r["overall"][decoding].get(metric, float("nan")) for r in runs])

    def spread(runs, decoding, metric):
        values = [r["overall"][decoding][metric] for r in runs]
        return max(values) - min(values)

    some_run = next(iter(results["arms"].values()))[0]["overall"]["beam4"]
    entity_n, ref_words = some_run["entity_occurrences"], some_run["ref_words"]
    joint = "joint-ctc0.3-beam4"
    all_ctc = meta["ctc_weight"] > 0
    ctc_arm = "mixed" if all_ctc else CTC_ARM.name
    main_arms = {name: runs for name, runs in results["arms"].items() if name != CTC_ARM.name}
    rows = []
    for name, runs in main_arms.items():
        rows.append((name, avg(runs, "greedy", "wer"), avg(runs, "beam4", "wer"), avg(runs, "beam4", "entity_accuracy"),
                     avg(runs, "beam4", "eer"), avg(runs, "beam4", "hallucination_rate"),
                     mean([r["final_loss"] for r in runs]), mean([r["train_s"] for r in runs]))
                    + ((avg(runs, joint, "wer"), avg(runs, joint, "entity_accuracy")) if all_ctc else ()))
    extra = " WER joint CTC | entity acc. joint CTC |" if all_ctc else ""
    table = (f"| arm | WER greedy | WER beam4 | entity acc. beam4 | EER beam4 | hallucination rate beam4 | "
             f"final train loss | train s |{extra}\n|---|---|---|---|---|---|---|---|{'---|---|' if all_ctc else ''}\n")
    table += "\n".join("| " + " | ".join([row[0]] + [f"{v:.3f}" for v in row[1:7]] + [f"{row[7]:.0f}"]
                                          + [f"{v:.3f}" for v in row[8:]]) + " |" for row in rows)
    ctc_table = ""
    if ctc_arm in results["arms"]:
        runs = results["arms"][ctc_arm]
        ctc_table = (f"| decoding ({ctc_arm} arm, ctc_weight {meta['ctc_weight'] if all_ctc else CTC_ARM.ctc_weight:g}) | "
                     "WER | entity acc. | EER | insertions | hallucination rate |\n|---|---|---|---|---|---|\n")
        for decoding in runs[0]["overall"]:
            ctc_table += (f"| {decoding} | {avg(runs, decoding, 'wer'):.3f} | {avg(runs, decoding, 'entity_accuracy'):.3f} "
                          f"| {avg(runs, decoding, 'eer'):.3f} | {avg(runs, decoding, 'insertions'):.1f} | "
                          f"{avg(runs, decoding, 'hallucination_rate'):.3f} |\n")
        ctc_table += (f"\nTrained {mean([r['train_s'] for r in runs]):.0f} s, final train loss (LLM + CTC) "
                      f"{mean([r['final_loss'] for r in runs]):.3f}.\n")

    pools = "; ".join(f"{name} {'/'.join(str(v) for v in runs[0]['sequences_per_pool'].values())}"
                      for name, runs in main_arms.items())
    seeds_note = ""
    if meta["seeds"] > 1:
        parts = [f"WER beam4 {mean([spread(r, 'beam4', 'wer') for r in main_arms.values()]):.3f}",
                 f"entity acc. beam4 {mean([spread(r, 'beam4', 'entity_accuracy') for r in main_arms.values()]):.3f}"]
        if all_ctc:
            parts += [f"WER joint CTC {mean([spread(r, joint, 'wer') for r in main_arms.values()]):.3f}",
                      f"entity acc. joint CTC {mean([spread(r, joint, 'entity_accuracy') for r in main_arms.values()]):.3f}"]
        seeds_note = (f"Seed noise: the difference between the best and the worst of the {meta['seeds']} training "
                      f"seeds of one arm, averaged over the arms: {', '.join(parts)}.\n\n")
    verdict = _verdict({r[0]: r[3] for r in rows}, {r[0]: r[2] for r in rows}, entity_n, "Beam 4")
    if all_ctc:
        verdict += _verdict({r[0]: r[9] for r in rows}, {r[0]: r[8] for r in rows}, entity_n, "Joint CTC decoding")
    verdict.append("The model is tiny and trained for minutes on minutes of synthetic audio; numbers move by "
                   "several points with the training seed, so read them as a smoke test of the comparison, "
                   "not as evidence for or against the paper.")
    ctc_note = (f"Every arm here has a CTC head (model.ctc_weight {meta['ctc_weight']:g}) and is also decoded jointly "
                f"(beam 4, lambda 0.3). " if all_ctc else "")
    seeds = "seed 0" if meta["seeds"] == 1 else f"means over training seeds 0..{meta['seeds'] - 1}"
    n_sent = meta["domain_sentences"]
    body = f"""`{meta['command']}`

Training corpus: {meta['utterances']} synthetic medical/banking utterances (seed {TRAIN_SEED}, {meta['train_audio_s'] / 60:.1f} min of audio) and its domain text ({n_sent} sentences from the same templates, none a training transcript). Test set: {meta['test_utterances']} held-out utterances (seed {TEST_SEED}, {meta['test_audio_s'] / 60:.1f} min, {int(ref_words)} words, {int(entity_n)} entity occurrences); test transcripts that also occur among the training transcripts: {meta['test_in_training']}, in the domain text: {meta['test_in_domain_text']}. {ctc_note}Every arm: the default CPU model (conv encoder + tiny Llama-style LM, from scratch{f", ctc_weight {meta['ctc_weight']:g}" if all_ctc else ""}), {meta['steps']} steps x batch {meta['batch_size']}, lr 2e-3, {seeds}; only the data version and the pool mix differ. {meta['machine']}; whole run {meta['total_s'] / 60:.1f} min (builds {meta['build_s']:.0f} s).

Arms (versions are build-config defaults except the plan; mix = sampling weights of the interleaved / asr / text pools):
- asr_only: word version; mix asr 1 (prompt + utterance -> transcript only).
- joint: word version; mix asr 1 + text 1 with transcripts_as_text (transcripts also as LM text; no interleaving).
- word: word-level version (F1, Poisson(3) spans, eta 0.5); mix interleaved 0.5, asr 0.5.
- segment: segment-level version (~3 s segments); mix interleaved 0.5, asr 0.5.
- mixed: mixed version (per utterance word 0.4 / segment 0.4 / asr 0.2, domain text at text_share 0.1); mix interleaved 0.4, asr 0.4, text 0.2.
- domain_text: mixed strategy with word 1 / segment 0 / asr 0 (word-level plans) + all {n_sent} domain sentences as text-only sequences (text_share 0.5); mix interleaved 0.4, asr 0.4, text 0.2.
- tts_pairs: word version of the training manifest plus the same {n_sent} domain sentences spoken by espeak-ng ({meta['tts_audio_s'] / 60:.1f} min; random corpus voices), as ASR pairs and word-level plans; mix interleaved 0.4, asr 0.4.

Scored on the test version with greedy and beam-4 decoding (jstip.tasks.evaluate; {seeds}). Final train loss is the mean of the last 10 steps on each arm's own mix, so it is not comparable across arms.

{table}

{seeds_note}Sequences per pool (interleaved / asr / text) of each arm's version: {pools}.

Joint CTC/LLM decoding: {"the mixed arm" if all_ctc else "the mixed arm again with a CTC head (model.ctc_weight 0.3)"}, decoded LLM-only and with CTC prefix scores (DecodeOptions(beam_size=4, ctc_weight=0.3)):

{ctc_table}
{chr(10).join('- ' + line for line in verdict)}
"""
    title = SECTION if not all_ctc else f"{SECTION} (ctc_weight {meta['ctc_weight']:g} in every arm)"
    return title, body


def _verdict(acc: dict[str, float], wer: dict[str, float], entities: float, decoding: str) -> list[str]:
    """Plain statements on the paper's two directions for one decoding: entity accuracy (the paper's
    measure) with its sampling noise on this test set, and WER beside it. A comparison whose arms all
    have WER >= LEARNED_WER is not a test of anything: those models did not learn to transcribe."""
    lines = []
    se = lambda p: math.sqrt(max(p * (1 - p), 0.25 / entities) / entities)  # noqa: E731
    untrained = lambda names: all(wer[n] >= LEARNED_WER for n in names)  # noqa: E731
    if wer and untrained(wer):
        lines.append(f"{decoding}: no arm learned to transcribe at this budget (WER {min(wer.values()):.2f}-"
                     f"{max(wer.values()):.2f}, >= {LEARNED_WER} everywhere): the hypotheses are mostly in-domain "
                     "sentences unrelated to the audio, so neither comparison below tests the paper's claims.")
    base = [n for n in ("asr_only", "joint") if n in acc]
    inter = [n for n in ("word", "segment", "mixed") if n in acc]
    if base and inter:
        best = max(base, key=lambda n: acc[n])
        b, i = acc[best], mean([acc[n] for n in inter])
        noise = 2 * math.sqrt(2) * se((b + i) / 2)
        direction = ("reproduced" if i - b > noise else "reversed" if b - i > noise
                     else "not reproduced (the difference is within noise)")
        if untrained(base + inter):
            direction = f"not tested (all these arms have WER >= {LEARNED_WER})"
        lines.append(f"{decoding}, interleaving vs. no interleaving: entity accuracy of the interleaving arms "
                     f"(word/segment/mixed) {i:.3f} on average, of the better baseline ({best}) {b:.3f}: "
                     f"difference {i - b:+.3f}, noise (2 x the standard error of a difference on {entities:.0f} "
                     f"entities) ~{noise:.3f}; WER {mean([wer[n] for n in inter]):.3f} vs. "
                     f"{', '.join(f'{n} {wer[n]:.3f}' for n in base)}. The paper's direction (interleaving better "
                     f"on entities) is {direction}.")
    if "domain_text" in acc and "tts_pairs" in acc:
        d, t = acc["domain_text"], acc["tts_pairs"]
        noise = 2 * math.sqrt(2) * se((d + t) / 2)
        if untrained(["domain_text", "tts_pairs"]):
            outcome = f"not tested (both have WER >= {LEARNED_WER})."
        elif abs(d - t) <= noise:
            outcome = "about equal, as in the paper."
        else:
            outcome = f"{'domain text' if d > t else 'TTS pairs'} better, unlike the paper's 'about equal'."
        lines.append(f"{decoding}, domain text vs. TTS pairs: entity accuracy {d:.3f} vs. {t:.3f} (difference "
                     f"{d - t:+.3f}, noise ~{noise:.3f}), WER {wer['domain_text']:.3f} vs. {wer['tts_pairs']:.3f}: "
                     f"{outcome} (The TTS pairs come from the test set's own synthesiser and voices, which favours "
                     "them far more than real test speech would.)")
    return lines

if __name__ == "__main__":
    main()
