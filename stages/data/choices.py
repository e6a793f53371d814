"""The data options' vocabulary, as plain Python (no numpy, no PIL): the command line checks --layout, --resize and
--val-kinds against it at parse time; the modules that do the work import it from here."""
from __future__ import annotations

LAYOUTS = ("auto", "mvtec", "btad", "visa", "folder")  # stages.data.dataset.discover
RESIZES = ("squash", "pad", "center-crop")  # stages.data.geometry
SYNTHETIC_SIZES = (32, 1024)  # the built-in synthetic dataset's image side, smallest and largest (stages.data.synthetic)

# Synthetic validation defects (stages.data.defects):
KINDS: tuple[str, ...] = ("scratch", "spot", "perlin", "cutpaste")  # the classic, clearly visible ones
# Harder kinds, closer to real surface defects (thin cracks, large uneven regions, texture changes): their contrast
# is drawn relative to the image's own local variation (in local standard deviations), from barely visible to
# clear, so that validation also holds defects as faint as real ones (MTD's crack, uneven, fray).
HARD_KINDS: tuple[str, ...] = ("crack", "stain", "texture", "dent")
ALL_KINDS: tuple[str, ...] = KINDS + HARD_KINDS
