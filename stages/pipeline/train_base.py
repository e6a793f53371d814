"""Stage `train-base`: fit the UniAD reconstruction transformer on cached train features (Eq 1).

Recipe (UniAD's MVTec config, the `paper` preset): AdamW lr 1e-4, wd 1e-4, StepLR(800, 0.1), 1000 epochs, batch 8,
grad-norm clip 0.1, feature jitter. The checkpoint (model, optimiser, scheduler, RNG state) is saved atomically
after every epoch, so a killed run resumes from its last epoch and ends with the same weights.

Under torchrun (DDP): each rank trains on its DistributedSampler shard with --batch-size images a step (effective
batch = batch x world size, lr as given); rank 0 alone writes the store (entry, checkpoints, history) and decides
cached/resume for all ranks; each rank reseeds the global RNG (jitter, dropout) from (seed, epoch, rank) every epoch,
so a resumed run matches an uninterrupted one. Without torchrun the code path is the single-process one, unchanged.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from stages.data.dataset import split_train
from stages.data.validation import validation_normals
from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction
from stages.pipeline.training import Training
from stages.pipeline import dist
from stages.store.cache import RunStore
from stages.pipeline.runtime import StageResult, resolve_device, seed_everything
from stages.pipeline.params import TrainBaseParams  # noqa: F401 (torch-free, re-exported)

STAGE = "train_base"


R = ReconstructionConfig  # the model's own defaults (UniAD's), declared once there


def _scheduler(opt: torch.optim.Optimizer, p: TrainBaseParams) -> torch.optim.lr_scheduler.LRScheduler:
    if p.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p.lr_step, gamma=p.lr_gamma)

    def factor(epoch: int) -> float:  # linear warmup, then cosine to zero at the last epoch
        if epoch < p.warmup_epochs:
            return (epoch + 1) / (p.warmup_epochs + 1)
        t = (epoch - p.warmup_epochs) / max(1, p.epochs - p.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def _val_loss(model: nn.Module, feats: torch.Tensor, batch: int) -> float:
    model.eval()
    tot = sum(nn.functional.mse_loss(model(feats[i : i + batch]), feats[i : i + batch], reduction="sum").item()
              for i in range(0, len(feats), batch))
    model.train()
    return tot / feats.numel()


def _order(n: int, p: TrainBaseParams, epoch: int, sampler: DistributedSampler | None) -> torch.Tensor:
    """This rank's sample order for an epoch: one seeded permutation of all n (single process), or this rank's
    DistributedSampler shard (ceil(n / world) indices, padded by repetition so every rank takes as many steps)."""
    if sampler is None:
        return torch.randperm(n, generator=torch.Generator().manual_seed(p.seed * 100003 + epoch))
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def run(store: RunStore, p: TrainBaseParams, device: str = "auto", progress: bool = True) -> StageResult:
    extract = store.current("extract")
    index = store.get("index", extract.inputs["index"])
    dev = resolve_device(device)
    all_feats = extract.array("features")
    cfg = p.model_config(all_feats.shape[1], all_feats.shape[-1])  # validates against the features before any write
    tr = Training.begin(store, STAGE, p.key_params(), p.batch_size, {"extract": extract.key}, p.seed,
                        cfg.to_dict(), "epochs", p.epochs, dev)
    if tr.cached:
        return tr.result()
    world, main = tr.world, tr.main
    fit_idx, val_idx = split_train(index.attrs["records"], p.holdout, p.seed)  # the same split on every rank
    val_idx = sorted(val_idx + validation_normals(index.attrs["records"]))  # index's held-out normals too
    fit = torch.from_numpy(all_feats.get_orthogonal_selection((fit_idx,))).to(dev)
    val = torch.from_numpy(all_feats.get_orthogonal_selection((val_idx,))).to(dev) if val_idx and main else None

    seed_everything(p.seed)
    model = UniADReconstruction(cfg).to(dev).train()
    if cfg.standardize:  # statistics of the fitted images only (a resumed run loads the same ones)
        model.set_standardization(fit)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = _scheduler(opt, p)
    states = {"model": model, "optimizer": opt, "scheduler": sched}  # everything that shapes the remaining epochs
    start, history = 0, []
    if tr.resumed:
        ck = tr.resume(store, states)
        start, history = ck["epoch"] + 1, ck["history"]
    net = tr.wrap(model)
    tr.annotate(model, n_fit=len(fit_idx), n_val=len(val_idx))

    n = len(fit)
    sampler = (DistributedSampler(range(n), num_replicas=world, rank=dist.rank(), shuffle=True, seed=p.seed,
                                  drop_last=False) if world > 1 else None)
    steps = math.ceil((n if sampler is None else sampler.num_samples) / p.batch_size)
    bar = tqdm(total=p.epochs * steps, initial=start * steps, desc="train-base", unit="step",
               disable=not (progress and main))
    for epoch in range(start, p.epochs):
        te = time.perf_counter()
        if world > 1:  # per-rank jitter/dropout draws that do not depend on where a run resumed
            torch.manual_seed(dist.rank_seed(p.seed, epoch))
        perm = _order(n, p, epoch, sampler).to(dev)
        total, count = 0.0, 0
        for i in range(0, len(perm), p.batch_size):
            x = fit[perm[i : i + p.batch_size]]
            loss = nn.functional.mse_loss(net(x), x)  # Eq 1 (mean over C, H, W and the batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients are averaged over ranks here
            if p.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            total, count = total + loss.item() * len(x), count + len(x)
            bar.update(1)
        total, count = dist.all_reduce_sum(total, count)  # the epoch's mean loss over every rank's samples
        lr = opt.param_groups[0]["lr"]
        sched.step()
        rec = {"epoch": epoch, "loss": total / count, "lr": lr, "seconds": round(time.perf_counter() - te, 3)}
        if val is not None:  # rank 0 only, on the unwrapped model (no collective)
            rec["val_loss"] = _val_loss(model, val, p.batch_size)
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4g}", **({"val": f"{rec['val_loss']:.4g}"} if val is not None else {}))
        tr.checkpoint(states, history, epoch=epoch)
    bar.close()

    def summary(on: str) -> str:
        if not history:
            return f"0 epochs: the seeded initialisation{' with the statistics of ' + str(n) + ' images' if cfg.standardize else ''}"
        last = history[-1]
        val_txt = f", val loss {last['val_loss']:.4g}" if "val_loss" in last else ""
        return f"{p.epochs} epochs on {n} images{on}, final loss {last['loss']:.4g}{val_txt}"

    return tr.finish(model.state_dict, history, summary)
