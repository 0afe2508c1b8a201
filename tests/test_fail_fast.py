"""A build that cannot accept anything says so, with the fix: the real `jstip build`, on the layouts users have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jstip.tasks.synth import synthesize_corpus

pytestmark = pytest.mark.slow

JSTIP = str(Path(sys.executable).parent / "jstip")


def _jstip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([JSTIP, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def nemo_layout(tmp_path_factory) -> Path:
    """NeMo's usual layout: manifests/train.jsonl with absolute paths into a sibling audio/ folder."""
    root = tmp_path_factory.mktemp("corpus")
    synth = synthesize_corpus(root / "synth", utterances=3, seed=31)
    (root / "manifests").mkdir()
    lines = [json.loads(line) for line in synth.nemo_manifest.read_text().splitlines()]
    for line in lines:
        assert Path(line["audio_filepath"]).is_absolute() and Path(line["audio_filepath"]).parent == synth.out_dir / "audio"
    (root / "manifests" / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_audio_outside_the_allowed_roots_stops_at_ingest_naming_the_flag_then_the_flag_builds(nemo_layout, tmp_path):
    manifest = nemo_layout / "manifests" / "train.jsonl"
    store = tmp_path / "store"
    refused = _jstip("build", "--manifest", str(manifest), "--store", str(store), cwd=tmp_path)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 2, output
    audio = nemo_layout / "synth" / "audio"
    assert f"--allow-root {audio}" in output and "3 entries" in output and "Nothing was built" in output
    assert "Traceback" not in output and "Finished in state Failed" not in output, output
    # stopped before any audio work, and nothing was published
    assert not (store / "work" / "normalize").exists() and not (store / "catalog.duckdb").exists()

    built = _jstip("build", "--manifest", str(manifest), "--store", str(store), "--allow-root", str(audio), cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "3 accepted, 0 quarantined" in built.stdout


def test_a_build_that_accepts_nothing_fails_with_the_reasons_and_what_to_do(nemo_layout, tmp_path):
    lines = [json.loads(line) for line in (nemo_layout / "manifests" / "train.jsonl").read_text().splitlines()]
    manifest = tmp_path / "moved.jsonl"  # paths inside the manifest's directory, but the files are not there
    manifest.write_text("".join(json.dumps({**line, "audio_filepath": Path(line["audio_filepath"]).name}) + "\n"
                                for line in lines))
    result = _jstip("build", "--manifest", str(manifest), "--store", str(tmp_path / "store"), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "nothing was accepted: the most common reasons" in output
    assert "audio_not_found" in output and "relative audio paths are read relative to the manifest" in output
    assert "has 0 accepted utterances of 3" in output and "quarantine" in output
    assert "Traceback" not in output, output
