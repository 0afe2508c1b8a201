"""How `jstip build` stops, seen from outside: a real `jstip` process in its own session (as a shell runs it),
signalled mid-build like a terminal's Ctrl-C (SIGINT to the whole process group), a `kill` (SIGTERM) or a
`kill -9` (SIGKILL); then every process that descends from it is counted by a marker in its environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jstip.tasks.synth import synthesize_corpus

pytestmark = pytest.mark.slow

JSTIP = str(Path(sys.executable).parent / "jstip")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), utterances=12, seed=5).nemo_manifest


def _marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries the marker (every descendant inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"JSTIP_TEST_MARKER={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is dead, only not yet reaped
                    found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def _start_build(corpus: Path, store: Path, marker: str) -> subprocess.Popen:
    env = {**os.environ, "JSTIP_TEST_MARKER": marker, "PREFECT_HOME": str(store.parent / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # the command starts its own server, as on a user's machine
    return subprocess.Popen([JSTIP, "build", "--manifest", str(corpus), "--store", str(store), "--shard-size", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_until_aligning(build: subprocess.Popen, store: Path, timeout: float = 180) -> None:
    """Until a shard has been normalised: the server is up, the flow runs, shard tasks are busy."""
    deadline = time.monotonic() + timeout
    normalized = store / "work" / "normalize"
    while not (normalized.is_dir() and any(not p.name.startswith(".") for p in normalized.iterdir())):
        assert build.poll() is None, f"the build ended before it was signalled:\n{build.stdout.read()}"
        assert time.monotonic() < deadline, "the build did not reach normalisation in time"
        time.sleep(0.1)


def _listening(pid: int) -> list[str]:
    """host:port of every TCP socket the process listens on (its fds' socket inodes, looked up in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                address, port = fields[1].split(":")
                host = ".".join(str(b) for b in reversed(bytes.fromhex(address))) if width == 8 else address
                found.append(f"{host}:{int(port, 16)}")
    return found


def _gone_within(marker: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_a_signalled_build_stops_within_10_s_with_one_line_and_leaves_no_process(corpus, tmp_path, how, code):
    marker = uuid.uuid4().hex
    store = tmp_path / "store"
    build = _start_build(corpus, store, marker)
    try:
        _wait_until_aligning(build, store)
        assert len(_marked_processes(marker)) >= 2  # the command and its Prefect server
        signalled = time.monotonic()
        if how == "ctrl-c":
            os.killpg(build.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
        else:
            build.send_signal(signal.SIGTERM)
        output, _ = build.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
    assert build.returncode == code, output
    assert took < 10, f"took {took:.1f} s to stop"
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert output.rstrip().splitlines()[-1] == (
        f"build stopped ({name}); finished shards are cached: rerun the same command to resume."), output
    assert "Traceback" not in output and "Crash detected" not in output, output
    assert _gone_within(marker, 10) == []


def test_sigkill_of_the_command_leaves_no_prefect_server_behind(corpus, tmp_path):
    marker = uuid.uuid4().hex
    store = tmp_path / "store"
    build = _start_build(corpus, store, marker)
    try:
        _wait_until_aligning(build, store)
        before = _marked_processes(marker)
        assert len(before) >= 2, before  # the command and its Prefect server
        # what the command started listens on loopback only
        sockets = [address for pid in before for address in _listening(pid)]
        assert sockets and all(address.startswith("127.0.0.1:") for address in sockets), sockets
        build.kill()  # SIGKILL to the command only: nothing of it can clean up
        build.wait(timeout=10)
        left = _gone_within(marker, 15)
    finally:
        for pid in _marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"left behind: {[(pid, Path(f'/proc/{pid}/cmdline').read_bytes()) for pid in left]}"

    # and the next run resumes and publishes
    rerun = subprocess.run([JSTIP, "build", "--manifest", str(corpus), "--store", str(store), "--shard-size", "2"],
                           env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "published" in rerun.stdout
