"""A deterministic demo corpus: entity-rich medical and banking speech, spoken by espeak-ng.

`synthesize_corpus(out_dir, utterances, seed)` writes a small speech corpus with ground-truth word
timings, plus a text-only corpus from the same domains, so every stage of the factory can run (and be
tested) end to end offline.

Transcripts are in spoken form: numbers, amounts and dates are written as words ("five hundred
milligrams", "March third", "two thousand dollars"), with normal capitalisation and punctuation, so a
word-level aligner has one written word per spoken word.

Entities. Each utterance carries `entities`: the surface strings of its entity mentions, exactly as they
appear in the transcript (case included), in order of appearance. Entities are
- named entities: drugs, conditions, procedures, clinicians (medical); bank products, merchants
  (banking);
- numeric expressions: doses, money amounts, interest rates, dates and card digits.
Numeric expressions count because they are what speech recognisers get wrong most often in these
domains, and the text-only corpus exists to teach exactly those. Frequencies ("twice a day") and fixed
phrases ("ninety tablets") are not entities.

Randomness. Utterance i draws everything (domain template, fillers, voice, rate, pitch, silences) from
`numpy.random.default_rng([seed, 0, i])` and text-only sentence j from `default_rng([seed, 1, j])`. So a
corpus is a pure function of (seed, N), a corpus of N utterances is a prefix of one of N+1, and the
text-only count never changes the speech. Utterance i's domain alternates: even i medical, odd banking.

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
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from num2words import num2words

from jstip.tasks.espeak import Synthesis, synthesize
from jstip.tasks.text import split_words, word_char_spans

DOMAINS = ("medical", "banking")
_ID_PREFIX = {"medical": "demo-med", "banking": "demo-bank"}
_STALE_AUDIO = re.compile(r"demo-(med|bank)-\d{4,}\.wav")

# espeak-ng voice + variant names; all present in espeakng-loader 0.2.4's data (lang/gmw, voices/!v).
VOICES = (
    "en-us", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+m1", "en-us+m3", "en-us+m7",
    "en+f2", "en+m2", "en-gb-x-rp+f5",
)
RATE_WPM = (140, 190)  # inclusive
PITCH = (35, 70)
PITCH_RANGE = (30, 70)
EDGE_SILENCE_S = (0.2, 0.4)
WORDS_PER_UTTERANCE = (6, 16)  # with 140-190 wpm and the edge silences: roughly 2-7 s of audio

FRAME_S = 0.010
SILENCE_DB_BELOW_PEAK = 40.0

_RECORDINGS = "lhotse/demo_recordings_all.jsonl.gz"
_SUPERVISIONS = "lhotse/demo_supervisions_all.jsonl.gz"
_CUTS = "lhotse/demo_cuts_all.jsonl.gz"
_NEMO = "nemo_manifest.jsonl"
_WORD_TIMINGS = "word_timings.jsonl"
_TEXT_CORPUS = "text_corpus.tsv"
_TEXT_CORPUS_ENTITIES = "text_corpus.jsonl"

# --- sentence templates -------------------------------------------------------------------------------
# {slot}s are filled by _FILLERS; a slot named like another plus a digit ({drug2}) takes a different
# value of the same filler. Article-sensitive slots follow "the"/"my"/"your", never "a".
# espeak-ng speaks "for the" and "of the" as one dictionary entry with ONE word event, which leaves
# "the" without a start time: templates avoid those pairs (tests/test_synth.py checks every template).

TEMPLATES: dict[str, tuple[str, ...]] = {
    "medical": (
        "Start {drug} {dose} {frequency}, beginning on {date}.",
        "The patient takes {drug} {dose} {frequency} for {condition}.",
        "Stop {drug} three days before the {procedure} on {date}.",
        "Please book the {procedure} with {doctor} on {date}.",
        "{doctor} increased the {drug} dose to {dose} {frequency}.",
        "She was diagnosed with {condition} and started on {drug}.",
        "His {condition} is well controlled on {drug} {dose} {frequency}.",
        "Refill {drug} {dose}, ninety tablets, to last three months.",
        "Switch from {drug} to {drug2} because of bad side effects.",
        "Is it safe to take {drug} together with {drug2}?",
        "The {procedure} went well, and {doctor} will call on {date}.",
        "Continue {drug} and repeat the blood tests on {date}.",
        "Please refill my {drug} prescription today.",
        "Is {drug} covered by my plan?",
        "The {procedure} is on {date}.",
    ),
    "banking": (
        "I would like to transfer {money} from my {product} on {date}.",
        "Your {product} payment of {money} is due on {date}.",
        "Please open my new {product} with a deposit of {money}.",
        "There is a charge of {money} from {merchant} on your {product}.",
        "The {product} now earns {rate} a year.",
        "I want to dispute the charge of {money} from {merchant} on {date}.",
        "My card ending in {digits} was declined at {merchant} this morning.",
        "Can you raise the limit on my {product} to {money}?",
        "Set up a monthly transfer of {money} into my {product}.",
        "The annual fee on your {product} is {money}, waived in year one.",
        "Move {money} from my {product} to my {product2} today.",
        "Your {product} statement closes on {date}, with a balance of {money}.",
        "What is the balance on my {product}?",
        "Freeze my card ending in {digits}, please.",
        "Pay {merchant} {money} tomorrow.",
    ),
}

_DRUGS = (
    "metformin", "atorvastatin", "lisinopril", "amoxicillin", "warfarin", "Ozempic", "levothyroxine",
    "amlodipine", "omeprazole", "gabapentin", "sertraline", "prednisone", "clopidogrel", "Eliquis",
    "Jardiance", "losartan", "simvastatin", "Xarelto", "Lipitor",
)
_DOSES_MG = (5, 10, 20, 25, 40, 50, 81, 100, 250, 500, 850, 1000)
_FREQUENCIES = ("once daily", "twice a day", "every morning", "at bedtime", "every eight hours", "once a week")
_CONDITIONS = (
    "type two diabetes", "hypertension", "atrial fibrillation", "hypothyroidism", "high cholesterol",
    "asthma", "chronic kidney disease", "rheumatoid arthritis", "pneumonia",
)
_PROCEDURES = (
    "colonoscopy", "angioplasty", "appendectomy", "echocardiogram", "upper endoscopy", "knee arthroscopy",
    "cataract surgery", "skin biopsy", "hip replacement", "cardiac catheterization", "mammogram",
)
_DOCTORS = (
    "Doctor Patel", "Doctor Nguyen", "Doctor Okafor", "Doctor Schmidt", "Doctor Ramirez", "Doctor Chen",
    "Doctor Kowalski", "Doctor Haddad",
)
_PRODUCTS = (
    "Platinum Rewards card", "Premier Savings account", "Everyday Checking account", "Sapphire Travel card",
    "Cash Back Plus card", "Business Advantage account", "Youth Saver account", "Home Equity line of credit",
    "Gold Travel card", "Money Market account",
)
_MERCHANTS = (
    "Amazon", "Walmart", "Costco", "Starbucks", "Target", "Home Depot", "Delta Airlines", "Uber", "Netflix",
    "Whole Foods",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Named entities that no default corpus ever draws: with `novel_entities` > 0 a slot draws from these with
# that probability. A benchmark speaks a training corpus without them and writes its domain text (and
# test set) with them: entities a model can only know from text, the domain-adaptation case of JSTIP.
NOVEL_FILLERS: dict[str, tuple[str, ...]] = {
    "drug": ("rivaroxaban", "empagliflozin", "rosuvastatin", "pantoprazole", "escitalopram", "montelukast",
             "tamsulosin", "Entresto"),
    "condition": ("gout", "migraine", "osteoporosis", "psoriasis", "sleep apnea"),
    "procedure": ("bronchoscopy", "lumpectomy", "thyroid ultrasound", "carpal tunnel release"),
    "doctor": ("Doctor Lindqvist", "Doctor Abernathy", "Doctor Moreau", "Doctor Takahashi"),
    "product": ("Titanium Elite card", "Horizon Savings account", "Summit Checking account", "Voyager Miles card"),
    "merchant": ("Best Buy", "Spotify", "Chipotle", "Southwest Airlines", "Ikea"),
}


def spoken_number(n: int) -> str:
    """US spoken form of a cardinal: 2450 -> 'two thousand four hundred fifty'."""
    # num2words writes British "and" and thousands commas ("two thousand, four hundred and fifty")
    return num2words(n).replace(",", "").replace(" and ", " ")


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _dose(rng: np.random.Generator) -> str:
    return f"{spoken_number(_DOSES_MG[int(rng.integers(len(_DOSES_MG)))])} milligrams"


def _money(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.35:
        dollars = int(rng.integers(5, 200))
        if rng.random() < 0.5:
            cents = int(rng.integers(1, 100))
            return f"{spoken_number(dollars)} dollars and {spoken_number(cents)} cents"
        return f"{spoken_number(dollars)} dollars"
    if kind < 0.8:
        return f"{spoken_number(int(rng.integers(2, 60)) * 50)} dollars"
    return f"{spoken_number(int(rng.integers(1, 26)) * 1000)} dollars"


def _rate(rng: np.random.Generator) -> str:
    whole = spoken_number(int(rng.integers(1, 25)))
    decimals = " ".join(_DIGITS[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(1, 3))))
    return f"{whole} point {decimals} percent"


def _date(rng: np.random.Generator) -> str:
    return f"{_choice(rng, _MONTHS)} {num2words(int(rng.integers(1, 29)), to='ordinal')}"


def _card_digits(rng: np.random.Generator) -> str:
    return " ".join(_DIGITS[int(d)] for d in rng.integers(0, 10, size=4))


# slot -> (draw, is_entity)
_FILLERS = {
    "drug": (lambda rng: _choice(rng, _DRUGS), True),
    "dose": (_dose, True),
    "frequency": (lambda rng: _choice(rng, _FREQUENCIES), False),
    "condition": (lambda rng: _choice(rng, _CONDITIONS), True),
    "procedure": (lambda rng: _choice(rng, _PROCEDURES), True),
    "doctor": (lambda rng: _choice(rng, _DOCTORS), True),
    "date": (_date, True),
    "product": (lambda rng: _choice(rng, _PRODUCTS), True),
    "merchant": (lambda rng: _choice(rng, _MERCHANTS), True),
    "money": (_money, True),
    "rate": (_rate, True),
    "digits": (_card_digits, True),
}


def fill_template(template: str, rng: np.random.Generator, novel_entities: float = 0.0) -> tuple[str, list[str]]:
    """Fill one of TEMPLATES: the transcript and its entity surface strings (in order of appearance).
    novel_entities: the probability that a slot with NOVEL_FILLERS draws one of those instead (0: never, and
    no extra random draw, so a corpus without novel entities is the one it always was)."""
    text, spans, drawn = "", [], {}
    for literal, slot, _spec, _conv in string.Formatter().parse(template):
        text += literal
        if slot is None:
            continue
        base = slot.rstrip("0123456789")
        draw, is_entity = _FILLERS[base]
        if novel_entities > 0 and base in NOVEL_FILLERS and rng.random() < novel_entities:
            draw = lambda rng, options=NOVEL_FILLERS[base]: _choice(rng, options)  # noqa: E731
        value = draw(rng)
        while value in drawn.get(base, ()):  # {drug2} differs from {drug}
            value = draw(rng)
        drawn.setdefault(base, []).append(value)
        if is_entity:
            spans.append((len(text), len(text) + len(value)))
        text += value
    # only the first letter changes case, so the recorded spans stay valid
    text = text[0].upper() + text[1:]
    return text, [text[s:e] for s, e in spans]


def compose_sentence(domain: str, rng: np.random.Generator, novel_entities: float = 0.0) -> tuple[str, list[str]]:
    """A transcript of `domain` with WORDS_PER_UTTERANCE words, and its entity surface strings."""
    if domain not in TEMPLATES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    low, high = WORDS_PER_UTTERANCE
    for _ in range(100):
        text, entities = fill_template(_choice(rng, TEMPLATES[domain]), rng, novel_entities)
        if low <= len(split_words(text)) <= high:
            return text, entities
    raise RuntimeError(f"no {domain} template gives {low}-{high} words after 100 draws; check TEMPLATES")


@dataclass(frozen=True)
class DemoUtterance:
    id: str
    domain: str
    text: str
    entities: tuple[str, ...]
    voice: str
    rate: int  # words per minute
    pitch: int
    pitch_range: int
    lead_silence_s: float
    trail_silence_s: float
    noise_seed: int  # espeak-ng's noise generator (breath, aspiration) is reseeded with this


def demo_utterances(count: int, seed: int, novel_entities: float = 0.0) -> list[DemoUtterance]:
    """The speech corpus's scripts (text, entities, voice settings, silences), without audio."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 0, i])
        domain = DOMAINS[i % 2]
        text, entities = compose_sentence(domain, rng, novel_entities)
        out.append(DemoUtterance(
            id=f"{_ID_PREFIX[domain]}-{i:04d}",
            domain=domain,
            text=text,
            entities=tuple(entities),
            voice=_choice(rng, VOICES),
            rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
            pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            lead_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            trail_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            noise_seed=int(rng.integers(1, 2**31 - 1)),
        ))
    return out


def text_corpus_sentences(count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
                          novel_entities: float = 0.0) -> list[tuple[str, str, list[str]]]:
    """`count` distinct (domain, sentence, entities) from the same templates, none of them in `exclude`."""
    out: list[tuple[str, str, list[str]]] = []
    seen = set(exclude)
    draw = 0
    while len(out) < count:
        if draw >= 20 * count + 1000:
            raise RuntimeError(f"only {len(out)} of {count} distinct text-only sentences after {draw} draws")
        rng = np.random.default_rng([seed, 1, draw])
        domain = DOMAINS[len(out) % 2]
        draw += 1
        text, entities = compose_sentence(domain, rng, novel_entities)
        if text not in seen:
            seen.add(text)
            out.append((domain, text, entities))
    return out


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
        [sys.executable, "-c", "from jstip.tasks.synth import _synthesize_scripts_stdio as m; m()"],
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
