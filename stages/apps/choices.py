"""The applications' option vocabulary and ablate's selection, as plain Python: importable without torch (the
command line checks --down, --up and --format against it and makes ablate's options from it at parse time)."""
from __future__ import annotations

from dataclasses import dataclass

from stages.pipeline.params import FuseParams
from stages.pipeline.params.fusion import pool_setting

DOWN_MODES = ("nearest-exact", "nearest", "area")  # stages.apps.bound: how a mask is downscaled
UP_MODES = ("bilinear", "nearest")  # ... and upsampled back
FORMATS = ("onnx", "torchscript")  # stages.apps.export
OVERRIDES = ("gamma", "filter", "t", "c", "l")  # the fuse settings predict and calibrate may replace (apps.predict)


@dataclass(frozen=True)
class Selection(FuseParams):
    """Which cached maps the full method fuses: fuse's settings (empty = all cached; the Table 5 rows set their own
    switches, norm, init, distance and fusion kind), plus the image score's pool."""

    pool: int = pool_setting()
