"""Small pieces every stage uses: the result record, device choice, seeding, option checks."""
from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .errors import ConfigError


@dataclass(frozen=True)
class StageResult:
    stage: str
    key: str
    cached: bool
    seconds: float
    summary: str


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable explicit device is a ConfigError."""
    from .dist import local_device

    if device == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: '{device}' requested but no CUDA device is available (use --device cpu)")
    return local_device(d)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check(cond: bool, option: str, message: str, value: Any) -> None:
    """Raise a one-line ConfigError naming the option, the rule and the offending value."""
    if not cond:
        raise ConfigError(f"{option}: {message} (got {value!r})")


def keyed(params: Any) -> dict:
    """The params of a frozen dataclass as a JSON-able dict (tuples become lists), for cache keys and attrs."""
    out = {}
    for f in fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
