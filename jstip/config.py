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
    sample_rate: int = Field(16000, description="target rate in Hz; 16 kHz is what ASR encoders expect")


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
    aligner: Literal["pocketsphinx"] = "pocketsphinx"
    # Much wider beams than pocketsphinx's defaults: with the defaults, forced alignment sometimes fails
    # with "Final result does not match the grammar" (measured on this stack, see ENVIRONMENT notes).
    beam: float = 1e-80
    wbeam: float = 1e-60
    pbeam: float = 1e-80
    topn: int = 32
    frate: int = 100
    # Passes tried, in order, when the first one fails or drops words.
    retries: tuple[AlignRetry, ...] = (AlignRetry(beam=1e-80, wbeam=1e-60, pbeam=1e-80, topn=32, frate=100),)


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
