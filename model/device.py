"""Which torch device a model trains or decodes on."""

from __future__ import annotations

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: CUDA when available (under torchrun: this rank's GPU, LOCAL_RANK), else CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
