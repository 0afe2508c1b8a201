"""Build configuration: typed and validated once at the edge (YAML -> pydantic), then passed down.

The defaults ARE the demo configuration; `configs/demo.yaml` spells them out for users to copy
(a test keeps the two equal).

Why one module of ~430 lines: one small pydantic section per stage (ingest, normalize, align, checks, plan,
runner), each field with the comment that justifies its default; most of the length is those comments, and
one file is what a user reads beside configs/demo.yaml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jstip.schemas.tables import DatasetRole


class ConfigSection(BaseModel):
    """The base of every config section, the build's (here) and the model's (jstip.model.config): unknown keys
    are errors (a typo never passes silently as a default) and a validated section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """Content hash of this section: part of every cache key of the stage it configures."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class IngestConfig(ConfigSection):
    """Where a manifest may point (jstip.tasks.ingest). An audio path outside every allowed root, once `..`
    and symlinks are resolved, is quarantined (`path_outside_allowed_roots`) and never opened: a manifest
    cannot make the factory read, or publish, files outside its corpus."""

    # The manifest's own directory (an audio directory: itself) is always allowed. Entries here are
    # absolute, or relative to the manifest's directory: e.g. [../audio] for Lhotse's recipe layout
    # (manifests/ beside audio/), [/mnt/corpora] for a shared mount; [/] allows every path.
    allowed_roots: tuple[str, ...] = ()


class NormalizeConfig(ConfigSection):
    sample_rate: int = Field(16000, ge=8000, le=48000, description="target rate in Hz; 16 kHz is what ASR "
                             "encoders expect")
    # Off by default: level variation is realistic training input, and lifting a quiet, noisy recording to
    # a target lifts its noise too. -23 is EBU R128's programme loudness; speech corpora sit near -20..-30.
    loudness_lufs: float | None = Field(None, ge=-70, le=0, description="target ITU-R BS.1770-4 integrated "
                                        "loudness; null: leave levels as recorded")
    # The loudness gain is lowered where needed so the sample peak stays at or below this: normalisation
    # never clips (the utterance then ends quieter than the target; loudness_gain_db records the gain).
    max_peak_dbfs: float = Field(-1.0, le=0, description="peak ceiling for the loudness gain, dBFS")
    # Off by default: trimming moves every time in the audio relative to the source manifest's timings,
    # and a VAD can shave a soft onset; turn it on for corpora with long silences around utterances.
    trim_silence: bool = Field(False, description="cut leading and trailing non-speech (silero-vad)")
    trim_padding_s: float = Field(0.1, ge=0, description="seconds kept on each side of the detected speech")
    # silero-vad as the stage runs it (batched over a shard) is ~1000x real time per core; the whole stage
    # with it ~700x, without it ~1100x (BENCHMARKS.md): inside the 300x budget, so measured by default.
    measure_speech: bool = Field(True, description="record speech_ratio (silero-vad speech seconds / duration)")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability threshold "
                                 "(its default)")
    # An utterance may end this far past the end of its audio file (then it is cut at the file's end):
    # manifest durations are rounded, or computed by a decoder that pads MP3 frames differently.
    range_tolerance_s: float = Field(0.1, ge=0, description="seconds an utterance may extend past its file")

    @model_validator(mode="after")
    def _vad_rate(self):
        if (self.measure_speech or self.trim_silence) and self.sample_rate not in (8000, 16000):
            raise ValueError(f"measure_speech and trim_silence run silero-vad, which takes 8000 or 16000 Hz; "
                             f"sample_rate is {self.sample_rate}: set both to false or choose one of those rates")
        return self


class AlignRetry(ConfigSection):
    """pocketsphinx decoder settings for one alignment pass."""

    beam: float = Field(gt=0, lt=1)
    wbeam: float = Field(gt=0, lt=1)
    pbeam: float = Field(gt=0, lt=1)
    topn: int = Field(32, ge=1, le=128)
    frate: int = Field(100, ge=50, le=400, description="frames per second")

    def describe(self) -> str:
        return f"beam={self.beam:g} wbeam={self.wbeam:g} pbeam={self.pbeam:g} topn={self.topn} frate={self.frate}"


class VerifyConfig(ConfigSection):
    """Transcript verification (pocketsphinx; jstip.tasks.align "Transcript verification").

    The first decoder pass aligns the transcript with a garbage alternative for every token and for
    speech before the first / after the last token (the acoustic model's +SPN+ speech-noise phone, which
    fits any speech moderately well). Tokens the garbage explains better than their own pronunciation
    are what the audio does not say; speech the edge garbage (or silence) takes is speech the transcript
    does not cover. Measured on synthetic sweeps (BENCHMARKS.md "transcript verification").
    """

    enabled: bool = True
    # Prior probability of explaining a token by garbage instead of its words, per token: it costs ln(1/p)
    # nats of acoustic log-likelihood (pocketsphinx applies grammar probabilities unscaled, not times its
    # lw 6.5: measured from the garbage segments' lscore, 6.96 nats at 1e-3). 1e-3: with 1e-4 swapped
    # transcripts kept more of their words; with 1e-2 correct words in noise went to garbage (BENCHMARKS.md).
    # With the noise floor below, 1e-2 moved the plain sweep's first-pass verdicts by at most 2 of 120 per
    # case and left the demo corpus at 0 of 400 rejected (BENCHMARKS.md "transcript verification: what was tried"): kept at 1e-3.
    garbage_probability: float = Field(1e-3, gt=0, le=1)
    # The verification pass decodes the audio plus seeded white noise this many dB below its loud level (the
    # 95th percentile of its 10 ms frame energies); null: the 1-LSB dither of `align.dither` only. Digital
    # silence (exact zeros: synthetic or gated audio) is unlike the recordings the acoustic model was trained
    # on; there long correct words ("milligrams", "mammogram", "appendectomy") lost to silence + garbage and
    # a word-final "ts" after its closure ("cents") counted as speech after the last word: 9 of the demo
    # corpus's 400 correct transcripts rejected without the floor, 0 with it. A recording's own noise lies
    # typically 20-50 dB below its speech, so there a floor 60 dB down raises it by 0.4 dB at most. Measured
    # (BENCHMARKS.md "transcript verification: what was tried"): 50 / 60 / 70 dB rejected 0 / 0 / 2 of the
    # demo corpus's 400, with sweep figures within 5 of 120 per case of each other; 60: in the flat part,
    # 10 dB from where rejections of correct transcripts come back.
    noise_floor_db: float | None = Field(60.0, gt=0)
    # transcript_mismatch: share of the transcript's letters (spoken forms) in tokens the audio does not
    # support, above this. transcript_incomplete: seconds of speech-level frames before the first / after the
    # last aligned word, above max_edge_speech_s (one short word lasts ~0.15-0.3 s). Both chosen on the sweeps
    # of benchmarks/transcript_verification.py (120 utterances each, plain and noisy; BENCHMARKS.md): (0.2,
    # 0.2) rejected 1 of 120 correct transcripts; (0.2, 0.15) 4, with 6% more start-truncated ones caught;
    # (0.25, 0.2) 0-1, with 1-10% fewer same-domain swaps caught.
    max_mismatch: float = Field(0.2, ge=0, le=1)
    max_edge_speech_s: float = Field(0.2, ge=0)
    # transcript_mismatch, too: seconds of speech-level frames in the gaps between words (each gap between
    # two words the audio supports), above this: the audio says words there the transcript does not have. A
    # wrong transcript, or one missing words at its start, is stretched over the audio with pauses (<sil>)
    # laid over the speech it lacks (measured: 1.3 s of speech between "will" and "call"), not only at an
    # edge. On the sweeps' correct transcripts the gaps held at most 0.2 s in all (0.3: 0 of 240 rejected).
    max_gap_speech_s: float = Field(0.3, ge=0)
    # transcript_incomplete, too: the first or last word lasting this many times as long per phone as the
    # utterance's median word (its speaking rate). A transcript that lacks the first words of its audio often
    # gets its first word stretched over them ("the" over "Please book the": 0.57 s for two phones, the median
    # word 0.08 s per phone); on the sweeps' correct transcripts the edge words reached 2.8 times, in the demo
    # corpus one of 400 reached 3.03 (rejected: "... twice a day." with a long final "day").
    max_edge_word_stretch: float = Field(3.0, gt=0)
    # transcript_mismatch, too: a number, ordinal, month or weekday of the transcript that the audio says as
    # another member of its class ("five" for "two"). Verification offers every other member in its place at
    # this cost (nats of acoustic log-likelihood; null: off): the other word must fit its stretch of audio this
    # much better than the transcript's word. The acoustic model confuses number words often enough that small
    # costs reject correct transcripts: on the noisy sweep of benchmarks/transcript_verification.py (seed 5, 120
    # correct transcripts; measured with whole-form substitutes and one class for all cardinals) 6.9 nats (a
    # prior of 1e-3) rejected 29 of them, 28 nats 13, 46 nats 7, 69 nats 5, 115 nats 0, while the same-domain
    # swaps it caught stayed 6-7 of 12 up to 115 nats and fell to 3 at 184 (BENCHMARKS.md "transcript
    # verification: what was tried").
    substitution_cost_nats: float | None = Field(115.0, gt=0)
    # whisperx / nemo: transcript_mismatch when the character error rate of the CTC model's own greedy
    # transcript (argmax per frame, repeats and blanks removed) against the text it aligns is above this.
    # null: off. No pretrained CTC weights can be fetched here to measure a default on; NeMo SDP's dataset
    # configs drop at CER 65-90 (loose), a good English CTC model's greedy CER on read speech is ~5%: set it
    # from your model's CER on a sample of known-good utterances (e.g. 3x its 99th percentile).
    max_ctc_cer: float | None = Field(None, ge=0)


class AlignConfig(ConfigSection):
    aligner: Literal["pocketsphinx", "whisperx", "nemo"] = "pocketsphinx"
    # whisperx: a hub id or a local directory of a transformers Wav2Vec2ForCTC + Wav2Vec2Processor;
    # nemo: a `.nemo` file or a NeMo pretrained model name. pocketsphinx uses the model in its wheel.
    model: str | None = None
    device: str = Field("cpu", description="torch device for whisperx/nemo, e.g. cpu, cuda, cuda:1")
    batch_size: int = Field(8, ge=1, description="utterances per aligner call (nemo: one forward pass)")
    # pocketsphinx, first decoder pass: narrow, so most utterances cost one cheap pass. topn (Gaussians per
    # codebook per frame) sets most of the cost: 16 -> 4 took 2-4 s utterances in 20 dB SNR noise with
    # reverberation from 42x to 77x real time per core at the same word-boundary error; beams 1e-60 vs
    # 1e-120 changed neither (BENCHMARKS.md "alignment speed"). pocketsphinx's own defaults (1e-48, topn 4)
    # failed 32 of 144 synthetic sentences ("Final result does not match the grammar"): those go to the retries.
    beam: float = Field(1e-60, gt=0, lt=1)
    wbeam: float = Field(1e-40, gt=0, lt=1)
    pbeam: float = Field(1e-60, gt=0, lt=1)
    topn: int = Field(4, ge=1, le=128)
    frate: int = Field(100, ge=50, le=400, description="frames per second of the first pass")
    # Passes tried, in order, when a pass fails or drops words: the wide beams that failed none of the 144
    # sentences, wider still, then a 5 ms frame shift, which lets very fast speech fit phones of the model's
    # 3-frame minimum duration.
    retries: tuple[AlignRetry, ...] = (
        AlignRetry(beam=1e-120, wbeam=1e-100, pbeam=1e-120, topn=16, frate=100),
        AlignRetry(beam=1e-200, wbeam=1e-150, pbeam=1e-200, topn=32, frate=100),
        AlignRetry(beam=1e-200, wbeam=1e-150, pbeam=1e-200, topn=32, frate=200),
    )
    verify: VerifyConfig = VerifyConfig()
    # Plausibility of an alignment against the audio's own energy (any aligner). A forced aligner always
    # finds *some* path, so silence or a wrong transcript must be caught here. Frames are 25 ms every
    # 10 ms; a frame is speech when its energy is above floor + 30% of (loud level - floor), with floor
    # and loud level the 10th and 95th percentile frame energies of the utterance.
    min_speech_level_dbfs: float = Field(-60.0, description="95th-percentile frame energy below this: no speech")
    min_speech_range_db: float = Field(6.0, ge=0, description="loud level - floor below this: no speech")
    # Speech not covered by any word means words are missing from the transcript. Both limits must be
    # exceeded (a disfluency or two in a long utterance is tolerated). Synthesized speech with correct
    # transcripts: at most 0.32 s and 8%; one sentence's audio under another's transcript: >= 1.0 s, 32%.
    max_untranscribed_speech_s: float = Field(0.5, ge=0)
    max_untranscribed_speech_fraction: float = Field(0.2, ge=0, le=1)
    # Word frames that are not speech (stop closures, weak fricatives) stay below ~32% with correct
    # transcripts; words aligned over silence exceed it.
    max_silent_word_fraction: float = Field(0.6, ge=0, le=1)
    # pocketsphinx only. Longer utterances are aligned in windows of at most this many seconds, cut at
    # pauses (method: jstip.tasks.align docstring): memory stays bounded and time linear in the audio.
    max_chunk_s: float = Field(30.0, ge=5, description="longest stretch of audio decoded in one pass, seconds")
    # Digital silence (exact zeros: synthetic or gated audio) is unlike anything the acoustic model was
    # trained on; +1 LSB on a quarter of the samples (pocketsphinx's own dither, seeded alike for every pass)
    # cut mean |start|/|end| error from 16.6/19.3 to 13.9/15.8 ms on the benchmark corpus (BENCHMARKS.md).
    dither: bool = Field(True, description="add 1-LSB noise before decoding (deterministic)")
    # pocketsphinx often labels a word-final stop release or fricative after a short closure as silence
    # ("cents": the final "ts"). A word's end is moved over speech-level frames that follow it, across
    # silent stretches up to this long, by at most 0.25 s, never past the next word's start. 0: off.
    max_closure_s: float = Field(0.06, ge=0, le=0.2, description="longest closure an end may be extended over, s")
    # A second, phone-level pass (decoding time x2; x3 for audio longer than max_chunk_s, whose windows
    # are decoded again with the words found): AlignResult.phone_alignments, ARPAbet phones per word.
    phone_alignments: bool = Field(False, description="pocketsphinx: also return per-word phone segments")

    @model_validator(mode="after")
    def _model_given(self):
        if self.aligner in ("whisperx", "nemo") and not self.model:
            raise ValueError(f"align.model is required for aligner {self.aligner!r} (a hub id or local path)")
        return self


class WordScoreFloors(ConfigSection):
    """Lowest acceptable word `score`, per aligner (scores are not comparable across aligners); null: no floor."""

    # pocketsphinx: nats per frame relative to the best senone, <= 0, floored at -100 on underflow. Measured on
    # 50 synthetic demo utterances: correct words >= -8.0 (median utterance minimum -4.6); one word swapped for
    # a wrong one: that word median -7.5, lowest -15.5. Recorded speech scores lower than synthetic speech, so
    # the default only catches words far worse than any correct synthetic word (2.5x the worst): tune it on your
    # corpus (`SELECT quantile_cont(score, 0.001) FROM word_alignments`).
    pocketsphinx: float | None = Field(-20.0, le=0)
    # whisperx (mean CTC probability, 0..1) and nemo (log-prob per frame, <= 0): no pretrained weights can be
    # fetched here to measure them on, so no floor by default.
    whisperx: float | None = Field(None, ge=0, le=1)
    nemo: float | None = Field(None, le=0)


class CheckConfig(ConfigSection):
    """Per-utterance quality checks (jstip.tasks.checks) and the publish gate (jstip.tasks.publish.suites).

    Bounds are inclusive: a value equal to a bound passes. Every default's source is given beside it."""

    # Speech-LLM encoders and the aligners take at most ~30 s per forward pass (WhisperX segments are
    # <= 30 s); under 0.5 s there is too little to cut into spans.
    min_duration: float = Field(0.5, gt=0)
    max_duration: float = Field(30.0, gt=0)
    # NeMo SDP's DropHighLowCharrate as its dataset configs use it (1-21): characters of the transcript as
    # written (spaces and punctuation included, as SDP counts them) per second of normalised audio. Too few
    # or too many for the audio means the transcript belongs to other audio or misses a part. Demo: 10-19.
    min_chars_per_second: float = Field(1.0, ge=0)
    max_chars_per_second: float = Field(21.0, gt=0)
    # NeMo SDP's DropHighLowWordrate in its multilingual ASR config (0.3-6.0); words as jstip counts them
    # (tokens with a letter or digit). Demo: 1.7-3.4; fast read speech reaches ~4-5.
    min_words_per_second: float = Field(0.3, ge=0)
    max_words_per_second: float = Field(6.0, gt=0)
    # Alignment plausibility, any aligner. 20 ms is one frame of wav2vec2/whisperx and two of pocketsphinx: a
    # shorter word was not resolved. 3 s: no spoken word lasts that long; the aligner absorbed a pause or
    # noise (a long number written as one token, e.g. a 16-digit card number, can reach it: write digits
    # apart). Demo words: 0.06-1.0 s.
    min_word_duration: float = Field(0.02, gt=0)
    max_word_duration: float = Field(3.0, gt=0)
    # Word times are in order; a word may start before the previous one ends, or end past the audio, by at
    # most this much (one pocketsphinx frame: frame rounding, not a disagreement about the word).
    word_time_tolerance_s: float = Field(0.01, ge=0)
    min_word_score: WordScoreFloors = WordScoreFloors()
    # Non-word audio before the first / after the last aligned word. Our choice, loose: segmented corpora pad
    # utterances by ~0.1-0.5 s (demo: <= 0.44 s); seconds of it mean the segment boundaries are off. Speech
    # spans never carry more than 0.1 s of it (jstip.tasks.plan), so this is about the segment, not the spans.
    max_leading_silence_s: float = Field(3.0, ge=0)
    max_trailing_silence_s: float = Field(3.0, ge=0)
    # Share of input samples at >= 0.999 of full scale (normalize's clipping_ratio). Our choice, loose: a
    # peak-normalised clean recording touches full scale on a few samples (~1e-5); audible clipping is
    # sustained runs of flat tops. Demo: 0.
    max_clipping_ratio: float = Field(0.01, ge=0, le=1)
    # silero-vad speech seconds / duration (normalize's speech_ratio; skipped when not measured). Our choice,
    # loose: under 0.3 the utterance is mostly silence or noise around a few words. Demo: 0.78-0.94.
    min_speech_ratio: float = Field(0.3, ge=0, le=1)
    # The source file's sampling rate: resampling up to 16 kHz adds no bandwidth, and an encoder trained
    # on 16 kHz audio sees 8 kHz telephone speech as a different channel. Set 8000 to keep telephone corpora.
    min_source_sampling_rate: int = Field(16000, ge=1)
    # Transcript characters. Non-printable ones (control characters, private use, format characters but
    # ZWNJ/ZWJ, which Persian and Indic orthography and emoji use) are always quarantined; the charset
    # check then allows characters of these Unicode scripts/categories (RE2 \p{...} names) plus the listed
    # ones. Default: Latin text as the en-us aligners read it, with the punctuation and the symbols that
    # jstip.tasks.aligners.textnorm speaks, but brackets, < > (which textnorm reads as less/more than), * and _: ASR
    # corpora use them for non-speech markup ([noise], <unk>, (laughs), **, _). Other languages: e.g.
    # [L, M, N, Zs] (any script); [Any]: no charset check.
    allowed_char_classes: tuple[str, ...] = ("Latin", "M", "N", "Zs")
    allowed_chars: str = ".,;:!?'\"-–—‘’“”«»…/&%$€£¥+=~×@#°"
    # The same audio (sha256 of the normalised PCM) under several utterance ids in one build: a copy leaks
    # between splits and weighs double. The lowest utterance id keeps it; the others are quarantined.
    drop_duplicate_audio: bool = True
    # Great Expectations suites over the staged version before it is published (jstip.tasks.publish.suites):
    # block: a failing suite publishes nothing; warn: publish and log the failures; off: no suites (the
    # accounting invariant is checked whatever this says).
    gx: Literal["block", "warn", "off"] = "block"

    @field_validator("gx", mode="before")
    @classmethod
    def _gx_off_is_not_a_boolean(cls, value):
        # YAML 1.1 reads a bare `off` (and `no`, `false`) as False: `gx: off`, as written in the docs, means "off"
        return "off" if value is False else value
    # Row-level suites validate a table whole up to this many rows, else a reservoir sample of this many
    # (cross-row and cross-table checks are exact SQL over every row, whatever the size).
    gx_max_rows: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        for low, high in (("min_duration", "max_duration"), ("min_chars_per_second", "max_chars_per_second"),
                          ("min_words_per_second", "max_words_per_second"),
                          ("min_word_duration", "max_word_duration")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})")
        return self

    @model_validator(mode="after")
    def _charset_compiles(self):
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            pc.replace_substring_regex(pa.array([""]), pattern=self.charset_pattern(), replacement="")
        except pa.ArrowInvalid as e:
            raise ValueError(f"allowed_char_classes {list(self.allowed_char_classes)} is not a list of RE2 "
                             f"Unicode class names (e.g. Latin, L, N, Zs): {e}") from None
        return self

    def charset_pattern(self) -> str:
        """RE2 character class matching one allowed character."""
        classes = "".join(f"\\p{{{name}}}" for name in self.allowed_char_classes)
        literals = "".join(f"\\x{{{ord(c):x}}}" for c in self.allowed_chars)
        return f"[{classes}{literals}]"


