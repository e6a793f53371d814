"""Stage `train-diff`: train the conditional eps-prediction UNet on train/good images (Eq 12).

Each sample: a grid size c from --grid and one of its n_s mask sets, drawn like at inference; the model sees
concat(x_t, I_in) with I_in = M * I_ori + (1 - M) * N(0, 1), and regresses the noise added to I_ori (Eq 12).
`--no-model-condition` trains the ablation that sees x_t only.

`--crop N` (not in the paper; README "The diffusion branch") trains on random N x N crops of the --size images, masks cut from the
full image's grid (cells stay c pixels, as at inference), and infer-diff runs the fully convolutional UNet on
the whole --size image: a training step costs what it costs at N px while the heatmaps are made at --size, so a
thin defect keeps more of its contrast (a 1-px line keeps about a fifth of it at 64 px from 224, half at 128).

`--task inpaint` (not in the paper; README "The diffusion branch" says why) trains what the test-time loop asks instead:
  - a step k of the inference t-list `--chain` is drawn, and the reverse process of `infer-diff --init noise`
    (stages.method.inpaint.reverse_process: masked region pure noise independent of I_in's, known region q_sample of
    I_ori, then DDIM steps with the current weights, no gradient) is run up to it, so the UNet is trained on the
    very states inference will show it, the later steps seeing its own previous estimates;
  - the target is I_ori: x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (Eq 9) regressed on I_ori
    over the unknown region only (the known region is discarded by Eq 10). This is Eq 12 with the noise target
    eps* = (x_t - sqrt(abar_t) I_ori) / sqrt(1 - abar_t) (GLAD's predict_eps) weighted by (1 - abar_t) / abar_t
    (1 / SNR): finite at t = 0, where eps* would be divided by sqrt(1 - abar_0) = 0.01, and weighted by what an
    error of eps does to the x0_t that infer-diff compares with I_ori.
All randomness of step k comes from a generator
seeded by (seed, k), so a resumed run draws exactly what an uninterrupted one would.

Longer training without starting over: the learning rate is constant and step k's draws depend on k alone, so
the first k steps of any run are the same. A new `--steps N` entry therefore continues from the checkpoint of
the longest shorter run of otherwise equal settings (stages.store.checkpoint.adopt_shorter) and ends with the
weights a run from scratch would have; 1000 steps, then 3000, cost 3000 steps in all.

Under torchrun (DDP): every rank draws its own --batch-size samples a step (effective batch = batch x world size, lr
as given) from a generator seeded by (seed, k, rank stream); rank 0's stream is the single-process one. Sampling is
with replacement, so per-rank streams are the step-based equivalent of a DistributedSampler. Rank 0 alone writes the
store and decides cached/resume for all ranks; the loss in the history is the mean over all ranks.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn
from tqdm import tqdm

from stages.data.dataset import split_indices
from stages.data.images import to_model_space
from stages.method.diffusion import Schedule, predict_x0, q_sample
from stages.method.inpaint import make_input, reverse_process, t_batch
from stages.method.masks import grid_masks, image_generator
from stages.models.unet import ConditionalUNet, UNetConfig
from stages.pipeline.training import StepBoundary, Training
from stages.pipeline import dist
from stages.store.cache import RunStore
from stages.pipeline.runtime import (StageResult, resolve_device, seed_everything)
from stages.pipeline.params import TrainDiffParams  # noqa: F401 (torch-free, re-exported)

STAGE = "train_diff"
STREAM = 7  # training draws, apart from inference's streams
RANK_STRIDE = 1000  # rank r of a DDP run draws from stream STREAM + r * RANK_STRIDE (rank 0: the single-process one)


U = UNetConfig  # the network's own defaults (guided-diffusion's 256 px UNet at 224), declared once there


def _images_and_masks(p: TrainDiffParams, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A step's I_ori (b, 3, S, S) in [-1, 1] and masks (b, 1, S, S), S = --crop or --size: with --crop, each
    sample is cut at its own random offset from the full image and from its full-size mask (whole cells stay
    c pixels wide, as infer-diff meets them). Draw order: images, masks, offsets (--crop 0 draws no offsets, so
    its samples are those of runs made before --crop)."""
    b, n = p.batch_size, images.shape[0]
    x0 = images[torch.randint(n, (b,), generator=g)].float().div(127.5).sub(1.0)
    M = _masks(p, g, b)  # noqa: N806
    if p.crop == 0 or p.crop == p.size:
        return x0, M
    at = torch.randint(p.size - p.crop + 1, (b, 2), generator=g)
    window = lambda v, k: v[k, :, at[k, 0]:at[k, 0] + p.crop, at[k, 1]:at[k, 1] + p.crop]  # noqa: E731
    return (torch.stack([window(x0, k) for k in range(b)]), torch.stack([window(M, k) for k in range(b)]))


