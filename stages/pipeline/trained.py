"""The trained models of complete train-base and train-diff entries (weights_only loads: no pickle from the store).

Shared by the inference stages, predict, calibrate and export, so no stage imports another to load a model.
"""
from __future__ import annotations

import json

import torch

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
