"""torchrun awareness: rank and world size from the launcher's environment, and a process group when training needs one.

Without torchrun every function answers as a single process (rank 0 of 1), so plain `drdc` behaves exactly as before.
Inference stages need no process group at all: ranks share work through chunk claims in the run store.
"""
from __future__ import annotations

import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """A bare 'cuda' means this rank's GPU under torchrun (LOCAL_RANK), cuda:0 otherwise."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank() if is_distributed() else 0)
    return device


def setup(device: torch.device) -> None:
    """Join the process group once (nccl on CUDA, gloo on CPU); a no-op without torchrun."""
    import torch.distributed as td

    if not is_distributed() or td.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()
