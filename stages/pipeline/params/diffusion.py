"""The parameters of train-diff (the conditional UNet, Eq 12) and infer-diff (the heatmaps per t, c, l, Eq 10-16)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from stages.config.domains import SEEDS, Choice, Int, List, Real
from stages.config.settings import check_settings, key_of, setting
from stages.config.settle import ASCENDING, DESCENDING, settle_fields
from stages.errors import check
from stages.method.choices import DISTANCES, INITS, SCHEDULE_DEFAULTS, check_grid, check_timesteps
from stages.models.config import UNetConfig
from stages.pipeline.params.vocab import GRIDS, TASKS, TIMESTEPS

if TYPE_CHECKING:
    from stages.method.diffusion import Schedule

U = UNetConfig()  # the network's defaults (the paper's) are the stage's
_M, _T = "model", "training"


@dataclass(frozen=True)
class TrainDiffParams:
    size: int = setting(U.image_size, Int(8, 2048), "Diffusion resolution (images are resized to it; heatmaps are "
                        "upsampled back).", panel=_M)
    model_channels: int = setting(U.model_channels, Int(1, 4096), panel=_M)
    channel_mult: tuple[int, ...] = setting(U.channel_mult, List(Int(1, 64), distinct=False), "e.g. 1,1,2,2,4,4",
                                            panel=_M)
    num_res_blocks: int = setting(U.num_res_blocks, Int(1, 64), flag="res-blocks", panel=_M)
    attention_resolutions: tuple[int, ...] = setting(U.attention_resolutions, GRIDS, "Feature-map sides with "
                                                     "self-attention, e.g. 28,14,7.", flag="attention", panel=_M)
    num_head_channels: int = setting(U.num_head_channels, Int(1, 4096), "Channels per attention head.",
                                     flag="head-channels", panel=_M)
    dropout: float = U.dropout
    model_condition: bool = setting(U.model_condition, None, "UNet sees concat(x_t, I_in) (Eq 12); off: the "
                                    "ablation.", panel=_M)
    steps: int = setting(100_000, Int(1, 10**9), panel=_T)
    batch_size: int = setting(16, Int(1, 65_536), panel=_T)
    lr: float = setting(1e-4, Real(0.0, 10.0, lo_open=True), panel=_T)
    weight_decay: float = 1e-4
    ema: float = setting(0.9999, Real(0.0, 1.0, hi_open=True), "EMA rate of the weights used at inference.", panel=_T)
    grid: tuple[int, ...] = setting((1, 16, 32), GRIDS, "Grid sizes c of the training masks (as at inference), e.g. "
                                    "1,16,32.", panel=_T)
    n_s: int = setting(2, Int(2, 4096), "Mask sets per grid size (n_s).", flag="ns", panel=_T)
    t_max: int = setting(999, Int(0, 999), "Train timesteps in [0, t_max] (999: all; used up to diffusion_steps - 1).",
                         panel=_T)
    seed: int = setting(0, Int(0, SEEDS - 1), panel=_T)
    ckpt_every: int = setting(500, Int(1, 10**9), "Checkpoint every N steps.", panel=_T)
    task: str = setting("paper", Choice(TASKS), "paper: Eq 12 as printed; inpaint: train on the reverse process's own "
                        "states ({chain}), x0 target I_ori on the masked region.", panel=_T, added=True)
    chain: tuple[int, ...] = setting((250, 200, 150, 100, 50, 0), TIMESTEPS, "{task} inpaint: the infer-diff t-list "
                                     "to train along, e.g. 250,150,50.", panel=_T)
    crop: int = setting(0, Int(0, 2048), "Train on random N x N crops of the {size} images (0: whole image); "
                        "infer-diff runs on the whole image.", panel=_T, added=True)
    # the noise schedule (Eq 3-4): DDPM's linear betas over T steps; the paper's T = 1000, 1e-4 .. 0.02
    diffusion_steps: int = setting(SCHEDULE_DEFAULTS["diffusion_steps"], Int(1, 1000), "T of the linear noise "
                                   "schedule (Eq 3-4; the paper: 1000).", panel=_T, added=True)
    beta_start: float = setting(SCHEDULE_DEFAULTS["beta_start"], Real(0.0, 1.0, lo_open=True, hi_open=True),
                                "First beta of the linear schedule (the paper: 1e-4).", panel=_T, added=True)
    beta_end: float = setting(SCHEDULE_DEFAULTS["beta_end"], Real(0.0, 1.0, lo_open=True, hi_open=True),
                              "Last beta of the linear schedule (the paper: 0.02).", panel=_T, added=True)

    def __post_init__(self) -> None:
        settle_fields(self, {"grid": ASCENDING, "attention_resolutions": DESCENDING})  # equal settings, equal keys
        check_settings(self)
        check(self.beta_start <= self.beta_end, "beta_start/beta_end", "need 0 < beta_start <= beta_end < 1",
              (self.beta_start, self.beta_end))
        # only the inpaint task runs along the chain: the paper task's (unused) chain keeps the paper's range
        chain_t = self.diffusion_steps if self.task == "inpaint" else SCHEDULE_DEFAULTS["diffusion_steps"]
        object.__setattr__(self, "chain", check_timesteps(self.chain, chain_t, param="chain"))
        factor = 2 ** (len(self.channel_mult) - 1)
        check(self.crop == 0 or (0 < self.crop <= self.size and self.crop % factor == 0), "crop",
              f"must be 0 (whole image) or a multiple of {factor} (the UNet's downsampling) up to size "
              f"{self.size}", self.crop)
        for c in self.grid:
            check_grid(self.size, c, self.n_s, "grid")  # infer-diff's rule for c, on the training grid sizes

    def key_params(self) -> dict:
        """The params that key the entry: those of the paper's task keep the keys they had before --task."""
        d = key_of(self)  # the paper's schedule, no crop, the paper's task: keys as before those options
        d.pop("chain" if self.task == "paper" else "t_max")  # each task keys only the setting it uses
        return d

    def schedule(self) -> Schedule:
        """The noise schedule the UNet is trained (and run) with (Eq 3-4), read as every reader of the entry does."""
        from stages.pipeline.trained import schedule_of

        return schedule_of(self.key_params())

    def unet_config(self) -> UNetConfig:
        """The network's config: every field the params share with UNetConfig (--size is its image_size)."""
        shared = {f.name for f in fields(UNetConfig)} & {f.name for f in fields(self)}
        return UNetConfig(image_size=self.size, **{k: getattr(self, k) for k in shared})


