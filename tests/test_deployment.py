"""The deployments of prefect.yaml for real: a Prefect server on loopback (its own scheduler running), `prefect
deploy --all`, a process worker, `prefect deployment run build-interleaved/demo`, and the published version
checked in the catalog. The server is shared by the module's tests (starting one costs ~10 s)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import json
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


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prefect-server")
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
        yield env, tmp_path / "server.log"
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """`prefect deploy --all` from prefect.yaml, as the README says; returns (env, its output, server log)."""
    env, server_log = prefect_server
    _prefect(env, "work-pool", "create", "jstip-process", "--type", "process")
    return env, _prefect(env, "deploy", "--all").stdout, server_log


def _prefect(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _api(env: dict, path: str, body: dict | None = None):
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_the_nightly_schedule_fires_on_a_real_server(deployed):
    """The server's own scheduler (not the test) creates the nightly runs. With SQLAlchemy 2.1 Prefect 3.8.8's
    scheduler failed every loop ("Can't evaluate bulk DML statement") and the deployment never got a run."""
    env, output, server_log = deployed
    assert "nightly-retrain/nightly" in output
    # the schedule is deployed from prefect.yaml as written: 02:00 UTC, active
    nightly = _prefect(env, "deployment", "inspect", "nightly-retrain/nightly").stdout
    assert "'cron': '0 2 * * *'" in nightly and "'timezone': 'UTC'" in nightly and "'active': True" in nightly
    deployment_id = _api(env, "/deployments/name/nightly-retrain/nightly")["id"]
    query = {"deployments": {"id": {"any_": [deployment_id]}},
             "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    deadline = time.monotonic() + 90  # the scheduler service loops every 60 s
    while not (runs := _api(env, "/flow_runs/filter", query)) and time.monotonic() < deadline:
        time.sleep(2)
    log = server_log.read_text()
    assert runs, f"no scheduled run of nightly-retrain/nightly after 90 s; server log:\n{log[-3000:]}"
    times = sorted(run["expected_start_time"] for run in runs)
    assert all(t.endswith(("T02:00:00Z", "T02:00:00+00:00")) for t in times), times
    assert "Traceback" not in log and "Error" not in log, log[-3000:]


def test_deployment_run_through_a_server_and_a_process_worker(deployed, tmp_path):
    env, output, _ = deployed
    store = tmp_path / "store"
    assert "build-interleaved/demo" in output and "build-interleaved/38k" in output
    assert "nightly-retrain/nightly" in output and "train/on-demand" in output

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
