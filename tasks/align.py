"""Forced word alignment (first cut: pocketsphinx), behind an interface later aligners also implement.

Entry point: `align_shard(utterances, audio, config)`. For every utterance it reads the normalised FLAC,
asks the configured `WordAligner` for one time span per transcript word (`split_words`), checks the
result and writes WORD_ALIGNMENTS rows, or one QUARANTINE row (stage "align") saying why not. Nothing is
dropped silently: every utterance gets a row in `status`, and is either aligned with all its words or
quarantined (or "skipped" when normalize already quarantined it and there is no audio).

Checks, for any aligner: every word comes back, in order, with start < end inside the audio; the audio
holds speech at all (`no_speech`); no stretch of speech is left outside the words (`untranscribed_speech`)
and the words do not lie on silence (`words_in_silence`). A forced aligner finds *some* path through
nearly anything, so these energy checks are what turns silence or another utterance's transcript into a
quarantine row; a transcript wrong in a word or two is not caught (see the word `score`).

pocketsphinx traps handled here (pocketsphinx 5.1.1, measured on synthesized speech):
- its lattice "bestpath" pass may end on any word that exits in the last frame, so with the default
  `bestpath=yes` forced alignment silently drops words (often several at the end); we decode with
  `bestpath=no`, where the backtrace must end in the grammar's final state or fail loudly;
- with its default beams (1e-48) and `topn=4`, 32 of 144 sentences failed with "Final result does not
  match the grammar"; the config's wider beams and topn (1e-120, 16) fail none of them, and a failed pass
  is retried with the settings in `config.retries`;
- an out-of-vocabulary word makes the grammar invalid: every OOV gets a G2P pronunciation (`g2p.arpabet`);
- calling `hyp()` after a phone-level `set_alignment()` pass segfaults; this module does no phone-level pass.
Frames are converted with the decoder's own `frate`: start = start_frame / frate, end = (end_frame + 1) /
frate, both clipped to the audio's duration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import product
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import soundfile as sf
from num2words import num2words
from pocketsphinx import Decoder

from jstip.config import AlignConfig, AlignRetry
from jstip.schemas import from_rows
from jstip.schemas.validate import conform, schema_for
from jstip.tasks.g2p import arpabet
from jstip.tasks.text import split_words

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what normalize writes and what the en-us acoustic model was trained on

# One row per input utterance: what align_shard did with it.
ALIGN_STATUS = pa.schema([
    pa.field("utterance_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # aligned | failed | skipped
    pa.field("attempts", pa.int32(), nullable=False),  # decoder passes used (0: never decoded)
    pa.field("check_name", pa.string()),  # the quarantine check, for failed ones
    pa.field("reason", pa.string()),
])


class AlignmentFailed(Exception):
    """An utterance could not be aligned; `check` is the machine-readable quarantine check name."""

    def __init__(self, check: str, reason: str, attempts: int = 0, value: str | None = None,
                 threshold: str | None = None):
        super().__init__(reason)
        self.check = check
        self.reason = reason
        self.attempts = attempts
        self.value = value
        self.threshold = threshold


@dataclass(frozen=True)
class WordTiming:
    """One transcript word (index into split_words(text)) and its span in the audio, in seconds."""

    word_index: int
    start: float
    end: float
    score: float | None = None


@dataclass
class UtteranceAlignment:
    words: list[WordTiming]
    attempts: int = 1


class WordAligner(Protocol):
    """What every aligner (pocketsphinx now; WhisperX, NeMo later) implements.

    An instance is made once per shard (models are costly to load) and aligns one utterance at a time.
    `align` returns one WordTiming per word of split_words(text), or raises AlignmentFailed.
    """

    name: ClassVar[str]

    def align(self, text: str, samples: np.ndarray, sampling_rate: int) -> UtteranceAlignment: ...


@dataclass
class AlignResult:
    word_alignments: pa.Table  # WORD_ALIGNMENTS
    quarantine: pa.Table  # QUARANTINE, stage "align"
    status: pa.Table  # ALIGN_STATUS, one row per input utterance


# --------------------------------------------------------------------------------------------------
# From transcript tokens to dictionary words


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
# A piece of a token the dictionary can hold: a number (with thousands separators, a decimal part or an
# ordinal suffix) or a run of letters with apostrophes inside ("don't", "patient's"). Anything else
# (hyphens, slashes, surrounding punctuation) separates pieces.
_PIECE = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th)?|[^\W\d_]+(?:'[^\W\d_]+)*")
_ORDINAL = re.compile(r"^(\d+)(st|nd|rd|th)$")
_MAX_ALTERNATIVES = 16


def _spoken_numbers(piece: str) -> list[tuple[str, ...]]:
    """Ways a digit string is read aloud: "250" -> two hundred fifty | two hundred and fifty."""
    readings: list[str] = []
    ordinal = _ORDINAL.match(piece)
    if ordinal:
        readings.append(num2words(int(ordinal.group(1)), to="ordinal"))
    elif re.fullmatch(r"\d{1,3}(,\d{3})+", piece) or piece.isdigit():
        n = int(piece.replace(",", ""))
        readings.append(num2words(n))
        if len(piece) == 4 and 1100 <= n <= 2099 and n % 100:  # a year: "twenty nineteen"
            readings.append(num2words(n, to="year"))
        if piece.isdigit() and (piece.startswith("0") and len(piece) > 1 or len(piece) >= 5):
            # a code read digit by digit: "007", a phone number, a zip code
            readings.append(" ".join(num2words(int(d)) for d in piece))
    else:  # decimals ("3.5" -> three point five), or digit groups that are not thousands ("1.2.3")
        parts = re.split(r"([.,])", piece)
        try:
            readings.append(num2words(float(piece)) if re.fullmatch(r"\d+\.\d+", piece) else "")
        except (ValueError, OverflowError):
            readings.append("")
        readings.append(" ".join(num2words(int(p)) if p.isdigit() else ("point" if p == "." else "")
                                 for p in parts))
    out: list[tuple[str, ...]] = []
    for reading in readings:
        words = tuple(w for w in re.split(r"[\s,-]+", reading.lower()) if w)
        if not words:
            continue
        # num2words writes British "and" ("two hundred and fifty"); US speakers mostly say it without
        for variant in (tuple(w for w in words if w != "and"), words):
            if variant and variant not in out:
                out.append(variant)
    return out


def spoken_forms(token: str) -> list[tuple[str, ...]]:
    """The dictionary word sequences a transcript token may be spoken as, most likely first.

    Lowercased, surrounding punctuation gone, inner apostrophes kept, hyphenated and slashed compounds
    split ("follow-up" -> follow up), numbers spelled out with num2words, a trailing % read "percent".
    An empty list means the token has nothing speakable the aligner can use.
    """
    text = token.translate(_APOSTROPHES).lower()
    per_piece: list[list[tuple[str, ...]]] = []
    for m in _PIECE.finditer(text):
        piece = m.group(0)
        per_piece.append(_spoken_numbers(piece) if piece[0].isdigit() else [(piece,)])
    if "%" in text and per_piece:
        per_piece.append([("percent",)])
    forms: list[tuple[str, ...]] = []
    for combo in product(*per_piece) if per_piece else ():
        form = tuple(w for words in combo for w in words)
        if form and form not in forms:
            forms.append(form)
        if len(forms) >= _MAX_ALTERNATIVES:
            break
    return forms


# --------------------------------------------------------------------------------------------------
# pocketsphinx


# Fillers (the model's noisedict: <s> </s> <sil> [NOISE] [SPEECH]) the grammar lets in between words.
_FILLER = re.compile(r"^(<.*>|\[.*\])$")
_ALT_PRON = re.compile(r"\(\d+\)$")
# pocketsphinx path scores are integers in its log base (1.0001) right-shifted by SENSCR_SHIFT = 10 bits
# (src/hmm.h); the Python binding hands them back exponentiated (Segment.ascore = base ** ascr).
_SENSCR_SHIFT = 10
_SCORE_FLOOR = -100.0  # nats per frame, for a score that underflowed to 0.0 in the binding

def _retry_settings(config: AlignConfig) -> list[AlignRetry]:
    first = AlignRetry(beam=config.beam, wbeam=config.wbeam, pbeam=config.pbeam, topn=config.topn,
                       frate=config.frate)
    return [first, *config.retries]


class PocketsphinxAligner:
    """Forced alignment with pocketsphinx's en-us model and CMUdict from its wheel; OOVs through G2P.

    Word score: the word's acoustic log-likelihood per frame, in nats, relative to the best-scoring
    senone of each frame (pocketsphinx normalises every frame's senone scores to the best one), so it is
    <= 0 and near 0 for audio that fits the word well; a multi-word token (a number) gets the mean over
    its frames. Scores are comparable across utterances, not across aligners.
    """

    name: ClassVar[str] = "pocketsphinx"

    def __init__(self, config: AlignConfig):
        self.config = config
        self.settings = _retry_settings(config)
        self._decoders: dict[int, object] = {}  # one per retry setting, made when first needed
        self._pronunciations: dict[str, str] = {}  # words added to the dictionaries (shared by all)

    @property
    def g2p_pronunciations(self) -> dict[str, str]:
        """Words this aligner took from G2P (not in CMUdict), with their ARPAbet phones."""
        return dict(self._pronunciations)

    def _decoder(self, attempt: int):
        decoder = self._decoders.get(attempt)
        if decoder is None:
            s = self.settings[attempt]
            decoder = Decoder(samprate=SAMPLE_RATE, lm=None, bestpath=False, beam=s.beam, wbeam=s.wbeam,
                              pbeam=s.pbeam, topn=s.topn, frate=s.frate, loglevel="FATAL")
            for word, phones in self._pronunciations.items():
                decoder.add_word(word, phones, True)
            self._decoders[attempt] = decoder
        return decoder

    def _ensure_words(self, words: set[str]) -> None:
        """Give every word a pronunciation: CMUdict's, else G2P's (added to every decoder made so far)."""
        reference = self._decoder(0)
        for word in sorted(words):
            if word in self._pronunciations or reference.lookup_word(word) is not None:
                continue
            try:
                phones = arpabet(word)
            except RuntimeError as e:  # EspeakError
                raise AlignmentFailed("no_pronunciation", f"G2P for {word!r} failed: {e}") from None
            if not phones:
                raise AlignmentFailed("no_pronunciation", f"no pronunciation for {word!r}: not in CMUdict and "
                                      "espeak-ng G2P gave no phones")
            self._pronunciations[word] = " ".join(phones)
            for decoder in self._decoders.values():
                decoder.add_word(word, self._pronunciations[word], True)
            log.debug("g2p: %s -> %s", word, self._pronunciations[word])

    def align(self, text: str, samples: np.ndarray, sampling_rate: int) -> UtteranceAlignment:
        if sampling_rate != SAMPLE_RATE:
            raise AlignmentFailed("sampling_rate", f"audio is {sampling_rate} Hz; the pocketsphinx en-us model "
                                  f"needs {SAMPLE_RATE} Hz (normalize's sample_rate)")
        tokens = split_words(text)
        forms = [spoken_forms(t) for t in tokens]
        unspeakable = [t for t, f in zip(tokens, forms) if not f]
        if unspeakable:
            raise AlignmentFailed("no_pronunciation", f"token(s) {unspeakable} have no speakable letters or digits")
        self._ensure_words({w for alternatives in forms for form in alternatives for w in form})
        pcm = np.ascontiguousarray(samples, dtype=np.int16).tobytes()
        duration = len(samples) / sampling_rate
        failures: dict[str, list[str]] = {}  # reason -> settings of the passes that failed with it
        checks: set[str] = set()
        for attempt, settings in enumerate(self.settings):
            try:
                words = self._decode(attempt, forms, pcm, duration)
            except AlignmentFailed as e:
                failures.setdefault(e.reason, []).append(settings.describe())
                checks.add(e.check)
                continue
            if attempt:
                log.info("aligned on pass %d of %d", attempt + 1, len(self.settings))
            return UtteranceAlignment(words, attempts=attempt + 1)
        raise AlignmentFailed(checks.pop() if len(checks) == 1 else "align_failed", "; ".join(
            f"{reason} (decoder pass{'es' if len(passes) > 1 else ''}: {' | '.join(passes)})"
            for reason, passes in failures.items()), attempts=len(self.settings))

    def _decode(self, attempt: int, forms: list[list[tuple[str, ...]]], pcm: bytes,
                duration: float) -> list[WordTiming]:
        decoder = self._decoder(attempt)
        # A linear grammar, one branch per spoken form of each token ("250": with and without "and"),
        # instead of set_align_text's single word sequence.
        transitions, n_states, state = [], 1, 0
        for alternatives in forms:
            end, n_states = n_states, n_states + 1
            for form in alternatives:
                src = state
                for k, word in enumerate(form):
                    if k == len(form) - 1:
                        dst = end
                    else:
                        dst, n_states = n_states, n_states + 1
                    transitions.append((src, dst, 1.0, word))
                    src = dst
            state = end
        try:
            fsg = decoder.create_fsg("jstip_align", 0, state, transitions)
            decoder.add_fsg("jstip_align", fsg)
            decoder.activate_search("jstip_align")
            decoder.start_utt()
            decoder.process_raw(pcm, False, True)
            decoder.end_utt()
            segments = decoder.seg()
            segments = None if segments is None else [
                (s.word, s.start_frame, s.end_frame, s.ascore) for s in segments]
        except (RuntimeError, ValueError, KeyError) as e:
            raise AlignmentFailed("align_failed", f"pocketsphinx error: {e}") from None
        if not segments:
            raise AlignmentFailed("align_failed", "no path through the transcript's words reaches the end of the "
                                  "audio (pocketsphinx: final result does not match the grammar)")
        frate = int(decoder.config["frate"])
        logmath = decoder.get_logmath()
        spoken = [(_ALT_PRON.sub("", w), sf_, ef, asc) for w, sf_, ef, asc in segments if not _FILLER.match(w)]
        spans = _match_forms(forms, [w for w, *_ in spoken])
        if spans is None:
            raise AlignmentFailed("words_missing", f"decoded words {[w for w, *_ in spoken]} do not cover the "
                                  "transcript's words")
        timings = []
        for index, (first, last) in enumerate(spans):
            sf_, ef = spoken[first][1], spoken[last][2]
            frames = sum(e - s + 1 for _, s, e, _ in spoken[first:last + 1])
            score = sum(_nats(logmath, a) for *_, a in spoken[first:last + 1]) / max(frames, 1)
            start = min(sf_ / frate, duration)
            end = min((ef + 1) / frate, duration)
            timings.append(WordTiming(index, start, end, max(float(score), _SCORE_FLOOR)))
        return timings


def _nats(logmath, ascore: float) -> float:
    """A segment's acoustic score (as the binding returns it) in natural-log units."""
    if ascore <= 0.0:
        return float("-inf")
    return logmath.log_to_ln(logmath.log(ascore)) * (1 << _SENSCR_SHIFT)


def _match_forms(forms: list[list[tuple[str, ...]]], decoded: list[str]) -> list[tuple[int, int]] | None:
    """Which decoded words each token produced: (first, last) indices into `decoded`, per token.

    The grammar allows only these forms, so a full match exists unless pocketsphinx dropped words.
    """
    reach: list[dict[int, tuple[int, int]]] = [{0: (-1, -1)}]
    for alternatives in forms:
        nxt: dict[int, tuple[int, int]] = {}
        for pos in reach[-1]:
            for k, form in enumerate(alternatives):
                if tuple(decoded[pos:pos + len(form)]) == form:
                    nxt.setdefault(pos + len(form), (pos, k))
        if not nxt:
            return None
        reach.append(nxt)
    if len(decoded) not in reach[-1]:
        return None
    spans, pos = [], len(decoded)
    for i in range(len(forms), 0, -1):
        prev, _ = reach[i][pos]
        spans.append((prev, pos - 1))
        pos = prev
    return spans[::-1]


# Aligner backends by name, imported only when chosen (whisperx and nemo import torch and friends).
ALIGNERS: dict[str, str] = {
    "pocketsphinx": "jstip.tasks.align:PocketsphinxAligner",
    "whisperx": "jstip.tasks.align_whisperx:WhisperXAligner",
    "nemo": "jstip.tasks.align_nemo:NemoAligner",
}


def make_aligner(config: AlignConfig) -> WordAligner:
    """The configured backend, constructed once (per shard) from the whole AlignConfig."""
    import importlib

    module, _, cls = ALIGNERS[config.aligner].partition(":")
    return getattr(importlib.import_module(module), cls)(config)


# --------------------------------------------------------------------------------------------------
# The shard


_HOP_S, _WINDOW_S = 0.010, 0.025


def speech_frames(samples: np.ndarray, rate: int, config: AlignConfig) -> np.ndarray:
    """Which 10 ms frames hold speech-level energy; raises AlignmentFailed("no_speech") when none can.

    Frame k covers samples [k*hop, k*hop + 25 ms). The threshold is relative to the utterance's own levels
    (see AlignConfig), so it needs no calibration per corpus, only speech louder than its background.
    """
    hop, window = int(round(_HOP_S * rate)), int(round(_WINDOW_S * rate))
    x = samples.astype(np.float32) / 32768.0
    if len(x) < window:
        x = np.pad(x, (0, window - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::hop]
    energy_db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    floor, loud = np.percentile(energy_db, [10, 95])
    if loud < config.min_speech_level_dbfs or loud - floor < config.min_speech_range_db:
        raise AlignmentFailed(
            "no_speech", f"audio holds no speech: loud level {loud:.1f} dBFS (minimum "
            f"{config.min_speech_level_dbfs:g}), {loud - floor:.1f} dB above its floor (minimum "
            f"{config.min_speech_range_db:g})", value=f"{loud:.1f} dBFS / {loud - floor:.1f} dB",
            threshold=f"{config.min_speech_level_dbfs:g} dBFS / {config.min_speech_range_db:g} dB")
    return energy_db > floor + 0.3 * (loud - floor)


def check_timings(words: list[WordTiming], n_words: int, duration: float) -> None:
    """Whatever the aligner, the result must be every word, in order, inside the audio."""
    if [w.word_index for w in words] != list(range(n_words)):
        got = sorted({w.word_index for w in words})
        raise AlignmentFailed("words_missing", f"aligner returned {len(words)} word(s) with indices {got[:10]}"
                              f"{'...' if len(got) > 10 else ''}; expected 0..{n_words - 1}",
                              value=str(len(got)), threshold=str(n_words))
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    if not (np.all(starts < ends) and np.all(np.diff(starts) >= 0) and starts[0] >= 0
            and ends[-1] <= duration + 1e-9):
        raise AlignmentFailed("align_invalid", "word spans are empty, out of order or outside the audio "
                              f"({duration:.3f} s)")


def check_against_speech(words: list[WordTiming], speech: np.ndarray, config: AlignConfig) -> None:
    """Catch what a forced aligner cannot: speech left outside every word, or words laid over silence."""
    centres = (np.arange(len(speech)) * _HOP_S) + _WINDOW_S / 2
    in_word = np.zeros(len(speech), dtype=bool)
    starts = np.searchsorted(centres, [w.start for w in words])
    ends = np.searchsorted(centres, [w.end for w in words])
    for a, b in zip(starts, ends):
        in_word[a:b] = True
    untranscribed = int(np.count_nonzero(speech & ~in_word))
    seconds, fraction = untranscribed * _HOP_S, untranscribed / max(int(np.count_nonzero(speech)), 1)
    if seconds > config.max_untranscribed_speech_s and fraction > config.max_untranscribed_speech_fraction:
        raise AlignmentFailed(
            "untranscribed_speech", f"{seconds:.2f} s ({fraction:.0%}) of the speech lies outside every aligned "
            "word: the transcript is missing words or belongs to other audio",
            value=f"{seconds:.2f} s / {fraction:.2f}",
            threshold=f"{config.max_untranscribed_speech_s:g} s / {config.max_untranscribed_speech_fraction:g}")
    silent = np.count_nonzero(in_word & ~speech) / max(int(np.count_nonzero(in_word)), 1)
    if silent > config.max_silent_word_fraction:
        raise AlignmentFailed(
            "words_in_silence", f"{silent:.0%} of the aligned words' frames are silence: the transcript does "
            "not match the audio", value=f"{silent:.2f}", threshold=f"{config.max_silent_word_fraction:g}")


def _read_audio(row: dict) -> tuple[np.ndarray, int]:
    try:
        samples, rate = sf.read(row["flac_path"], dtype="int16", always_2d=True)
    except (sf.LibsndfileError, OSError, RuntimeError) as e:
        raise AlignmentFailed("audio_unreadable", f"cannot read {row['flac_path']}: {e}") from None
    if samples.shape[1] != 1:
        raise AlignmentFailed("audio_unreadable", f"{row['flac_path']}: {samples.shape[1]} channels; normalised "
                              "audio is mono")
    if len(samples) == 0:
        raise AlignmentFailed("no_speech", f"{row['flac_path']}: audio is empty")
    return samples[:, 0], rate


def align_utterance(aligner: WordAligner, text: str, samples: np.ndarray, rate: int,
                    config: AlignConfig) -> UtteranceAlignment:
    """One utterance through the aligner and every check; raises AlignmentFailed with the first problem."""
    n_words = len(split_words(text))
    if n_words == 0:
        raise AlignmentFailed("no_words", "transcript has no words to align")
    speech = speech_frames(samples, rate, config)
    result = aligner.align(text, samples, rate)
    try:
        check_timings(result.words, n_words, len(samples) / rate)
        check_against_speech(result.words, speech, config)
    except AlignmentFailed as e:
        e.attempts = result.attempts
        raise
    return result


def align_shard(utterances: pa.Table, audio: pa.Table, config: AlignConfig,
                aligner: WordAligner | None = None) -> AlignResult:
    """Align every utterance of the shard that has normalised audio.

    `utterances` needs utterance_id and text (source is quoted in reasons when present); `audio` is the
    normalized_audio table. Utterances without an audio row were quarantined by normalize: they get a
    "skipped" status here and no second quarantine row. `aligner` defaults to `make_aligner(config)`,
    made once for the shard.
    """
    ids = utterances.column("utterance_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"align_shard: utterance_id(s) {dup[:5]} appear more than once in the shard")
    texts = utterances.column("text").to_pylist()
    sources = (utterances.column("source").to_pylist() if "source" in utterances.column_names
               else [None] * len(ids))
    audio_by_id = {row["utterance_id"]: row for row in audio.select(["utterance_id", "flac_path"]).to_pylist()}
    aligner = aligner or make_aligner(config)

    words: dict[str, list] = {name: [] for name in ("utterance_id", "word_index", "word", "start", "end", "score")}
    quarantine: list[dict] = []
    status: list[dict] = []
    for utt_id, text, source in zip(ids, texts, sources):
        text = text or ""
        row = audio_by_id.get(utt_id)
        if row is None:
            status.append(dict(utterance_id=utt_id, status="skipped", attempts=0, check_name=None,
                               reason="no normalised audio (quarantined by normalize)"))
            continue
        try:
            samples, rate = _read_audio(row)
            try:
                result = align_utterance(aligner, text, samples, rate, config)
            except (RuntimeError, ValueError, OSError) as e:  # an aligner bug must not sink the shard
                log.exception("utterance %s: %s raised", utt_id, aligner.name)
                raise AlignmentFailed("aligner_error", f"{type(e).__name__}: {e}") from None
        except AlignmentFailed as e:
            where = f"{source}: utterance {utt_id}" if source else f"utterance {utt_id}"
            reason = f"{where}: {aligner.name} alignment failed ({e.check}): {e.reason}"
            log.warning(reason)
            quarantine.append(dict(utterance_id=utt_id, stage="align", check_name=e.check, value=e.value,
                                   threshold=e.threshold, reason=reason, source=source))
            status.append(dict(utterance_id=utt_id, status="failed", attempts=e.attempts, check_name=e.check,
                               reason=reason))
            continue
        for timing, token in zip(result.words, split_words(text)):
            words["utterance_id"].append(utt_id)
            words["word_index"].append(timing.word_index)
            words["word"].append(token)
            words["start"].append(timing.start)
            words["end"].append(timing.end)
            words["score"].append(timing.score)
        status.append(dict(utterance_id=utt_id, status="aligned", attempts=result.attempts, check_name=None, reason=None))

    schema = schema_for("word_alignments")
    columns = {name: pa.array(values, type=schema.field(name).type) for name, values in words.items()}
    columns["aligner"] = pa.array([aligner.name] * len(words["utterance_id"]), type=pa.string())
    return AlignResult(conform("word_alignments", pa.table(columns)), from_rows("quarantine", quarantine),
                       pa.Table.from_pylist(status, schema=ALIGN_STATUS))
