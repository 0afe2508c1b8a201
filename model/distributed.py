"""Training on several processes and machines: torch.distributed process groups, DDP / FSDP2, and torch's own
launcher (torch.distributed.run, i.e. `torchrun`).

How a distributed run works (jstip.model.training uses these pieces):
- `torchrun` (or `jstip train --nproc-per-node N`, which runs it) starts one process per device; each
  joins the process group from torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_*`):
  gloo on CPU, NCCL on CUDA (`init_from_env`).
- Every rank draws the same global batch of a step (BucketSampler: a pure function of (seed, step)) and
  keeps its share: sequences rank, rank + N, ... (`jstip.model.sequence_pools.rank_share`).
- Before the forward pass the ranks add up their label tokens and speech spans (one all_reduce of two
  integers), and each rank divides its loss sums by those global counts; the ranks' losses then add up to
  the loss of the global batch, and DDP's gradient average times N is the gradient of the global batch.
  So the run does not depend on N beyond floating-point order (tests/model/test_distributed.py).
- Rank 0 alone builds the sequence index and checks the audio files, builds or copies the LLM, picks the
  checkpoint to resume from, writes checkpoints, the loss log, the final model and the catalog row; the
  other ranks wait for it (`broadcast`) and are told what it found.
- A rank that dies (killed, out of memory) makes torchrun's agent stop the others: the run fails with the
  failing rank named, and a rerun resumes from the last checkpoint (which is complete or absent). With
  `max_restarts` > 0 the agent restarts the whole group itself, and it resumes the same way.

Sharding (`distributed.sharding` in the training config): `ddp` keeps a full replica of the model on each
rank (DistributedDataParallel); `fsdp` shards parameters, gradients and optimizer state over the ranks with
PyTorch's FSDP2 (`fully_shard`), one unit per transformer block of the LLM and of the encoder, the rest
(embeddings, projector, CTC head, markers) in the root unit: for LLMs whose weights, gradients and Adam
state do not fit one device (docs/SCALING.md has the memory arithmetic). Checkpoints are full state dicts
in both cases (gathered to rank 0), so a run can resume under either, and on any number of ranks.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

# torchrun sets these in every worker's environment
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# set to 1 in torchrun's environment: no rendezvous store shared between restarts (see launch_environment)
UNSHARED_STORE_VARIABLE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


class DistributedTrainingError(RuntimeError):
    """A distributed training job failed; the message says which rank and why, when torchrun said so."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job. The default is a single process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # gloo | nccl; None: no process group
    owns_group: bool = False  # whether we created the process group (and so destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def sum(self, values: Sequence[float | int], dtype: torch.dtype = torch.float64) -> list:
        """The element-wise sum of `values` over the ranks."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=dtype, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()


def under_launcher() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return all(name in os.environ for name in _ENV)


def init_from_env(device_type: str, timeout_minutes: float) -> DistributedContext:
    """Join the process group described by torchrun's environment; a single-process context without one.

    device_type: cuda -> NCCL (and this process's GPU is LOCAL_RANK), cpu -> gloo. timeout_minutes: how
    long a collective may wait, including the other ranks' wait while rank 0 builds the sequence index."""
    if not under_launcher():
        return DistributedContext()
    rank, world_size, local_rank = (int(os.environ[name]) for name in _ENV)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():  # the caller made one: use it, leave it to them
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), False)
    if rank == 0 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 \
            and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log.warning("torchrun restarts this job after a failure (--max-restarts) but shares its rendezvous store "
                    "with the workers: a restarted group may fail to connect (pytorch#135712). Run torchrun with "
                    "%s=1 in its environment (jstip train --nproc-per-node does).", UNSHARED_STORE_VARIABLE)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return DistributedContext(rank, world_size, local_rank, backend, True)


