"""The pocketsphinx backend: forced alignment with the en-us model and CMUdict from its wheel, offline.

Why one module of ~600 lines: the backend is one decoder with its traps, and the parts below (transcript
verification, frame times, long-audio windows, end extension) each change what the others see; half of the
length is this account of them. The checks every backend's output goes through are in `energy`.

Transcript verification (pocketsphinx, `AlignConfig.verify`, audio up to max_chunk_s). The first decoder
pass aligns a grammar in which every token has more alternatives: a garbage word, and, for a number,
ordinal, month or weekday, every other member of its class; and the audio may hold garbage before the first
and after the last token. The garbage word is the acoustic model's +SPN+ ("speech noise") phone, a
context-free model that fits any speech moderately well; one garbage word stretches over any length, so its
prior (`garbage_probability`) is paid once per token replaced. A token whose pronunciation fits its stretch
of audio better than garbage does (after the prior) keeps its words; a token the audio does not say goes to
garbage. From that pass (each measure against its limit in `VerifyConfig`):
- transcript_mismatch: the share of the transcript's letters (of each token's preferred spoken form) in
  tokens that went to garbage, above `max_mismatch`; speech-level frames in the pauses between two
  supported words, above `max_gap_speech_s` in all (the audio says words there the transcript lacks); or
  a closed-class word the audio says as another member of its class ("five" for "two", "June" for
  "July"), which must fit `substitution_cost_nats` better than the transcript's word. Such a transcript
  keeps every other word of its sentence: the garbage competition, paid once per token, cannot see one
  wrong short word;
- transcript_incomplete: speech-level frames (the energy frames below) before the first or after the last
  token's span, above `max_edge_speech_s` (there the edge garbage or silence took speech no token covers);
  or the first or last word lasting `max_edge_word_stretch` times as long per phone as the utterance's
  median word. A transcript missing its first words is not always left with speech at its edge: in noise
  the decoder spreads its words over the whole audio, stretching the first word over the missing ones
  ("the" 0.57 s long) and laying pauses over speech between others (1.3 s between "will" and "call": the
  gap measure above);
- the measure furthest past its limit names the check when several fail. The first retry setting that finds
  a path decides, but a borderline verdict (one word in garbage, the speech measures (edges, pauses, edge
  word stretch) under twice their limits; or any word heard as another) must hold in the next setting too. Every token aligned with its own
  words: that pass IS the alignment (no second pass). Some token in garbage but within the limit: the
  plain forced passes below time the words.
The verification pass decodes the audio plus seeded white noise `noise_floor_db` (60) below its loud level,
not the plain passes' 1-LSB dither: in digital silence (synthetic, gated audio) the model, trained on
recordings, let <sil> + garbage beat long correct words ("milligrams", "appendectomy") and called a final
"ts" after its closure speech after the last word (the demo corpus: 9 of 400 correct transcripts rejected,
0 with the floor). A recording's own noise floor lies above it, so there it changes nothing. The plain passes
keep the dither: decoding them with the floor too let a same-template swap through (tests/tasks/aligners/
test_verify.py) that the energy check after the plain pass catches. So in digital silence a verified word's
times (verification's pass) differ from a plain pass's by up to ~0.1 s at some boundaries; on the synthetic
references the two are equally accurate (BENCHMARKS.md "word boundaries"). Tried and not
kept (BENCHMARKS.md "transcript verification: what was tried"): espeak-ng pronunciations of CMUdict words
as alternatives, a per-segment garbage bonus, a 10x garbage prior, per-word acoustic scores (raw, or against
an all-phone loop's over the same frames: correct and wrong words overlap too much on this model).
A grammar probability is applied as it is (pocketsphinx scales the FSG's transition log-probabilities by
1, not by its language weight `lw`: measured from the segments' lscore), so a prior p costs ln(1/p) nats.
Cost: the garbage alternatives are context-independent single-phone words and the substitutes sit only
inside closed-class tokens, so the pass costs ~30% more than plain forced alignment (BENCHMARKS.md
"transcript verification"; an all-phone loop costs ~2x the alignment, free decoding with pocketsphinx
1-30x). What it cannot catch: a transcript differing in short words (a, the, on) or in words that sound
alike; a same-template sentence whose few differing words are open-class (one drug name for another) and
fit the audio tolerably; speech at the edges quieter than the energy threshold. Long audio (windows) is
not verified.

pocketsphinx traps handled here (pocketsphinx 5.1.1, measured on synthesized speech):
- its lattice "bestpath" pass may end on any word that exits in the last frame, so with the default
  `bestpath=yes` forced alignment silently drops words (often several at the end); we decode with
  `bestpath=no`, where the backtrace must end in the grammar's final state or fail loudly;
- with its default beams (1e-48) and `topn=4`, 32 of 144 sentences failed with "Final result does not
  match the grammar"; wider beams and topn (1e-120, 16) failed none of them, at 2x the cost. The first pass
  is narrow (1e-60, topn 4: most utterances need nothing more), and a failed pass is retried with the
  settings in `config.retries` (the wide ones first);
- an out-of-vocabulary word makes the grammar invalid: every OOV gets a G2P pronunciation (`g2p.arpabet`);
- feature extraction keeps state between utterances (the same audio aligned differently after another
  one): `reinit_feat()` before every pass makes a result a function of its own audio and transcript;
- calling `hyp()` after a phone-level `set_alignment()` pass segfaults: the optional phone pass
  (`AlignConfig.phone_alignments`) runs after the word results are read and never calls `hyp()`.
Frame times (`_FrameClock`): frame k analyses the window [k/frate, k/frate + wlen) (sphinxbase's front end
starts the first window at sample 0; wlen 25.625 ms), so it speaks for the window's centre. A segment on
frames [s, e] starts at the boundary between frames s-1 and s, midway between their centres: s/frate +
(wlen - 1/frate)/2, and ends at the same point after frame e: (e + 1)/frate + (wlen - 1/frate)/2, i.e.
7.8 ms after the window starts at 100 frames/s (10.3 ms at 200), clipped to the audio. Until this was
worked out, times were read at the window starts: every boundary 7.8 ms early.

Boundary accuracy (pocketsphinx; BENCHMARKS.md "align accuracy (pocketsphinx)" has the figures):
- digital silence (exact zeros, as in synthetic or gated audio) is unlike the recordings the acoustic model
  was trained on; 1-LSB dither on a quarter of the samples, seeded the same for every pass, fixed most
  word-final stops and fricatives labelled as silence (`AlignConfig.dither`);
- pocketsphinx still ends some words before a final release or fricative that follows a closure ("cents":
  the "ts"): an end is moved over the speech-level frames after it, across silences of at most
  `max_closure_s`, by at most 0.25 s, never past the next word's start. The energy checks judge the spans
  before this move: the move would cover the very speech that gives a wrong transcript away.

Long audio (pocketsphinx, utterances longer than `AlignConfig.max_chunk_s`): one pass over a long
recording keeps every frame's backpointers and slows down more than linearly (measured on 2, 8 and 16
minutes: 48x, 33x, 24x real time, +25, +60, +117 MiB; in 30 s windows 43x, 43x, 42x and +25 MiB each), and
its cepstral mean is one for the whole recording. So the audio is aligned in windows of at most
max_chunk_s, one after the other, each cut at a pause:
1. pauses are the silent stretches (>= 150 ms of frames below the speech threshold of `speech_frames`)
   between speech; a window starting at t0 ends at the last pause midpoint in (t0 + max/2, t0 + max], or
   where no pause is, at the quietest 50 ms there;
2. its grammar holds the next words of the transcript, as many as the window's share of the remaining
   speech predicts plus half again (+10; doubled and decoded again if the decoder uses them all), with a
   null transition from every word boundary to the final state, so the decoder itself decides where in
   the transcript the window ends;
3. the words before the window's latest inner pause (in its second half, not inside a word, some word
   after it) are kept; the next window starts at that pause with the first word not kept, so the words
   near a cut are always decoded again away from the edge. No pause: all words up to the cut are kept.
   Each window advances at least max_chunk_s / 2: time stays linear in the audio, and the decoder's
   memory is that of one window (dither, too, is added per window);
4. a window's pass that leaves more than 1 s of speech outside its words in one stretch has lost the
   transcript (measured: narrow beams pruned the right path and <sil> swallowed a sentence) and fails,
   so the next retry setting (wider beams) decodes that window again. The finished recording gets the
   same test (`untranscribed_speech`): on a long recording the utterance-level fraction allows minutes.
Pauses come from the energy frames the checks already compute, not silero-vad: a cut only needs a quiet
place, step 3 makes a poor one cost a re-decode rather than an error, and the pocketsphinx path stays
free of torch (silero: ~2 s import, ~240 MB RSS).
"""

