"""Diffusion refinement by inpainting with dual conditions (Sec 4.2, 4.3; Eq 9-15).

Pure tensor functions: no IO. Shapes: B sequences (one per (image, c, i): image, grid size c, mask index i),
(3, H, W) images in model space [-1, 1], masks M (B, 1, H, W) with 1 = known pixel, 0 = pixel to inpaint.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stages.diffusion import Schedule, check_timesteps, ddim_step, predict_x0, q_sample

# eps_model(x_t (B,3,H,W), cond I_in (B,3,H,W) or None, t (B,) long) -> predicted noise (B,3,H,W)
EpsModel = Callable[[Tensor, Tensor | None, Tensor], Tensor]


def make_input(I_ori: Tensor, M: Tensor, noise: Tensor) -> Tensor:  # noqa: N803
    """Eq 12's image condition I_in = M * I_ori + (1 - M) * noise, noise ~ N(0, 1) given.

    I_ori, noise (B, 3, H, W) in [-1, 1]; M (B, 1, H, W) -> (B, 3, H, W)."""
    return M * I_ori + (1 - M) * noise


def _noise_source(generator: torch.Generator | Sequence[torch.Generator], like: Tensor) -> Callable[[], Tensor]:
    """Returns draw() -> N(0, 1) noise shaped like ``like`` (B, ...): the B rows are split into len(generators)
    consecutive equal groups and group k draws its rows from generator k. Drawn in float32 on the CPU, then cast and
    moved, so the numbers depend neither on the device's RNG nor on the sample dtype nor on the other groups."""
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    b = like.shape[0]
    if not gens or b % len(gens):
        raise ValueError(f"{b} sequences cannot be split evenly over {len(gens)} generators")
    shape = (b // len(gens), *like.shape[1:])

    def draw() -> Tensor:
        n = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        return n.to(like.dtype).to(like.device)

    return draw


@torch.no_grad()
def inpaint(eps_model: EpsModel, I_ori: Tensor, M: Tensor, ts: Sequence[int], s: Schedule,  # noqa: N803
            generator: torch.Generator | Sequence[torch.Generator], model_condition: bool = True,
            test_time_condition: bool = True, trajectory: list | None = None) -> dict[int, Tensor]:
    """Inpaint the unknown region (M == 0) of every sequence in one batched reverse process; x0_t kept at each t.

    I_ori (B, 3, H, W) in [-1, 1]: the caller repeats each image once per (c, i) sequence; M (B, 1, H, W) binary.
    ts: the --t list (validated with check_timesteps, run in descending order t_1 > t_2 > ...).
    eps_model(x_t, cond, t_batch): cond is I_in when ``model_condition`` (the model concatenates (x_t, I_in)),
    else None (ablation "model condition off"); t_batch (B,) long.
    generator: one generator for all rows, or a list of K generators, one per group of B / K consecutive rows
    (e.g. one per image, or per (image, c) with its n_s sequences), so a group's result does not depend on the
    other groups in the batch. Each generator draws, in this order: n0 (I_in's noise), n1 (x_{t_1}'s noise), then
    n_{t'} for every later t' (only when ``test_time_condition``).

        I_in    = M * I_ori + (1 - M) * n0                                   (Eq 12, model condition)
        x_{t_1} = sqrt(abar_{t_1}) I_in + sqrt(1 - abar_{t_1}) n1            (Eq 4)
        for each t, next t':
            eps   = z_theta(x_t, I_in, t)
            x0_t  = clamp((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)   (Eq 9) -> result[t]
            x_unknown = DDIM(x_t, eps, t -> t'), eta = 0, stepped towards the clipped x0_t   (Eq 14, deterministic)
            x_known   = sqrt(abar_t') I_ori + sqrt(1 - abar_t') n_t'                          (Eq 13)
            x_t' = M * x_known + (1 - M) * x_unknown     (Eq 15; x_t' = x_unknown when test-time condition is off)

    If ``trajectory`` is a list, (t', x_t', n_t' or None) is appended after each step (for tests).
    Returns {t: x0_t (B, 3, H, W)} for every t in ts, in I_ori's dtype and device.
    """
    ts = check_timesteps(ts, s.T)
    if I_ori.ndim != 4 or M.shape != (I_ori.shape[0], 1, *I_ori.shape[2:]):
        raise ValueError(f"expected I_ori (B, C, H, W) and M (B, 1, H, W), got {tuple(I_ori.shape)}, {tuple(M.shape)}")
    M = M.to(I_ori.dtype)  # noqa: N806
    draw = _noise_source(generator, I_ori)
    I_in = make_input(I_ori, M, draw())  # noqa: N806  (n0)
    x = q_sample(I_in, ts[0], draw(), s)  # n1: the known region is already q_sample(I_ori, t_1)
    cond = I_in if model_condition else None
    result: dict[int, Tensor] = {}
    for k, t in enumerate(ts):
        eps = eps_model(x, cond, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).to(x.dtype)
        result[t] = predict_x0(x, eps, t, s, clip=True)  # Eq 9
        if k + 1 == len(ts):
            break
        t_next = ts[k + 1]
        # clip=True: the step heads for the same clipped x0_t that we keep (guided-diffusion's ddim_sample)
        x_unknown = ddim_step(x, eps, t, t_next, s, clip=True)  # Eq 14 with DDIM's sigma = 0
        n = None
        if test_time_condition:
            n = draw()
            x = M * q_sample(I_ori, t_next, n, s) + (1 - M) * x_unknown  # Eq 13, 15
        else:
            x = x_unknown
        if trajectory is not None:
            trajectory.append((t_next, x, n))
    return result


def assemble(x0: Tensor, M: Tensor, n_s: int) -> Tensor:
    """Eq 10 without the printed 1/n_s: I_out = sum_i (1 - M_i) * x0^(i), each pixel taken from the run in which
    it was unknown (the 1/n_s would only rescale I_out and break the comparison with I_ori in Eq 11).

    x0 (K * n_s, 3, H, W) and M (K * n_s, 1, H, W), ordered as K consecutive groups of n_s sequences (one group per
    grid size c, or per (image, c)) -> I_out (K, 3, H, W)."""
    if n_s < 1 or x0.shape[0] % n_s or M.shape[0] != x0.shape[0]:
        raise ValueError(f"cannot group {x0.shape[0]} sequences (masks: {M.shape[0]}) by n_s = {n_s}")
    parts = (1 - M.to(x0.dtype)) * x0
    return parts.view(x0.shape[0] // n_s, n_s, *x0.shape[1:]).sum(dim=1)
