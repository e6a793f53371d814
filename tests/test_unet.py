"""Conditional eps-UNet (guided-diffusion UNetModel + model condition): shapes, embedding, init, counts, config."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from stages.errors import ConfigError
from stages.models.unet import AttentionBlock, ConditionalUNet, UNetConfig, timestep_embedding
from stages.pipeline.train_diff import TrainDiffParams
from stages.config.presets import build

# the networks the presets train: the paper's is UNetConfig's defaults, the cpu preset's comes from its params
PRESETS = {"paper": UNetConfig(), "cpu": build(TrainDiffParams, "train_diff", "cpu").unet_config()}

# 16 px, 2 levels: level 0 (side 16, 32 ch), level 1 (side 8, 64 ch, attention)
TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), num_head_channels=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add sync cost, pathological when another job holds the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _inputs(b: int, size: int | tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 3, h, w, generator=g), torch.randint(0, 1000, (b,))


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so the zero-initialised layers stop hiding the rest of the network."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("config, size", [
    (PRESETS["cpu"].at_size(32), 32),
    (PRESETS["cpu"].at_size(64), 64),
    (PRESETS["cpu"].at_size(64), (32, 64)),  # non-square works: convolutions and attention are size-agnostic
    (dataclasses.replace(TINY, model_condition=False), 16),
    (dataclasses.replace(TINY, use_scale_shift_norm=False, resblock_updown=False, dropout=0.1), 16),
    (dataclasses.replace(TINY, in_channels=1, num_res_blocks=2, attention_resolutions=(16, 8)), 16),
])
def test_output_shape(config: UNetConfig, size: int | tuple[int, int]) -> None:
    model = _randomize(ConditionalUNet(config))
    x, cond, t = _inputs(2, size)
    x, cond = x[:, :config.in_channels], cond[:, :config.in_channels]
    out = model(x, cond if config.model_condition else None, t)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_model_condition_input_channels_and_cond_rule() -> None:
    on, off = ConditionalUNet(TINY), ConditionalUNet(dataclasses.replace(TINY, model_condition=False))
    assert on.input_blocks[0][0].in_channels == 6 and off.input_blocks[0][0].in_channels == 3
    x, cond, t = _inputs(2, 16)
    with pytest.raises(ValueError, match="cond"):
        on(x, None, t)
    with pytest.raises(ValueError, match="cond"):
        off(x, cond, t)
    with pytest.raises(ValueError, match="cond must have"):
        on(x, cond[:, :, :8], t)
    with pytest.raises(ValueError, match="divisible by 2"):
        on(x[:, :, :15], cond[:, :, :15], t)
    with pytest.raises(ValueError, match="t must be"):
        on(x, cond, t[:1])


def test_timestep_embedding_by_hand() -> None:
    t = torch.tensor([0, 1, 10])
    emb = timestep_embedding(t, 6)  # half = 3: f_i = 10000 ** (-i / 3) = 1, 10000^(-1/3), 10000^(-2/3)
    freqs = [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]
    expected = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in (0.0, 1.0, 10.0)]
    torch.testing.assert_close(emb, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    odd = timestep_embedding(torch.tensor([2.5]), 5)  # half = 2: f = 1, 0.01; a zero column pads dim 5
    expected_odd = [math.cos(2.5), math.cos(0.025), math.sin(2.5), math.sin(0.025), 0.0]
    torch.testing.assert_close(odd, torch.tensor([expected_odd]), atol=1e-6, rtol=1e-5)
    assert torch.equal(timestep_embedding(torch.tensor([7]), 8), timestep_embedding(torch.tensor([7.0]), 8))


def test_untrained_model_outputs_zeros() -> None:
    model = ConditionalUNet(TINY)
    for block in [m for m in model.modules() if hasattr(m, "out_layers")]:
        assert not block.out_layers[-1].weight.any()  # residual branches start as identity
    x, cond, t = _inputs(2, 16)
    assert torch.equal(model(x, cond, t), torch.zeros_like(x))


def test_attention_matches_guided_diffusion_legacy_qkv() -> None:
    block = _randomize(AttentionBlock(64, 32))
    x = torch.randn(2, 64, 4, 4)
    b, c, n_heads = 2, 64, 2
    qkv = block.qkv(block.norm(x.reshape(b, c, -1)))
    # QKVAttentionLegacy.forward, line for line
    ch = qkv.shape[1] // (3 * n_heads)
    q, k, v = qkv.reshape(b * n_heads, ch * 3, -1).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, 16)
    expected = (x.reshape(b, c, -1) + block.proj_out(a)).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(cl), expected, atol=1e-5, rtol=1e-5)


def _count_tiny() -> int:
    """TINY's parameter count from the block list (guided-diffusion UNetModel.__init__ walked by hand)."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731  (Conv1d k=1 counts as k=1)
    lin = lambda i, o: i * o + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    emb = 4 * 32

    def res(i: int, o: int) -> int:  # norm, conv3, emb -> (scale, shift), norm, zero conv3, 1x1 skip if i != o
        return gn(i) + conv(i, o, 3) + lin(emb, 2 * o) + gn(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)

    def attn(c: int) -> int:  # norm, qkv 1x1, proj_out 1x1
        return gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1)

    time_embed = lin(32, emb) + lin(emb, emb)
    down = conv(6, 32, 3) + res(32, 32) + res(32, 32) + res(32, 64) + attn(64)  # stem, L0, down, L1(+attn)
    middle = res(64, 64) + attn(64) + res(64, 64)
    # skips popped in reverse: [stem 32, L0 32, down 32, L1 64]
    up = (res(64 + 64, 64) + attn(64)) + (res(64 + 32, 64) + attn(64) + res(64, 64)) \
        + res(64 + 32, 32) + res(32 + 32, 32)
    out = gn(32) + conv(32, 3, 3)
    return time_embed + down + middle + up + out


