"""The stages' own option vocabularies (--schedule, --task, --objective, --source)."""
from __future__ import annotations

SCHEDULES = ("step", "cosine")  # train-base's learning-rate schedule
TASKS = ("paper", "inpaint")  # train-diff's training task
OBJECTIVES = ("mean", "p_auroc", "p_aupro", "i_auroc")  # what tune maximises on validation
SOURCES = {"base": ("infer_base", "h_base"), "fuse": ("fuse", "maps")}  # score's source name -> (stage, array)