from __future__ import annotations

import logging
import re
from typing import Callable, ClassVar, NamedTuple

import numpy as np
from num2words import num2words
from pocketsphinx import Decoder

from jstip.config import AlignConfig, AlignRetry
from jstip.tasks.aligners.base import SAMPLE_RATE, AlignmentFailed, PhoneTiming, UtteranceAlignment, WordTiming
from jstip.tasks.aligners.energy import HOP_S, WINDOW_S, check_against_speech, frame_energy_db, speech_frames
from jstip.tasks.aligners.g2p import arpabet
from jstip.tasks.aligners.textnorm import spoken_forms
from jstip.tasks.text import split_words

log = logging.getLogger(__name__)

# Fillers (the model's noisedict: <s> </s> <sil> [NOISE] [SPEECH]) the grammar lets in between words, and
# "(NULL)", the zero-length segment of a null transition (a window's early end).
_FILLER = re.compile(r"^(<.*>|\[.*\]|\(NULL\))$")
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

    `attempts` of a result is the most decoder passes any window needed (1: no retry anywhere).
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
            decoder.add_word(_GARBAGE, "+SPN+", True)
            decoder.add_word(_EDGE_GARBAGE, "+SPN+", True)
            for word in _CLASS_OF:
                decoder.add_word(_SUBSTITUTE + word, decoder.lookup_word(word), True)
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
        energy_db = frame_energy_db(samples, sampling_rate)
        speech = speech_frames(samples, sampling_rate, self.config, energy_db=energy_db)
        pcm = np.asarray(samples, dtype=np.int16)
        duration = len(samples) / sampling_rate
        if duration <= self.config.max_chunk_s:
            verified = (self._verify(tokens, forms, pcm, speech, energy_db, duration) if self.config.verify.enabled
                        else None)
            if verified is not None:
                words, attempts = verified
                phones: list[PhoneTiming] = []
            else:
                words, phones, attempts = self._decode_window(forms, pcm, 0, 0.0, duration, early_end=False)
        else:
            words, phones, attempts = self._align_long(forms, pcm, speech, energy_db)
        # The energy checks judge pocketsphinx's own spans: extended ends would cover the very speech that
        # gives a wrong transcript away (measured: another sentence's audio then passed as aligned).
        try:
            check_against_speech(words, speech, self.config)
        except AlignmentFailed as e:
            e.attempts = attempts
            raise
        words, phones = _extend_ends(words, phones, speech, self.config.max_closure_s, duration)
        return UtteranceAlignment(words, attempts=attempts, phones=phones if self.config.phone_alignments else None)

    def _verify(self, tokens: list[str], forms: list[list[tuple[str, ...]]], pcm: np.ndarray, speech: np.ndarray,
                energy_db: np.ndarray, duration: float) -> tuple[list[WordTiming], int] | None:
        """Transcript verification (module docstring): raises transcript_mismatch / transcript_incomplete, or
        returns (word timings, passes) when every token was aligned with its own words, or None when some
        token went to garbage within the tolerance (the plain forced pass then times every word).

        The first retry setting that finds a path decides, except a borderline verdict against the
        transcript (at most one word in garbage, at most twice the edge-speech limit), which must hold in the
        next setting too: the narrow pass sometimes lets <sil> swallow a correct first word, or gives an
        imperfect G2P pronunciation to garbage (measured on the sweeps: clean false rejections 2 -> 1 of
        120). Confirming every verdict instead let a tenth more wrong transcripts through in noise."""
        floor_db = self.config.verify.noise_floor_db
        if floor_db is not None:
            window = _with_noise_floor(pcm, floor_db, energy_db).tobytes()
        else:
            window = (_dithered(pcm) if self.config.dither else np.ascontiguousarray(pcm)).tobytes()
        pending: AlignmentFailed | None = None
        for attempt in range(len(self.settings)):
            try:
                found = self._decode(attempt, forms, window, duration, verify=True)
            except AlignmentFailed:
                continue
            verdict = self._verdict(tokens, forms, found, speech, attempt + 1)
            if verdict is not None:
                if pending is not None or not verdict.borderline:
                    raise verdict
                pending = verdict
                continue
            if found.garbage or self.config.phone_alignments:
                return None
            return found.words, attempt + 1
        if pending is not None:
            raise pending
        return None  # no path even with garbage: the plain passes report why

    def _verdict(self, tokens: list[str], forms: list[list[tuple[str, ...]]], found: _VerificationPass,
                 speech: np.ndarray, attempts: int) -> AlignmentFailed | None:
        """transcript_mismatch / transcript_incomplete for one verification pass, or None when it passes.

        Each measure is compared with its limit; when several exceed theirs (another sentence often also
        leaves speech at an edge), the one furthest past its limit names the verdict."""
        verify, words, garbage = self.config.verify, found.words, found.garbage
        letters = np.array([max(len("".join(alternatives[0])), 1) for alternatives in forms], dtype=float)
        mismatch = float(letters[garbage].sum() / letters.sum()) if garbage else 0.0
        centres = np.arange(len(speech)) * HOP_S + WINDOW_S / 2
        lead = float(np.count_nonzero(speech[centres < words[0].start])) * HOP_S
        trail = float(np.count_nonzero(speech[centres > words[-1].end])) * HOP_S
        gaps = _speech_in_gaps(words, set(garbage), speech, centres)
        between = sum(gaps.values())
        stretch = _edge_word_stretch(words, found.phones, set(garbage))
        side = "start" if lead >= trail else "end"
        # the measures of speech no word accounts for: at the edges, in the pauses, under a stretched edge word
        edge_excess = max(lead, trail) / max(verify.max_edge_speech_s, 1e-9)
        gap_excess = between / max(verify.max_gap_speech_s, 1e-9)
        stretch_excess = 0.0 if stretch is None else stretch[1] / max(verify.max_edge_word_stretch, 1e-9)
        candidates: list[tuple[float, Callable[[], AlignmentFailed]]] = [
            (mismatch / max(verify.max_mismatch, 1e-9), lambda: AlignmentFailed(
                "transcript_mismatch", f"the audio does not support {len(garbage)} of {len(tokens)} words "
                f"({', '.join(repr(tokens[i]) for i in garbage[:8])}{' ...' if len(garbage) > 8 else ''}): "
                f"{mismatch:.0%} of the transcript's letters, above {verify.max_mismatch:.0%}: the transcript belongs "
                "to other audio or is wrong in places", value=f"{mismatch:.3f}", threshold=f"{verify.max_mismatch:g}")),
            (edge_excess, lambda: AlignmentFailed(
                "transcript_incomplete", f"{max(lead, trail):.2f} s of speech "
                f"{'before the first' if side == 'start' else 'after the last'} transcript word, above "
                f"{verify.max_edge_speech_s:g} s: the transcript misses words at its {side}",
                value=f"{lead:.2f} s / {trail:.2f} s", threshold=f"{verify.max_edge_speech_s:g} s")),
        ]
        if gaps:
            widest = max(gaps, key=gaps.get)
            candidates.append((gap_excess, lambda: AlignmentFailed(
                "transcript_mismatch", f"{between:.2f} s of speech between transcript words that no word covers "
                f"(most, {gaps[widest]:.2f} s, between {tokens[widest]!r} and {tokens[widest + 1]!r}), above "
                f"{verify.max_gap_speech_s:g} s: the audio says words the transcript does not have",
                value=f"{between:.2f} s between words", threshold=f"{verify.max_gap_speech_s:g} s between words")))
        if stretch is not None:
            index, ratio = stretch
            where = "first" if index == min(i for i in range(len(words)) if i not in garbage) else "last"
            candidates.append((stretch_excess, lambda: AlignmentFailed(
                "transcript_incomplete", f"the {where} word {tokens[index]!r} lasts "
                f"{words[index].end - words[index].start:.2f} s, {ratio:.1f} times as long per sound as the "
                f"utterance's median word, above {verify.max_edge_word_stretch:g}: it is stretched over speech the "
                f"transcript does not have at its {'start' if where == 'first' else 'end'}",
                value=f"{ratio:.2f}", threshold=f"{verify.max_edge_word_stretch:g}")))
        if found.heard:  # names the verdict only when no measure is past its limit: a whole other sentence
            first = min(found.heard)  # or a cut one also shifts numbers onto other numbers' audio
            candidates.append((1.0 + 1e-9, lambda: AlignmentFailed(
                "transcript_mismatch", f"the audio says {found.heard[first]!r} where the transcript has "
                f"{tokens[first]!r}{f' (and {len(found.heard) - 1} more such word(s))' if len(found.heard) > 1 else ''}: "
                "the transcript is wrong in a number or a date", value=f"{tokens[first]} -> {found.heard[first]}",
                threshold="no number, month or weekday heard as another")))
        excess, failure = max(candidates, key=lambda c: c[0])
        if excess <= 1.0:
            return None
        failure = failure()
        failure.attempts = attempts
        # A pass that heard a substitute is confirmed by the next setting whatever it found: the substitutes
        # widen the grammar, and a narrow pass that pruned the right path can escape through them (measured:
        # "Pay $1,250.50 at 3:45pm." decoded as "... fifty <sil> forty at" + garbage, 2 words unsupported;
        # without substitutes that pass finds no path and the next one aligns every word).
        failure.borderline = bool(found.heard) or len(garbage) <= 1 and max(edge_excess, gap_excess,
                                                                              stretch_excess) <= 2.0
        return failure

    def _align_long(self, forms: list[list[tuple[str, ...]]], pcm: np.ndarray, speech: np.ndarray,
                    energy_db: np.ndarray) -> tuple[list[WordTiming], list[PhoneTiming], int]:
        """Align audio longer than max_chunk_s window by window (method: module docstring)."""
        duration = len(pcm) / SAMPLE_RATE
        max_s = self.config.max_chunk_s
        pause_mids = _pause_midpoints(speech)
        speech_before = np.concatenate([[0], np.cumsum(speech)])  # speech frames before frame k

        def speech_in(t0: float, t1: float) -> int:
            a, b = (min(int(round(t / HOP_S)), len(speech)) for t in (t0, t1))
            return int(speech_before[b] - speech_before[a])

        words: list[WordTiming] = []
        phones: list[PhoneTiming] = []
        attempts, t0, w0, n = 0, 0.0, 0, len(forms)
        while w0 < n:
            remaining = n - w0
            if duration - t0 <= max_s:
                got, got_phones, passes = self._decode_window(forms[w0:], pcm, w0, t0, duration, early_end=False,
                                                              speech=speech)
                words += got
                phones += got_phones
                attempts = max(attempts, passes)
                break
            lo, hi = t0 + max_s / 2, t0 + max_s
            mids = [m for m in pause_mids if lo < m <= hi]
            cut = mids[-1] if mids else _quietest_time(energy_db, lo, hi)
            # words expected before the cut, from the share of the remaining speech; the grammar offers
            # half as many again (+10), and twice as many when the decoder used them all
            expected = remaining * speech_in(t0, cut) / max(speech_in(t0, duration), 1)
            size = min(remaining, int(expected * 1.5) + 10)
            while True:
                got, got_phones, passes = self._decode_window(forms[w0:w0 + size], pcm, w0, t0, cut, early_end=True,
                                                              speech=speech)
                attempts = max(attempts, passes)
                if len(got) < size or size == remaining:
                    break
                size = min(remaining, 2 * size)
            # Keep the words before the latest pause (in the window's second half) that no word straddles
            # and some word follows; the words after it are decoded again at the start of the next window,
            # where they are no longer at an edge.
            anchor = next((m for m in reversed(mids[:-1] if mids else [])
                           if not any(w.start < m < w.end for w in got) and any(w.start >= m for w in got)), None)
            kept = got if anchor is None else [w for w in got if w.end <= anchor]
            log.debug("window %.2f-%.2f s: %d of %d word(s) offered decoded, %d kept up to %.2f s", t0, cut, len(got),
                      size, len(kept), cut if anchor is None else anchor)
            words += kept
            phones += [p for p in got_phones if p.word_index < w0 + len(kept)]
            w0 += len(kept)
            t0 = cut if anchor is None else anchor
        gap = _speech_between_words(words, speech, 0.0, duration)
        if gap[0] > _MAX_GAP_SPEECH_S:  # e.g. speech after the window that used up the transcript
            raise AlignmentFailed("untranscribed_speech", f"{gap[0]:.2f} s of speech in {gap[1]:.2f}-{gap[2]:.2f} s "
                                  "lie outside every aligned word", attempts=attempts, value=f"{gap[0]:.2f} s",
                                  threshold=f"{_MAX_GAP_SPEECH_S:g} s in one stretch")
        return words, phones, attempts

    def _decode_window(self, forms: list[list[tuple[str, ...]]], pcm: np.ndarray, first_word: int, t0: float,
                       t1: float, early_end: bool, speech: np.ndarray | None = None,
                       ) -> tuple[list[WordTiming], list[PhoneTiming], int]:
        """pcm[t0:t1] against `forms` (tokens first_word...), with retries; times are in the whole audio.

        With `speech` (the frames of the whole audio), a pass that leaves more than _MAX_GAP_SPEECH_S of
        speech between two words (or before the first, after the last) fails like a pass with no path.
        """
        window = pcm[int(round(t0 * SAMPLE_RATE)):int(round(t1 * SAMPLE_RATE))]
        window = (_dithered(window) if self.config.dither else np.ascontiguousarray(window)).tobytes()
        failures: dict[str, list[str]] = {}  # reason -> settings of the passes that failed with it
        checks: set[str] = set()
        for attempt, settings in enumerate(self.settings):
            try:
                words, phones = self._decode(attempt, forms, window, t1 - t0, early_end)
            except AlignmentFailed as e:
                failures.setdefault(e.reason, []).append(settings.describe())
                checks.add(e.check)
                continue
            words = [WordTiming(w.word_index + first_word, w.start + t0, w.end + t0, w.score) for w in words]
            gap = None if speech is None else _speech_between_words(words, speech, t0, t1)
            if gap is not None and gap[0] > _MAX_GAP_SPEECH_S:
                failures.setdefault(f"{gap[0]:.2f} s of speech in {gap[1]:.2f}-{gap[2]:.2f} s lie outside every "
                                    "word", []).append(settings.describe())
                checks.add("untranscribed_speech")
                continue
            if attempt:
                log.info("aligned on pass %d of %d", attempt + 1, len(self.settings))
            return (words, [PhoneTiming(p.word_index + first_word, p.phone, p.start + t0, p.end + t0) for p in phones],
                    attempt + 1)
        where = f"audio {t0:.2f}-{t1:.2f} s, words {first_word}-{first_word + len(forms) - 1}: " if (
            early_end or t0 > 0) else ""
        raise AlignmentFailed(checks.pop() if len(checks) == 1 else "align_failed", where + "; ".join(
            f"{reason} (decoder pass{'es' if len(passes) > 1 else ''}: {' | '.join(passes)})"
            for reason, passes in failures.items()), attempts=len(self.settings))

    def _decode(self, attempt: int, forms: list[list[tuple[str, ...]]], pcm: bytes, duration: float,
                early_end: bool = False, verify: bool = False):
        """One decoder pass: (word timings, phone timings); with `verify`, the verification grammar (garbage
        and closed-class substitutes: module docstring) and a `_VerificationPass` instead."""
        decoder = self._decoder(attempt)
        # A linear grammar, one branch per spoken form of each token ("250": with and without "and"),
        # instead of set_align_text's single word sequence. With early_end, a null transition from every
        # token boundary to the final state lets the audio end after any prefix of the tokens.
        # With `verify`, any closed-class word of a form may be said as another member of its class
        # (`_CLASS_OF`), at a prior per replacement: an arc beside the word's own.
        cost = self.config.verify.substitution_cost_nats if verify else None
        substitution = None if cost is None else float(np.exp(-cost))
        transitions, n_states, state, boundaries = [], 1, 0, [0]
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
                    if substitution is not None:
                        transitions += [(src, dst, substitution, _SUBSTITUTE + other) for other in _CLASS_OF.get(word, ())
                                        if other != word]
                    src = dst
            state = end
            boundaries.append(end)
        if early_end:
            state, n_states = n_states, n_states + 1
            transitions += [(b, state, 1.0) for b in boundaries]
        start = 0
        if verify:
            # every token may be taken by garbage instead of its words; speech before the first and after the
            # last token by edge garbage (a single +SPN+ stretches over any length: one prior per stretch)
            p = self.config.verify.garbage_probability
            transitions += [(a, b, p, _GARBAGE) for a, b in zip(boundaries, boundaries[1:])]
            start, final, n_states = n_states, n_states + 1, n_states + 2
            transitions += [(start, 0, 1.0), (start, 0, p, _EDGE_GARBAGE), (state, final, 1.0),
                            (state, final, p, _EDGE_GARBAGE)]
            state = final
        phone_entries = None
        try:
            fsg = decoder.create_fsg("jstip_align", start, state, transitions)
            decoder.add_fsg("jstip_align", fsg)
            decoder.activate_search("jstip_align")
            # Feature extraction keeps state from one utterance to the next (the same audio aligns
            # differently after another utterance); reset it so a result depends on this audio alone.
            decoder.reinit_feat()
            decoder.start_utt()
            decoder.process_raw(pcm, False, True)
            decoder.end_utt()
            segments = decoder.seg()
            segments = None if segments is None else [
                (s.word, s.start_frame, s.end_frame, s.ascore) for s in segments]
            if segments and self.config.phone_alignments and not early_end and not verify:
                # The word results are read above, and hyp() is never called: after set_alignment() it
                # segfaults.
                decoder.set_alignment()
                decoder.reinit_feat()
                decoder.start_utt()
                decoder.process_raw(pcm, False, True)
                decoder.end_utt()
                phone_entries = [(_ALT_PRON.sub("", w.name), [(p.name, p.start, p.duration) for p in w])
                                 for w in decoder.get_alignment() if not _FILLER.match(w.name)]
        except (RuntimeError, ValueError, KeyError) as e:
            raise AlignmentFailed("align_failed", f"pocketsphinx error: {e}") from None
        if not segments:  # even a path of no words holds a <sil> segment
            raise AlignmentFailed("align_failed", "no path through the transcript's words reaches the end of the "
                                  "audio (pocketsphinx: final result does not match the grammar)")
        frate = int(decoder.config["frate"])
        logmath = decoder.get_logmath()
        spoken = [(_ALT_PRON.sub("", w), sf_, ef, asc) for w, sf_, ef, asc in segments if not _FILLER.match(w)]
        if verify:
            spoken = [seg for seg in spoken if seg[0] != _EDGE_GARBAGE]
            forms = [[*alternatives, (_GARBAGE,)] for alternatives in forms]
        spans = _match_forms(forms, [w for w, *_ in spoken], prefix=early_end)
        if spans is None:
            raise AlignmentFailed("words_missing", f"decoded words {[w for w, *_ in spoken]} do not cover the "
                                  "transcript's words")
        if early_end and spans and self.config.phone_alignments:
            # set_alignment() cannot follow a path through a null transition ("Failed to set up sub-word
            # alignment"): decode the window again with the tokens this pass found, ending in the last.
            return self._decode(attempt, forms[:len(spans)], pcm, duration)
        if phone_entries is not None and [w for w, _ in phone_entries] != [w for w, *_ in spoken]:
            raise AlignmentFailed("align_failed", f"phone-level pass found words {[w for w, _ in phone_entries]}, "
                                  f"the word pass {[w for w, *_ in spoken]}")
        timings, phones = [], []
        to_time = _FrameClock(frate, float(decoder.config["wlen"]), duration)
        for index, (first, last) in enumerate(spans):
            sf_, ef = spoken[first][1], spoken[last][2]
            frames = sum(e - s + 1 for _, s, e, _ in spoken[first:last + 1])
            score = sum(_nats(logmath, a) for *_, a in spoken[first:last + 1]) / max(frames, 1)
            timings.append(WordTiming(index, to_time(sf_), to_time(ef + 1), max(float(score), _SCORE_FLOOR)))
            for _, entries in (phone_entries or [])[first:last + 1]:
                phones += [PhoneTiming(index, phone, to_time(s), to_time(s + d)) for phone, s, d in entries]
        if verify:
            garbage = [i for i, (first, _) in enumerate(spans) if spoken[first][0] == _GARBAGE]
            heard = {i: [w[len(_SUBSTITUTE):] for w, *_ in spoken[first:last + 1] if w.startswith(_SUBSTITUTE)]
                     for i, (first, last) in enumerate(spans)}
            phones = [sum(len(decoder.lookup_word(w).split()) for w, *_ in spoken[first:last + 1])
                      for first, last in spans]  # every grammar word is in the dictionary (garbage: +SPN+)
            return _VerificationPass(timings, garbage, {i: words[0] for i, words in heard.items() if words}, phones)
        return timings, phones


