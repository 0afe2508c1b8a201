"""Benchmark: forced-alignment accuracy and cost against espeak-ng's own word timings.

    .venv/bin/python benchmarks/align_accuracy.py [--utterances 100] [--seed 0]
        [--aligner pocketsphinx|whisperx|nemo] [--model PATH] [--device cpu] [--write]

Synthesises the demo corpus (`jstip.synth.synthesize_corpus`: random voices, rates and pitches,
reference word timings in word_timings.jsonl), normalises it to 16 kHz FLAC (`normalize_shard`), aligns
it with `align_shard` and compares every aligned word with its reference:
- start/end error: |aligned - reference| in ms, mean and median; the signed mean (bias) too, since a
  constant offset is cheap to fix and says something different from scatter;
- % of boundaries within 20/50/100 ms; % of the corpus's words aligned; failed utterances by check;
- x real time per core: seconds of audio / CPU seconds of this process for `align_shard`, which reads
  the FLACs itself (audio I/O included); all threads' CPU time counts, so multi-threaded backends are
  charged for every core they use;
- peak RSS of this process, which imports jstip, reads the FLACs and aligns (resource.getrusage);
  synthesis and normalisation (silero-vad, torch) run in a child process and are not counted.

Reference caveats (see jstip.synth): starts are espeak's WORD events (to the sample), which for a
stop-initial word lie at the start of the closure silence (up to ~50 ms before the burst; TIMIT's word
labels put stop-initial words there too) and for an unvoiced-fricative- or h-initial word after a pause
11-14 ms before its first non-zero sample; ends are where espeak's output energy stops, to the sample.
The reference is exact for the audio it describes, but it is synthetic speech.

Time conventions compared (`--window-start-times`): pocketsphinx boundaries at the midpoint between frame
centres (jstip.tasks.aligners.pocketsphinx._FrameClock, the default) or at window starts (jstip before issue 16).

Any backend runs (`--aligner whisperx --model DIR`); accuracy means something only for a real model.
With --write (pocketsphinx only, by design) the figures go into BENCHMARKS.md, section
"align accuracy (pocketsphinx)".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import REPO, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def _reference(path: Path) -> dict[tuple[str, int], tuple[float, float]]:
    ref = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for w in row["words"]:
                ref[(row["utterance_id"], w["word_index"])] = (w["start"], w["end"])
    return ref


def prepare_corpus(out: Path, utterances: int, seed: int):
    """Synthesise, ingest and normalise (run in a child process: its memory is not the aligner's)."""
    from jstip.config import NormalizeConfig
    from jstip.tasks.ingest import ingest_manifest
    from jstip.tasks.normalize import normalize_shard
    from jstip.synth import synthesize_corpus

    synth = synthesize_corpus(out / "corpus", utterances=utterances, seed=seed, text_sentences=0)
    ingested = ingest_manifest(synth.nemo_manifest)
    assert ingested.quarantine.num_rows == 0, ingested.quarantine.column("reason").to_pylist()
    normalized = normalize_shard(ingested.utterances, out / "audio", NormalizeConfig(), corpus_root=ingested.corpus_root)
    assert normalized.quarantine.num_rows == 0, normalized.quarantine.column("reason").to_pylist()
    return ingested.utterances, normalized.normalized_audio, synth.word_timings, synth.audio_seconds


def _accuracy(result, reference: dict) -> dict:
    words = result.word_alignments.select(["utterance_id", "word_index", "start", "end"]).to_pylist()
    got = np.array([(w["start"], w["end"]) for w in words]).reshape(-1, 2)
    ref = np.array([reference[(w["utterance_id"], w["word_index"])] for w in words]).reshape(-1, 2)
    signed = (got - ref) * 1000
    err = np.abs(signed)
    failed = result.status.filter(result.status.column("status").to_numpy(zero_copy_only=False) == "failed")
    stat = (lambda f, col: float(f(err[:, col])) if len(err) else float("nan"))
    return dict(
        aligned_words=len(words), failures=dict(Counter(failed.column("check_name").to_pylist())),
        start_mean=stat(np.mean, 0), start_median=stat(np.median, 0), end_mean=stat(np.mean, 1),
        end_median=stat(np.median, 1),
        start_bias=float(signed[:, 0].mean()) if len(err) else float("nan"),
        end_bias=float(signed[:, 1].mean()) if len(err) else float("nan"),
        within={t: tuple(float((err[:, c] <= t).mean() * 100) if len(err) else float("nan") for c in (0, 1))
                for t in (20, 50, 100)},
    )


def _timed(align_shard, utterances, audio, config, aligner) -> tuple:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = align_shard(utterances, audio, config, aligner)
    return result, time.process_time() - cpu0, time.perf_counter() - wall0


def _one_recording(utterances, audio, reference: dict, out: Path):
    """All normalised utterances back to back in one FLAC, its transcript, and references shifted to it."""
    import pyarrow as pa
    import soundfile as sf

    pieces, texts, shifted, offset = [], [], {}, 0
    paths = dict(zip(audio.column("utterance_id").to_pylist(), audio.column("flac_path").to_pylist()))
    index = 0
    for utt_id, text in zip(utterances.column("utterance_id").to_pylist(), utterances.column("text").to_pylist()):
        pcm, rate = sf.read(paths[utt_id], dtype="int16")
        k = 0
        while (utt_id, k) in reference:
            start, end = reference[(utt_id, k)]
            shifted[("recording", index)] = (start + offset / rate, end + offset / rate)
            index, k = index + 1, k + 1
        pieces.append(pcm)
        texts.append(text)
        offset += len(pcm)
    path = out / "recording.flac"
    sf.write(path, np.concatenate(pieces), rate, subtype="PCM_16", format="FLAC")
    table = pa.table({"utterance_id": ["recording"], "text": [" ".join(texts)]})
    audio_table = pa.table({"utterance_id": ["recording"], "flac_path": [str(path)]})
    return table, audio_table, shifted, offset / rate


def measure(utterances: int, seed: int, align_config, long_recording: bool) -> dict:
    from jstip.tasks.align import align_shard
    from jstip.tasks.aligners import make_aligner

    with tempfile.TemporaryDirectory(prefix="jstip-align-bench-") as tmp:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            utterance_table, audio_table, timings_path, audio_s = pool.submit(
                prepare_corpus, Path(tmp), utterances, seed).result()
        reference = _reference(timings_path)

        t0 = time.perf_counter()
        aligner = make_aligner(align_config)  # pocketsphinx makes its decoder on first use (~0.1 s)
        load_s = time.perf_counter() - t0
        result, cpu_s, wall_s = _timed(align_shard, utterance_table, audio_table, align_config, aligner)
        m = dict(backend=aligner.name, utterances=utterances, seed=seed, audio_s=audio_s, ref_words=len(reference),
                 load_s=load_s, cpu_s=cpu_s, wall_s=wall_s, **_accuracy(result, reference),
                 peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
        if long_recording:
            table, audio_one, shifted, seconds = _one_recording(utterance_table, audio_table, reference, Path(tmp))
            result, cpu_s, wall_s = _timed(align_shard, table, audio_one, align_config, aligner)
            m["long"] = dict(audio_s=seconds, cpu_s=cpu_s, wall_s=wall_s, **_accuracy(result, shifted),
                             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return m


def report(m: dict, command: str, max_chunk_s: float) -> str:
    runs = [("utterances", m)] + ([("one recording", m["long"])] if "long" in m else [])
    header = "| | " + " | ".join(f"{name}: word start | {name}: word end" for name, _ in runs) + " |"
    rule = "|---|" + "---|---|" * len(runs)

    def row(label, fmt, key_s, key_e):
        return f"| {label} | " + " | ".join(f"{fmt(r[key_s])} | {fmt(r[key_e])}" for _, r in runs) + " |"

    lines = [header, rule,
             row("mean abs error, ms", "{:.1f}".format, "start_mean", "end_mean"),
             row("median abs error, ms", "{:.1f}".format, "start_median", "end_median"),
             row("mean signed error (bias), ms", "{:+.1f}".format, "start_bias", "end_bias")]
    for t in (20, 50, 100):
        lines.append(f"| within {t} ms | " + " | ".join(f"{r['within'][t][0]:.1f}% | {r['within'][t][1]:.1f}%"
                                                       for _, r in runs) + " |")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out = [f"`{command}`\n",
           f"{m['utterances']} synthetic utterances (seed {m['seed']}), {m['audio_s']:.0f} s of audio, {m['ref_words']} "
           f"words; backend {m['backend']}, AlignConfig defaults otherwise; {machine}. Reference: espeak-ng word "
           "events (starts) and espeak output energy (ends), see jstip.synth.\n",
           "\n".join(lines) + "\n"]
    for name, r in runs:
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(r["failures"].items())) or "none"
        what = ("each utterance on its own" if name == "utterances" else
                f"all of them back to back as one {r['audio_s']:.0f} s utterance (windows of <= {max_chunk_s:g} s)")
        out.append(f"- {name} ({what}): words aligned {r['aligned_words']} of {m['ref_words']} "
                   f"({r['aligned_words'] / max(m['ref_words'], 1):.1%}); failed: {failures}; "
                   f"{r['audio_s'] / r['cpu_s']:.0f}x real time per core (CPU {r['cpu_s']:.1f} s, wall "
                   f"{r['wall_s']:.1f} s, FLAC reading included); peak RSS after it {r['peak_rss_mib']:.0f} MiB")
    out.append(f"- aligner construction (not in the times above): {m['load_s']:.1f} s. RSS is this process's "
               "(imports, FLAC reading, alignment); the corpus is synthesised and normalised (silero-vad, torch) "
               "in a child process.\n")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aligner", default="pocketsphinx", choices=("pocketsphinx", "whisperx", "nemo"))
    parser.add_argument("--model", default=None, help="whisperx: dir of a Wav2Vec2ForCTC; nemo: a .nemo file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--long", action=argparse.BooleanOptionalAction, default=None,
                        help="also align all utterances as one recording (default: pocketsphinx only)")
    parser.add_argument("--write", action="store_true",
                        help="record the figures in BENCHMARKS.md (pocketsphinx only)")
    parser.add_argument("--window-start-times", action="store_true",
                        help="pocketsphinx: read frame times at the analysis window's start, as jstip did before "
                             "the frame-time convention was worked out (section 'align accuracy (pocketsphinx, "
                             "window-start times)')")
    args = parser.parse_args()
    if args.window_start_times:
        from jstip.tasks.aligners import pocketsphinx as align

        class WindowStart(align._FrameClock):  # noqa: N801 - the old convention, for comparison only
            def __init__(self, frate, wlen, duration):
                super().__init__(frate, wlen, duration)
                self.offset = 0.0

        align._FrameClock = WindowStart
    if args.write and args.aligner != "pocketsphinx":
        parser.error("--write records the pocketsphinx section only; accuracy of other backends depends on "
                     "the model given, so record it by hand with the model named")

    from jstip.config import AlignConfig

    config = AlignConfig(aligner=args.aligner, model=args.model, device=args.device)
    long_recording = args.aligner == "pocketsphinx" if args.long is None else args.long
    m = measure(args.utterances, args.seed, config, long_recording)
    command = (f".venv/bin/python benchmarks/align_accuracy.py --utterances {args.utterances}"
               f"{f' --seed {args.seed}' if args.seed else ''}"
               f"{f' --aligner {args.aligner} --model {args.model}' if args.aligner != 'pocketsphinx' else ''}"
               f"{' --long' if args.long and args.aligner != 'pocketsphinx' else ''}"
               f"{' --no-long' if args.long is False else ''}"
               f"{' --window-start-times' if args.window_start_times else ''}"
               f"{' --write' if args.write else ''}")
    body = report(m, command, config.max_chunk_s)
    print(body)
    if args.write:
        write_section("align accuracy (pocketsphinx" + (", window-start times)" if args.window_start_times else ")"),
                      body)
        print(f"wrote {REPO / 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
