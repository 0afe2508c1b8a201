"""The tiny speech-LLM training config the tests train with: seconds on a CPU core (imported by the tests that
train, e.g. `from tiny_model import TINY`; tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from pathlib import Path

from jstip.config import load_config
from jstip.model.config import SpeechLLMConfig, TinyLMConfig, TrainConfig
from jstip.synth import synthesize_corpus
from jstip.tasks.stages import build_in_process

TINY = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=4, log_every=4,
                   model=SpeechLLMConfig(llm={"tiny": TinyLMConfig(vocab_size=400, hidden=32, intermediate=64)},
                                         encoder={"d_model": 32, "ffn_dim": 64, "layers": 1},
                                         projector={"hidden": 32}))


def publish_six_utterances(root: Path):
    """Six real synthetic utterances (seed 11) synthesised under root/synth and built and published with the
    default config into the store root/data: (store, the published version)."""
    synth = synthesize_corpus(root / "synth", utterances=6, seed=11)
    store = root / "data"
    return store, build_in_process(str(synth.nemo_manifest), str(synth.out_dir / "text_corpus.tsv"), str(store),
                                   load_config(None))