# Closed word classes (numbers, ordinals, months, weekdays): a transcript that has the wrong member says a wrong
# fact ("two thousand" for "one thousand", "June" for "July") and keeps every other word of the sentence, so the
# garbage competition (a per-token prior against a generic speech model) lets it through. Verification offers
# every other member of the class in its place, as a dictionary word of its own (_SUBSTITUTE + word, the same
# pronunciation), so the decoder says which member the audio holds.
_SUBSTITUTE = "jstip_heard_"
_WORD_CLASSES = (tuple(num2words(n) for n in range(10)), tuple(num2words(n) for n in range(10, 20)),
                 tuple(num2words(n) for n in range(20, 100, 10)), ("hundred", "thousand", "million", "billion"),
                 tuple(num2words(n, to="ordinal") for n in range(1, 10)),
                 tuple(num2words(n, to="ordinal") for n in range(10, 20)),
                 tuple(num2words(n, to="ordinal") for n in range(20, 100, 10)),
                 ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
                  "november", "december"),
                 ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
_CLASS_OF = {word: members for members in _WORD_CLASSES for word in members}


def _same_words(decoded: list[str], form: tuple[str, ...]) -> bool:
    """Whether decoded words are `form`, a closed-class word heard as another of its class (_SUBSTITUTE)
    standing for the form's word."""
    return len(decoded) == len(form) and all(
        got == word or got.startswith(_SUBSTITUTE) and got[len(_SUBSTITUTE):] in _CLASS_OF.get(word, ())
        for got, word in zip(decoded, form))


