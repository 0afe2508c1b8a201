"""`prefect deployment run build-interleaved/demo` for real: a Prefect server on loopback, a process
worker, the deployments from prefect.yaml, and the published version checked in the catalog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jstip.storage import DatasetStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # own process group, so teardown stops the server's and worker's children too
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "JSTIP_REPO": str(REPO)}
    server = _start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                    tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"Prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield env
    finally:
        _stop(server)


def _prefect(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_deployment_run_through_a_server_and_a_process_worker(prefect_server, tmp_path):
    env = prefect_server
    store = tmp_path / "store"
    _prefect(env, "work-pool", "create", "jstip-process", "--type", "process")
    deployed = _prefect(env, "deploy", "--all")
    assert "build-interleaved/demo" in deployed.stdout and "build-interleaved/38k" in deployed.stdout
    assert "nightly-retrain/nightly" in deployed.stdout and "train/on-demand" in deployed.stdout
    # the nightly schedule is deployed from prefect.yaml as written: 02:00 UTC, active
    nightly = _prefect(env, "deployment", "inspect", "nightly-retrain/nightly").stdout
    assert "'cron': '0 2 * * *'" in nightly and "'timezone': 'UTC'" in nightly and "'active': True" in nightly

    worker = _start([PREFECT, "worker", "start", "--pool", "jstip-process"], env, tmp_path / "worker.log")
    try:
        run = _prefect(env, "deployment", "run", "build-interleaved/demo", "--param", f"store={store}",
                       "--watch", timeout=600)
    finally:
        _stop(worker)
    assert "Completed" in run.stdout

    [version] = DatasetStore(store).versions()
    assert version.name == "demo" and version.status == "published"
    assert version.row_counts["utterances"] + version.row_counts["quarantine"] >= 50
    assert version.row_counts["spans"] > 0
