"""Shared by the training benchmarks: one training run and its evaluation, in a worker process.

Scripts run as `python benchmarks/<name>.py`, so this directory is on sys.path: `from _runs import train_and_evaluate`.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the kernel kills this worker when the process that started it dies (Linux
    PR_SET_PDEATHSIG), so a benchmark killed mid-run (SIGKILL included) leaves no training process behind.
    A worker's own DataLoader workers exit by themselves when it dies (torch's watchdog)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int):
    """A spawn-context process pool whose workers die with this process; on an exception (Ctrl-C included)
    the running workers are terminated instead of being waited for."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # this process's own children: the pool's workers
            child.terminate()
        raise
    pool.shutdown(wait=True)


def train_and_evaluate(store: str, version_id: str, test_version: str, config: dict, name: str,
                       decodings: list[str] | None = None, threads: int = 1) -> dict:
    """Train `config` (a TrainConfig as a dict) on a version, decode the test version, return the figures.
    decodings: None -> jstip.model.evaluation's defaults for the model."""
    import torch

    torch.set_num_threads(threads)
    from jstip.model.config import TrainConfig
    from jstip.model.decode import DecodeOptions
    from jstip.model.evaluation import evaluate
    from jstip.model.training import train

    cpu0, wall0 = time.process_time(), time.perf_counter()
    trained = train(store, version_id, TrainConfig.model_validate(config), name=name, on_log=lambda _: None)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = evaluate(store, trained.model_id, test_version, test_set=f"{name}-test",
                      decodings=None if decodings is None else [DecodeOptions.parse(d) for d in decodings],
                      on_log=lambda _: None)
    return {"model_id": trained.model_id, "train_cpu_s": train_cpu, "train_wall_s": train_wall,
            "eval_cpu_s": time.process_time() - cpu0, "eval_wall_s": time.perf_counter() - wall0,
            "decode_wall_s": report.seconds, "first_loss": trained.metrics["first_loss"],
            "final_loss": trained.metrics["final_loss"], "sequences_per_pool": trained.metrics["sequences_per_pool"],
            "overall": report.overall, "hypotheses": {k: str(v) for k, v in report.hypotheses.items()},
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
