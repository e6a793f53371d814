"""The eps-prediction UNet of the diffusion branch (Sec 4.3, 5): Dhariwal & Nichol's UNet plus the model condition.

Eq (12): eps = z(x_t, I_in, t), where the model condition I_in = M * I_ori + (1 - M) * N(0, 1) is concatenated
with x_t along channels, so the first conv sees 2 * in_channels channels (in_channels with the condition off,
the Table 5 ablation). Sec 5 only says "the same UNet as Dhariwal and Nichol"; sizes follow openai/guided-diffusion
``guided_diffusion/unet.py`` (UNetModel, ResBlock, AttentionBlock, Downsample/Upsample) and ``nn.py``
(timestep_embedding, zero_module, GroupNorm32), with the module names kept so state_dict keys read alike.
Differences: eps only (no learned sigma, 3 outputs, not 6); attention via F.scaled_dot_product_attention (same
maths as QKVAttentionLegacy: heads split before q/k/v, softmax(q k^T / sqrt(d)) v); GroupNorm uses gcd(32, C)
groups, which is 32 for every guided-diffusion width and lets narrow CPU models (C < 32) build; no fp16 torso
or gradient checkpointing (use autocast instead).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.errors import ConfigError
from stages.models.config import UNetConfig  # noqa: F401 (its home; re-exported)


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding (guided-diffusion nn.py): t (N,) int or float -> (N, dim) = [cos(t f), sin(t f)],
    f_i = max_period ** (-i / half) for i < half = dim // 2; a zero column is appended when dim is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches and the output start as no-ops (guided-diffusion)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as guided-diffusion, for low-precision inputs) with gcd(32, C) groups."""

    def __init__(self, channels: int) -> None:
        super().__init__(math.gcd(32, channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, C, H/2, W/2): stride-2 3x3 conv, or 2x2 average pooling inside ResBlocks."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest neighbour, then a 3x3 conv if use_conv."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """(B, C, H, W), emb (B, E) -> (B, C_out, H', W'); H' = H/2 or 2H with down/up (resample before the first
    conv, on both branches). With scale-shift norm the embedding gives (scale, shift): norm(h) * (1 + s) + b."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False) -> None:
        super().__init__()
        out = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out, out, 3, padding=1)))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            # addcmul: shift + norm(h) * (1 + scale) in one pass over h instead of two (mul, then add)
            h = self.out_layers[1:](torch.addcmul(shift, self.out_layers[0](h), 1 + scale))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all H*W positions, residual: (B, C, H, W) -> (B, C, H, W); C / num_head_channels heads."""

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        x = x.reshape(b, c, hgt * wid)  # reshape, not view: x may be channels-last
        qkv = self.qkv(self.norm(x))  # (B, 3C, T)
        # QKVAttentionLegacy's layout: split heads first, then q, k, v within each head's 3*d channels
        q, k, v = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, -1).transpose(2, 3).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d); scale 1/sqrt(d) as the original
        h = self.proj_out(a.transpose(2, 3).reshape(b, c, -1))
        return (x + h).reshape(b, c, hgt, wid)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the ResBlocks among its children."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ConditionalUNet(nn.Module):
    """eps_theta(x_t, I_in, t), Eq (12). Pure module: no diffusion schedule, loss or IO."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        emb_dim = 4 * c.model_channels
        attn_ds = set(c.attention_ds)

        def res(ch: int, out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch, emb_dim, c.dropout, out, c.use_scale_shift_norm, up=up, down=down)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.num_head_channels)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        in_ch = 2 * c.in_channels if c.model_condition else c.in_channels
        ch = c.channel_mult[0] * c.model_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_ch, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, down=True) if c.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):  # one extra block eats the skip of the down step
                layers = [res(ch + skip_chans.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, up=True) if c.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, c.in_channels, 3, padding=1)))

    def forward(self, x_t: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:
        """x_t (B, C, H, W), cond = I_in (B, C, H, W) or None (None iff not model_condition), t (B,) long or
        float timesteps -> eps (B, C, H, W). H and W must be divisible by 2**(len(channel_mult)-1)."""
        self._check_inputs(x_t, cond, t)
        h = torch.cat([x_t, cond], dim=1) if cond is not None else x_t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x_t.dtype))
        hs = []
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)

    def _check_inputs(self, x_t: Tensor, cond: Tensor | None, t: Tensor) -> None:
        c = self.config
        factor = 2 ** (len(c.channel_mult) - 1)
        if x_t.ndim != 4 or x_t.shape[1] != c.in_channels or x_t.shape[2] % factor or x_t.shape[3] % factor:
            raise ValueError(f"x_t must be (B, {c.in_channels}, H, W) with H, W divisible by {factor}, "
                             f"got {tuple(x_t.shape)}")
        if (cond is None) == c.model_condition:
            raise ValueError("cond (I_in) must be given iff model_condition is on "
                             f"(model_condition={c.model_condition}, cond is {'None' if cond is None else 'set'})")
        if cond is not None and cond.shape != x_t.shape:
            raise ValueError(f"cond must have x_t's shape {tuple(x_t.shape)}, got {tuple(cond.shape)}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be ({x_t.shape[0]},), one timestep per image, got {tuple(t.shape)}")


class InferenceUNet(nn.Module):
    """Same eps_theta(x_t, I_in, t) as the wrapped ConditionalUNet, run faster at inference (no training).

    channels_last: weights and activations in NHWC, the layout oneDNN (CPU) and cuDNN (tensor cores) convolve
    fastest; the maths is unchanged (results differ only in float rounding, ~1e-6).
    bf16: autocast to bfloat16 (CUDA only: CPUs without native bf16, e.g. AVX2, run it ~25x slower than fp32);
    GroupNorm stays fp32 (GroupNorm32) and eps comes back in x_t's dtype.
    compile: torch.compile the network (inductor; on the CPU with weight freezing, which folds and prepacks the
    convolution weights). The first call of each new batch shape compiles (tens of seconds to minutes).
    Exposes ``config`` like the wrapped model, so it drops in wherever a ConditionalUNet is expected at inference.
    """

    def __init__(self, net: ConditionalUNet, channels_last: bool = False, bf16: bool = False,
                 compile: bool = False) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.config = net.config
        self.channels_last, self.bf16 = channels_last, bf16
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if bf16 and next(net.parameters()).device.type != "cuda":
            raise ConfigError("bfloat16 inference is CUDA-only (CPUs without native bf16 run it far slower than fp32)",
                              "bf16")
        # a plain attribute, not a submodule: the compiled wrapper would list every parameter a second time
        object.__setattr__(self, "_run", torch.compile(self.net, options=_compile_options(net)) if compile
                           else self.net)

    def forward(self, x_t: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:
        """x_t, cond (B, C, H, W), t (B,) -> eps (B, C, H, W) contiguous, in x_t's dtype."""
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
            cond = None if cond is None else cond.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            eps = self._run(x_t, cond, t)
        return eps.to(x_t.dtype).contiguous()


def _compile_options(net: nn.Module) -> dict:
    # freezing treats the weights as constants (inference only): on the CPU inductor then prepacks them for
    # oneDNN and fuses convolutions with the following pointwise ops
    return {"freezing": True} if next(net.parameters()).device.type == "cpu" else {}