def shutdown(ctx: DistributedContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def step_seed_parts(seed: int, step: int, rank: int) -> str:
    """What seeds torch's RNG (dropout) at a step: (seed, step) on rank 0, as in a single process, and
    (seed, step, rank) on the others, so ranks draw different dropout masks."""
    return f"{seed}:{step}" if rank == 0 else f"{seed}:{step}:{rank}"


# -- wrapping the model ---------------------------------------------------------------------------------


def _block_types(model: nn.Module) -> tuple[type, ...]:
    """Transformer block classes to shard as FSDP units: every block a transformers model declares it must
    not split (`_no_split_modules`: LlamaDecoderLayer, Qwen2DecoderLayer, WhisperEncoderLayer, ...) and
    torch's own TransformerEncoderLayer (the conv encoder's)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    types = {nn.TransformerEncoderLayer}
    types.update(type(m) for m in model.modules() if type(m).__name__ in names)
    return tuple(types)


def wrap_model(model: nn.Module, ctx: DistributedContext, device: torch.device, sharding: str) -> nn.Module:
    """The model as the training loop uses it: itself on one process, DDP or FSDP2 on several."""
    if ctx.world_size == 1:
        return model
    if sharding == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: a step of the text pool uses no speech module (their gradients stay None
        # on every rank, as on one process, so AdamW leaves them alone). No buffer syncing per step: the
        # model's buffers (mel filters, windows) are constants.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True, forward_sync_buffers=False)
    if sharding == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = _block_types(model)
        for module in list(model.modules()):
            if isinstance(module, blocks):
                fully_shard(module)
        fully_shard(model)
        return model
    raise ValueError(f"unknown sharding {sharding!r} (ddp or fsdp)")


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# -- launching ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """How torchrun starts the job. One machine: nproc_per_node processes (one per GPU, or per core group on
    CPU), rendezvous on a free local port. Several machines: run the same command on each, with `nnodes`
    and a shared `rdzv_endpoint` (host:port of one of them); torchrun assigns the ranks."""

    nproc_per_node: int = 1
    nnodes: str = "1"  # "N", or "MIN:MAX" for an elastic job
    rdzv_endpoint: str | None = None
    rdzv_id: str = "jstip-train"
    max_restarts: int = 0  # > 0: torchrun restarts the whole group after a failure, which resumes from the last checkpoint

    def __post_init__(self):
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node must be >= 1, not {self.nproc_per_node}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {self.max_restarts}")
        if self.nnodes != "1" and not self.rdzv_endpoint:
            raise ValueError(f"nnodes {self.nnodes}: several machines need rdzv_endpoint (host:port of one of "
                             "them, the same on every machine)")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes != "1"

    def torchrun_args(self) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}",
                f"--max-restarts={self.max_restarts}"]
        if self.rdzv_endpoint:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={self.rdzv_id}"]
        else:
            args.append("--standalone")
        return args


def launch_environment(base: dict | None = None) -> dict[str, str]:
    """The environment torchrun runs in: `base` (default: ours) with torchrun's rendezvous store not shared
    with the workers' process group. Shared (torch's default), a restarted group (`max_restarts`) can read
    the keys its killed predecessor left in the same store and connect to ports nobody listens on any more
    (gloo: "connectFullMesh failed ... Connection refused"; NCCL likewise: pytorch#135712, #167288); unshared,
    every rendezvous round gets a fresh store."""
    env = dict(os.environ if base is None else base)
    env.setdefault(UNSHARED_STORE_VARIABLE, "1")
    return env


def launch_command(spec: LaunchSpec, jstip_args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run <spec> -m jstip <jstip_args>`: torchrun running the jstip CLI in
    each worker (the same entry point a user runs under torchrun by hand)."""
    return [sys.executable, "-m", "torch.distributed.run", *spec.torchrun_args(), "-m", "jstip", *jstip_args]


def run_launcher(command: Sequence[str], on_line: Callable[[str], None] = print, env: dict | None = None,
                 started: Callable[[subprocess.Popen], None] | None = None) -> None:
    """Run torchrun (in `launch_environment(env)`) and wait for it, passing every line it and its workers
    print to `on_line`.

    A failure raises DistributedTrainingError with torchrun's account of it (the failing rank, its exit code
    or signal, its traceback). If we are interrupted (Ctrl-C, a cancelled flow run) torchrun is asked to stop
    its workers (SIGTERM: its agent forwards it to every worker's process group) and reaped."""
    if isinstance(command, str):
        raise TypeError("run_launcher takes an argument list, never a command line for a shell")
    tail: deque[str] = deque(maxlen=60)
    process = subprocess.Popen([*command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, env=launch_environment(env), start_new_session=True,
                               preexec_fn=_stop_with_parent)
    if started is not None:
        started(process)
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        code = process.wait()
    except BaseException:
        _stop(process)
        raise
    if code != 0:
        raise DistributedTrainingError(f"distributed training failed (torchrun exit code {code}):\n"
                                       + _root_cause(list(tail)))


def _stop_with_parent() -> None:
    """Runs in torchrun's process between fork and exec: the kernel sends it SIGTERM if we die (even by
    SIGKILL), and torchrun then stops its workers, so a killed flow run leaves no training job behind (nor
    its hold on the model's lock)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # we died before prctl took effect
        os._exit(1)


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    import psutil

    if process.poll() is not None:
        return
    try:
        # torchrun starts each worker in a session of its own: collected now, while they are its children
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    process.send_signal(signal.SIGTERM)  # torchrun's agent stops its workers' process groups, then exits
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        for child in [psutil.Process(process.pid), *descendants]:
            try:
                child.kill()
            except psutil.Error:
                pass
        process.wait()


def _root_cause(lines: list[str]) -> str:
    """torchrun's summary of the first failure (from its 'Root Cause' line), else the last lines printed."""
    for i, line in enumerate(lines):
        if "Root Cause" in line:
            return "\n".join(lines[i:])
    return "\n".join(lines[-25:])
