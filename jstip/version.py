"""Code versions: one recorded with every dataset version and folded into every stage cache key, one
recorded with every model."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jstip import __version__

# Modules under the data packages that never shape a dataset version (training, evaluation, exports):
# changing them must not invalidate every stage cache and rename every dataset version.
NOT_DATA_SHAPING = frozenset({
    "tasks/train.py", "tasks/sequences.py", "tasks/metrics.py", "tasks/export.py", "tasks/evaluate.py",
    "tasks/decode.py", "tasks/promote.py", "flows/train.py", "flows/evaluate.py", "flows/nightly_retrain.py",
    "storage/registry.py", "schemas/sequences.py", "tasks/pretrain_lm.py", "tasks/general_text.py",
    "flows/pretrain_lm.py", "tasks/distributed.py", "tasks/loader.py",
})


def _digest(roots: dict[str, Path], include=lambda rel: True) -> str:
    digest = hashlib.sha256()
    for label, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = f"{label}/{path.relative_to(root)}"
            if include(rel):
                digest.update(rel.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _package_roots(*names: str) -> dict[str, Path]:
    import importlib

    return {name: Path(importlib.import_module(f"jstip.{name}").__file__).parent for name in names}


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>+<hash of the pipeline's Python sources>`: any change to code that shapes data
    yields a new version."""
    roots = _package_roots("schemas", "storage", "tasks", "flows")
    return f"{__version__}+{_digest(roots, lambda rel: rel not in NOT_DATA_SHAPING)}"


@lru_cache(maxsize=1)
def model_code_version() -> str:
    """`<package version>+<hash of the model and training sources>`: part of every model id."""
    roots = _package_roots("model", "schemas", "tasks")
    training = {"tasks/train.py", "tasks/sequences.py", "schemas/sequences.py", "tasks/pretrain_lm.py",
                "tasks/general_text.py", "tasks/distributed.py", "tasks/loader.py"}
    # decoding never changes a trained model's weights: a decoder fix keeps the model ids (and the models)
    return f"{__version__}+{_digest(roots, lambda rel: (rel.startswith('model/') and rel != 'model/decode.py') or rel in training)}"
