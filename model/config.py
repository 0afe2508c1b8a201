"""Speech-LLM and training configuration: typed and validated once (YAML -> pydantic), then passed down.

The defaults are a CPU-sized model that trains in minutes on the demo corpus: a small conv + transformer
encoder and a tiny Llama-style LM built locally from the dataset's own text (no download). For a real run
point `llm.path` at a checkpoint (hub id or local directory, e.g. Qwen/Qwen2.5-0.5B) and
`encoder.kind: whisper` + `encoder.pretrained` at a Whisper checkpoint; `configs/train_demo.yaml` and the
README show both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from jstip.config import ConfigSection, load_yaml_config


class EncoderConfig(ConfigSection):
    """The audio encoder: log-mel frames (10 ms hop) in, hidden frames out."""

    # conv: two stride-2 convolutions (40 ms frames) + a transformer; small enough to train on CPU.
    # whisper: a transformers WhisperEncoder (20 ms frames), from `pretrained` or built from the sizes below.
    kind: Literal["conv", "whisper"] = "conv"
    pretrained: str | None = Field(None, description="whisper: hub id or local directory of a Whisper checkpoint "
                                                     "whose encoder weights (and sizes) to use")
    n_mels: int = Field(80, ge=16, le=128)
    d_model: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn_dim: int = Field(256, ge=8)
    # 0: on CPU, dropout's random masks cost ~10% of a training step and kept the demo model no better
    # (BENCHMARKS.md "demo recipe")
    dropout: float = Field(0.0, ge=0, lt=1)
    # A Whisper encoder takes a fixed window of frames; spans are padded to it (longer ones are encoded in
    # window-sized pieces). 30 s is Whisper's; a from-scratch whisper encoder may use less.
    whisper_window_s: float = Field(30.0, gt=0, le=30)


class ProjectorConfig(ConfigSection):
    """Frame stacking + MLP: `stack` consecutive encoder frames become one LLM input embedding."""

    stack: int = Field(2, ge=1, le=16, description="encoder frames per embedding (conv: 2 x 40 ms = 80 ms; "
                                                   "whisper: 4 x 20 ms = 80 ms)")
    hidden: int = Field(256, ge=8)


class TinyLMConfig(ConfigSection):
    """A Llama-style LM built from scratch, with a byte-level BPE tokenizer trained on the dataset's text."""

    vocab_size: int = Field(1024, ge=300)
    hidden: int = Field(128, ge=16)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate: int = Field(256, ge=16)
    max_positions: int = Field(2048, ge=64)


class LoraSection(ConfigSection):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


class LLMConfig(ConfigSection):
    # None: build the tiny LM below (offline, CPU). Otherwise any transformers AutoModelForCausalLM: a hub id
    # (downloaded by transformers unless HF_HUB_OFFLINE=1) or a local directory with its tokenizer.
    path: str | None = None
    tiny: TinyLMConfig = TinyLMConfig()
    lora: LoraSection | None = Field(None, description="train LoRA adapters on the LLM (peft) instead of "
                                                       "all of its weights")


class SpeechLLMConfig(ConfigSection):
    encoder: EncoderConfig = EncoderConfig()
    projector: ProjectorConfig = ProjectorConfig()
    llm: LLMConfig = LLMConfig()
    freeze_encoder: bool = False
    freeze_llm: bool = False
    # CTC head on the encoder output, trained jointly: loss = llm_loss + ctc_weight * ctc_loss. Its prefix
    # scores are combined with the LLM's in joint decoding (jstip.model.decode).
    ctc_weight: float = Field(1.0, ge=0, description="0: no CTC head")
    # What the CTC head predicts (jstip.model.ctc): characters (learned from little audio far faster) or
    # the LLM's tokens.
    ctc_units: Literal["characters", "llm_tokens"] = "characters"

    @model_validator(mode="after")
    def _lora_needs_llm_frozen_or_not(self):
        if self.llm.lora is not None and self.freeze_llm:
            raise ValueError("llm.lora trains adapters on the LLM; freeze_llm: true would freeze them too "
                             "(LoRA already leaves the base weights frozen): drop one of the two")
        return self


class MixConfig(ConfigSection):
    """Sampling weights of the three sequence pools (jstip.model.sequence_pools); they need not add up to 1.

    interleaved: the version's word/segment plans (F1 or F2, as planned); asr: every accepted utterance as
    instruction + speech -> transcript (plus `asr` plans); text: text-only sequences (the version's domain
    text plans, plus the transcripts when `transcripts_as_text`)."""

    # The demo's: mostly the inference format, interleaved plans beside it, no text-only steps (measured:
    # BENCHMARKS.md "demo recipe").
    interleaved: float = Field(0.3, ge=0)
    asr: float = Field(0.7, ge=0)
    text: float = Field(0.0, ge=0)
    # Plain joint speech-text training (the JSTIP paper's baseline): the transcripts as LM text as well.
    transcripts_as_text: bool = False

    @model_validator(mode="after")
    def _some_weight(self):
        if self.interleaved + self.asr + self.text <= 0:
            raise ValueError("mix: at least one of interleaved, asr, text must have a positive weight")
        return self