# Transcript verification's garbage words (dictionary words of the acoustic model's +SPN+ speech-noise
# phone): one stands in for a token, the other for speech before the first / after the last token.
_GARBAGE, _EDGE_GARBAGE = "jstip_garbage", "jstip_edge_garbage"


class _VerificationPass(NamedTuple):
    words: list[WordTiming]
    garbage: list[int]  # tokens garbage took
    heard: dict[int, str]  # token -> the other member of its word class the audio says instead (first one)
    phones: list[int]  # phones of each token as decoded


def _edge_word_stretch(words: list[WordTiming], phones: list[int], garbage: set[int]) -> tuple[int, float] | None:
    """(token, ratio) for the first or last supported word, whichever lasts longer per phone relative to the
    median word of the utterance (its own speaking rate); None with fewer than three supported words."""
    supported = [i for i in range(len(words)) if i not in garbage]
    if len(supported) < 3:
        return None
    per_phone = {i: (words[i].end - words[i].start) / max(phones[i], 1) for i in supported}
    rate = float(np.median(list(per_phone.values())))
    edge = max((supported[0], supported[-1]), key=per_phone.get)
    return edge, per_phone[edge] / max(rate, 1e-9)


def _speech_in_gaps(words: list[WordTiming], garbage: set[int], speech: np.ndarray,
                    centres: np.ndarray) -> dict[int, float]:
    """Seconds of speech-level frames between word i and word i+1, for the gaps between two tokens that kept
    their words (a gap next to a garbage token is that token's audio: the mismatch share counts it)."""
    starts = np.searchsorted(centres, [w.start for w in words])
    ends = np.searchsorted(centres, [w.end for w in words])
    speech_before = np.concatenate([[0], np.cumsum(speech)])
    return {i: float(speech_before[starts[i + 1]] - speech_before[ends[i]]) * HOP_S
            for i in range(len(words) - 1) if i not in garbage and i + 1 not in garbage and starts[i + 1] > ends[i]}


