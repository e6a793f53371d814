"""UniAD reconstruction transformer: neighbour mask, sizes, pinned parameter count, jitter, Eq (2), training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.errors import ConfigError
from stages.models.reconstruction import (
    ReconstructionConfig,
    UniADReconstruction,
    base_heatmap,
    neighbor_mask,
)

SMALL = ReconstructionConfig(
    in_channels=16, feature_size=6, hidden_dim=32, num_encoder_layers=1, num_decoder_layers=1,
    nhead=2, dim_feedforward=64, neighbor_size=3,
    jitter_scale=5.0,  # 5 / sqrt(16) ~ 20 / sqrt(272): the same noise-to-feature ratio as UniAD's b4 setting
)


def _uniad_generate_mask(h: int, w: int, hm: int, wm: int) -> torch.Tensor:
    """UniAD's Transformer.generate_mask, loop for loop (without .cuda())."""
    mask = torch.ones(h, w, h, w)
    for y in range(h):
        for x in range(w):
            mask[y, x, max(y - hm // 2, 0):min(y + hm // 2 + 1, h), max(x - wm // 2, 0):min(x + wm // 2 + 1, w)] = 0
    mask = mask.view(h * w, h * w)
    return mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0.0)


def test_neighbor_mask_counts() -> None:
    m = neighbor_mask(14, 7)
    assert m.shape == (196, 196)
    assert set(torch.unique(m).tolist()) == {0.0, float("-inf")}
    blocked = torch.isinf(m).sum(dim=1)
    # hand counts: the 7x7 window (radius 3) clipped at the border
    assert blocked[0 * 14 + 0] == 4 * 4  # corner
    assert blocked[7 * 14 + 7] == 7 * 7  # centre
    assert blocked[0 * 14 + 7] == 4 * 7  # top edge, middle
    assert blocked[1 * 14 + 2] == 5 * 6  # rows 0..4, cols 0..5
    assert (blocked < 196).all()  # every token still sees some keys
    assert torch.isinf(m.diagonal()).all()  # a token never attends to itself
    assert torch.isinf(m[0, 3 * 14 + 3]) and m[0, 4] == 0  # (3, 3) is in the corner's window, (0, 4) is not
    assert torch.equal(m, m.T)
    assert torch.equal(m, _uniad_generate_mask(14, 14, 7, 7))


def test_sizes_and_queries() -> None:
    model = UniADReconstruction(ReconstructionConfig())
    assert len(model.decoder_layers) == 4 and len(model.encoder_layers) == 4
    for layer in model.decoder_layers:
        assert layer.learned_embed.weight.shape == (196, 256)
    assert model.pos_embed().shape == (196, 256)
    assert torch.equal(model.attn_mask, neighbor_mask(14, 7))
    assert UniADReconstruction(ReconstructionConfig(neighbor_mask=False)).attn_mask is None


def test_param_count_b4() -> None:
    c, d, ff, l = 272, 256, 1024, 14 * 14
    attn = (3 * d * d + 3 * d) + (d * d + d)  # in_proj (q, k, v) + out_proj
    ffn = (d * ff + ff) + (ff * d + d)
    ln = 2 * d
    encoder_layer = attn + ffn + 2 * ln
    decoder_layer = 2 * attn + ffn + 3 * ln + l * d  # two attentions, 3 norms, learned queries
    expected = (
        (c * d + d)  # input_proj
        + 2 * 14 * (d // 2)  # row + col position embeddings
        + 4 * encoder_layer
        + 4 * decoder_layer
        + ln  # decoder_norm
        + (d * c + c)  # output_proj
    )
    assert expected == 7_717_392
    model = UniADReconstruction(ReconstructionConfig())
    assert sum(p.numel() for p in model.parameters()) == expected


def test_forward_shape_and_modes() -> None:
    torch.manual_seed(0)
    model = UniADReconstruction(SMALL)
    x = torch.randn(3, 16, 6, 6)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)  # eval: no dropout, no jitter
    # train with dropout 0: calls still differ, only because of the jitter
    model = UniADReconstruction(ReconstructionConfig(**{**SMALL.to_dict(), "dropout": 0.0})).train()
    with torch.no_grad():
        t1, t2 = model(x), model(x)
        assert not torch.allclose(t1, t2)
        model.eval()
        e = model(x)
    quiet = UniADReconstruction(ReconstructionConfig(**{**SMALL.to_dict(), "dropout": 0.0, "jitter_scale": 0.0}))
    quiet.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(quiet.train()(x), e)  # no jitter + no dropout: train == eval
    with pytest.raises(ValueError, match="features must be"):
        model(torch.randn(1, 8, 6, 6))


def test_jitter_magnitude() -> None:
    torch.manual_seed(0)
    model = UniADReconstruction(SMALL)
    tokens = torch.randn(4, 36, 16) * torch.linspace(0.5, 3, 36)[None, :, None]
    noise = model.add_jitter(tokens) - tokens
    expected_std = tokens.norm(dim=-1, keepdim=True) / 16 * SMALL.jitter_scale
    z = noise / expected_std  # should be N(0, 1)
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1
    never = UniADReconstruction(ReconstructionConfig(**{**SMALL.to_dict(), "jitter_prob": 0.0}))
    assert torch.equal(never.add_jitter(tokens), tokens)


def test_base_heatmap_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    f_in, f_out = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(2, 5, 4, 3))
    expected = np.sqrt(((f_in - f_out) ** 2).sum(axis=1))
    got = base_heatmap(torch.from_numpy(f_in), torch.from_numpy(f_out))
    assert got.shape == (2, 4, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        base_heatmap(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_config_roundtrip_and_validation() -> None:
    c = ReconstructionConfig(in_channels=192)
    assert ReconstructionConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="bogus"):
        ReconstructionConfig.from_dict({**c.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="neighbor_size"):
        ReconstructionConfig(neighbor_size=6)
    with pytest.raises(ConfigError, match="neighbor_size"):
        ReconstructionConfig(feature_size=7, neighbor_size=7)
    ReconstructionConfig(feature_size=7, neighbor_size=7, neighbor_mask=False)  # no mask, no constraint
    with pytest.raises(ConfigError, match="hidden_dim"):
        ReconstructionConfig(hidden_dim=250)
    with pytest.raises(ConfigError, match="dropout"):
        ReconstructionConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="in_channels"):
        ReconstructionConfig(in_channels=272.0)  # type: ignore[arg-type]
    assert ReconstructionConfig(jitter_scale=20).jitter_scale == 20.0


def test_tiny_training_reduces_loss() -> None:
    """Features a masked token can be rebuilt from its far neighbours: a fixed spatial pattern plus a
    per-image offset (i.i.d. noise features could not be: the neighbour mask hides the token itself)."""
    torch.manual_seed(0)
    model = UniADReconstruction(SMALL).train()
    feats = torch.randn(1, 16, 6, 6) + torch.randn(8, 16, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(feats), feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_standardize_starts_at_the_channel_means_and_trains_where_raw_features_stall() -> None:
    """Features with channel means far from 0 (as the backbone's): the raw model spends its first steps moving
    the output bias ~lr a step; the standardized one predicts the means from the start (stages.method.residual's why)."""
    g = torch.Generator().manual_seed(0)
    offsets = 10 + 5 * torch.rand(1, 16, 1, 1, generator=g)
    feats = (torch.randn(1, 16, 6, 6, generator=g) + torch.randn(8, 16, 1, 1, generator=g)) * 3 + offsets
    std_cfg = ReconstructionConfig(**{**SMALL.to_dict(), "standardize": True})
    losses = {}
    for cfg in (SMALL, std_cfg):
        torch.manual_seed(0)
        model = UniADReconstruction(cfg).train()
        if cfg.standardize:
            model.set_standardization(feats)
            x = feats.double().permute(1, 0, 2, 3).reshape(16, -1).numpy()
            np.testing.assert_allclose(model.feat_shift.numpy(), x.mean(1), rtol=1e-5)
            np.testing.assert_allclose(model.feat_scale.numpy(), x.std(1, ddof=1), rtol=1e-5)
            assert {"feat_shift", "feat_scale"} <= set(model.state_dict())  # saved with the weights
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(40):
            loss = torch.nn.functional.mse_loss(model(feats), feats)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[cfg.standardize] = loss.item()
    assert losses[True] < 0.2 * losses[False], losses
    with pytest.raises(ValueError, match="standardize"):
        UniADReconstruction(SMALL).set_standardization(feats)