def _batch(p: TrainDiffParams, images: torch.Tensor, step: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
    """Step `step`'s samples for a rank, from their own generator: x0, I_in, t, eps (CPU)."""
    g = image_generator(p.seed, step, stream=STREAM + rank * RANK_STRIDE)
    b = p.batch_size
    x0, M = _images_and_masks(p, images, g)  # noqa: N806
    I_in = make_input(x0, M, torch.randn(x0.shape, generator=g))  # noqa: N806  Eq 12's image condition
    t = torch.randint(0, min(p.t_max, p.diffusion_steps - 1) + 1, (b,), generator=g)  # [0, t_max] within T
    eps = torch.randn(x0.shape, generator=g)
    return x0, I_in, t, eps


def _masks(p: TrainDiffParams, g: torch.Generator, b: int) -> torch.Tensor:
    """(b, 1, S, S) training masks: a grid size c of --grid and one of its n_s mask sets, drawn like at inference."""
    which_c = torch.randint(len(p.grid), (b,), generator=g)
    which_set = torch.randint(p.n_s, (b,), generator=g)
    return torch.stack([grid_masks(p.size, p.grid[int(k)], p.n_s, g)[int(i)] for k, i in zip(which_c, which_set)])


def inpaint_batch(p: TrainDiffParams, model, images: torch.Tensor, step: int, sched: Schedule, dev: torch.device,
                  rank: int = 0) -> tuple[torch.Tensor, ...]:
    """Step `step`'s samples of --task inpaint: (I_ori, M, x_t, cond, t) on dev, x_t the state the reverse
    process of `infer-diff --init noise` reaches at a drawn step k of --chain, run with `model` (no gradient)."""
    g = image_generator(p.seed, step, stream=STREAM + rank * RANK_STRIDE)
    x0, M = _images_and_masks(p, images, g)  # noqa: N806
    k = int(torch.randint(len(p.chain), (1,), generator=g))
    x0, M = x0.to(dev), M.to(dev)  # noqa: N806
    process = reverse_process(x0, M, p.chain, sched, g, p.model_condition, True, init="noise")
    t, x, cond = next(process)
    with torch.no_grad():
        for _ in range(k):
            t, x, cond = process.send(model(x, cond, t_batch(t, x)))
    process.close()
    return x0, M, x, cond, t_batch(t, x)


def inpaint_loss(eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, I_ori: torch.Tensor, M: torch.Tensor,  # noqa: N803
                 sched: Schedule) -> torch.Tensor:
    """Mean squared error of x0_hat (Eq 9, unclipped) against I_ori over the unknown region (M == 0)."""
    unknown = (1.0 - M).expand_as(I_ori)
    err = (predict_x0(x_t, eps, t, sched, clip=False) - I_ori) ** 2
    return (err * unknown).sum() / unknown.sum().clamp_min(1.0)


def run(store: RunStore, p: TrainDiffParams, device: str = "auto", progress: bool = True) -> StageResult:
    index = store.current("index")
    dev = resolve_device(device)
    cfg = p.unet_config()
    tr = Training.begin(store, STAGE, p.key_params(), p.batch_size, {"index": index.key}, p.seed, cfg.to_dict(),
                        "steps", p.steps, dev, grows="steps")  # constant lr, draws seeded by step: extendable
    if tr.cached:
        return tr.result()
    world, rank, main = tr.world, dist.rank(), tr.main
    records = index.attrs["records"]
    train_idx = split_indices(records, "train")
    images = to_model_space(index.array("images").get_orthogonal_selection((train_idx,)), p.size, as_uint8=True)

    seed_everything(p.seed)
    model = ConditionalUNet(cfg).to(dev).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = p.schedule()
    states = {"model": model, "ema": ema, "optimizer": opt}
    start, history = 0, []
    if tr.resumed:
        ck = tr.resume(store, states)
        start, history = ck["step"], ck["history"]
    net = tr.wrap(model)
    tr.annotate(model, n_train=len(train_idx))

    bar = tqdm(total=p.steps, initial=start, desc="train-diff", unit="step", disable=not (progress and main))
    running, count, tw = 0.0, 0, time.perf_counter()
    with StepBoundary() as stop:  # Ctrl-C / SIGTERM: finish the step, save it, then stop
        for step in range(start, p.steps):
            if world > 1:  # per-rank dropout draws that do not depend on where a run resumed
                torch.manual_seed(dist.rank_seed(p.seed, step))
            if p.task == "inpaint":
                x0, M, x_t, cond, t = inpaint_batch(p, model, images, step, sched, dev, rank)  # noqa: N806
                loss = inpaint_loss(net(x_t, cond, t), x_t, t, x0, M, sched)
            else:
                x0, I_in, t, eps = (v.to(dev) for v in _batch(p, images, step, rank))  # noqa: N806
                x_t = q_sample(x0, t, eps, sched)  # Eq 4
                loss = nn.functional.mse_loss(net(x_t, I_in if p.model_condition else None, t), eps)  # Eq 12
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients are averaged over ranks here
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1.0 - p.ema)
            running, count = running + loss.item(), count + 1
            bar.update(1)
            if (step + 1) % p.ckpt_every == 0 or step + 1 == p.steps:
                running, count = dist.all_reduce_sum(running, count)  # mean over every rank's steps
                history.append({"step": step + 1, "loss": running / count,
                                "seconds": round(time.perf_counter() - tw, 2)})
                bar.set_postfix(loss=f"{running / count:.4g}")
                running, count, tw = 0.0, 0, time.perf_counter()
                tr.checkpoint(states, history, step=step + 1)
            elif stop.requested is not None:  # stopped between checkpoints: keep every step done
                tr.checkpoint(states, history, step=step + 1)
            if stop.requested is not None:
                bar.close()
                stop.deliver()
    bar.close()

    crop = f" ({p.crop} px crops)" if p.crop else ""
    return tr.finish(ema.state_dict, history, lambda on: f"{p.steps} steps on {len(train_idx)} images at {p.size} px"
                     f"{crop}{on}, final loss {history[-1]['loss']:.4g}")