def _with_noise_floor(samples: np.ndarray, floor_db: float, energy_db: np.ndarray) -> np.ndarray:
    """`samples` (int16) plus white noise `floor_db` below their loud level (the 95th percentile of their 10 ms
    frame energies `energy_db`, dBFS), seeded the same every time (`VerifyConfig.noise_floor_db`)."""
    pcm = np.asarray(samples, dtype=np.int16)
    loud = float(np.percentile(energy_db, 95))
    sigma = 32768.0 * 10.0 ** ((loud - floor_db) / 20.0)
    noise = np.random.default_rng(0).standard_normal(len(pcm), dtype=np.float32)  # float32: half the cost
    noise *= np.float32(sigma)
    noise += pcm
    return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)


class _FrameClock:
    """Seconds of a frame boundary: boundary k lies between frames k-1 and k.

    pocketsphinx's frame k analyses the window [k*hop, k*hop + wlen) of the audio (sphinxbase's front end
    starts the first window at sample 0; wlen 0.025625 s, hop 1/frate), so what frame k says about the
    signal belongs to the window's centre, k*hop + wlen/2. A segment of frames [s, e] says the change
    happened between the centres of frames s-1 and s: at s*hop + (wlen - hop)/2 (7.8 ms after the window
    start at 100 frames/s, 10.3 ms at 200). Reading the window start instead puts every boundary early by that.
    """

    def __init__(self, frate: int, wlen: float, duration: float):
        self.hop, self.offset, self.duration = 1.0 / frate, (wlen - 1.0 / frate) / 2, duration

    def __call__(self, boundary: int) -> float:
        return min(max(boundary * self.hop + self.offset, 0.0), self.duration)


