"""Gaussian diffusion math (Sec 3.3 and 4.2, Eq 3, 4, 9) and the deterministic DDIM step (Song et al. 2021, their
Eq 12, written "DDIM Eq 12" here: a bare "Eq 12" is always the paper's training loss).

Pure tensor functions: no IO. Notation follows the paper and guided-diffusion's gaussian_diffusion.py:
    beta_t        noise variance of forward step t (Eq 3)
    abar_t        prod_{s<=t} (1 - beta_s), the signal fraction kept at t (Eq 4)
    x_t           noisy sample at timestep t, (B, C, H, W)
    eps           noise (true or predicted by z_theta), same shape as x_t
    x0_hat        the predicted clean sample (Eq 9)
Timesteps are indexed 0..T-1 as in diffusers and guided-diffusion: the paper's t = 1..T is our t - 1, so
abar_0 = 1 - beta_0 is the first noisy step, not the clean image. ``t`` is an int or a (B,) integer tensor.
Coefficients are kept in float64 and cast to the sample's dtype at use, like guided-diffusion's
_extract_into_tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.method.choices import BETA_END, BETA_START, T_PAPER, check_timesteps  # noqa: F401 (torch-free home)

Timestep = int | Tensor


@dataclass(frozen=True)
class Schedule:
    """A variance schedule. All tensors (T,), float64, on the CPU; index t = 0..T-1."""

    betas: Tensor
    alphas: Tensor  # 1 - beta_t
    alphas_cumprod: Tensor  # abar_t = prod_{s<=t} alpha_s

    @property
    def T(self) -> int:  # noqa: N802  (paper notation)
        return int(self.betas.shape[0])




def linear_schedule(T: int = T_PAPER, beta_start: float = BETA_START, beta_end: float = BETA_END  # noqa: N803
                    ) -> Schedule:
    """DDPM's linear schedule (Ho et al.; the paper's T = 1000, betas 1e-4 .. 0.02)."""
    if T < 1 or not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need T >= 1 and 0 < beta_start <= beta_end < 1, got {T}, {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)  # Eq 3: beta_t
    alphas = 1.0 - betas
    return Schedule(betas=betas, alphas=alphas, alphas_cumprod=torch.cumprod(alphas, dim=0))  # Eq 4: abar_t


def _extract(a: Tensor, t: Timestep, like: Tensor) -> Tensor:
    """a[t] broadcastable against ``like`` (B, ...): a 0-d tensor for an int t, (B, 1, ..., 1) for a (B,) t.

    Indexed on the CPU in float64, then cast (float64 first avoids rounding abar before the sqrt) and moved."""
    if isinstance(t, Tensor) and t.ndim > 0:
        v = a[t.detach().to("cpu", torch.long)]
        v = v.reshape(-1, *([1] * (like.ndim - 1)))
    else:
        v = a[int(t)]
    return v.to(like.dtype).to(like.device)


def q_sample(x0: Tensor, t: Timestep, noise: Tensor, s: Schedule) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) with the given noise (Eq 4). x0, noise (B, C, H, W) -> x_t (B, C, H, W)."""
    return _extract(s.alphas_cumprod.sqrt(), t, x0) * x0 + _extract((1.0 - s.alphas_cumprod).sqrt(), t, x0) * noise


def predict_x0(x_t: Tensor, eps: Tensor, t: Timestep, s: Schedule, clip: bool = True) -> Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (Eq 9), clipped to the image range [-1, 1] when ``clip``.

    x_t, eps (B, C, H, W) -> (B, C, H, W)."""
    x0 = (x_t - _extract((1.0 - s.alphas_cumprod).sqrt(), t, x_t) * eps) / _extract(s.alphas_cumprod.sqrt(), t, x_t)
    return x0.clamp(-1.0, 1.0) if clip else x0


def ddim_step(x_t: Tensor, eps: Tensor, t: Timestep, t_prev: Timestep, s: Schedule, clip: bool = False) -> Tensor:
    """One deterministic DDIM step x_t -> x_{t_prev} (DDIM Eq 12, Song et al., with sigma_t = 0, i.e. eta = 0).

        1. x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                         (Eq 9)
        2. if clip: x0_hat <- clamp(x0_hat, -1, 1) and eps <- (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
        3. x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps                    ("direction pointing to x_t")

    With ``clip=False`` this is diffusers' DDIMScheduler(clip_sample=False).step with eta = 0. With ``clip=True``
    it is guided-diffusion's ddim_sample(clip_denoised=True): eps is re-derived from the clipped x0_hat so the step
    moves exactly towards the x0_hat we report (diffusers keeps the raw eps unless use_clipped_model_output).
    Requires 0 <= t_prev <= t; t_prev == t is the identity, which is what diffusers' step from t = 0 does with
    set_alpha_to_one=False (its abar_prev is then abar_0). Our reverse process never steps below the last listed t.
    x_t, eps (B, C, H, W) -> x_prev (B, C, H, W).
    """
    tp = torch.as_tensor(t_prev)
    if bool((tp < 0).any()) or bool((tp > torch.as_tensor(t).to(tp.device)).any()):
        raise ValueError(f"ddim_step needs 0 <= t_prev <= t, got t={t}, t_prev={t_prev}")
    sqrt_abar = _extract(s.alphas_cumprod.sqrt(), t, x_t)
    sqrt_one_minus_abar = _extract((1.0 - s.alphas_cumprod).sqrt(), t, x_t)
    x0 = (x_t - sqrt_one_minus_abar * eps) / sqrt_abar  # Eq 9
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - sqrt_abar * x0) / sqrt_one_minus_abar
    return _extract(s.alphas_cumprod.sqrt(), t_prev, x_t) * x0 + _extract(
        (1.0 - s.alphas_cumprod).sqrt(), t_prev, x_t) * eps  # DDIM Eq 12, sigma = 0