@dataclass(frozen=True)
class InferDiffParams:
    t: tuple[int, ...] = setting((250, 200, 150, 100, 50, 0), TIMESTEPS, "DDIM timesteps, e.g. 250,200,150,100,50,0.")
    c: tuple[int, ...] = setting((1, 16, 32), GRIDS, "Inpainting grid sizes, e.g. 1,16,32 (among {train_diff.grid}).")
    l: tuple[int, ...] = setting((1, 2, 4, 8), GRIDS, "Heatmap scales (Eq 16), e.g. 1,2,4,8.")  # noqa: E741
    n_s: int = setting(2, Int(2, 4096), "Disjoint mask sets per grid size (n_s).", flag="ns")
    test_time_condition: bool = setting(True, None, "Known region from q_sample of the original each step "
                                        "(Eq 13-15).")
    seed: int = setting(0, Int(0, SEEDS - 1))
    # CUDA only: bfloat16 autocast changes the heatmaps beyond float16 storage, so it is keyed
    bf16: bool = setting(False, None, "bfloat16 autocast (CUDA only); a separate cache entry.", switch=True,
                         added=True)
    init: str = setting("paper", Choice(INITS), "Start of the reverse process: paper (q_sample of I_in), noise (known "
                        "region q_sample(I_ori), masked region fresh noise) or ddad (q_sample of I_ori everywhere).", added=True)
    distance: str = setting("pixel", Choice(DISTANCES), "pixel: Eq 16's maps; feature: also 1 - cosine of backbone "
                            "features (strides 4, 8) of I_out and I_ori.", added=True)

    def __post_init__(self) -> None:
        settle_fields(self, {"c": ASCENDING, "l": ASCENDING})  # equal settings, equal keys
        check_settings(self)
        object.__setattr__(self, "t", check_timesteps(self.t))

    def entry_params(self, c: int, size: int) -> dict:
        """The params of the entry of one grid size c (one entry per c) at the UNet's size."""
        d = {**key_of(self), "c": c, "size": size}
        if d.pop("bf16", False):  # fp32 keys stay as they always were
            d["precision"] = "bf16"
        return d