class WordLevelConfig(ConfigSection):
    """Span lengths of word-level plans, in words (>= 1: a draw of 0 becomes 1).

    The distribution gives the spans of the rarer modality (speech when speech_fraction <= 0.5, else
    text); the other modality's spans are the same family stretched by max(eta, 1-eta) / min(eta, 1-eta)
    so that, spans alternating, about `speech_fraction` of the words are speech (jstip.tasks.plan).
    """

    distribution: Literal["poisson", "geometric", "binomial", "uniform", "fixed"] = "poisson"
    # slamkit/SIMS uses Poisson(10) on long utterances; a ~10-word demo utterance needs shorter spans.
    poisson_lambda: float = Field(3.0, gt=0, description="poisson: max(1, Poisson(lambda)) words")
    geometric_p: float = Field(0.3, gt=0, le=1, description="geometric: P(length = k) = (1-p)^(k-1) p, mean 1/p")
    # anilkeshwani/speech-integration: max(1, Binomial(39, 0.1)) on MLS (39 = mean words per utterance).
    binomial_n: int = Field(39, ge=1, description="binomial: max(1, Binomial(n, p)) words")
    binomial_p: float = Field(0.1, gt=0, le=1)
    # SpeechLMM: speech spans of U[5, 15] words.
    uniform_low: int = Field(5, ge=1, description="uniform: an integer in [low, high], inclusive")
    uniform_high: int = Field(15, ge=1)
    fixed_k: int = Field(1, ge=1, description="fixed: k words (k = 1: switch at every word)")

    @model_validator(mode="after")
    def _uniform_ordered(self):
        if self.uniform_low > self.uniform_high:
            raise ValueError(f"uniform_low ({self.uniform_low}) must not exceed uniform_high ({self.uniform_high})")
        return self


