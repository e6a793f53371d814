"""Small pieces every stage run uses: the result record, device choice, seeding, keyed parameters."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch

from stages.errors import ConfigError
from stages.config.settle import ASCENDING, DESCENDING, keyed, settle_fields  # noqa: F401 (torch-free; re-exported)


@dataclass(frozen=True)
class StageResult:
    stage: str
    key: str
    cached: bool
    seconds: float
    summary: str


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable explicit device is a ConfigError."""
    from stages.pipeline.dist import local_device

    if device == "auto":
        d = local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        logging.getLogger(__name__).debug("device auto -> %s (torch %s, %d threads)", d, torch.__version__,
                                          torch.get_num_threads())
        return d
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)", "device") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'{device}' requested but no CUDA device is available (use cpu)", "device")
    return local_device(d)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
