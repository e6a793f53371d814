"""The data options' vocabulary and the synthetic dataset's settings, as plain Python (no numpy, no PIL): the
command line checks the layout, resize and validation kinds against it and makes make-data's and demo's options from
SyntheticSpec at parse time; the modules that do the work import them from here."""
from __future__ import annotations

from dataclasses import dataclass

from stages.config.domains import SEEDS, Choice, Int, List
from stages.config.settings import check_settings, setting
from stages.errors import check

LAYOUTS = ("auto", "mvtec", "btad", "visa", "folder")  # stages.data.dataset.discover
RESIZES = ("squash", "pad", "center-crop")  # stages.data.geometry
SYNTHETIC_SIZES = (32, 1024)  # the built-in synthetic dataset's image side, smallest and largest
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("weave", "disc", "grain")
SYNTHETIC_DEFECTS: dict[str, tuple[str, ...]] = {  # each category's defect types (stages.data.synthetic draws them)
    "weave": ("scratch", "hole", "stain"),  # texture, RGB (denim-like twill)
    "disc": ("scratch", "missing", "stain"),  # object, RGB (turned metal flange on a plain background)
    "grain": ("hole", "scratch"),  # texture, saved as grey 'L' PNG (wood/tile-like grain)
}

# Synthetic validation defects (stages.data.defects):
KINDS: tuple[str, ...] = ("scratch", "spot", "perlin", "cutpaste")  # the classic, clearly visible ones
# Harder kinds, closer to real surface defects (thin cracks, large uneven regions, texture changes): their contrast
# is drawn relative to the image's own local variation (in local standard deviations), from barely visible to
# clear, so that validation also holds defects as faint as real ones (MTD's crack, uneven, fray).
HARD_KINDS: tuple[str, ...] = ("crack", "stain", "texture", "dent")
ALL_KINDS: tuple[str, ...] = KINDS + HARD_KINDS


@dataclass(frozen=True)
class SyntheticSpec:
    """What the built-in synthetic dataset holds (stages.data.synthetic); stored as JSON in the dataset's marker so
    that a rerun can tell whether it may overwrite. Each setting declared once: make-data's and demo's options come
    from here (drdc_cli.generate). A bad value is refused when the spec is made, before any folder is."""

    size: int = setting(224, Int(*SYNTHETIC_SIZES), "Image side in pixels.")
    n_train: int = setting(40, Int(2, 100_000), "train/good images per category.")
    n_test_good: int = setting(10, Int(1, 100_000), "test/good images per category.")
    n_test_defect: int = setting(12, Int(1, 100_000), "Defect test images per category, in turn over its defect "
                                 "types (at least one of each).")
    categories: tuple[str, ...] = setting(SYNTHETIC_CATEGORIES, List(Choice(tuple(SYNTHETIC_DEFECTS))),
                                          "Categories to draw.")
    seed: int = setting(0, Int(0, SEEDS - 1), "Seed of every drawing.")

    def __post_init__(self) -> None:
        check(isinstance(self.categories, (tuple, list)), "categories", "must be a tuple of category names",
              self.categories)
        object.__setattr__(self, "categories", tuple(self.categories))
        check_settings(self)
        need = max(len(SYNTHETIC_DEFECTS[c]) for c in self.categories)
        check(self.n_test_defect >= need, "n_test_defect",
              f"must be >= {need} so every defect type of the chosen categories gets an image", self.n_test_defect)
