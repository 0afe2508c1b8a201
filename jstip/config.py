"""Build configuration: typed and validated once at the edge (YAML -> pydantic), then passed down.

The defaults ARE the demo configuration; `configs/demo.yaml` spells them out for users to copy
(a test keeps the two equal).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """Content hash of this section: part of every cache key of the stage it configures."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class NormalizeConfig(_Section):
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


class AlignRetry(_Section):
    """pocketsphinx decoder settings for one alignment pass."""

    beam: float = Field(gt=0, lt=1)
    wbeam: float = Field(gt=0, lt=1)
    pbeam: float = Field(gt=0, lt=1)
    topn: int = Field(32, ge=1, le=128)
    frate: int = Field(100, ge=50, le=400, description="frames per second")

    def describe(self) -> str:
        return f"beam={self.beam:g} wbeam={self.wbeam:g} pbeam={self.pbeam:g} topn={self.topn} frate={self.frate}"


class AlignConfig(_Section):
    aligner: Literal["pocketsphinx", "whisperx", "nemo"] = "pocketsphinx"
    # whisperx: a hub id or a local directory of a transformers Wav2Vec2ForCTC + Wav2Vec2Processor;
    # nemo: a `.nemo` file or a NeMo pretrained model name. pocketsphinx uses the model in its wheel.
    model: str | None = None
    device: str = Field("cpu", description="torch device for whisperx/nemo, e.g. cpu, cuda, cuda:1")
    batch_size: int = Field(8, ge=1, description="utterances per aligner call (nemo: one forward pass)")
    # pocketsphinx, first decoder pass. Much wider beams and more Gaussians per frame than pocketsphinx's defaults
    # (1e-48/7e-29/1e-48, topn 4): with those, forced alignment of 144 synthesized sentences (4 voices,
    # 3 speaking rates) failed 32 times with "Final result does not match the grammar"; with these, none
    # did, at ~50x real time per core (benchmark: tests/test_align.py docstring).
    beam: float = Field(1e-120, gt=0, lt=1)
    wbeam: float = Field(1e-100, gt=0, lt=1)
    pbeam: float = Field(1e-120, gt=0, lt=1)
    topn: int = Field(16, ge=1, le=128)
    frate: int = Field(100, ge=50, le=400, description="frames per second of the first pass")
    # Passes tried, in order, when a pass fails or drops words: wider still, then a 5 ms frame shift,
    # which lets very fast speech fit phones of the model's 3-frame minimum duration.
    retries: tuple[AlignRetry, ...] = (
        AlignRetry(beam=1e-200, wbeam=1e-150, pbeam=1e-200, topn=32, frate=100),
        AlignRetry(beam=1e-200, wbeam=1e-150, pbeam=1e-200, topn=32, frate=200),
    )
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


class CheckConfig(_Section):
    # Speech-LLM encoders and the aligners take at most ~30 s per forward pass (WhisperX segments are
    # <= 30 s); under 0.5 s there is too little to cut into spans.
    min_duration: float = Field(0.5, gt=0)
    max_duration: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration ({self.min_duration}) must be below max_duration ({self.max_duration})")
        return self


class PlanConfig(_Section):
    strategy: Literal["word"] = "word"
    format: Literal["F1", "F2"] = "F1"
    # slamkit/SIMS defaults: speech spans of Poisson(lambda=10) words covering eta=0.3 of the words.
    # A short demo utterance has ~10-15 words, so the demo uses shorter spans to get several per utterance.
    mean_span_words: float = Field(3.0, gt=0)
    speech_fraction: float = Field(0.5, ge=0, le=1)
    seed: int = 0


class BuildConfig(_Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    shard_size: int = Field(16, ge=1, description="utterances per shard task")
    normalize: NormalizeConfig = NormalizeConfig()
    align: AlignConfig = AlignConfig()
    checks: CheckConfig = CheckConfig()
    plan: PlanConfig = PlanConfig()


class ConfigError(ValueError):
    pass


def load_config(path: str | Path | None = None, **overrides) -> BuildConfig:
    """Read a YAML build config (None: the defaults), apply top-level overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        where = path or "config"
        raise ConfigError(f"{where}: invalid configuration:\n{e}") from None


def config_json(config: BaseModel) -> str:
    """Canonical JSON: the same config always gives the same bytes (and the same version hash)."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