def _nats(logmath, ascore: float) -> float:
    """A segment's acoustic score (as the binding returns it) in natural-log units."""
    if ascore <= 0.0:
        return float("-inf")
    return logmath.log_to_ln(logmath.log(ascore)) * (1 << _SENSCR_SHIFT)


def _match_forms(forms: list[list[tuple[str, ...]]], decoded: list[str],
                 prefix: bool = False) -> list[tuple[int, int]] | None:
    """Which decoded words each token produced: (first, last) indices into `decoded`, per token.

    The grammar allows only these forms, so a full match exists unless pocketsphinx dropped words. With
    `prefix`, the decoded words may cover the first tokens only (a window that ends early): one span per
    token covered.
    """
    reach: list[dict[int, tuple[int, int]]] = [{0: (-1, -1)}]
    for alternatives in forms:
        nxt: dict[int, tuple[int, int]] = {}
        for pos in reach[-1]:
            for k, form in enumerate(alternatives):
                if _same_words(decoded[pos:pos + len(form)], form):
                    nxt.setdefault(pos + len(form), (pos, k))
        if not nxt:
            if prefix:
                break
            return None
        reach.append(nxt)
    covered = [i for i in range(len(reach)) if len(decoded) in reach[i]]
    if not covered or not prefix and covered[-1] != len(forms):
        return None
    spans, pos = [], len(decoded)
    for i in range(covered[-1], 0, -1):
        prev, _ = reach[i][pos]
        spans.append((prev, pos - 1))
        pos = prev
    return spans[::-1]


