"""Checkpoints and the loss log of a training run (jstip.model.training), written so that a kill at any moment
never breaks the next run: a checkpoint directory is written under a temporary name and renamed (complete or
absent), the log is trimmed to the checkpoint being resumed by writing a temporary and renaming, and rows cut
short by a kill are skipped when read.

A checkpoint holds the trainable weights, the optimizer and the LR schedule, as full tensors keyed by
parameter name: under FSDP every rank takes part in gathering them, rank 0 alone writes them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import torch

from jstip.model import distributed
from jstip.model.distributed import DistributedContext

CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.csv"
# data_wait_s: how long the step waited for its batch (DataLoader workers falling behind the model)
LOG_FIELDS = ("step", "loss", "llm_loss", "ctc_loss", "learning_rate", "sequences", "label_tokens",
              "speech_seconds", "elapsed_s", "data_wait_s")


def list_checkpoints(model_dir: Path) -> list[Path]:
    return sorted((model_dir / CHECKPOINTS).glob("step-*"))


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in distributed.unwrap(model).named_parameters() if p.requires_grad}


def gather_state(model: torch.nn.Module, optimizer, ctx: DistributedContext) -> tuple[dict, dict] | None:
    """The trainable weights and the optimizer state as full tensors on CPU, keyed by parameter name, on
    rank 0 (None elsewhere). Sharded (FSDP) tensors are gathered: every rank must call this then."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    sharded = distributed.is_sharded(model)
    if not (ctx.is_main or sharded):  # replicas: rank 0 holds everything already
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if not ctx.is_main:
        return None
    trainable = trainable_names(model)
    return {k: v for k, v in full.items() if k in trainable}, optimizer_state


def load_state(model: torch.nn.Module, optimizer, checkpoint: Path, device: torch.device,
                ctx: DistributedContext) -> None:
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    # FSDP: rank 0 reads the files and broadcasts the shards (one copy in host memory per machine, not per rank)
    from_rank0 = distributed.is_sharded(model)
    if from_rank0 and not ctx.is_main:
        weights, optimizer_state = {}, {}
    else:
        location = "cpu" if from_rank0 else device
        weights = torch.load(checkpoint / "weights.pt", map_location=location, weights_only=True)
        optimizer_state = torch.load(checkpoint / "optimizer.pt", map_location=location, weights_only=True)["optimizer"]
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=from_rank0)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def save_checkpoint(state: tuple[dict, dict], scheduler, step: int, model_dir: Path, keep: int) -> Path:
    weights, optimizer_state = state
    final = model_dir / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(weights, tmp / "weights.pt")
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    tmp.rename(final)  # a checkpoint directory is complete or absent
    for old in list_checkpoints(model_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def trim_log(path: Path, steps_done: int) -> None:
    """Keep the log rows of steps up to the checkpoint being resumed (later ones will be run again), and only
    whole rows: a run killed mid-write may have left a partial last line. Rewritten to a temporary file and
    renamed, so a kill here leaves the old log or the new one, never a torn one."""
    if not path.exists():
        return
    rows = log_rows(path)
    kept = [r for r in rows if int(r["step"]) <= steps_done]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, restval="")
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in kept)  # a log of an older version too
    os.replace(tmp, path)


def log_rows(path: Path) -> list[dict]:
    """The log's complete rows, in step order: a row with a missing field or an unreadable step (a line cut
    short by a kill, a stray header) is left out rather than failing the next run."""
    rows: dict[int, dict] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if None in row.values() or None in row or not (row.get("step") or "").isdigit():
                continue
            rows[int(row["step"])] = row
    return [rows[step] for step in sorted(rows)]