class SegmentLevelConfig(ConfigSection):
    """Where segment-level plans cut an utterance; every cut lies between two words."""

    # duration by default: it works on any corpus, while pauses depend on speaking style and many ASR
    # corpora (LibriSpeech, GigaSpeech) have no punctuation.
    boundary: Literal["duration", "pause", "punctuation"] = "duration"
    min_pause_ms: float = Field(200.0, gt=0, description="pause: a gap between words at least this long is a cut")
    # USDM cuts ~10 s segments of long-form audio; utterances of a 38k-hour ASR corpus are ~10 s, so shorter.
    target_s: float = Field(3.0, gt=0, description="duration: segments of about this many seconds")
    jitter: float = Field(0.5, ge=0, le=1, description="duration: each cut moves uniformly within +-jitter/2 "
                          "of a segment length before snapping to the nearest gap between words")


class MixedConfig(ConfigSection):
    """strategy: mixed. Per-utterance probabilities of each strategy (they must add up to 1)."""

    word: float = Field(0.4, ge=0, le=1)
    segment: float = Field(0.4, ge=0, le=1)
    asr: float = Field(0.2, ge=0, le=1, description="plain ASR pairs: the whole utterance as speech, then its "
                       "transcript (the inference-time format)")

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.word + self.segment + self.asr
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mixed probabilities word + segment + asr must add up to 1, not {total:g}")
        return self


