"""Parameters the command line needs before any work: the stages' option vocabularies (--schedule, --task,
--objective, --source) and the parameters of `fuse` and `tune`, whose defaults are the commands' defaults.

Plain Python (no torch, numpy or zarr), so `drdc --help` and an option error never load them; the stages import
these from here. One definition of each.
"""
from __future__ import annotations

from dataclasses import dataclass

from stages.errors import check
from stages.config.settle import ASCENDING, DESCENDING, settle_fields
from stages.method.choices import (DISTANCES, FILTER, FUSIONS, GAMMA, GATE, NORMS, POOL, check_fusion, check_init,
                                   check_norm, check_refinement)

SCHEDULES = ("step", "cosine")  # train-base's learning-rate schedule
TASKS = ("paper", "inpaint")  # train-diff's training task
OBJECTIVES = ("mean", "p_auroc", "p_aupro", "i_auroc")  # what tune maximises on validation
SOURCES = {"base": ("infer_base", "h_base"), "fuse": ("fuse", "maps")}  # score's source name -> (stage, array)


@dataclass(frozen=True)
class FuseParams:
    gamma: float = GAMMA
    filter: int = FILTER
    t: tuple[int, ...] = ()  # empty: every t of the cached entries
    c: tuple[int, ...] = ()  # empty: every cached c
    l: tuple[int, ...] = ()  # noqa: E741  empty: every cached l
    spatio_temporal: bool = True
    multiscale_base: bool = False
    n_s: int = 2  # these three pick which infer-diff variant to fuse
    test_time_condition: bool = True
    seed: int = 0
    norm: str = "none"  # stages.method.fusion.NORMS; statistics from the validation normals
    init: str | None = None  # which infer-diff variant: its --init; None: that of the newest cached entry
    distance: str = "pixel"  # which of its maps: pixel (Eq 16) or feature (an entry made with --distance feature)
    fusion: str = "add"  # stages.method.fusion.FUSIONS: how the diffusion term enters Eq 19 (add: as printed)
    gate: float = GATE  # fusion gated: the normalised base level that fully opens the gate
    image_gamma: float | None = None  # the image score's own gamma (None: the image score is taken from H_out)

    def __post_init__(self) -> None:
        settle_fields(self, {"t": DESCENDING, "c": ASCENDING, "l": ASCENDING})  # equal settings, equal keys
        check_fusion(self.gamma, self.filter)
        check_norm(self.norm)
        check_refinement(self.fusion, self.gate, self.norm)
        if self.image_gamma is not None:
            check_fusion(self.image_gamma, 1)
        if self.init is not None:
            check_init(self.init)
        check(self.distance in DISTANCES, "distance", f"must be one of {', '.join(DISTANCES)}", self.distance)
        check(self.n_s >= 2, "n_s", "must be >= 2", self.n_s)


@dataclass(frozen=True)
class TuneParams:
    objective: str = "mean"
    norms: tuple[str, ...] = NORMS
    gammas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    filters: tuple[int, ...] = (1, 11, 21, FILTER)
    fusions: tuple[str, ...] = FUSIONS  # how the diffusion term enters Eq 19 (add: as printed)
    gates: tuple[float, ...] = (1.0, GATE, 4.0)  # fusion gated: levels that open the gate
    image_gammas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # the image score's own gamma (besides H_out's)
    rounds: int = 2
    eval_size: int = 112
    pool: int = POOL

    def __post_init__(self) -> None:
        settle_fields(self, {"norms": NORMS, "gammas": ASCENDING, "filters": ASCENDING, "fusions": FUSIONS,
                           "gates": ASCENDING, "image_gammas": ASCENDING})  # equal settings, equal keys
        check(self.objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}", self.objective)
        check(len(self.norms) > 0 and set(self.norms) <= set(NORMS), "norms", f"must be some of {NORMS}", self.norms)
        check(len(self.gammas) > 0 and all(0 <= g <= 1 for g in self.gammas), "gammas", "must be in [0, 1]",
              self.gammas)
        check(len(self.filters) > 0 and all(m >= 1 and m % 2 == 1 for m in self.filters), "filters",
              "must be odd integers >= 1", self.filters)
        check(len(self.fusions) > 0 and set(self.fusions) <= set(FUSIONS), "fusions", f"must be some of {FUSIONS}",
              self.fusions)
        check(len(self.gates) > 0 and all(g > 0 for g in self.gates), "gates", "must be > 0", self.gates)
        check(all(0 <= g <= 1 for g in self.image_gammas), "image_gammas", "must be in [0, 1]", self.image_gammas)
        check(1 <= self.rounds <= 5, "rounds", "must be in [1, 5]", self.rounds)
        check(16 <= self.eval_size <= 1024, "eval_size", "must be in [16, 1024]", self.eval_size)
