"""The applications' option vocabulary and ablate's selection, as plain Python: importable without torch (the
command line checks --down, --up and --format against it and takes ablate's defaults from it at parse time)."""
from __future__ import annotations

from dataclasses import dataclass

from stages.method.choices import FILTER, GAMMA, GATE, POOL

DOWN_MODES = ("nearest-exact", "nearest", "area")  # stages.apps.bound: how a mask is downscaled
UP_MODES = ("bilinear", "nearest")  # ... and upsampled back
FORMATS = ("onnx", "torchscript")  # stages.apps.export


@dataclass(frozen=True)
class Selection:
    """Which cached maps the full method fuses: `drdc fuse`'s options and defaults (empty = all cached)."""

    gamma: float = GAMMA
    filter: int = FILTER
    t: tuple[int, ...] = ()
    c: tuple[int, ...] = ()
    l: tuple[int, ...] = ()  # noqa: E741
    n_s: int = 2
    seed: int = 0
    pool: int = POOL
    norm: str = "none"  # stages.method.fusion.NORMS: every row is normalised the same way, with its own statistics
    init: str | None = None  # Table 5's rows: which infer-diff start (None: that of the newest cached maps, as
    distance: str = "pixel"  # fuse takes it) and distance; the OPTIONS rows set their own
    fusion: str = "add"  # how every row's diffusion term enters Eq 19; the FUSION_OPTIONS rows set their own
    gate: float = GATE
