"""The parameters of fuse (Eq 17-19 over cached maps), tune (the search over them on validation) and score."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stages.config.domains import SEEDS, Choice, Int, List, Real
from stages.config.settings import check_settings, setting
from stages.config.settle import ASCENDING, DESCENDING, settle_fields
from stages.method.choices import (DISTANCES, FILTER, FUSIONS, GAMMA, GATE, INITS, NORMS, POOL, check_refinement)
from stages.pipeline.params.vocab import GRIDS, OBJECTIVES, SOURCES, TIMESTEPS

_F = "fusion"
GAMMAS = Real(0.0, 1.0)
FILTERS = Int(1, 255, odd=True)
GATES = Real(0.0, 1e3, lo_open=True)


def pool_setting() -> Any:
    """The image score's pooling kernel: one declaration for score, tune and ablate, which each have it."""
    return setting(POOL, Int(1, 256), "Average-pooling kernel before the max (image score).")


@dataclass(frozen=True)
class FuseParams:
    gamma: float = setting(GAMMA, GAMMAS, "Weight of the diffusion heatmap (Eq 19); 0: base only.", panel=_F)
    filter: int = setting(FILTER, FILTERS, "Mean filter size m (Eq 18), odd.", panel=_F)
    t: tuple[int, ...] = setting((), TIMESTEPS, "Timesteps to fuse, e.g. 250,200,150 (default: every cached "
                                 "one).", panel=_F)
    c: tuple[int, ...] = setting((), GRIDS, "Grid sizes to fuse, e.g. 1,16,32 (default: every cached "
                                 "one).", panel=_F)
    l: tuple[int, ...] = setting((), GRIDS, "Scales to fuse, e.g. 1,2,4,8 (default: every cached "  # noqa: E741
                                 "one).", panel=_F)
    spatio_temporal: bool = setting(True, None, "Off: only the last step at l = 1 (Table 5).", panel=_F)
    multiscale_base: bool = setting(False, None, "Multi-scale base heatmap (Table 5).", panel=_F)
    # these four pick which infer-diff variant to fuse
    n_s: int = setting(2, Int(2, 4096), "Which infer-diff variant: its n_s.", flag="ns", panel=_F)
    test_time_condition: bool = setting(True, None, "Which infer-diff variant: its test-time condition.", panel=_F)
    seed: int = setting(0, Int(0, SEEDS - 1), "Which infer-diff variant: its seed.", panel=_F)
    norm: str = setting("none", Choice(NORMS), "Scale of each map before Eq 19: none (the paper), pixel (per-position "
                        "mean/std of the validation normals) or quantile ((map - q0.9) / (q0.995 - q0.9)).", panel=_F,
                        added=True)
    init: str | None = setting(None, Choice(INITS), "Which maps, by the start infer-diff made them from "
                               "({infer_diff.init}; default: the newest cached).", panel=_F, added=True)
    distance: str = setting("pixel", Choice(DISTANCES), "Which maps: pixel (Eq 16) or feature ({infer_diff.distance} "
                            "feature).", panel=_F, added=True)
    fusion: str = setting("add", Choice(FUSIONS), "How the diffusion term enters Eq 19: add (as printed), highpass "
                          "(only its detail finer than H_base's grid), gated (only where H_base is raised; needs "
                          "{norm}).", panel=_F, added=True)
    gate: float = setting(GATE, GATES, "{fusion} gated: the normalised H_base level (in normal standard deviations) "
                          "that fully opens the gate.", panel=_F)
    image_gamma: float | None = setting(None, GAMMAS, "Image scores from a fusion at this gamma (default: from H_out "
                                        "itself); the pixel map keeps {gamma}.", panel=_F,
                                        added=True)

    def __post_init__(self) -> None:
        settle_fields(self, {"t": DESCENDING, "c": ASCENDING, "l": ASCENDING})  # equal settings, equal keys
        check_settings(self)
        check_refinement(self.fusion, self.norm)


@dataclass(frozen=True)
class TuneParams:
    objective: str = setting("mean", Choice(OBJECTIVES), "What to maximise on validation: mean (of the three), "
                             "p_auroc, p_aupro or i_auroc.")
    norms: tuple[str, ...] = setting(NORMS, List(Choice(NORMS)), "Normalisations to try, e.g. none,pixel,quantile.")
    gammas: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 0.9, 1.0), List(GAMMAS), "gamma values to try (0: base "
                                        "only, 1: diffusion only).")
    filters: tuple[int, ...] = setting((1, 11, 21, FILTER), List(FILTERS), "Mean filter sizes m to try (odd).")
    fusions: tuple[str, ...] = setting(FUSIONS, List(Choice(FUSIONS)), "Fusion kinds to try: add (Eq 19), highpass, "
                                       "gated.")
    gates: tuple[float, ...] = setting((1.0, GATE, 4.0), List(GATES), "Gate levels to try with {fusion} gated.")
    image_gammas: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 1.0), List(GAMMAS), "Image-score gammas to try "
                                              "besides scoring H_out itself.")
    rounds: int = setting(2, Int(1, 5), "Passes of the coordinate search.")
    eval_size: int = setting(112, Int(16, 1024), "Trials are scored at this map size (the chosen one exactly).")
    pool: int = pool_setting()

    def __post_init__(self) -> None:
        settle_fields(self, {"norms": NORMS, "gammas": ASCENDING, "filters": ASCENDING, "fusions": FUSIONS,
                             "gates": ASCENDING, "image_gammas": ASCENDING})  # equal settings, equal keys
        check_settings(self)


@dataclass(frozen=True)
class ScoreParams:
    source: str = setting("base", Choice(tuple(SOURCES)), "Which heatmaps to score: base (H_base) or fuse (DRDC's "
                          "H_out).")
    pool: int = pool_setting()

    def __post_init__(self) -> None:
        settle_fields(self)  # equal settings, equal keys
        check_settings(self)
