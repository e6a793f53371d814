"""The trained models of complete train-base and train-diff entries (weights_only loads: no pickle from the store),
and the noise schedule a train-diff entry was trained with.

Shared by the inference stages, predict, calibrate and export, so no stage imports another to load a model.
"""
from __future__ import annotations

import json

import torch

from stages.method.choices import SCHEDULE_DEFAULTS
from stages.method.diffusion import Schedule, linear_schedule
from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction
from stages.models.unet import ConditionalUNet, UNetConfig
from stages.store.cache import Entry
from stages.store.checkpoint import load_weights


def _built(entry: Entry, config_cls, model_cls):
    """The model its config.json describes; a config.json that does not build one is damage, named with the fix."""
    path = entry.path / "files" / "config.json"
    try:
        return model_cls(config_cls.from_dict(json.loads(path.read_text())))
    except FileNotFoundError:
        raise entry.damage("file config.json is missing") from None
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        raise entry.damage(f"file config.json does not describe a model ({type(e).__name__})") from None


def load_model(entry: Entry, device: torch.device) -> UniADReconstruction:
    """The trained model of a complete train-base entry (weights_only load: no pickle from the store)."""
    model = _built(entry, ReconstructionConfig, UniADReconstruction)
    load_weights(model, entry.path / "files" / "model.pt", entry)
    return model.to(device).eval()


def load_unet(entry: Entry, device: torch.device) -> ConditionalUNet:
    """The EMA weights of a complete train-diff entry (weights_only load)."""
    model = _built(entry, UNetConfig, ConditionalUNet)
    load_weights(model, entry.path / "files" / "model.pt", entry)
    return model.to(device).eval()


# A train-diff entry's noise schedule (Eq 3-4) by param name: DDPM's linear betas, by default the paper's.


def check_maps(unet_params: dict, t=(), c=(), l=(), n_s: int = 2) -> None:  # noqa: E741
    """What infer-diff refuses for the UNet of train-diff params `unet_params` (a ConfigError naming the option):
    a t beyond its schedule, a grid size c that does not divide its size, leaves a set of n_s empty or is not one
    of the grid sizes it was trained on (train-diff --grid), a scale l that does not divide its size. Also the
    test a message runs before it quotes an infer-diff line."""
    from stages.errors import Option, check
    from stages.method.diffusion import check_timesteps
    from stages.method.masks import check_grid

    size = int(unet_params["size"])
    if t:
        check_timesteps(tuple(t), schedule_of(unet_params).T)
    grid = [int(g) for g in unet_params.get("grid", ())]
    for v in c:
        check_grid(size, v, n_s)
        # a grid size the UNet never saw masks of: its maps would measure the mask, not the image
        check(not grid or v in grid, "c", ("must be a grid size the UNet was trained on (",
                                           Option("grid", "train_diff", tuple(grid)), ")"), v)
    for v in l:
        check(size % v == 0, "l", f"must divide the diffusion size {size}", v)


def schedule_of(params: dict) -> Schedule:
    """The schedule of a train-diff entry's params (absent: the paper's, as keys made before the options)."""
    q = {**SCHEDULE_DEFAULTS, **{k: params[k] for k in SCHEDULE_DEFAULTS if k in params}}
    return linear_schedule(int(q["diffusion_steps"]), float(q["beta_start"]), float(q["beta_end"]))
