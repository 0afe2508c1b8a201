"""The Prefect API server of one `jstip` command, and how a command stops.

A flow run needs a Prefect API. When PREFECT_API_URL names one (a deployment's worker, a user's server), that one
is used. Otherwise Prefect would start a temporary server of its own, which fails a command-line user three ways:
it shares the terminal's process group, so Ctrl-C kills it first and the interrupted flow then retries its dead
websocket for minutes; it outlives a SIGKILLed parent (an orphaned ~225 MB uvicorn under PID 1); and it is private
to its process, so every Dask worker process starts one more. `prefect_api()` starts the same server (Prefect's
own app under uvicorn, loopback only) itself instead:
- in its own session, so the terminal's Ctrl-C reaches the command, not the server;
- tied to this process by the kernel (PR_SET_PDEATHSIG): if the command dies, even by SIGKILL, the server gets
  SIGTERM and exits;
- exported in PREFECT_API_URL, so every process the command starts (Dask workers included) reports to it.

`interruptible()` turns SIGINT and SIGTERM into one clear line and exit code 130 / 143 within seconds: shard tasks
may be deep in native code (an aligner, a decoder) that cannot be interrupted, so after a short grace the process
exits without waiting for them. Nothing is lost by that: stage results and published versions appear only complete (written
aside, then renamed), temporaries carry their owner's pid and are removed by the next build, and a rerun of the
same command resumes from the finished shards.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the server's process between fork and exec: ask the kernel for SIGTERM when the parent dies."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def prefect_api(log_dir: Path | None = None) -> Iterator[str]:
    """Yield the URL of the Prefect API this command's flows report to; start a server for it if none is set.

    The server's own output goes to `log_dir/prefect-server.log` (default: PREFECT_HOME), never into the
    terminal."""
    import prefect
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if PREFECT_API_URL.value():  # the environment's, or a test harness's
        with _exported(PREFECT_API_URL.value()):
            yield PREFECT_API_URL.value()
        return

    log_dir = Path(log_dir or PREFECT_HOME.value())
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0",
           # Prefect's "ephemeral" app: the API without the background services a build does not need
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    with open(log_dir / "prefect-server.log", "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect server did not start within {timeout:.0f} s (exit code "
                                   f"{server.poll()}); its log: {log_dir / 'prefect-server.log'}")
            time.sleep(0.2)
        with _exported(url), temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_to_the_server()
    finally:
        stop_server(server)


def _drain_to_the_server(timeout_s: float = 5.0) -> None:
    """Send the log lines and events Prefect still holds to the server before it stops (else Prefect prints
    "Error logging to API" at exit, for records nobody will read)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort: the command's own outcome is already decided
            pass


@contextmanager
def _exported(url: str) -> Iterator[None]:
    """PREFECT_API_URL in the environment (child processes: Dask workers report there) and in Prefect's
    process-wide settings (threads that do not inherit this context: Prefect's event and log workers, which
    would otherwise start a temporary server of their own)."""
    from prefect.context import refresh_global_settings_context

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        refresh_global_settings_context()


def stop_server(server: subprocess.Popen, wait_s: float = 5.0) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report


class _QuietAfterInterrupt(logging.Filter):
    """Once the user interrupted, Prefect's crash reports ("Crash detected! ...") are noise: the one line the
    command prints says what happened. During a flow run Prefect's own SIGTERM handler runs before ours (it
    records the run as crashed, then passes the signal on), so its report is recognised by its text."""

    interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.interrupted or "aborted by a termination signal" in record.getMessage())


@contextmanager
def interruptible(on_stop: Callable[[str], None], grace_s: float = 5.0) -> Iterator[None]:
    """Run the block; on SIGINT or SIGTERM, exit the process with 130 or 143 after calling `on_stop(signal name)`
    (print the one line). The signal is first raised in the main thread (KeyboardInterrupt / Terminated) so that
    the flow run is recorded as crashed and the local server stops; whatever has not unwound after `grace_s`
    seconds (worker threads busy in native code, a second Ctrl-C) is cut short."""
    quiet = _QuietAfterInterrupt()
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    handlers = {h for logger in loggers for h in logger.handlers}
    stopping = threading.Lock()
    received: list[str] = []

    def stop_now(name: str) -> None:
        if stopping.acquire(blocking=False):
            on_stop(name)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_CODES[name])

    def interrupt(signum, frame):
        name = signal.Signals(signum).name
        if received or quiet.interrupted:  # a second signal: no more waiting
            stop_now(received[0] if received else name)
        received.append(name)
        quiet.interrupted = True
        watchdog = threading.Timer(grace_s, stop_now, args=(name,))
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    for target in (*loggers, *handlers):
        target.addFilter(quiet)
    try:
        yield
    except (KeyboardInterrupt, Terminated) as stop:
        stop_now(received[0] if received else ("SIGINT" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for target in (*loggers, *handlers):
            target.removeFilter(quiet)


class _ExpectedErrors(logging.Filter):
    """Drops console records about errors the command reports itself: their tracebacks (exc_info) and Prefect's
    state lines that name them ("Finished in state Failed('... AccountingError: ...')")."""

    def __init__(self, is_expected: Callable[[BaseException], bool], marks: tuple[str, ...]):
        super().__init__()
        self.is_expected = is_expected
        self.marks = marks

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and self.is_expected(record.exc_info[1]):
            return False
        return not (record.levelno >= logging.ERROR and any(mark in record.getMessage() for mark in self.marks))


@contextmanager
def quiet_console_logs(is_expected: Callable[[BaseException], bool], marks: tuple[str, ...]) -> Iterator[None]:
    """While the block runs, Prefect's console handlers leave out records about the errors `is_expected` accepts
    (and error lines containing one of `marks`: the errors' class names or messages)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    quiet = _ExpectedErrors(is_expected, marks)
    handlers = {h for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
                for h in logging.getLogger(name).handlers if isinstance(h, PrefectConsoleHandler)}
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
