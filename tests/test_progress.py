"""What `jstip build` shows on a terminal, seen from outside: the real command on a pseudo-terminal, its bytes
rendered by a terminal emulator (pyte), with the local thread runner and with a Dask LocalCluster."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyte
import pytest

from jstip.tasks.synth import synthesize_corpus

pytestmark = pytest.mark.slow

JSTIP = str(Path(sys.executable).parent / "jstip")
COLUMNS, ROWS = 120, 40
STAGES = ("normalize", "align", "check", "plan", "publish")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), utterances=6, seed=11).nemo_manifest


def _prefect_servers(marker: str) -> int:
    """Live Prefect API servers (uvicorn running Prefect's app) started by the command under test."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"JSTIP_TEST_MARKER={marker}".encode() in environ and b"prefect.server.api.server:create_app" in cmdline:
            count += 1
    return count


def _run_on_a_terminal(args: list[str], env: dict, marker: str, timeout: float = 300) -> tuple[int, bytes, int]:
    """Run a command with a pseudo-terminal as stdin/stdout/stderr; return (exit code, everything it wrote, the
    most Prefect servers seen at once while it ran)."""
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    # the terminal's size, as a real one reports it
    import fcntl
    import struct
    import termios
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(args, env=env, stdin=follower, stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    written, servers, deadline = bytearray(), 0, time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every writer exited
                chunk = b""
            written += chunk
            if not chunk and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
        servers = max(servers, _prefect_servers(marker))
        assert time.monotonic() < deadline, "the build did not finish in time"
    os.close(leader)
    return process.wait(), bytes(written), servers


def _screen_lines(output: bytes) -> list[str]:
    """Every line the terminal shows or scrolled past, as a person would read it."""
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10000)
    stream = pyte.ByteStream(screen)
    stream.feed(output.replace(b"\n", b"\r\n") if b"\r\n" not in output else output)
    history = ["".join(line[x].data for x in range(COLUMNS)).rstrip() for line in screen.history.top]
    return [*history, *(line.rstrip() for line in screen.display)]


@pytest.mark.parametrize("runner", ["local", "dask"])
def test_a_terminal_shows_complete_bars_with_every_log_line_intact_above_them(corpus, tmp_path, runner):
    config = tmp_path / "build.yaml"
    config.write_text(f"runner: {{kind: {runner}, dask_workers: 2}}\n")
    marker = uuid.uuid4().hex
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "INFO", "TERM": "xterm-256color", "COLUMNS": str(COLUMNS),
           "JSTIP_TEST_MARKER": marker, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    code, output, servers = _run_on_a_terminal(
        [JSTIP, "build", "--manifest", str(corpus), "--store", str(tmp_path / "store"), "--shard-size", "2",
         "--config", str(config)], env, marker)
    lines = _screen_lines(output)
    text = "\n".join(lines)
    assert code == 0, text

    # one Prefect server for the whole command: Dask workers report to it instead of starting their own
    assert servers == 1

    # each stage's bar ends full: n/n shards
    shards = {re.match(r"^\s*normalize .*?(\d+)/(\d+)", line) for line in lines} - {None}
    assert shards, text
    total = int(next(iter(shards)).group(2))
    assert total >= 2
    for stage in STAGES:
        done = total if stage != "publish" else 1
        assert any(re.match(rf"^\s*{stage} .*\b{done}/{done}\b", line) for line in lines), f"{stage}:\n{text}"

    # every per-shard log line is on a line of its own, whole, once: nothing drawn over it, no bar mixed in
    for stage in STAGES[:-1]:
        for index in range(total):
            logged = [line for line in lines if re.search(rf"\| Flow run .* - {stage} s{index:04d}: \d+ ", line)]
            assert len(logged) == 1, f"{stage} s{index:04d}: {logged}\n{text}"
            assert "━" not in logged[0], logged[0]
    assert "published demo/" in text
