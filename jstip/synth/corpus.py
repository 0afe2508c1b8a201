"""A deterministic demo corpus: entity-rich medical and banking speech, spoken by espeak-ng.

`synthesize_corpus(out_dir, utterances, seed)` writes a small speech corpus with ground-truth word
timings, plus a text-only corpus from the same domains, so every stage of the factory can run (and be
tested) end to end offline.

The scripts (sentences, entities, voices) come from `jstip.synth.sentences`.

Reference word timings (`word_timings.jsonl`), in seconds from the start of the WAV file:
- start: the word's espeak-ng WORD event (1 ms resolution). Each word of `split_words(text)` is matched
  to the event whose character offset equals the word's offset in the transcript; a word without one is
  an error (espeak-ng speaks "for the" and "of the" as one word with one event, so the templates avoid
  those pairs). espeak puts the event where the word's first phoneme begins, which for a word starting
  with a stop consonant is the start of its closure: digital silence. Measured on 50 utterances: 177
  of 556 words start with up to 50 ms of silence (the first word of an utterance included, so the WAV's
  first non-zero sample can lie up to ~50 ms after the first start). An aligner that puts starts at
  the burst is that much late by this reference. The event is exact to the sample (espeak's `sample`
  field; its `audio_position` is the same instant truncated to whole ms). Measured on 24 utterance-initial
  words after digital silence: a vowel, nasal, glide or liquid starts on the event's sample exactly; an
  unvoiced fricative or h ("Set", "Freeze", "His") 11-14 ms after it (espeak emits that much silence
  inside the phoneme before its noise starts), so those starts are early by that much after a pause.
- end: espeak-ng reports no word ends. The end is derived from espeak's own output in 10 ms frames
  counted from the word's start: within the last frame, before the next word's start (before the
  end of espeak's audio for the last word), whose RMS is above a silence threshold 40 dB below the
  utterance's loudest frame, the end of its last sample above that threshold (to the sample, not the
  frame's end, which would make ends late by half a frame on average); i.e. the next start minus any pause or closure before it (espeak's pauses
  are digital silence, so the threshold only has to sit below speech). The end never passes the next
  start; if no frame in that stretch is audible, the end is the next start.

Audio: 16-bit mono WAV at espeak-ng's native 22050 Hz, with 0.2-0.4 s of digital silence (seeded)
added before and after the speech.

Determinism: the same seed, N and out_dir give byte-identical files. libespeak-ng seeds its noise
generator from the clock and keeps synthesis state between calls that no API resets, so the noise
generator is reseeded per utterance and all audio of a corpus is made in one freshly spawned process
(`synthesize_in_fresh_process`). The Lhotse and NeMo manifests hold absolute audio paths (so they work
from any cwd), so the same corpus written to two different directories differs in those paths only. gzip
writes a modification time into its header; the `.jsonl.gz` manifests are written by Lhotse and then
have that field set to 0 ("no time stamp").
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from jstip.tasks.aligners.espeak import Synthesis, synthesize
from jstip.tasks.text import split_words, word_char_spans
from jstip.synth.sentences import DemoUtterance, demo_utterances, text_corpus_sentences

_STALE_AUDIO = re.compile(r"demo-(med|bank)-\d{4,}\.wav")

FRAME_S = 0.010
SILENCE_DB_BELOW_PEAK = 40.0

_RECORDINGS = "lhotse/demo_recordings_all.jsonl.gz"
_SUPERVISIONS = "lhotse/demo_supervisions_all.jsonl.gz"
_CUTS = "lhotse/demo_cuts_all.jsonl.gz"
_NEMO = "nemo_manifest.jsonl"
_WORD_TIMINGS = "word_timings.jsonl"
_TEXT_CORPUS = "text_corpus.tsv"
_TEXT_CORPUS_ENTITIES = "text_corpus.jsonl"


@dataclass(frozen=True)
class WordTiming:
    word: str
    word_index: int
    start: float  # seconds
    end: float


def reference_word_timings(text: str, synthesis: Synthesis, offset_samples: int = 0) -> list[WordTiming]:
    """Word timings of `synthesis` (espeak output for `text`), shifted by `offset_samples`.

    Starts are espeak's WORD events; ends come from short-time energy. See the module docstring.
    """
    samples = synthesis.samples.astype(np.float64)
    sr = synthesis.sample_rate
    frame = round(FRAME_S * sr)
    words = split_words(text)
    event_start = {}
    for event in synthesis.words:
        event_start.setdefault(event.char_start, event.start_sample)
    events = []
    for (char_start, _), word in zip(word_char_spans(text), words):
        if char_start not in event_start:
            raise ValueError(f"espeak-ng gave no WORD event for word {word!r} at character {char_start} of {text!r}")
        events.append(event_start[char_start])
    if any(b <= a for a, b in zip(events, events[1:])):
        raise ValueError(f"espeak-ng word starts do not strictly increase for {text!r}: {events}")
    if events and events[-1] >= len(samples):
        raise ValueError(f"espeak-ng's last word starts after its audio ends for {text!r}")

    whole = samples[: len(samples) // frame * frame].reshape(-1, frame)
    peak = float(np.sqrt((whole**2).mean(axis=1)).max()) if len(whole) else 0.0
    threshold = peak * 10 ** (-SILENCE_DB_BELOW_PEAK / 20)

    timings = []
    for index, (word, event, bound) in enumerate(zip(words, events, events[1:] + [len(samples)])):
        stretch = samples[event:bound]
        padded = np.zeros(-(-len(stretch) // frame) * frame)
        padded[: len(stretch)] = stretch
        active = np.flatnonzero(np.sqrt((padded.reshape(-1, frame) ** 2).mean(axis=1)) > threshold)
        # nothing audible between this event and the next: the word keeps espeak's whole span. Otherwise the
        # end is the last sample of the last audible frame that is itself above the threshold: a frame's end
        # would put every end up to 10 ms (on average half a frame) after the sound stops
        if len(active):
            last = padded[int(active[-1]) * frame:(int(active[-1]) + 1) * frame]
            loud = np.flatnonzero(np.abs(last) > threshold)
            end = min(bound, event + int(active[-1]) * frame + (int(loud[-1]) + 1 if len(loud) else frame))
        else:
            end = bound
        timings.append(WordTiming(
            word=word,
            word_index=index,
            start=round((event + offset_samples) / sr, 6),
            end=round((end + offset_samples) / sr, 6),
        ))
    return timings


def _synthesize_scripts(scripts: list[DemoUtterance]) -> list[Synthesis]:
    return [synthesize(u.text, u.voice, u.rate, u.pitch, u.pitch_range, rand_seed=u.noise_seed) for u in scripts]


def _synthesize_scripts_stdio() -> None:
    scripts = pickle.load(sys.stdin.buffer)
    pickle.dump(_synthesize_scripts(scripts), sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


def synthesize_in_fresh_process(scripts: list[DemoUtterance]) -> list[Synthesis]:
    """espeak-ng audio for `scripts`, made in a new process so that it depends on the scripts alone.

    libespeak-ng carries state from one synthesis to the next: its noise generator is seeded from the
    clock at initialisation (reseeded here per utterance with `noise_seed`), and the pitch-flutter phase
    is a function-static in wavegen.c's AdvanceParameters that nothing resets. So the same call gives
    different samples depending on what the process spoke before; a fresh process always starts from
    the same state.
    """
    # a plain subprocess rather than multiprocessing: fork would copy this process's espeak state, and
    # daemonic processes (Dask workers) may not start multiprocessing children
    child = subprocess.run(
        [sys.executable, "-c", "from jstip.synth.corpus import _synthesize_scripts_stdio as m; m()"],
        input=pickle.dumps(scripts, protocol=pickle.HIGHEST_PROTOCOL), capture_output=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"espeak-ng synthesis process failed ({child.returncode}): {child.stderr.decode()[-2000:]}")
    return pickle.loads(child.stdout)


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    audio_dir: Path
    recordings: Path
    supervisions: Path
    cuts: Path
    nemo_manifest: Path
    word_timings: Path
    text_corpus: Path
    utterances: int
    text_sentences: int
    audio_seconds: float


def _zero_gzip_mtime(path: Path) -> None:
    # RFC 1952: bytes 4-7 of the member header are MTIME; 0 means "no time stamp". Python's gzip sets no
    # header CRC (FHCRC), so nothing else depends on those bytes.
    with open(path, "r+b") as f:
        header = f.read(10)
        if header[:3] != b"\x1f\x8b\x08" or header[3] & 0x02:
            raise ValueError(f"{path}: not a plain gzip member header, cannot clear its time stamp")
        f.seek(4)
        f.write(b"\x00\x00\x00\x00")


def synthesize_corpus(out_dir: Path, utterances: int = 50, seed: int = 0, text_sentences: int | None = None,
                      novel_entities: float = 0.0, text_novel_entities: float | None = None) -> SynthResult:
    """Write the demo corpus (audio, Lhotse + NeMo manifests, reference word timings, text corpus) to out_dir.

    novel_entities / text_novel_entities: the share of named-entity slots of the speech / of the text
    corpus filled from NOVEL_FILLERS (text: None = as the speech). The text corpus is `text_corpus.tsv`
    (`domain<TAB>sentence`, what `jstip build --text-corpus` reads) and the same sentences with their
    entities in `text_corpus.jsonl`."""
    from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    if utterances < 1:
        raise ValueError(f"utterances must be >= 1, got {utterances}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    text_count = utterances if text_sentences is None else text_sentences
    if text_count < 0:
        raise ValueError(f"text_sentences must be >= 0, got {text_sentences}")

    out_dir = Path(out_dir).resolve()
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lhotse").mkdir(exist_ok=True)

    scripts = demo_utterances(utterances, seed, novel_entities)
    recordings, supervisions, cuts, nemo_lines, timing_lines = [], [], [], [], []
    for utt, synthesis in zip(scripts, synthesize_in_fresh_process(scripts)):
        sr = synthesis.sample_rate
        lead, trail = round(utt.lead_silence_s * sr), round(utt.trail_silence_s * sr)
        timings = reference_word_timings(utt.text, synthesis, offset_samples=lead)
        audio = np.concatenate([np.zeros(lead, np.int16), synthesis.samples, np.zeros(trail, np.int16)])
        wav = audio_dir / f"{utt.id}.wav"
        sf.write(wav, audio, sr, subtype="PCM_16", format="WAV")

        recording = Recording.from_file(wav, recording_id=utt.id)
        supervision = SupervisionSegment(
            id=utt.id, recording_id=utt.id, start=0.0, duration=recording.duration, channel=0,
            text=utt.text, language="English", speaker=utt.voice,
            custom={"domain": utt.domain, "entities": list(utt.entities)},
        )
        recordings.append(recording)
        supervisions.append(supervision)
        # a cut per recording, with the utterance id (CutSet.from_manifests would name it "<id>-0")
        cuts.append(MonoCut(id=utt.id, start=0.0, duration=recording.duration, channel=0,
                            recording=recording, supervisions=[supervision]))
        nemo_lines.append({"audio_filepath": str(wav), "text": utt.text, "duration": recording.duration,
                           "id": utt.id, "domain": utt.domain, "entities": list(utt.entities)})
        timing_lines.append({"utterance_id": utt.id, "words": [
            {"word": t.word, "word_index": t.word_index, "start": t.start, "end": t.end} for t in timings]})

    current = {f"{utt.id}.wav" for utt in scripts}
    for stale in audio_dir.iterdir():  # left by an earlier, larger run into the same directory
        if _STALE_AUDIO.fullmatch(stale.name) and stale.name not in current:
            stale.unlink()

    paths = {name: out_dir / rel for name, rel in
             (("rec", _RECORDINGS), ("sup", _SUPERVISIONS), ("cuts", _CUTS))}
    RecordingSet.from_recordings(recordings).to_file(paths["rec"])
    SupervisionSet.from_segments(supervisions).to_file(paths["sup"])
    CutSet.from_cuts(cuts).to_file(paths["cuts"])
    for path in paths.values():
        _zero_gzip_mtime(path)

    _write_jsonl(out_dir / _NEMO, nemo_lines)
    _write_jsonl(out_dir / _WORD_TIMINGS, timing_lines)
    spoken = {utt.text for utt in scripts}
    text_novel = novel_entities if text_novel_entities is None else text_novel_entities
    sentences = text_corpus_sentences(text_count, seed, exclude=spoken, novel_entities=text_novel)
    with open(out_dir / _TEXT_CORPUS, "w", encoding="utf-8", newline="\n") as f:
        for domain, sentence, _ in sentences:
            f.write(f"{domain}\t{sentence}\n")
    _write_jsonl(out_dir / _TEXT_CORPUS_ENTITIES, [{"domain": d, "text": t, "entities": e} for d, t, e in sentences])

    return SynthResult(
        out_dir=out_dir, audio_dir=audio_dir, recordings=paths["rec"], supervisions=paths["sup"],
        cuts=paths["cuts"], nemo_manifest=out_dir / _NEMO, word_timings=out_dir / _WORD_TIMINGS,
        text_corpus=out_dir / _TEXT_CORPUS, utterances=len(scripts), text_sentences=text_count,
        audio_seconds=round(sum(r.duration for r in recordings), 3),
    )


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
