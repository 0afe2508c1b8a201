"""A full disk or a read-only file system ends a command with one clear line: the real `jstip`, its store on a
small tmpfs (or a read-only one) mounted in a private mount namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jstip.tasks.synth import synthesize_corpus

pytestmark = pytest.mark.slow

JSTIP = str(Path(sys.executable).parent / "jstip")
# mounts a tmpfs (options in argv[2]) over argv[1], then runs the rest of argv: in `unshare -m`, nobody else sees it
MOUNT_THEN_RUN = ("import os, subprocess, sys; "
                  "subprocess.run(['mount', '-t', 'tmpfs', '-o', sys.argv[2], 'tmpfs', sys.argv[1]], check=True); "
                  "os.execv(sys.argv[3], sys.argv[3:])")


def _can_mount() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return probe.returncode == 0


requires_mounts = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), utterances=3, seed=4).nemo_manifest


def _build_on_tmpfs(corpus: Path, tmp_path: Path, options: str) -> subprocess.CompletedProcess:
    store = tmp_path / "store"
    store.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(["unshare", "-m", sys.executable, "-c", MOUNT_THEN_RUN, str(store), options, JSTIP,
                           "build", "--manifest", str(corpus), "--store", str(store)],
                          env=env, capture_output=True, text=True, timeout=600)


@requires_mounts
@pytest.mark.parametrize("options, message", [
    ("size=64k", "error: No space left on device: free some space"),
    ("ro", "error: Read-only file system (")])
def test_a_full_or_read_only_store_is_one_line_not_a_traceback(corpus, tmp_path, options, message):
    result = _build_on_tmpfs(corpus, tmp_path, options)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert message in output, output
    assert "Traceback" not in output and "UnfinishedRun" not in output and "NotReady" not in output, output
    # the error is the last thing said, on one line
    assert output.rstrip().splitlines()[-1].startswith("error: "), output