def test_param_count_pinned() -> None:
    n = sum(p.numel() for p in ConditionalUNet(TINY).parameters())
    assert n == _count_tiny() == 828_355
    with torch.device("meta"):  # no memory, no forward: the 224 px guided-diffusion-sized network
        paper = ConditionalUNet(PRESETS["paper"])
    # guided-diffusion 256x256_diffusion_uncond has 552,814,086 (3 in, 6 out); here 6 in, 3 out: +6912 - 6915
    assert sum(p.numel() for p in paper.parameters()) == 552_814_083
    assert sum(p.numel() for p in ConditionalUNet(PRESETS["cpu"]).parameters()) == 1_915_587


def test_gradients_flow_and_cond_matters() -> None:
    torch.manual_seed(0)
    model = ConditionalUNet(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, cond, t = _inputs(4, 16)
    stem = model.input_blocks[0][0].weight
    for step in range(2):
        opt.zero_grad()
        (model(x, cond, t) - x).pow(2).mean().backward()
        if step == 0:  # zero output conv blocks every gradient behind it on the first step
            assert stem.grad is None or not stem.grad.any()
        opt.step()
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        eps = model(x, cond, t)
        assert eps.abs().sum() > 0
        assert not torch.allclose(eps, model(x, torch.randn_like(cond), t))
        assert not torch.allclose(eps, model(x, cond, t + 100))  # and it depends on t


def test_eval_deterministic_and_channels_last() -> None:
    model = _randomize(ConditionalUNet(dataclasses.replace(TINY, dropout=0.1)))
    x, cond, t = _inputs(2, 16)
    model.eval()
    with torch.no_grad():
        a = model(x, cond, t)
        assert torch.equal(a, model(x, cond, t))
        cl = model.to(memory_format=torch.channels_last)
        b = cl(x.contiguous(memory_format=torch.channels_last), cond.contiguous(memory_format=torch.channels_last), t)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    model.train()
    assert not torch.equal(model(x, cond, t), model(x, cond, t))  # dropout is live in training


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name: str) -> None:
    config = PRESETS[name]
    back = UNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and isinstance(back.channel_mult, tuple) and isinstance(back.attention_resolutions, tuple)
    assert config.at_size(64).attention_ds == config.attention_ds


@pytest.mark.parametrize("changes, field", [
    ({"image_size": 100}, "image_size"),  # not divisible by 2**5
    ({"attention_resolutions": (20,)}, "attention_resolutions"),
    ({"model_channels": 0}, "model_channels"),
    ({"channel_mult": ()}, "channel_mult"),
    ({"channel_mult": (1, 1.5, 2, 2, 4, 4)}, "channel_mult"),
    ({"num_head_channels": 48}, "num_head_channels"),
    ({"dropout": 1.0}, "dropout"),
    ({"model_condition": "yes"}, "model_condition"),
    ({"num_res_blocks": 2.0}, "num_res_blocks"),
])
def test_bad_config(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        UNetConfig(**{**UNetConfig().to_dict(), **changes})
    with pytest.raises(ConfigError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"image_size": 64, "num_channels": 32})
