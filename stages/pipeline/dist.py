"""torchrun awareness: rank and world size from the launcher's environment, and a process group when training needs one.

Without torchrun every function answers as a single process (rank 0 of 1), so plain `drdc` behaves exactly as before.
Inference stages need no process group at all: ranks share work through chunk claims in the run store.
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch

from stages.errors import DrdcError, StoreError

if TYPE_CHECKING:
    from stages.store.cache import Entry, RunStore

T = TypeVar("T")


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


# -- training helpers (added for DDP train-base / train-diff) -----------------------------------------------------

def _group_ready() -> bool:
    import torch.distributed as td

    return td.is_available() and td.is_initialized()


def main_decides(fn: Callable[[], T]) -> T:
    """Run fn on rank 0 only and hand its result to every rank (broadcast_object_list); without a process group,
    just fn(). An exception on rank 0 is raised on every rank, so no rank waits forever on a collective that
    rank 0 never reaches (a DrdcError keeps its class and message; anything else becomes a RuntimeError there)."""
    if not _group_ready():
        return fn()
    import torch.distributed as td

    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks are told
            error = e
            box[0] = ("error", e if isinstance(e, DrdcError) else RuntimeError(f"rank 0 failed: {e!r}"))
    td.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise value
    return value


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """Sum each value over all ranks (float64); the values themselves without a process group."""
    if not _group_ready():
        return values
    import torch.distributed as td

    dev = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    td.all_reduce(t)
    return tuple(t.tolist())


def rank_seed(seed: int, step: int) -> int:
    """A 63-bit seed for (seed, step, this rank): under DDP each rank reseeds the global RNG with it at every
    epoch/step, so ranks draw different jitter/dropout and a resumed run draws what an uninterrupted one would."""
    digest = hashlib.sha256(f"drdc-rank:{int(seed)}:{int(step)}:{rank()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def ddp_params(params: dict, batch_size: int) -> dict:
    """The params recorded (and keyed) for a training entry: unchanged for one process, so existing caches stay
    valid; under DDP plus world_size and the effective batch size (per-rank batch x world). The lr is used as
    given (no automatic scaling), so `lr` in params is the lr used."""
    w = world_size()
    return params if w == 1 else {**params, "world_size": w, "effective_batch_size": batch_size * w}


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around model under torchrun (it broadcasts rank 0's weights, so every rank starts
    equal); the model itself otherwise. Checkpoints are taken from the unwrapped model, so they load anywhere."""
    if not _group_ready():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def seen_by_this_rank(path: Path) -> None:
    """A file rank 0 wrote must be visible here too; otherwise the run store is not on a filesystem every node
    shares (or not at the same path), which is a one-line StoreError, not a hang."""
    if not path.exists():
        raise StoreError(f"{path}: rank 0 wrote it but rank {rank()} on {socket.gethostname()} cannot see it; put "
                         "the run store on a filesystem every node mounts at the same path")


def start_together(device: torch.device) -> None:
    """Under torchrun, wait until every rank is ready before claiming chunks: otherwise the first rank up
    (the others still loading models) would claim every chunk. A no-op without torchrun."""
    if is_distributed():
        setup(device)
        barrier()


def begin_training(store: "RunStore", stage: str, params: dict, inputs: dict[str, str], seed: int, config: dict,
                   unit: str, total: int, grows: str | None = None) -> tuple["Entry | None", str, bool, bool, str]:
    """Rank 0 begins the training entry (writer lock, config.json) and every rank learns what it decided:
    (rank 0's entry or None elsewhere, key, cached, resume from last.pt, summary when cached).
    grows: the length parameter (e.g. "steps") of a training whose first k units do not depend on its length;
    a new entry then starts from the checkpoint of the longest shorter run of the same settings
    (stages.store.checkpoint.adopt_shorter)."""
    import json

    from stages.store.checkpoint import adopt_shorter

    entry = None

    def decide() -> tuple[str, bool, bool, str]:
        nonlocal entry
        entry, cached = store.begin(stage, params, inputs, seed=seed)
        if cached:
            h = entry.attrs.get("history", [])
            return entry.key, True, False, f"{total} {unit}" + (f", final loss {h[-1]['loss']:.4g}" if h else "")
        (entry.files / "config.json").write_text(json.dumps(config, indent=1))
        if grows is not None and not (entry.files / "last.pt").exists():
            adopt_shorter(store, entry, grows, unit)
        return entry.key, False, (entry.files / "last.pt").exists(), ""

    key, cached, resume, summary = main_decides(decide)
    return entry, key, cached, resume, summary
