"""Word aligners: the contract (`base`), one module per backend, and what they share.

- `base`: WordAligner, WordTiming, PhoneTiming, UtteranceAlignment, AlignmentFailed;
- `pocketsphinx`, `whisperx`, `nemo`: the backends, imported only when chosen (`make_aligner`), so a NeMo
  user never loads pocketsphinx and a pocketsphinx user never loads torch;
- `energy`: the checks every backend's output goes through; `verify`: transcript verification of CTC backends;
- `textnorm`: the spoken forms of transcript tokens (numbers, money, dates, units); `g2p`: ARPAbet for
  out-of-vocabulary words from espeak-ng (`espeak`, a ctypes binding also used by the demo corpus generator);
- `align_manifest`, `alignment_io`, `eval_alignment`: `jstip align` and `jstip eval-alignment` (JSONL, CTM,
  TextGrid, TIMIT .wrd), tools over the same backends outside a build.

The build stage that runs them over a shard is `jstip.tasks.align`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jstip.config import AlignConfig
    from jstip.tasks.aligners.base import WordAligner

# Aligner backends by name: "module:class", imported only when chosen (whisperx and nemo import torch).
ALIGNERS: dict[str, str] = {
    "pocketsphinx": "jstip.tasks.aligners.pocketsphinx:PocketsphinxAligner",
    "whisperx": "jstip.tasks.aligners.whisperx:WhisperXAligner",
    "nemo": "jstip.tasks.aligners.nemo:NemoAligner",
}


def backend_module(name: str) -> str:
    """The module of backend `name` (what the align stage's code identity adds for it)."""
    return ALIGNERS[name].partition(":")[0]


def make_aligner(config: AlignConfig) -> WordAligner:
    """The configured backend, constructed once (per shard) from the whole AlignConfig."""
    module, _, cls = ALIGNERS[config.aligner].partition(":")
    return getattr(importlib.import_module(module), cls)(config)
