"""Code identities: each build stage's (folded into its cache keys), a dataset version's, and a model's.

A stage's cache key hashes the code that stage runs, not the whole tree: its module and every project module
it imports, transitively (imports inside functions too), found by reading the sources with `ast` (an
import graph, not a hand-kept list), plus the shard layer every stage runs through (jstip.tasks.stages,
without the other stages' modules it also imports). Editing the HTML report, the CLI or a flow renames no
dataset version and re-runs nothing; editing the aligner re-runs alignment and what follows it (their keys
chain), not normalisation. The align stage adds the module of the backend the config chooses
(jstip.tasks.aligners.ALIGNERS are imported by name, which no import graph sees).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from jstip import __version__

# The modules each build stage runs (the roots of its import graph); the stage keys of jstip.tasks.stages use them.
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "ingest": ("jstip.tasks.ingest",),
    "normalize": ("jstip.tasks.normalize",),
    "align": ("jstip.tasks.align",),
    "check": ("jstip.tasks.checks",),
    "plan": ("jstip.tasks.plan",),
    "plan_text": ("jstip.tasks.plan",),
    "dedupe": ("jstip.tasks.checks",),
    "publish": ("jstip.tasks.publish",),
}
# The shard layer: reads a shard's inputs, calls the stage, caches the result. Every stage runs through it.
SHARD_LAYER = "jstip.tasks.stages"
# Not hashed: this module computes the identities (a change to how they are computed changes them anyway).
_NOT_HASHED = frozenset({__name__})


def _source(module: str) -> Path | None:
    """The source file of a project module (`jstip.*`), found without importing it; None if there is none."""
    parts = module.split(".")
    if parts[0] != "jstip":
        return None
    if len(parts) == 1:
        spec = importlib.util.find_spec("jstip")
        return Path(spec.origin) if spec and spec.origin else None
    top = importlib.util.find_spec(".".join(parts[:2]))  # jstip.<folder>: the installed package's directory
    if top is None:
        return None
    if top.submodule_search_locations is None:
        return Path(top.origin) if len(parts) == 2 else None
    base = Path(list(top.submodule_search_locations)[0]).joinpath(*parts[2:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Project modules `module` imports anywhere in its source (`from X import name` counts X, and X.name
    when that is a module)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):  # imports for type checkers only never run: not part of what the module runs
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("jstip.") and _source(name) is not None}


@lru_cache(maxsize=None)
def _direct_imports(module: str) -> frozenset[str]:
    path = _source(module)
    return frozenset() if path is None else frozenset(_imports(module, path))


def import_graph(roots: tuple[str, ...], stop: frozenset[str] = frozenset()) -> frozenset[str]:
    """`roots` and every project module they import, transitively; modules in `stop` are not entered."""
    seen: set[str] = set()
    pending = [r for r in roots if _source(r) is not None]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(m for m in _direct_imports(module) if m not in seen and m not in stop)
    return frozenset(seen - _NOT_HASHED)


def _hash_modules(modules: frozenset[str]) -> str:
    digest = hashlib.sha256()
    for module in sorted(modules):
        digest.update(module.encode() + b"\0")
        digest.update(_source(module).read_bytes())
    return digest.hexdigest()[:10]


def stage_modules(stage: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The project modules whose code stage `stage` runs (`extra`: modules it loads by name, e.g. a backend)."""
    stage_roots = frozenset(m for roots in STAGE_MODULES.values() for m in roots)
    return import_graph((*STAGE_MODULES[stage], *extra)) | import_graph((SHARD_LAYER,), stop=stage_roots)


@lru_cache(maxsize=None)
def stage_code_version(stage: str, extra: tuple[str, ...] = ()) -> str:
    """`<package version>+<hash of the code stage `stage` runs>`: part of that stage's cache keys; the publish
    stage's is recorded with every dataset version and is part of its id."""
    return f"{__version__}+{_hash_modules(stage_modules(stage, extra))}"


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


# What never changes a trained model's weights: decoding and scoring. A fix there keeps the model ids (and models).
_NOT_TRAINING = frozenset({"model/decode.py", "model/evaluation.py", "model/metrics.py",
                           "model/significance.py"})


@lru_cache(maxsize=1)
def model_code_version() -> str:
    """`<package version>+<hash of the model and training sources>`: part of every model id. model/ holds the
    network and everything that trains it; the training sequences' contract is schemas/sequences.py."""
    def trains(rel: str) -> bool:
        return (rel.startswith("model/") and rel not in _NOT_TRAINING) or rel == "schemas/sequences.py"

    return f"{__version__}+{_digest(_package_roots('model', 'schemas'), trains)}"