class PlanConfig(ConfigSection):
    """Interleave planning (jstip.tasks.plan): how utterances are cut into speech and text spans."""

    strategy: Literal["word", "segment", "asr", "mixed"] = "word"
    format: Literal["F1", "F2"] = "F1"
    # word-level: sets the span lengths' ratio; segment-level: the probability of each segment being speech;
    # both: the probability that a random start is speech.
    speech_fraction: float = Field(0.5, ge=0, le=1, description="target share of words given as speech (eta)")
    start_modality: Literal["random", "speech", "text"] = "random"
    word: WordLevelConfig = WordLevelConfig()
    segment: SegmentLevelConfig = SegmentLevelConfig()
    mixed: MixedConfig = MixedConfig()
    # Domain sentences from text_corpus, each one text-only sequence; the number is set so that they are
    # this share of all of the version's sequences (capped by the corpus).
    text_share: float = Field(0.1, ge=0, lt=1, description="share of all sequences that are text-only domain sentences "
                                                           "(any strategy; needs a text corpus)")
    seed: int = 0


class RunnerConfig(ConfigSection):
    """Where the shard tasks run. Execution only: it never changes what is built, so it is left out of
    the dataset version's hash (a Dask build publishes the same version as a local one)."""

    kind: Literal["local", "dask"] = "local"
    max_workers: int | None = Field(None, ge=1, description="local: worker threads (None: CPU cores)")
    dask_address: str | None = Field(None, description="dask: an existing scheduler, e.g. tcp://head:8786; "
                                                       "None starts a LocalCluster")
    dask_workers: int = Field(2, ge=1, description="dask LocalCluster: worker processes")
    dask_threads_per_worker: int = Field(1, ge=1, description="dask LocalCluster: threads per worker")