# A silence this long is a pause (a place to cut long audio), not a stop closure (<= ~100 ms) inside a word.
_MIN_PAUSE_FRAMES = 15
# A window's pass (long audio) that leaves this much speech outside its words, in one stretch, lost the
# transcript: measured, a first pass with narrower beams covered 4.8 s of speech with <sil> and decoded the
# next sentence's words over the wrong audio; the wider beams of the retry then aligned the window well.
# Well above a breath or a cough, well below what losing a sentence leaves.
_MAX_GAP_SPEECH_S = 1.0
# A word-final release plus fricative lasts well under this; more speech after a word is not its tail.
_MAX_TAIL_S = 0.25


def _dithered(samples: np.ndarray) -> np.ndarray:
    """+1 LSB on a random quarter of the samples (pocketsphinx's own dither), seeded the same every time."""
    rng = np.random.default_rng(0)
    pcm = np.asarray(samples, dtype=np.int16)
    return np.where((rng.integers(0, 4, size=len(pcm), dtype=np.uint8) == 0) & (pcm < 32767),
                    pcm + np.int16(1), pcm).astype(np.int16)


def _pause_midpoints(speech: np.ndarray) -> list[float]:
    """Midpoints (s) of the silent stretches of >= _MIN_PAUSE_FRAMES frames between speech frames."""
    edges = np.flatnonzero(np.diff(np.concatenate([[1], speech.astype(np.int8), [1]])))
    starts, ends = edges[0::2], edges[1::2]  # silent runs: frames [start, end)
    keep = (ends - starts >= _MIN_PAUSE_FRAMES) & (starts > 0) & (ends < len(speech))
    return [float(round((a + b) / 2) * HOP_S) for a, b in zip(starts[keep], ends[keep])]


