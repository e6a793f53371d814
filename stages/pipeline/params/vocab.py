"""The stages' own option vocabularies (--schedule, --task, --objective, --source), and the domains that settings of
several stages share (the timesteps, grid sizes and scales infer-diff makes and fuse reads)."""
from __future__ import annotations

from stages.config.domains import Int, List

SCHEDULES = ("step", "cosine")  # train-base's learning-rate schedule
TASKS = ("paper", "inpaint")  # train-diff's training task
OBJECTIVES = ("mean", "p_auroc", "p_aupro", "i_auroc")  # what tune maximises on validation
SOURCES = {"base": ("infer_base", "h_base"), "fuse": ("fuse", "maps")}  # score's source name -> (stage, array)
TIMESTEPS = List(Int(0, 999))  # t-lists (infer-diff --t, fuse --t, train-diff --chain)
IMAGE_SIZES = Int(32, 2048, multiple_of=16)  # the square an image is resized to (index --image-size, bound's)
GRIDS = List(Int(1, 2048))  # grid sizes c and scales l (train-diff --grid, infer-diff and fuse --c / --l)
