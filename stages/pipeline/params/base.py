"""The parameters of train-base (UniAD's reconstruction transformer, Eq 1) and infer-base (H_base, Eq 2)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from stages.config.domains import BIG, SEEDS, Choice, Int, List, Real
from stages.config.settings import check_settings, key_of, setting
from stages.config.settle import ASCENDING, keyed, settle_fields
from stages.errors import check
from stages.method.choices import RESIDUAL_NORMS
from stages.models.config import ReconstructionConfig
from stages.pipeline.params.vocab import SCHEDULES

R = ReconstructionConfig()  # the model's defaults are the stage's
_M, _T = "model", "training"


@dataclass(frozen=True)
class TrainBaseParams:
    hidden_dim: int = setting(R.hidden_dim, Int(1, 8192), panel=_M)
    num_encoder_layers: int = setting(R.num_encoder_layers, Int(1, 64), flag="encoder-layers", panel=_M)
    num_decoder_layers: int = setting(R.num_decoder_layers, Int(1, 64), flag="decoder-layers", panel=_M)
    nhead: int = setting(R.nhead, Int(1, 256), flag="heads", panel=_M)
    dim_feedforward: int = setting(R.dim_feedforward, Int(1, 65_536), flag="ffn-dim", panel=_M)
    dropout: float = setting(R.dropout, Real(0.0, 1.0, hi_open=True), panel=_M)
    neighbor_size: int = setting(R.neighbor_size, Int(1, 63, odd=True), "Side of the neighbour attention mask (odd).",
                                 panel=_M)
    jitter_scale: float = setting(R.jitter_scale, Real(0.0, 1e3), "Feature jitter scale (0: off).", panel=_M)
    jitter_prob: float = R.jitter_prob
    standardize: bool = setting(R.standardize, None, "The model works on per-channel z-scores of the train features "
                                "(drdc option; UniAD: off).", panel=_M, added=True)
    epochs: int = setting(1000, Int(0, BIG), panel=_T)  # 0: the seeded initialisation (the base curve)
    batch_size: int = setting(8, Int(1, 65_536), panel=_T)
    lr: float = setting(1e-4, Real(0.0, 10.0, lo_open=True), panel=_T)
    weight_decay: float = setting(1e-4, Real(0.0, 1.0), panel=_T)
    schedule: str = setting("step", Choice(SCHEDULES), "step (UniAD's StepLR) or cosine (with warmup).", panel=_T)
    lr_step: int = setting(800, Int(1, BIG), "StepLR step in epochs.", panel=_T)
    lr_gamma: float = 0.1
    warmup_epochs: int = setting(0, Int(0, BIG), panel=_T)
    grad_clip: float = setting(0.1, Real(0.0, 1e6), "Max gradient norm (0: off).", panel=_T)
    holdout: float = setting(0.0, Real(0.0, 0.5, hi_open=True), "Fraction of train images per category held out for "
                             "a validation loss.", panel=_T)  # besides the index's validation normals, always out
    seed: int = setting(0, Int(0, SEEDS - 1), panel=_T)

    def __post_init__(self) -> None:
        settle_fields(self)  # equal settings, equal keys
        check_settings(self)
        check(self.hidden_dim % self.nhead == 0, "hidden_dim", f"must be divisible by nhead={self.nhead}",
              self.hidden_dim)

    def model_config(self, in_channels: int, feature_size: int) -> ReconstructionConfig:
        """The model's config: every field the params share with ReconstructionConfig, plus the features' shape."""
        shared = {f.name for f in fields(ReconstructionConfig)} & {f.name for f in fields(self)}
        return ReconstructionConfig(in_channels=in_channels, feature_size=feature_size,
                                    **{k: getattr(self, k) for k in shared})

    def key_params(self) -> dict:
        """The params that key the entry: without --standardize they keep the keys they had before it."""
        return key_of(self)


@dataclass(frozen=True)
class InferBaseParams:
    residual_norm: str = setting("l2", Choice(RESIDUAL_NORMS), "Norm of F_in - F_out in Eq 2: l2 (the paper) or "
                                 "mahalanobis (a per-category, per-position Gaussian of the train images' residuals; "
                                 "drdc option).", added=True)
    residual_stages: tuple[int, ...] = setting((), List(Int(1, 16)), "Backbone stages (1-4, comma-separated) whose "
                                               "channels the mahalanobis norm sees (ignored by l2); default all.")

    def __post_init__(self) -> None:
        settle_fields(self, {"residual_stages": ASCENDING})  # equal settings, equal keys
        check_settings(self)
        # only the mahalanobis norm reads the stages (a preset's stages must not refuse `--residual-norm l2`)
        object.__setattr__(self, "residual_stages", self.residual_stages if self.residual_norm != "l2" else ())

    def key_params(self) -> dict:
        """Eq 2 as printed keeps the key it had before the option ({})."""
        return {} if self.residual_norm == "l2" else keyed(self)
