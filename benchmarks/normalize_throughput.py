"""Benchmark: audio normalisation throughput (x real time per core) and peak memory.

    .venv/bin/python benchmarks/normalize_throughput.py [--minutes 10] [--long] [--write]

Synthesises a set of espeak-ng utterances (speech with silence and a little noise around it, 3-20 s each)
written at mixed rates and layouts (8 kHz, 16 kHz, 22.05 kHz mono; 44.1 and 48 kHz stereo; WAV and FLAC),
then normalises it with several configurations, each in a fresh process (so its peak RSS is its own)
with torch on one thread. `--long` adds one 2-hour 48 kHz stereo WAV. With --write, records the figures
in BENCHMARKS.md (section "normalize throughput").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from _report import write_section

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

SECTION = "normalize throughput"
# (rate, channels, container, subtype), used in turn
LAYOUTS = [(8000, 1, "WAV", "PCM_16"), (16000, 1, "FLAC", "PCM_16"), (22050, 1, "WAV", "PCM_16"),
           (44100, 2, "FLAC", "PCM_16"), (48000, 2, "WAV", "PCM_24")]
CONFIGS = {
    "default (measure_speech)": {},
    "measure_speech off": {"measure_speech": False},
    "loudness -23 LUFS + trim_silence": {"loudness_lufs": -23.0, "trim_silence": True},
}


def synthesize_set(out: Path, minutes: float, seed: int = 0) -> list[dict]:
    """Utterance rows (UTTERANCES schema) of about `minutes` of speech audio in mixed layouts."""
    from jstip.tasks.aligners.espeak import synthesize
    from jstip.synth import compose_sentence

    rng = np.random.default_rng(seed)
    rows, total, i = [], 0.0, 0
    while total < minutes * 60:
        target = rng.uniform(3, 20)
        parts, length = [], 0.0
        while length < target:
            text, _ = compose_sentence(("medical", "banking")[i % 2], rng)
            speech = synthesize(text, rate=int(rng.integers(140, 220))).samples.astype(np.float32) / 32768
            gap = np.zeros(int(rng.uniform(0.2, 1.0) * 22050), np.float32)
            parts += [gap, speech]
            length += (len(gap) + len(speech)) / 22050
        audio = np.concatenate(parts + [np.zeros(int(rng.uniform(0.2, 1.0) * 22050), np.float32)])
        audio += rng.normal(0, 1e-3, len(audio)).astype(np.float32)
        rate, channels, container, subtype = LAYOUTS[i % len(LAYOUTS)]
        audio = soxr.resample(audio, 22050, rate) if rate != 22050 else audio
        if channels > 1:
            audio = np.stack([audio * 0.9, audio * 0.7], axis=1)
        path = out / f"u{i:04d}.{container.lower()}"
        sf.write(path, audio, rate, format=container, subtype=subtype)
        rows.append(dict(utterance_id=f"u{i:04d}", recording_id=f"u{i:04d}", audio_path=str(path), start=0.0,
                         duration=None, text="-", source=f"bench:{i + 1}"))
        total += len(audio) / rate
        i += 1
    return rows


def write_long(out: Path, hours: float = 2.0) -> list[dict]:
    """One 48 kHz stereo 16-bit WAV of `hours`, written a minute at a time."""
    path = out / "long_48k_stereo.wav"
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", 48000, 2, subtype="PCM_16") as f:
        for _ in range(int(hours * 60)):
            f.write(rng.normal(0, 0.05, (48000 * 60, 2)).astype(np.float32))
    return [dict(utterance_id="long", recording_id="long", audio_path=str(path), start=0.0, duration=None,
                 text="-", source="bench:long")]


def _measure(rows: list[dict], pool: str, config: dict, repeats: int, queue) -> None:
    """Runs in a fresh process: normalise `rows` and report times and memory."""
    import torch

    torch.set_num_threads(1)
    from jstip.config import NormalizeConfig
    from jstip.schemas import from_rows
    from jstip.tasks.normalize import normalize_shard
    from jstip.tasks.normalize.vad import speech_probabilities

    normalize_config = NormalizeConfig(**config)
    t0 = time.perf_counter()
    if normalize_config.measure_speech or normalize_config.trim_silence:
        for _ in range(2):  # model load and TorchScript's first (profiling) runs: once per process
            speech_probabilities([np.zeros(16000, np.float32)], 16000)
    load_s = time.perf_counter() - t0
    utterances = from_rows("utterances", rows)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs = []
    for repeat in range(repeats):  # the median of a few runs: this kind of machine is shared and noisy
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = normalize_shard(utterances, Path(pool) / str(repeat), normalize_config)  # a fresh pool: FLACs written
        runs.append((time.process_time() - cpu0, time.perf_counter() - wall0))
    cpu_s, wall_s = sorted(runs)[len(runs) // 2]
    audio_s = sum(sf.info(r["audio_path"]).duration for r in rows)
    queue.put(dict(audio_s=audio_s, cpu_s=cpu_s, wall_s=wall_s, load_s=load_s, rss_before=rss_before,
                   peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   normalized=result.normalized_audio.num_rows, quarantined=result.quarantine.num_rows))


def measure(rows: list[dict], pool: Path, config: dict, repeats: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_measure, args=(rows, str(pool), config, repeats, queue))
    process.start()
    figures = queue.get()
    process.join()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--long", action="store_true", help="also a 2-hour 48 kHz stereo file")
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="jstip-norm-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        t0 = time.perf_counter()
        rows = synthesize_set(tmp / "in", args.minutes)
        print(f"synthesised {len(rows)} utterances in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for k, (name, config) in enumerate(CONFIGS.items()):
            results.append((f"{len(rows)} utterances, {name}", measure(rows, tmp / f"pool{k}", config, repeats=3)))
            print(results[-1], file=sys.stderr)
        if args.long:
            long_rows = write_long(tmp / "in")
            for k, (name, config) in enumerate(list(CONFIGS.items())[:2]):
                figures = measure(long_rows, tmp / f"long{k}", config, repeats=1)
                results.append((f"2 h 48 kHz stereo WAV, {name}", figures))
                print(results[-1], file=sys.stderr)

    table = ("| input, config | audio s | CPU s | wall s | x real time per core | peak RSS MiB (before) |\n"
             "|---|---|---|---|---|---|\n")
    for name, f in results:
        table += (f"| {name} | {f['audio_s']:.0f} | {f['cpu_s']:.2f} | {f['wall_s']:.2f} | "
                  f"{f['audio_s'] / f['cpu_s']:.0f}x | {f['peak_rss']:.0f} ({f['rss_before']:.0f}) |\n")
    load = max(f["load_s"] for _, f in results)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    command = "`.venv/bin/python benchmarks/normalize_throughput.py" + \
        (f" --minutes {args.minutes:g}" if args.minutes != 10 else "") + (" --long" if args.long else "") + " --write`"
    body = (f"{command}\n\nespeak-ng speech with 0.2-1 s pauses and -60 dBFS noise, 3-20 s per utterance, written "
            "in turn as 8 kHz WAV, 16 kHz FLAC, 22.05 kHz WAV, 44.1 kHz stereo FLAC, 48 kHz stereo 24-bit WAV; "
            f"normalised to 16 kHz 16-bit FLAC; one process per row, torch on 1 thread, the median of 3 runs "
            f"(the 2-hour file: 1); {machine}. "
            "x real time per core = audio seconds / process CPU seconds. Peak RSS is the process's maximum "
            "resident set (torch and the model included); in brackets, before normalisation started. "
            f"silero-vad model load and warm-up, once per process: {load:.2f} s (not counted).\n\n{table}")
    print(body)
    if args.write:
        write_section(SECTION, body)
        print("wrote BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
