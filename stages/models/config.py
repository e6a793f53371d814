"""The networks' configs (plain Python, importable without torch: the command line reads their defaults at parse
time) and their base: field type checks and a JSON round trip, shared by every model config.

Configs are saved beside each checkpoint as JSON, so loading must give back exactly the types the model expects
(tuples, floats) and refuse keys it does not know.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from stages.errors import ConfigError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for frozen dataclasses whose annotations are the strings 'int', 'float', 'bool', 'tuple[int, ...]'."""

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            if f.type.startswith("tuple"):  # JSON gives lists back
                if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                               for v in value):
                    raise ConfigError(f"{f.name} must be a list of integers, got {value!r}")
                object.__setattr__(self, f.name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class ReconstructionConfig(ModelConfig):
    """Sizes of the UniAD transformer; defaults are UniAD's MVTec-AD config with efficientnet_b4 (272 ch)."""

    in_channels: int = 272
    feature_size: int = 14
    hidden_dim: int = 256
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    nhead: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1
    neighbor_size: int = 7  # odd, < feature_size so the mask does not block every token
    neighbor_mask: bool = True
    jitter_scale: float = 20.0
    jitter_prob: float = 1.0
    standardize: bool = False  # drdc option: model space is per-channel z-scores of the train features

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("in_channels", "feature_size", "hidden_dim", "num_encoder_layers", "num_decoder_layers",
                     "nhead", "dim_feedforward", "neighbor_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % 2 or self.hidden_dim % self.nhead:
            raise ConfigError(
                f"hidden_dim must be even (row/col position embeddings of hidden_dim/2) and divisible by "
                f"nhead={self.nhead}, got {self.hidden_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.neighbor_size % 2 == 0:
            raise ConfigError(f"neighbor_size must be odd (a centred window), got {self.neighbor_size}")
        if self.neighbor_mask and self.neighbor_size >= self.feature_size:
            raise ConfigError(
                f"neighbor_size={self.neighbor_size} must be < feature_size={self.feature_size}, "
                f"else the mask blocks every token; lower neighbor_size or set neighbor_mask false"
            )
        if self.jitter_scale < 0:
            raise ConfigError(f"jitter_scale must be >= 0, got {self.jitter_scale}")
        if not 0.0 <= self.jitter_prob <= 1.0:
            raise ConfigError(f"jitter_prob must be in [0, 1], got {self.jitter_prob}")


@dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """UNet sizes; the defaults are the paper's network (train-diff's defaults come from here): guided-diffusion's
    README, 256x256 unconditional ImageNet: num_channels 256, channel_mult (1,1,2,2,4,4), 2 res blocks, attention
    at 32,16,8 (= downsample 8,16,32 -> 28,14,7 at 224), 64 channels per head, resblock_updown, scale-shift norm,
    dropout left at its default 0.0 (the LSUN models use 0.1). The cpu preset's network is in stages.config.presets.
    attention_resolutions are feature-map sides in pixels at image_size (guided-diffusion's flag convention); the
    network stores them as downsample rates, so it also runs at other sizes (see ``at_size``)."""

    image_size: int = 224
    in_channels: int = 3  # image channels; the network input has 2 * in_channels when model_condition
    model_condition: bool = True
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (28, 14, 7)
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("image_size", "in_channels", "model_channels", "num_res_blocks", "num_head_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"channel_mult must be a non-empty list of integers >= 1, got {self.channel_mult}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ConfigError(f"image_size={self.image_size} must be divisible by 2**(len(channel_mult)-1)={factor}")
        sides = [self.image_size // 2**k for k in range(len(self.channel_mult))]
        for res in self.attention_resolutions:
            if res not in sides:
                raise ConfigError(f"attention_resolutions entry {res} is not a feature-map side at image_size="
                                  f"{self.image_size}; reachable sides: {sides}")
        for level, mult in enumerate(self.channel_mult):  # the middle block always has attention
            ch = mult * self.model_channels
            if (sides[level] in self.attention_resolutions or level == len(sides) - 1) and ch % self.num_head_channels:
                raise ConfigError(f"num_head_channels={self.num_head_channels} must divide the {ch} channels of "
                                  f"the attention at side {sides[level]}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample rates with attention, as guided-diffusion's create_model computes them."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def at_size(self, image_size: int) -> "UNetConfig":
        """The same network (same attention downsample rates) described at another image size."""
        return dataclasses.replace(self, image_size=image_size,
                                   attention_resolutions=tuple(image_size // d for d in self.attention_ds))
