"""Diffusion refinement by inpainting with dual conditions (Sec 4.2, 4.3; Eq 9-15).

Pure tensor functions: no IO. Shapes: B sequences (one per (image, c, i): image, grid size c, mask index i),
(3, H, W) images in model space [-1, 1], masks M (B, 1, H, W) with 1 = known pixel, 0 = pixel to inpaint.
"""
from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import torch
from torch import Tensor

from stages.method.choices import INITS, check_init  # noqa: F401 (torch-free vocabulary, re-exported)
from stages.method.diffusion import Schedule, check_timesteps, ddim_step, predict_x0, q_sample

# eps_model(x_t (B,3,H,W), cond I_in (B,3,H,W) or None, t (B,) long) -> predicted noise (B,3,H,W)
EpsModel = Callable[[Tensor, Tensor | None, Tensor], Tensor]


def make_input(I_ori: Tensor, M: Tensor, noise: Tensor) -> Tensor:  # noqa: N803
    """Eq 12's image condition I_in = M * I_ori + (1 - M) * noise, noise ~ N(0, 1) given.

    I_ori, noise (B, 3, H, W) in [-1, 1]; M (B, 1, H, W) -> (B, 3, H, W)."""
    return M * I_ori + (1 - M) * noise


# Where the reverse process's noise comes from: one generator, one per group of rows, or the draws themselves,
# a (n_draws, B, ...) tensor whose d-th slice is the d-th draw (an exported graph takes its noise as an input).
Noise = torch.Generator | Sequence[torch.Generator] | Tensor


