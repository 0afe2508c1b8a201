"""Terminal progress bars for `jstip build`, fed by the flow's own log lines.

The shard tasks log one line per finished shard and stage ("align s0003: ..."), and ingest logs how many
shards there are; a logging handler turns those records into rich progress bars. With the local task
runner the records arrive in this process; with Dask they are emitted in the workers, so follow the
Prefect UI (or the worker logs) instead: the bars then stay at the ingest step.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

STAGES = ("normalize", "align", "check", "plan")
_INGESTED = re.compile(r"^ingested .*: (\d+) entries in (\d+) shards")
_SHARD_DONE = re.compile(rf"^({'|'.join(STAGES)}) s\d+: ")
_PUBLISHED = re.compile(r"^published ")
_RESUMED = re.compile(r"^resuming: (\d+) of \d+ shards already complete")


class _StageProgressHandler(logging.Handler):
    def __init__(self, progress: Progress):
        super().__init__(level=logging.INFO)
        self.progress = progress
        self.bars: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := _INGESTED.match(message):
            shards = int(match.group(2))
            for stage in STAGES:
                self.bars[stage] = self.progress.add_task(stage, total=shards)
            self.bars["publish"] = self.progress.add_task("publish", total=1)
        elif (match := _RESUMED.match(message)) and self.bars:
            for stage in STAGES:
                self.progress.advance(self.bars[stage], int(match.group(1)))
        elif (match := _SHARD_DONE.match(message)) and match.group(1) in self.bars:
            self.progress.advance(self.bars[match.group(1)])
        elif _PUBLISHED.match(message) and "publish" in self.bars:
            self.progress.advance(self.bars["publish"])


@contextmanager
def stage_progress(console: Console | None = None):
    """Show per-stage shard progress while the block runs a build in this process."""
    progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    handler = _StageProgressHandler(progress)
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        with progress:
            yield progress
    finally:
        logger.removeHandler(handler)
