"""Every path the docs cite exists: a file or folder of the repository in backticks (`model/training.py`), and
every test they name as `file.py::test_name` (RELIABILITY.md's evidence column) is a test function there."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
FOLDERS = ("flows/", "tasks/", "schemas/", "model/", "storage/", "jstip/", "tests/", "benchmarks/", "configs/",
           "docs/", ".ci/")
# Cited paths that are not files of this repository, each with why.
NOT_IN_THE_REPOSITORY = {
    "model/en-us/en-us.lm.bin": "a file inside the pocketsphinx wheel",
    "benchmarks/out/train_demo/loss_curve.png": "what benchmarks/train_demo.py writes (benchmarks/out/ is ignored)",
}
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_TEST_CITATION = re.compile(r"(?<![\w/])((?:tests/)?[\w/]*test_\w+\.py)::(\w+)")


@cache
def _definitions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    return frozenset(n.name for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def _citations(doc: Path):
    for lineno, line in enumerate(doc.read_text().splitlines(), 1):
        for match in _BACKTICKED.finditer(line):
            cited = match.group(1).rstrip(".,;:)")
            path, _, name = cited.partition("::")
            if path.startswith(FOLDERS) and not any(c in path for c in "*<>{}$"):
                yield lineno, path, name
        for match in _TEST_CITATION.finditer(line):
            path = match.group(1)
            yield lineno, path if path.startswith("tests/") else f"tests/{path}", match.group(2)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_path_and_test_the_docs_cite_exists(doc):
    stale = []
    for lineno, path, name in _citations(doc):
        if path in NOT_IN_THE_REPOSITORY:
            continue
        target = REPO / path
        if not target.exists():
            stale.append(f"{doc.name}:{lineno}: {path} does not exist")
        elif name and target.suffix == ".py" and name.split("[")[0] not in _definitions(target):
            stale.append(f"{doc.name}:{lineno}: {path} has no {name}")
    assert not stale, "\n".join(stale)


def test_the_check_sees_a_stale_citation(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("`model/no_such_module.py` and test_cli.py::test_that_does_not_exist, `tasks/align.py`\n")
    cited = list(_citations(doc))
    assert cited == [(1, "model/no_such_module.py", ""), (1, "tasks/align.py", ""),
                     (1, "tests/test_cli.py", "test_that_does_not_exist")]
    assert not (REPO / "model/no_such_module.py").exists()
    assert "test_that_does_not_exist" not in _definitions(REPO / "tests/test_cli.py")