class LoaderConfig(ConfigSection):
    """DataLoader workers per training process: they draw, lay out and read (FLAC) each step's batch ahead
    of the loop (jstip.model.loader). The batches do not depend on these settings."""

    # 1: decoding overlaps the step; more when a step reads more audio than one core decodes in a step's
    # time (train_log.csv's data_wait_s says; BENCHMARKS.md "training scale (1 and 2 processes)"). 0: batches
    # are made in the training process.
    workers: int = Field(1, ge=0)
    prefetch: int = Field(2, ge=1, description="batches each worker prepares ahead")


class DistributedConfig(ConfigSection):
    """Used when training runs on several processes (torchrun / `jstip train --nproc-per-node N`)."""

    # ddp: a full model replica per rank (DistributedDataParallel). fsdp: parameters, gradients and Adam
    # state sharded over the ranks (PyTorch FSDP2 `fully_shard`), for LLMs that do not fit one device
    # (docs/SCALING.md, memory arithmetic).
    sharding: Literal["ddp", "fsdp"] = "ddp"
    # How long a rank waits in a collective, including while rank 0 builds the sequence index of a new
    # version and checks its audio files (at 38k hours ~10 CPU-minutes for the index: BENCHMARKS.md
    # "sequence index at 38k hours").
    timeout_minutes: float = Field(60.0, gt=0)


class TrainConfig(ConfigSection):
    model: SpeechLLMConfig = SpeechLLMConfig()
    mix: MixConfig = MixConfig()
    steps: int = Field(1000, ge=1)
    # Set to count passes over the data instead: steps = ceil(epochs * sequences / batch_size), counting
    # the sequences of every pool with a positive mix weight (pools are sampled, so an "epoch" is that many
    # sequences drawn, not a guarantee that each was seen once).
    epochs: float | None = Field(None, gt=0, description="overrides steps when set")
    batch_size: int = Field(8, ge=1, description="sequences per step")
    learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    # Sequences are bucketed by length so a batch pads little; this many buckets per pool.
    length_buckets: int = Field(8, ge=1)
    asr_prompt: str = "Transcribe the speech."
    # error: a span whose audio file is missing stops training before the first step, naming the files.
    # skip: such sequences are left out, counted and recorded in the model's metrics.
    on_missing_audio: Literal["error", "skip"] = "error"
    device: str = Field("auto", description="auto: cuda when available (bf16 autocast), else cpu")
    log_every: int = Field(10, ge=1)
    loader: LoaderConfig = LoaderConfig()
    distributed: DistributedConfig = DistributedConfig()

    def canonical_json(self) -> str:
        """The configuration that shapes the model (device, logging, data loading and the distribution over
        processes excluded: they change how fast, not what is learned): part of the model id."""
        return json.dumps(self.model_dump(mode="json", exclude={"device", "log_every", "checkpoint_every",
                                                                "keep_checkpoints", "loader", "distributed"}),
                          sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


class TrainConfigError(ValueError):
    pass


def with_base_llm(config: TrainConfig, base_llm: str | None) -> TrainConfig:
    """The config with model.llm.path set to `base_llm` (an LM prior's model id, a hub id or a directory)."""
    if base_llm is None:
        return config
    return TrainConfig.model_validate({**config.model_dump(), "model": {
        **config.model.model_dump(), "llm": {**config.model.llm.model_dump(), "path": base_llm}}})


def load_train_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """Read a YAML training config (None: the defaults), apply top-level overrides, validate."""
    return load_yaml_config(path, TrainConfig, TrainConfigError, "training config", **overrides)


class PretrainConfig(ConfigSection):
    """Text pretraining of the LLM prior (jstip.model.pretraining): a tiny Llama-style LM and its BPE
    tokenizer trained on a dataset version's domain text plus general English sampled offline from the
    pocketsphinx trigram LM (jstip.model.general_text)."""

    # a larger vocabulary than a from-scratch tiny LM's: general English and the domain's words both
    lm: TinyLMConfig = TinyLMConfig(vocab_size=2048)
    # Which text of the dataset version is the domain text: its text_corpus (domain sentences without
    # audio), its accepted transcripts, or both.
    domain_text: Literal["text_corpus", "transcripts", "both"] = "both"
    general_sentences: int = Field(10000, ge=0, description="general English sentences (0: domain text only)")
    general_seed: int = Field(0, ge=0)
    # Share of the sequences of a batch drawn from the domain text (the rest: general English), so a few
    # hundred domain sentences are not drowned by tens of thousands of general ones.
    domain_weight: float = Field(0.5, ge=0, le=1)
    # Share of each source held out for the validation losses in the model's metrics.
    validation_share: float = Field(0.05, ge=0, lt=0.5)
    steps: int = Field(500, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_tokens: int = Field(64, ge=8, description="longer sentences are cut to this many tokens")
    seed: int = 0

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def load_pretrain_config(path: str | Path | None = None, **overrides) -> PretrainConfig:
    """Read a YAML LM-pretraining config (None: the defaults), apply top-level overrides, validate."""
    return load_yaml_config(path, PretrainConfig, TrainConfigError, "LM pretraining config", **overrides)
