"""Forced word alignment (first cut: pocketsphinx), behind an interface later aligners also implement.

Entry point: `align_shard(utterances, audio, config)`. For every utterance it reads the normalised FLAC,
asks the configured `WordAligner` for one time span per transcript word (`split_words`), checks the
result (every word, in order, inside the audio) and writes WORD_ALIGNMENTS rows, or one QUARANTINE row
saying why not. Nothing is dropped silently: every utterance gets a row in `status`; an utterance is
either aligned with all its words or quarantined (or skipped because normalisation already quarantined it
and there is no audio).

pocketsphinx traps handled here (measured with pocketsphinx 5.1.1 on this stack):
- its lattice "bestpath" pass may end on any word that exits in the last frame, so with the default
  `bestpath=yes` forced alignment silently drops words (often several at the end); we decode with
  `bestpath=no`, where the backtrace must end in the grammar's final state or fail loudly;
- with the default `topn=4` Gaussians per frame many utterances fail with "Final result does not match
  the grammar"; `topn` from the config (default 32) fixes almost all of them, and failures are retried
  with the settings in `config.retries`;
- an out-of-vocabulary word makes the grammar invalid: every OOV gets a G2P pronunciation (`g2p.arpabet`);
- calling `hyp()` after a phone-level `set_alignment()` pass segfaults; this module does no phone-level pass.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from itertools import product
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import soundfile as sf
from num2words import num2words

from jstip.config import AlignConfig, AlignRetry
from jstip.schemas import from_rows
from jstip.schemas.validate import conform
from jstip.tasks.g2p import arpabet
from jstip.tasks.text import split_words

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what normalize writes and what the en-us acoustic model was trained on

# One row per input utterance: what align_shard did with it.
ALIGN_STATUS = pa.schema([
    pa.field("utterance_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # aligned | failed | skipped
    pa.field("attempts", pa.int32(), nullable=False),  # decoder passes used (0: never decoded)
    pa.field("check", pa.string()),  # the quarantine check, for failed ones
    pa.field("reason", pa.string()),
])


class AlignmentFailed(Exception):
    """An utterance could not be aligned; `check` is the machine-readable quarantine check name."""

    def __init__(self, check: str, reason: str, attempts: int = 0):
        super().__init__(reason)
        self.check = check
        self.reason = reason
        self.attempts = attempts


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
        if piece.startswith("0") and len(piece) > 1:  # "007", a code read digit by digit
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


_FILLERS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "[BREATH]", "[COUGH]", "[UH]", "[UM]", "[SMACK]"})
_ALT_PRON = re.compile(r"\(\d+\)$")
# pocketsphinx stores path scores right-shifted by SENSCR_SHIFT bits of its log base (sphinxbase's
# hmm.h); shifting back gives logmath units, which log_to_ln turns into natural-log units.
_SENSCR_SHIFT = 10


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

    def _decoder(self, attempt: int):
        decoder = self._decoders.get(attempt)
        if decoder is None:
            from pocketsphinx import Decoder

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
            phones = arpabet(word)
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
        failures: list[str] = []
        for attempt in range(len(self.settings)):
            try:
                words = self._decode(attempt, forms, pcm, duration)
            except AlignmentFailed as e:
                failures.append(f"attempt {attempt + 1} ({self.settings[attempt].describe()}): {e.reason}")
                continue
            if attempt:
                log.info("aligned on attempt %d after: %s", attempt + 1, "; ".join(failures))
            return UtteranceAlignment(words, attempts=attempt + 1)
        raise AlignmentFailed("align_failed", "; ".join(failures), attempts=len(self.settings))

    def _decode(self, attempt: int, forms: list[list[tuple[str, ...]]], pcm: bytes, duration: float) -> list[WordTiming]:
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
        spoken = [(_ALT_PRON.sub("", w), sf_, ef, asc) for w, sf_, ef, asc in segments if w not in _FILLERS]
        spans = _match_forms(forms, [w for w, *_ in spoken])
        if spans is None:
            raise AlignmentFailed("words_missing", f"decoded words {[w for w, *_ in spoken]} do not cover the "
                                  "transcript's words")
        timings = []
        for index, (first, last) in enumerate(spans):
            sf_, ef = spoken[first][1], spoken[last][2]
            frames = sum(e - s + 1 for _, s, e, _ in spoken[first:last + 1])
            ascore = sum(a for *_, a in spoken[first:last + 1])
            score = logmath.log_to_ln(ascore * (1 << _SENSCR_SHIFT)) / max(frames, 1)
            start = min(sf_ / frate, duration)
            end = min((ef + 1) / frate, duration)
            timings.append(WordTiming(index, start, end, float(score)))
        return timings


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


ALIGNERS: dict[str, type] = {"pocketsphinx": PocketsphinxAligner}


def make_aligner(config: AlignConfig) -> WordAligner:
    return ALIGNERS[config.aligner](config)


# --------------------------------------------------------------------------------------------------
# The shard


def _check_timings(words: list[WordTiming], n_words: int, duration: float) -> None:
    """Whatever the aligner, the result must be every word, in order, inside the audio."""
    if [w.word_index for w in words] != list(range(n_words)):
        got = sorted({w.word_index for w in words})
        raise AlignmentFailed("words_missing", f"aligner returned word indices {got}, expected 0..{n_words - 1}")
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    if not (np.all(starts < ends) and np.all(np.diff(starts) >= 0) and starts[0] >= 0 and ends[-1] <= duration + 1e-9):
        raise AlignmentFailed("align_invalid", "word spans are empty, out of order or outside the audio "
                              f"({duration:.3f} s)")


def _read_audio(row: dict) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(row["flac_path"], dtype="int16", always_2d=True)
    if samples.shape[1] != 1:
        raise AlignmentFailed("audio_unreadable", f"{row['flac_path']}: {samples.shape[1]} channels; normalised "
                              "audio is mono")
    return samples[:, 0], rate


def align_shard(utterances: pa.Table, audio: pa.Table, config: AlignConfig,
                aligner: WordAligner | None = None) -> AlignResult:
    """Align every utterance of the shard that has normalised audio.

    `utterances` needs utterance_id and text (source is used in reasons when present); `audio` is the
    normalized_audio table. Utterances without an audio row were quarantined by normalize: they get a
    "skipped" status here and no second quarantine row.
    """
    ids = utterances.column("utterance_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"align_shard: utterance_id(s) {dup[:5]} appear more than once in the shard")
    texts = utterances.column("text").to_pylist()
    sources = (utterances.column("source").to_pylist() if "source" in utterances.column_names
               else [None] * len(ids))
    audio_by_id = {row["utterance_id"]: row for row in audio.to_pylist()}
    aligner = aligner or make_aligner(config)

    words: dict[str, list] = {name: [] for name in ("utterance_id", "word_index", "word", "start", "end", "score")}
    quarantine: list[dict] = []
    status: list[dict] = []
    for utt_id, text, source in zip(ids, texts, sources):
        where = f"{source}: utterance {utt_id}" if source else f"utterance {utt_id}"
        row = audio_by_id.get(utt_id)
        if row is None:
            status.append(dict(utterance_id=utt_id, status="skipped", attempts=0, check=None,
                               reason="no normalised audio (quarantined by normalize)"))
            continue
        tokens = split_words(text or "")
        attempts = 0
        try:
            if not tokens:
                raise AlignmentFailed("no_words", "transcript has no words to align")
            try:
                samples, rate = _read_audio(row)
            except (sf.LibsndfileError, OSError, RuntimeError) as e:
                raise AlignmentFailed("audio_unreadable", f"cannot read {row['flac_path']}: {e}") from None
            duration = len(samples) / rate
            if len(samples) == 0:
                raise AlignmentFailed("align_failed", "audio is empty")
            result = aligner.align(text, samples, rate)
            attempts = result.attempts
            _check_timings(result.words, len(tokens), duration)
        except AlignmentFailed as e:
            attempts = e.attempts or attempts
            reason = f"{where}: {aligner.name} alignment failed ({e.check}): {e.reason}"
            log.warning(reason)
            quarantine.append(dict(utterance_id=utt_id, stage="align", check=e.check, value=None, threshold=None,
                                   reason=reason, source=source))
            status.append(dict(utterance_id=utt_id, status="failed", attempts=attempts, check=e.check, reason=reason))
            continue
        for timing, token in zip(result.words, tokens):
            words["utterance_id"].append(utt_id)
            words["word_index"].append(timing.word_index)
            words["word"].append(token)
            words["start"].append(timing.start)
            words["end"].append(timing.end)
            words["score"].append(timing.score)
        status.append(dict(utterance_id=utt_id, status="aligned", attempts=attempts, check=None, reason=None))

    n = len(words["utterance_id"])
    word_alignments = conform("word_alignments", pa.table({**words, "aligner": [aligner.name] * n}))
    return AlignResult(word_alignments, from_rows("quarantine", quarantine),
                       pa.Table.from_pylist(status, schema=ALIGN_STATUS))