class BuildConfig(ConfigSection):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    role: DatasetRole = Field("train", description="what the version is for: train (a default for every command), "
                                                  "dev or test (held out: used only when named)")
    shard_size: int = Field(16, ge=1, description="utterances per shard task")
    ingest: IngestConfig = IngestConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    align: AlignConfig = AlignConfig()
    checks: CheckConfig = CheckConfig()
    plan: PlanConfig = PlanConfig()
    runner: RunnerConfig = RunnerConfig()

    def version_config_json(self) -> str:
        """The configuration that shapes the data, canonical: part of the version id."""
        # runner: where tasks run never changes the data. ingest.allowed_roots: what the roots admit is in the
        # input hash already (accepted rows, and path_outside_allowed_roots quarantine rows), so allowing the same
        # corpus's directory by another spelling (or `--allow-root` vs the config) keeps the version id
        dump = self.model_dump(mode="json", exclude={"runner": True, "ingest": {"allowed_roots"}})
        return json.dumps(dump, sort_keys=True, separators=(",", ":"))


class ConfigError(ValueError):
    pass


M = TypeVar("M", bound=BaseModel)


def load_yaml_config(path: str | Path | None, model: type[M], error: type[Exception], what: str,
                     **overrides) -> M:
    """Read a YAML config into `model` (None: its defaults), apply top-level overrides, validate; every
    problem is one `error` naming the file."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise error(f"{what} not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise error(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{path or what}: invalid configuration:\n{e}") from None


def load_config(path: str | Path | None = None, **overrides) -> BuildConfig:
    """Read a YAML build config (None: the defaults), apply top-level overrides, validate."""
    return load_yaml_config(path, BuildConfig, ConfigError, "config file", **overrides)
