"""The tiny speech-LLM training config the tests train with: seconds on a CPU core (imported by the tests that
train, e.g. `from tiny_model import TINY`; tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from jstip.model.config import SpeechLLMConfig, TinyLMConfig, TrainConfig

TINY = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=4, log_every=4,
                   model=SpeechLLMConfig(llm={"tiny": TinyLMConfig(vocab_size=400, hidden=32, intermediate=64)},
                                         encoder={"d_model": 32, "ffn_dim": 64, "layers": 1},
                                         projector={"hidden": 32}))
