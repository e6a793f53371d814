"""The applications' vocabulary, ablate's selection and bound's settings, as plain Python: importable without torch
(the command line makes ablate's and bound's options from them at parse time)."""
from __future__ import annotations

from dataclasses import dataclass

from stages.config.domains import Choice, Int, List
from stages.config.settings import check_settings, setting
from stages.errors import check
from stages.pipeline.params import FuseParams
from stages.pipeline.params.fusion import pool_setting
from stages.pipeline.params.vocab import IMAGE_SIZES

DOWN_MODES = ("nearest-exact", "nearest", "area")  # stages.apps.bound: how a mask is downscaled
UP_MODES = ("bilinear", "nearest")  # ... and upsampled back
FORMATS = ("onnx", "torchscript")  # stages.apps.export
OVERRIDES = ("gamma", "filter", "t", "c", "l")  # the fuse settings predict and calibrate may replace (apps.predict)


@dataclass(frozen=True)
class Selection(FuseParams):
    """Which cached maps the full method fuses: fuse's settings (empty = all cached; the Table 5 rows set their own
    switches, norm, init, distance and fusion kind), plus the image score's pool."""

    pool: int = pool_setting()


@dataclass(frozen=True)
class BoundParams:
    """The paper's Table 1 (stages.apps.bound): how the ground-truth masks are resized, down- and upsampled."""

    scales: tuple[int, ...] = setting((2, 4, 8, 16), List(Int(1, 2048)), "Downscaling factors s (the map is S/s "
                                      "pixels wide); each must divide the image size.")
    image_size: int | None = setting(None, IMAGE_SIZES, "Masks are resized to this square size first (default 224; "
                                     "with {run}: the index's size).")
    down: str = setting("nearest-exact", Choice(DOWN_MODES), "Downsampling: nearest-exact (block centre, mask stays "
                        "binary), nearest (block corner) or area (block mean).")
    up: str = setting("bilinear", Choice(UP_MODES), "Upsampling back: bilinear (as every heatmap here) or nearest.")

    def __post_init__(self) -> None:
        if self.image_size is None:  # no index to follow: the paper's size
            object.__setattr__(self, "image_size", 224)
        object.__setattr__(self, "scales", tuple(self.scales))
        check_settings(self)
        for s in self.scales:
            # A factor that divides the image size makes every low-resolution pixel cover exactly s x s pixels,
            # as the paper's 224 -> 112 ... 14 does; 3 or 5 would make blocks of uneven size.
            check(self.image_size % s == 0, "scales",
                  f"every scale must be a positive divisor of the image size {self.image_size} (e.g. 2,4,8,16)", s)
