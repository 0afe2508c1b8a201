"""Build progress: events from the flow's own task futures, shown as terminal bars by `jstip build`.

The flow tells this module what it knows, as it learns it: how many shards there are and how many were already
complete (`shards`), and the futures of each stage's shard tasks (`follow`). A future's completion is the task
run's final state, reported in the flow's own process whatever ran the task (a thread here, a Dask worker
elsewhere), so the bars and the per-shard log lines look the same under every task runner. Without a listener
(a deployment run by a worker) the events cost nothing; the Prefect UI shows the same task states.

`build_progress(console)` is the listener of `jstip build`: rich progress bars, with every log line of the build
printed through the same console, above the bars (Prefect's console handler writes through it while the bars are
shown), so a terminal never shows bars and log lines overwriting each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

STAGES = ("normalize", "align", "check", "plan")


class BuildListener(Protocol):
    def shards(self, total: int, finished: int) -> None: ...
    def shard_done(self, stage: str) -> None: ...
    def published(self) -> None: ...


_listeners: list[BuildListener] = []
_lock = threading.Lock()


def _each(method: str, *args) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        getattr(listener, method)(*args)


def shards(total: int, finished: int) -> None:
    """The build has `total` shards, `finished` of which were complete in the stage cache already."""
    _each("shards", total, finished)


def follow(stage: str, futures: Iterable, logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    """Report each of a stage's shard task futures as it completes (and log its summary line, if the result has
    one), from the process that runs the flow."""

    def done(future) -> None:
        try:
            output = future.result()
        except BaseException:  # the failure itself is the flow's to raise and report
            return
        if logger is not None and hasattr(output, "summary"):
            logger.info(output.summary())
        _each("shard_done", stage)

    for future in futures:
        future.add_done_callback(done)


def published() -> None:
    _each("published")


@contextmanager
def listening(listener: BuildListener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


class _Bars:
    """One bar per stage (shards done / shards) and one for publishing."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.bars: dict[str, int] = {}

    def shards(self, total: int, finished: int) -> None:
        for stage in STAGES:
            self.bars[stage] = self.progress.add_task(stage, total=total, completed=finished)
        self.bars["publish"] = self.progress.add_task("publish", total=1)

    def shard_done(self, stage: str) -> None:
        if stage in self.bars:
            self.progress.advance(self.bars[stage])

    def published(self) -> None:
        if "publish" in self.bars:
            self.progress.advance(self.bars["publish"])


@contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """Prefect's console handlers print through `console` while the block runs (rich then draws log lines above
    its live bars instead of both writing to the terminal on their own)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = {h for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
                for h in logging.getLogger(name).handlers if isinstance(h, PrefectConsoleHandler)}
    saved = {h: h.console for h in handlers}
    for handler in handlers:
        handler.console = console
    try:
        yield
    finally:
        for handler, original in saved.items():
            handler.console = original


@contextmanager
def build_progress(console: Console) -> Iterator[Progress]:
    """Show per-stage shard progress while the block runs a build in this process."""
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect configures its handlers once, on first use: make them exist before we redirect them
    progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    with _logs_through(console), listening(_Bars(progress)), progress:
        yield progress
