"""The method's option vocabulary and defaults, and their checks: plain Python, importable without torch.

The command line reads these at parse time (option defaults, the settings' domains), so `drdc
--help` and an option error never load torch; the tensor modules (fusion, inpaint, feature_distance, residual)
import them from here. One definition of each.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

from stages.errors import ConfigError, check

GAMMA, FILTER = 0.9, 41  # the paper's gamma and m (Sec 5): every default of every command comes from here
POOL = 16  # the image score: max of the POOL x POOL average-pooled map (UniAD's, the paper's); score --pool
# How each source map is put on a common scale before Eq 19 (stats from validation normals, never test images):
# none: Eq 19 as printed (the paper); pixel: per-position mean/std (removes position bias, e.g. hot corners);
# quantile: EfficientAD's (map - q_0.9) / (q_0.995 - q_0.9) over all normal pixels (anomalib map_norm_quantiles).
NORMS = ("none", "pixel", "quantile")
# How the diffusion term enters Eq 19 (drdc options; `add` is Eq 19 as printed). The paper's own words: the
# diffusion branch supplies "the high-frequency part" and refines the base map. highpass: only the diffusion map's
# detail below the base map's resolution is added (its low frequencies are the base map's job); gated: the
# diffusion map is added only where the base map is already raised, as a sharpening of what the base map found.
FUSIONS = ("add", "highpass", "gated")
GATE = 2.0  # gated fusion: the base map's normalised value (in normal-image standard deviations) that opens the gate

# How the reverse process starts (x_{t_1}); every init keeps the masked condition I_in and the known-region
# replacement of Eq 13-15, and n1 is drawn apart from I_in's n0.
#   paper: x_{t_1} = q_sample(I_in, t_1): the paper's text; the masked region holds sqrt(abar) n0 + ..., i.e. the
#          same n0 that sits in the condition (training never shows the UNet that pairing).
#   noise: known region q_sample(I_ori, t_1), masked region pure N(0, 1) noise independent of n0: what
#          `train-diff --task inpaint` trains the first reverse step on.
#   ddad:  x_{t_1} = q_sample(I_ori, t_1) everywhere (DDAD): the UNet denoises the image it is asked about,
#          the masked condition tells it which region to distrust; needs no retraining.
INITS = ("paper", "noise", "ddad")
DISTANCES = ("pixel", "feature")  # pixel: Eq 16 (always stored); feature: also the feature-space maps
RESIDUAL_NORMS = ("l2", "mahalanobis")  # Eq 2's norm of F_in - F_out (stages.method.residual)
T_PAPER, BETA_START, BETA_END = 1000, 1e-4, 0.02  # the paper's schedule (DDPM's): T steps, betas from .. to
SCHEDULE_DEFAULTS = {"diffusion_steps": T_PAPER, "beta_start": BETA_START, "beta_end": BETA_END}  # train-diff's


def check_fusion(gamma: float, m: int) -> None:
    """Validate Eq 18-19's hyper-parameters: gamma in [0, 1], filter size m an odd integer >= 1."""
    check(isinstance(gamma, (int, float)) and not math.isnan(gamma) and 0.0 <= gamma <= 1.0,
          "gamma", "must be in [0, 1]", gamma)
    check(isinstance(m, int) and not isinstance(m, bool) and m >= 1 and m % 2 == 1,
          "filter", "must be an odd integer >= 1", m)


def check_norm(norm: str) -> None:
    check(norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}", norm)


def check_refinement(fusion: str, norm: str) -> None:
    """The gated fusion reads normalised maps (a raw base map has no scale that says "raised"). The fusion kind's
    and the gate's own domains are their settings' (stages.pipeline.params.FuseParams)."""
    check(fusion != "gated" or norm != "none", "fusion",
          "gated needs normalised maps (norm pixel or quantile): a raw base map has no scale that says raised", fusion)


def check_init(init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"unknown start {init!r} (choose from {', '.join(INITS)})", "init")


def check_timesteps(ts: Sequence[int], T: int = T_PAPER, param: str = "t") -> tuple[int, ...]:  # noqa: N803
    """Validate a list of timesteps (param: its name, t or chain): integers in [0, T-1], no duplicates, at least
    one. Returns them descending, the order of the reverse process (Sec 5: t in {250, 200, 150, 100, 50, 0})."""
    if len(ts) == 0:
        raise ConfigError("no timestep given; pass at least one, e.g. 250,200,150,100,50,0", param)
    seen: set[int] = set()
    for v in ts:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise ConfigError(f"{v!r} is not an integer timestep", param)
        if not 0 <= int(v) <= T - 1:
            raise ConfigError(f"{v} is out of range [0, {T - 1}]", param)
        if int(v) in seen:
            raise ConfigError(f"duplicate value {v}", param)
        seen.add(int(v))
    return tuple(sorted(seen, reverse=True))


def check_grid(size: int, c: int, n_s: int, param: str = "c") -> None:
    """Raise ConfigError unless c divides size, n_s >= 2 and G = (size / c)^2 >= n_s (no set is empty).
    param: what the caller calls the grid size (train-diff's list of them is `grid`)."""
    if c < 1:
        raise ConfigError(f"grid size must be a positive integer, got {c}", param)
    if size % c != 0:
        raise ConfigError(f"{c} does not divide the image size {size}", param)
    if n_s < 2:
        raise ConfigError(f"{n_s} is below 2; inpainting needs at least two disjoint sets", "n_s")
    g = (size // c) ** 2
    if g < n_s:
        raise ConfigError(f"{n_s} sets need at least {n_s} grid cells, but grid size {c} at image size {size} "
                          f"gives {g}; use a smaller grid size or fewer sets", "n_s")