def _noise_source(generator: Noise, like: Tensor) -> Callable[[], Tensor]:
    """Returns draw() -> N(0, 1) noise shaped like ``like`` (B, ...): the B rows are split into len(generators)
    consecutive equal groups and group k draws its rows from generator k. Drawn in float32 on the CPU, then cast and
    moved, so the numbers depend neither on the device's RNG nor on the sample dtype nor on the other groups.
    A tensor of draws gives its slices in order."""
    if isinstance(generator, Tensor):
        if generator.shape[1:] != like.shape:
            raise ValueError(f"noise draws {tuple(generator.shape)} do not match the rows {tuple(like.shape)}")
        slices = iter(generator.unbind(0))
        return lambda: next(slices).to(like.dtype).to(like.device)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    b = like.shape[0]
    if not gens or b % len(gens):
        raise ValueError(f"{b} sequences cannot be split evenly over {len(gens)} generators")
    shape = (b // len(gens), *like.shape[1:])

    def draw() -> Tensor:
        n = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        return n.to(like.dtype).to(like.device)

    return draw


def start(I_ori: Tensor, M: Tensor, t1: int, s: Schedule, n0: Tensor, n1: Tensor, init: str  # noqa: N803
          ) -> tuple[Tensor, Tensor]:
    """(I_in (Eq 12's condition), x_{t_1}) for an init of INITS; I_ori, n0, n1 (B, 3, H, W), M (B, 1, H, W)."""
    check_init(init)
    I_in = make_input(I_ori, M, n0)  # noqa: N806
    if init == "paper":
        return I_in, q_sample(I_in, t1, n1, s)  # the known region is already q_sample(I_ori, t_1)
    x_known = q_sample(I_ori, t1, n1, s)
    return I_in, x_known if init == "ddad" else M * x_known + (1 - M) * n1


def reverse_process(I_ori: Tensor, M: Tensor, ts: Sequence[int], s: Schedule,  # noqa: N803
                    generator: Noise, model_condition: bool = True,
                    test_time_condition: bool = True, init: str = "paper", trajectory: list | None = None
                    ) -> Generator[tuple[int, Tensor, Tensor | None], Tensor, None]:
    """The reverse process of Eq 12-15 as a coroutine: yields (t, x_t, cond) at every t of ts, descending, and
    takes the UNet's eps for that state through ``send`` to make the next one. `inpaint` runs it to the end;
    `train-diff --task inpaint` stops at a drawn step k, so that what training feeds the UNet at step k is exactly
    what inference feeds it there. cond is I_in, or None when ``model_condition`` is off; other arguments as in
    `inpaint`."""
    ts = check_timesteps(ts, s.T)
    if I_ori.ndim != 4 or M.shape != (I_ori.shape[0], 1, *I_ori.shape[2:]):
        raise ValueError(f"expected I_ori (B, C, H, W) and M (B, 1, H, W), got {tuple(I_ori.shape)}, {tuple(M.shape)}")
    M = M.to(I_ori.dtype)  # noqa: N806
    draw = _noise_source(generator, I_ori)
    n0 = draw()
    I_in, x = start(I_ori, M, ts[0], s, n0, draw(), init)  # noqa: N806  (n0, n1)
    cond = I_in if model_condition else None
    for k, t in enumerate(ts):
        eps = yield t, x, cond
        if k + 1 == len(ts):
            return
        t_next = ts[k + 1]
        # clip=True: the step heads for the same clipped x0_t that we keep (guided-diffusion's ddim_sample)
        x_unknown = ddim_step(x, eps.to(x.dtype), t, t_next, s, clip=True)  # Eq 14 with DDIM's sigma = 0
        n = None
        if test_time_condition:
            n = draw()
            x = M * q_sample(I_ori, t_next, n, s) + (1 - M) * x_unknown  # Eq 13, 15
        else:
            x = x_unknown
        if trajectory is not None:
            trajectory.append((t_next, x, n))


def n_draws(n_t: int, test_time_condition: bool = True) -> int:
    """How many noise draws the reverse process over n_t timesteps makes: n0, n1, and one per later step when the
    test-time condition is on."""
    return 2 + (n_t - 1 if test_time_condition else 0)


def t_batch(t: int, x: Tensor) -> Tensor:
    """(B,) long timesteps for the UNet."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def condition(I_ori: Tensor, M: Tensor, generator: torch.Generator | Sequence[torch.Generator]  # noqa: N803
              ) -> Tensor:
    """The I_in that `reverse_process` builds with these generators (their first draw, n0)."""
    return make_input(I_ori, M.to(I_ori.dtype), _noise_source(generator, I_ori)())


@torch.no_grad()
def inpaint(eps_model: EpsModel, I_ori: Tensor, M: Tensor, ts: Sequence[int], s: Schedule,  # noqa: N803
            generator: Noise, model_condition: bool = True,
            test_time_condition: bool = True, trajectory: list | None = None, init: str = "paper"
            ) -> dict[int, Tensor]:
    """Inpaint the unknown region (M == 0) of every sequence in one batched reverse process; x0_t kept at each t.

    I_ori (B, 3, H, W) in [-1, 1]: the caller repeats each image once per (c, i) sequence; M (B, 1, H, W) binary.
    ts: the --t list (validated with check_timesteps, run in descending order t_1 > t_2 > ...).
    eps_model(x_t, cond, t_batch): cond is I_in when ``model_condition`` (the model concatenates (x_t, I_in)),
    else None (ablation "model condition off"); t_batch (B,) long.
    generator: one generator for all rows, or a list of K generators, one per group of B / K consecutive rows
    (e.g. one per image, or per (image, c) with its n_s sequences), so a group's result does not depend on the
    other groups in the batch. Each generator draws, in this order: n0 (I_in's noise), n1 (x_{t_1}'s noise), then
    n_{t'} for every later t' (only when ``test_time_condition``). Or the draws themselves, (n_draws, B, 3, H, W)
    in that order (`n_draws`).

        I_in    = M * I_ori + (1 - M) * n0                                   (Eq 12, model condition)
        x_{t_1} = sqrt(abar_{t_1}) I_in + sqrt(1 - abar_{t_1}) n1            (Eq 4; init "paper", see INITS)
        for each t, next t':
            eps   = z_theta(x_t, I_in, t)
            x0_t  = clamp((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)   (Eq 9) -> result[t]
            x_unknown = DDIM(x_t, eps, t -> t'), eta = 0, stepped towards the clipped x0_t   (Eq 14, deterministic)
            x_known   = sqrt(abar_t') I_ori + sqrt(1 - abar_t') n_t'                          (Eq 13)
            x_t' = M * x_known + (1 - M) * x_unknown     (Eq 15; x_t' = x_unknown when test-time condition is off)

    If ``trajectory`` is a list, (t', x_t', n_t' or None) is appended after each step (for tests).
    Returns {t: x0_t (B, 3, H, W)} for every t in ts, in I_ori's dtype and device.
    """
    result: dict[int, Tensor] = {}
    process = reverse_process(I_ori, M, ts, s, generator, model_condition, test_time_condition, init, trajectory)
    state = next(process)
    while True:
        t, x, cond = state
        eps = eps_model(x, cond, t_batch(t, x)).to(x.dtype)
        result[t] = predict_x0(x, eps, t, s, clip=True)  # Eq 9
        try:
            state = process.send(eps)
        except StopIteration:
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
