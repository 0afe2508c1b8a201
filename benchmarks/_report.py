"""Shared by the benchmark scripts: record a section of BENCHMARKS.md.

Scripts run as `python benchmarks/<name>.py`, so this directory is on sys.path: `from _report import write_section`.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of BENCHMARKS.md."""
    path = REPO / "BENCHMARKS.md"
    header = "# Benchmarks\n\nMeasured figures; each section names the command that reproduces it.\n"
    text = path.read_text() if path.exists() else header
    block = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")
