"""Batches off the training loop: DataLoader workers draw each step's batch, lay it out and read its speech
spans from the FLAC pool while the model trains on the previous one.

A batch is a pure function of its step (BucketSampler), so the loader is a map-style dataset indexed by
step and the sampler is the range of steps still to run: workers prepare steps ahead, in any order, and
the loop receives them in step order. The result does not depend on the number of workers (0: batches
are made in the training process, as a plain loop would), and a resumed run starts the range at its
checkpoint. Under data parallelism each rank's loader makes only that rank's share of each global batch.

Workers inherit (fork) or map by path (spawn, forkserver: SequenceIndex pickles as its directory) the
memory-mapped sequence index, so they add no copy of it; each holds at most `prefetch` batches.
"""

from __future__ import annotations

import signal
import sys
import threading

from torch.utils.data import DataLoader, Dataset

from jstip.model.batching import BatchLayout
from jstip.model.speech_llm import Batch
from jstip.model.sequence_pools import BucketSampler


class RankBatches(Dataset):
    """Step -> this rank's share of that step's global batch, laid out and collated, audio read."""

    def __init__(self, sampler: BucketSampler, layout: BatchLayout, rank: int = 0, world_size: int = 1):
        if sampler.batch_size < world_size:
            raise ValueError(f"batch_size {sampler.batch_size} is smaller than the number of processes "
                             f"({world_size}): every rank needs at least one sequence per step")
        self.sampler = sampler
        self.layout = layout
        self.rank = rank
        self.world_size = world_size

    def __getitem__(self, step: int) -> Batch:
        return self.layout(self.sampler.rank_batch(step, self.rank, self.world_size))


def _as_is(batch: Batch) -> Batch:
    return batch


def _worker_init(worker_id: int) -> None:
    """A forked worker starts clean of what it inherited from the training process:
    - it exits at once when that process is killed (Linux: PR_SET_PDEATHSIG), instead of at DataLoader's
      next watchdog check (up to 5 s later), so a killed rank leaves nothing running;
    - SIGTERM ends it (the parent's handler, e.g. Prefect's flow engine's, would raise in it instead), and
      Ctrl-C is left to the parent, which stops its workers;
    - the parent's threads' exit callbacks are dropped: those threads (Prefect's log and event services in a
      flow run) do not exist in the child, and running their callbacks at its exit fails it (exit code 1,
      "DataLoader worker exited unexpectedly")."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inherited = getattr(threading, "_threading_atexits", None)  # CPython's list behind threading._register_atexit
    if isinstance(inherited, list):
        inherited.clear()
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def batch_loader(batches: RankBatches, start_step: int, end_step: int, workers: int, prefetch: int,
                 pin_memory: bool = False) -> DataLoader:
    """Batches of steps [start_step, end_step), in order, made by `workers` processes (0: in this one)."""
    return DataLoader(batches, batch_size=None, sampler=range(start_step, end_step), num_workers=workers,
                      collate_fn=_as_is, pin_memory=pin_memory, worker_init_fn=_worker_init,
                      prefetch_factor=prefetch if workers > 0 else None, persistent_workers=False)
