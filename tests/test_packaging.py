"""The package as installed: every folder of the design card is importable as jstip.<folder>, from the repository
and from anywhere else, and every subpackage goes into the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("flows", "tasks", "schemas", "model", "storage")


def test_the_top_level_folders_are_linked_into_the_package():
    for folder in FOLDERS:
        link = REPO / "jstip" / folder
        assert link.is_symlink() and link.resolve() == REPO / folder, folder


def test_the_package_imports_the_same_from_the_repository_and_from_elsewhere(tmp_path):
    script = "import jstip.tasks.stages as s, jstip.storage.store, jstip.flows, jstip.model, jstip.schemas; print(s.__file__)"
    for cwd in (REPO, tmp_path):
        out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()).resolve() == REPO / "tasks" / "stages.py"


def test_every_package_folder_is_found_by_the_build_config():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert config["include"] == ["jstip", "jstip.*"]
    from setuptools import find_packages

    found = set(find_packages(str(REPO), include=config["include"]))
    on_disk = {".".join(("jstip", *Path(d).relative_to(REPO / "jstip").parts))
               for d, _, files in os.walk(REPO / "jstip", followlinks=True) if "__init__.py" in files}
    assert "jstip.tasks.aligners" in on_disk and found == on_disk


def test_every_project_import_names_a_module_that_exists():
    """Imports inside functions too (a moved module is found here, not by the one run that reaches the import)."""
    import ast
    import importlib.util

    missing = []
    for folder in ("jstip", *FOLDERS, "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if folder == "jstip" and path.relative_to(REPO / "jstip").parts[0] in FOLDERS:
                continue  # the links: their files are read under their own folder
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jstip"):
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names if a.name.startswith("jstip")]
                else:
                    continue
                for name in names:
                    if importlib.util.find_spec(name) is None:
                        missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not missing, missing