def _speech_between_words(words: list[WordTiming], speech: np.ndarray, t0: float,
                          t1: float) -> tuple[float, float, float]:
    """The most speech (s) in one stretch of [t0, t1] outside the words, and where that stretch lies."""
    centres = np.arange(len(speech)) * HOP_S + WINDOW_S / 2
    speech_before = np.concatenate([[0], np.cumsum(speech)])
    edges = [t0, *(t for w in words for t in (w.start, w.end)), t1]
    best = (0.0, t0, t0)
    for a, b in zip(edges[0::2], edges[1::2]):
        i, j = np.searchsorted(centres, [a, b])
        seconds = float(speech_before[j] - speech_before[i]) * HOP_S
        if seconds > best[0]:
            best = (seconds, a, b)
    return best


def _quietest_time(energy_db: np.ndarray, t0: float, t1: float) -> float:
    """Where to cut when [t0, t1] holds no pause: the frame of least energy, smoothed over 50 ms."""
    a, b = int(round(t0 / HOP_S)), min(int(round(t1 / HOP_S)), len(energy_db))
    smooth = np.convolve(energy_db[a:b], np.ones(5) / 5, mode="same")
    return float((a + int(np.argmin(smooth))) * HOP_S)


def _extend_ends(words: list[WordTiming], phones: list[PhoneTiming], speech: np.ndarray, max_closure_s: float,
                 duration: float) -> tuple[list[WordTiming], list[PhoneTiming]]:
    """Move each word's end over the speech frames after it, across silences up to max_closure_s long,
    by at most _MAX_TAIL_S, never past the next word's start: pocketsphinx often calls a word-final release
    or fricative that follows a closure silence ("cents": the final "ts"). The word's last phone ends where
    the word does.
    """
    if max_closure_s <= 0:
        return words, phones
    max_gap = int(round(max_closure_s / HOP_S))
    out, moved = [], {}
    for i, w in enumerate(words):
        limit = words[i + 1].start if i + 1 < len(words) else duration
        last, silent = None, 0
        for k in range(int(round(w.end / HOP_S)), min(int(limit / HOP_S), len(speech))):
            if speech[k]:
                last, silent = k, 0
            else:
                silent += 1
                if silent > max_gap:
                    break
        # the end: the centre of the last speech frame's 25 ms window
        end = w.end if last is None else min(limit, max(w.end, last * HOP_S + WINDOW_S / 2))
        if end - w.end > _MAX_TAIL_S:
            end = w.end
        if end != w.end:
            moved[w.word_index] = end
        out.append(WordTiming(w.word_index, w.start, end, w.score))
    if moved and phones:
        last_phone = {p.word_index: j for j, p in enumerate(phones)}
        phones = [PhoneTiming(p.word_index, p.phone, p.start, moved[p.word_index])
                  if p.word_index in moved and last_phone[p.word_index] == j else p for j, p in enumerate(phones)]
    return out, phones

