"""The trained models of complete train-base and train-diff entries (weights_only loads: no pickle from the store),
and the noise schedule a train-diff entry was trained with.

Shared by the inference stages, predict, calibrate and export, so no stage imports another to load a model.
"""
from __future__ import annotations

import json

import torch

from stages.method.diffusion import BETA_END, BETA_START, T_PAPER, Schedule, linear_schedule
from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction
from stages.models.unet import ConditionalUNet, UNetConfig
from stages.store.cache import Entry
from stages.store.checkpoint import load_weights


def load_model(entry: Entry, device: torch.device) -> UniADReconstruction:
    """The trained model of a complete train-base entry (weights_only load: no pickle from the store)."""
    cfg = ReconstructionConfig.from_dict(json.loads((entry.files / "config.json").read_text()))
    model = UniADReconstruction(cfg)
    load_weights(model, entry.files / "model.pt")
    return model.to(device).eval()


def load_unet(entry: Entry, device: torch.device) -> ConditionalUNet:
    """The EMA weights of a complete train-diff entry (weights_only load)."""
    cfg = UNetConfig.from_dict(json.loads((entry.files / "config.json").read_text()))
    model = ConditionalUNet(cfg)
    load_weights(model, entry.files / "model.pt")
    return model.to(device).eval()


# A train-diff entry's noise schedule (Eq 3-4) by param name: DDPM's linear betas, by default the paper's.
SCHEDULE_DEFAULTS = {"diffusion_steps": T_PAPER, "beta_start": BETA_START, "beta_end": BETA_END}


def schedule_of(params: dict) -> Schedule:
    """The schedule of a train-diff entry's params (absent: the paper's, as keys made before the options)."""
    q = {**SCHEDULE_DEFAULTS, **{k: params[k] for k in SCHEDULE_DEFAULTS if k in params}}
    return linear_schedule(int(q["diffusion_steps"]), float(q["beta_start"]), float(q["beta_end"]))
