"""UniAD's reconstruction transformer (You et al., NeurIPS 2022), the base model of DRDC (Sec 3.2).

Eq (1): F_out = Rec(F_in), a transformer that reconstructs the backbone features F_in from themselves while a
neighbour mask and feature jitter keep it from learning the identity; trained with MSE(F_out, F_in) (the
training code lives elsewhere). Eq (2): H_base = || F_in - F_out ||_2 over channels (``base_heatmap``).

Follows zhiyuanyou/UniAD ``models/reconstructions/uniad.py`` with ``experiments/MVTec-AD/config.yaml``:
input proj C_feat -> 256, learned position embedding, 4 encoder + 4 decoder layers, 8 heads, FFN 1024,
dropout 0.1, ReLU, post-norm, 7x7 neighbour mask in all three attentions, a learned query per decoder layer,
a final LayerNorm on the decoder, output proj 256 -> C_feat, jitter (scale 20, prob 1) in training only,
xavier-uniform Linear weights with zero biases. Tokens here are batch-first (B, L, C); UniAD's are (L, B, C),
which nn.MultiheadAttention treats identically.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.config import ReconstructionConfig  # noqa: F401 (its home; re-exported)


def neighbor_mask(feature_size: int, neighbor_size: int) -> Tensor:
    """Additive attention mask (h*w, h*w): -inf where key token is in the query's neighbour window, else 0.

    UniAD's ``Transformer.generate_mask`` starts from ones, zeroes the window (clipped at the border) around each
    query, then ``masked_fill(mask == 0, -inf)``: the window, the query itself included, is BLOCKED, so a token
    must be rebuilt from tokens at least neighbor_size//2 + 1 cells away and cannot copy itself (no identity
    shortcut). Rows follow flattened (y, x) order, index y * w + x, as ``flatten(2)`` of (B, C, h, w).
    """
    idx = torch.arange(feature_size)
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    y, x = y.flatten(), x.flatten()
    r = neighbor_size // 2
    near = ((y[:, None] - y[None, :]).abs() <= r) & ((x[:, None] - x[None, :]).abs() <= r)
    return torch.zeros(near.shape).masked_fill(near, float("-inf"))


class PositionEmbeddingLearned(nn.Module):
    """UniAD's learned absolute position embedding: pos[y*w + x] = concat(col_embed[x], row_embed[y]).

    Each table has hidden_dim/2 features, initialised U(0, 1) as in UniAD.
    """

    def __init__(self, feature_size: int, hidden_dim: int) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.row_embed = nn.Embedding(feature_size, hidden_dim // 2)
        self.col_embed = nn.Embedding(feature_size, hidden_dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> Tensor:
        """-> (h*w, hidden_dim)."""
        n = self.feature_size
        col = self.col_embed.weight.unsqueeze(0).expand(n, n, -1)  # (h, w, C/2): varies along x
        row = self.row_embed.weight.unsqueeze(1).expand(n, n, -1)  # (h, w, C/2): varies along y
        return torch.cat([col, row], dim=-1).flatten(0, 1)


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer (UniAD TransformerEncoderLayer.forward_post); pos on queries and keys."""

    def __init__(self, c: ReconstructionConfig) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(c.hidden_dim, c.nhead, dropout=c.dropout, batch_first=True)
        self.linear1 = nn.Linear(c.hidden_dim, c.dim_feedforward)
        self.linear2 = nn.Linear(c.dim_feedforward, c.hidden_dim)
        self.norm1 = nn.LayerNorm(c.hidden_dim)
        self.norm2 = nn.LayerNorm(c.hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.dropout1 = nn.Dropout(c.dropout)
        self.dropout2 = nn.Dropout(c.dropout)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        """src (B, L, C), pos (1, L, C), mask (L, L) additive or None -> (B, L, C)."""
        qk = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, attn_mask=mask, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """UniAD TransformerDecoderLayer.forward_post: its own learned queries, two cross attentions, FFN.

    The queries are this layer's ``learned_embed`` (h*w, C), not the previous layer's output. Attention 1
    ("self_attn" in UniAD, though it is cross attention) reads the encoder output ``memory``; attention 2
    ("multihead_attn") reads ``out``, the previous decoder layer's output (the encoder output for layer 1).
    pos is added to queries and keys, never to values.
    """

    def __init__(self, c: ReconstructionConfig) -> None:
        super().__init__()
        self.learned_embed = nn.Embedding(c.feature_size**2, c.hidden_dim)
        self.self_attn = nn.MultiheadAttention(c.hidden_dim, c.nhead, dropout=c.dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(c.hidden_dim, c.nhead, dropout=c.dropout, batch_first=True)
        self.linear1 = nn.Linear(c.hidden_dim, c.dim_feedforward)
        self.linear2 = nn.Linear(c.dim_feedforward, c.hidden_dim)
        self.norm1 = nn.LayerNorm(c.hidden_dim)
        self.norm2 = nn.LayerNorm(c.hidden_dim)
        self.norm3 = nn.LayerNorm(c.hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.dropout1 = nn.Dropout(c.dropout)
        self.dropout2 = nn.Dropout(c.dropout)
        self.dropout3 = nn.Dropout(c.dropout)

    def forward(self, out: Tensor, memory: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        """out, memory (B, L, C), pos (1, L, C), mask (L, L) or None -> (B, L, C)."""
        tgt = self.learned_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        q = tgt + pos
        tgt = self.norm1(tgt + self.dropout1(
            self.self_attn(q, memory + pos, memory, attn_mask=mask, need_weights=False)[0]))
        q = tgt + pos
        tgt = self.norm2(tgt + self.dropout2(
            self.multihead_attn(q, out + pos, out, attn_mask=mask, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class UniADReconstruction(nn.Module):
    """F_in (B, C_feat, h, w) -> F_out (B, C_feat, h, w), Eq (1). Pure module: no loss, no IO."""

    def __init__(self, config: ReconstructionConfig) -> None:
        super().__init__()
        self.config = c = config
        self.input_proj = nn.Linear(c.in_channels, c.hidden_dim)
        self.pos_embed = PositionEmbeddingLearned(c.feature_size, c.hidden_dim)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.hidden_dim)  # UniAD keeps it even with post-norm (encoder has none)
        self.output_proj = nn.Linear(c.hidden_dim, c.in_channels)
        mask = neighbor_mask(c.feature_size, c.neighbor_size) if c.neighbor_mask else None
        self.register_buffer("attn_mask", mask, persistent=False)
        if c.standardize:  # per-channel (mu_c, sigma_c) of the train features, saved with the weights
            self.register_buffer("feat_shift", torch.zeros(c.in_channels))
            self.register_buffer("feat_scale", torch.ones(c.in_channels))
        # UniAD initializer "xavier_uniform": every nn.Linear (incl. attention out_proj) gets xavier weights and
        # zero bias; MHA's in_proj is xavier/zero by default; embeddings and LayerNorms keep their own init.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def set_standardization(self, features: Tensor) -> None:
        """Per-channel mean and std of train features (N, C_feat, h, w) (standardize only).

        Why: F_in's channels have means far from 0 and stds of 1-6 while the output projection starts near 0 with
        unit scale; at a CPU's few hundred AdamW steps the output bias moves ~lr per step and never reaches the
        means, so F_out stays near 0 and H_base measures |F_in|, not a reconstruction error. In z-score space the
        untrained model already predicts the mean, and every step goes into reconstruction."""
        if not self.config.standardize:
            raise ValueError("set_standardization: the config has standardize false")
        x = features.double()
        self.feat_shift.copy_(x.mean(dim=(0, 2, 3)).to(self.feat_shift))
        self.feat_scale.copy_(x.std(dim=(0, 2, 3)).clamp_min(1e-6).to(self.feat_scale))

    def add_jitter(self, tokens: Tensor) -> Tensor:
        """UniAD feature jitter on the raw feature tokens (B, L, C_feat), before input_proj.

        noise = N(0, 1) * (||f||_2 over channels / C_feat) * jitter_scale, applied with probability jitter_prob.
        """
        c = self.config
        if c.jitter_scale == 0 or (c.jitter_prob < 1 and torch.rand(()).item() >= c.jitter_prob):
            return tokens
        scale = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * c.jitter_scale  # (B, L, 1)
        return tokens + torch.randn_like(tokens) * scale

    def forward(self, features: Tensor) -> Tensor:
        """(B, C_feat, h, w) -> F_out (B, C_feat, h, w); jitter only in training mode."""
        c = self.config
        b, ch, h, w = _check_features(features, c)
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C_feat), token index y*w + x
        if c.standardize:
            tokens = (tokens - self.feat_shift) / self.feat_scale
        if self.training:
            tokens = self.add_jitter(tokens)
        src = self.input_proj(tokens)  # (B, L, hidden)
        pos = self.pos_embed().unsqueeze(0).to(src.dtype)  # (1, L, hidden)
        mask = self.attn_mask
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, pos, mask)
        out = memory
        for layer in self.decoder_layers:
            out = layer(out, memory, pos, mask)
        rec = self.output_proj(self.decoder_norm(out))  # (B, L, C_feat)
        if c.standardize:  # back to feature space: Eq 1's loss and Eq 2's H_base are unchanged
            rec = rec * self.feat_scale + self.feat_shift
        return rec.transpose(1, 2).reshape(b, ch, h, w)


def residual(f_in: Tensor, f_out: Tensor) -> Tensor:
    """r = F_in - F_out, the residual whose norm is H_base. (B, C, h, w) x2 -> (B, C, h, w)."""
    if f_in.shape != f_out.shape or f_in.ndim != 4:
        raise ValueError(f"f_in and f_out must share a (B, C, h, w) shape, got {tuple(f_in.shape)} and "
                         f"{tuple(f_out.shape)}")
    return f_in - f_out


def base_heatmap(f_in: Tensor, f_out: Tensor) -> Tensor:
    """Eq (2): H_base = || F_in - F_out ||_2 over channels. (B, C, h, w) x2 -> (B, h, w).

    Upsampling to the image (bilinear) is the caller's job.
    """
    return torch.linalg.vector_norm(residual(f_in, f_out), dim=1)


def _check_features(features: Tensor, c: ReconstructionConfig) -> tuple[int, int, int, int]:
    expected = (c.in_channels, c.feature_size, c.feature_size)
    if features.ndim != 4 or tuple(features.shape[1:]) != expected:
        raise ValueError(f"features must be (B, {', '.join(map(str, expected))}), got {tuple(features.shape)}")
    b, ch, h, w = features.shape
    return b, ch, h, w
