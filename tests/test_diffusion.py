"""Tests for stages.method.diffusion: the schedule's closed form, agreement with diffusers' DDIMScheduler, --t validation."""
from __future__ import annotations

import math

import pytest
import torch

from stages.method.diffusion import check_timesteps, ddim_step, linear_schedule, predict_x0, q_sample
from stages.errors import ConfigError

S = linear_schedule()


def _ddim_scheduler(clip_sample: bool = False):
    """The oracle: diffusers' DDIM with our schedule, 20 inference steps (spacing 50: 950, 900, ..., 0)."""
    sched = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    s = sched.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                            set_alpha_to_one=False, clip_sample=clip_sample, prediction_type="epsilon")
    s.set_timesteps(20)
    assert s.timesteps[0] == 950 and s.timesteps[-1] == 0
    return s


def _xe(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 4, generator=g).to(dtype), torch.randn(2, 3, 4, 4, generator=g).to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # diffusers keeps abar in float32 (rel. error ~4e-7 vs our float64); x0 at t = 950 is ~100 in size, hence rtol
    torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- schedule
def test_linear_schedule_closed_form() -> None:
    assert S.T == 1000 and S.betas.dtype == torch.float64
    assert S.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert S.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    torch.testing.assert_close(S.alphas, 1 - S.betas)
    assert S.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-12)  # abar_0 = 1 - beta_0
    prod = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(1000))
    assert S.alphas_cumprod[-1].item() == pytest.approx(prod, rel=1e-10)
    assert S.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)  # golden: x_999 is almost pure noise
    assert bool((S.alphas_cumprod[1:] < S.alphas_cumprod[:-1]).all())


def test_linear_schedule_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        linear_schedule(T=0)
    with pytest.raises(ValueError):
        linear_schedule(beta_start=0.02, beta_end=1e-4)


# --------------------------------------------------------------------------------------- diffusers DDIM agreement
def test_schedule_matches_diffusers() -> None:
    torch.testing.assert_close(_ddim_scheduler().alphas_cumprod.double(), S.alphas_cumprod, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_sample_matches_diffusers_add_noise(dtype: torch.dtype) -> None:
    oracle = _ddim_scheduler()
    x, e = _xe(dtype)
    for t in (0, 1, 50, 250, 999):
        _close(q_sample(x, t, e, S), oracle.add_noise(x, e, torch.tensor([t, t])))
    t = torch.tensor([0, 600])  # one t per batch item
    _close(q_sample(x, t, e, S), oracle.add_noise(x, e, t))
    assert q_sample(x, t, e, S).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ddim_step_and_x0_match_diffusers(dtype: torch.dtype) -> None:
    oracle = _ddim_scheduler()
    x, e = _xe(dtype, seed=1)
    for t in (950, 500, 250, 100, 50):
        out = oracle.step(e, t, x)  # eta = 0: t -> t - 50
        _close(ddim_step(x, e, t, t - 50, S), out.prev_sample)
        _close(predict_x0(x, e, t, S, clip=False), out.pred_original_sample)
    # from t = 0 diffusers uses abar_prev = abar_0 (set_alpha_to_one=False): the identity, our t_prev = t
    out = oracle.step(e, 0, x)
    _close(ddim_step(x, e, 0, 0, S), out.prev_sample)
    _close(ddim_step(x, e, 0, 0, S), x)
    _close(predict_x0(x, e, 0, S, clip=False), out.pred_original_sample)


def test_clipped_ddim_step_matches_diffusers_with_clipped_model_output() -> None:
    oracle = _ddim_scheduler(clip_sample=True)
    # re-deriving eps divides by sqrt(1 - abar_t), which magnifies diffusers' float32 abar: give it ours (float64)
    oracle.alphas_cumprod, oracle.final_alpha_cumprod = S.alphas_cumprod, S.alphas_cumprod[0]
    x, e = _xe(torch.float64, seed=2)
    x = 3 * x  # x0_hat far outside [-1, 1]
    for t in (250, 100, 50):
        assert predict_x0(x, e, t, S, clip=False).abs().max() > 1.5
        out = oracle.step(e, t, x, use_clipped_model_output=True)
        assert out.pred_original_sample.abs().max() <= 1
        torch.testing.assert_close(ddim_step(x, e, t, t - 50, S, clip=True), out.prev_sample, rtol=0, atol=1e-12)
        torch.testing.assert_close(predict_x0(x, e, t, S, clip=True), out.pred_original_sample, rtol=0, atol=1e-12)


def test_clip_is_a_no_op_inside_the_range_and_per_item_t() -> None:
    x0 = torch.rand(3, 3, 4, 4, dtype=torch.float64) * 1.8 - 0.9
    e = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t, tp = torch.tensor([250, 100, 50]), torch.tensor([200, 0, 50])
    x = q_sample(x0, t, e, S)
    assert torch.equal(predict_x0(x, e, t, S, clip=True), predict_x0(x, e, t, S, clip=False))
    torch.testing.assert_close(ddim_step(x, e, t, tp, S, clip=True), ddim_step(x, e, t, tp, S))
    per_item = torch.cat([ddim_step(x[i:i + 1], e[i:i + 1], int(t[i]), int(tp[i]), S) for i in range(3)])
    torch.testing.assert_close(ddim_step(x, e, t, tp, S), per_item, rtol=0, atol=1e-12)
    # an exact eps makes the deterministic step land on the forward process: x_prev = q_sample(x0, t_prev, eps)
    torch.testing.assert_close(ddim_step(x, e, t, tp, S), q_sample(x0, tp, e, S), rtol=0, atol=1e-12)


def test_ddim_step_rejects_t_prev_outside_0_t() -> None:
    x, e = _xe(torch.float32)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(x, e, 50, -1, S)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(x, e, 50, 100, S)


# ------------------------------------------------------------------------------------------------ --t validation
def test_check_timesteps_sorts_descending() -> None:
    assert check_timesteps([0, 250, 50, 100, 200, 150]) == (250, 200, 150, 100, 50, 0)
    assert check_timesteps((999,)) == (999,)
    assert check_timesteps([3, 1], T=4) == (3, 1)


@pytest.mark.parametrize("ts, message", [
    ([250, 1000], r"^t: 1000 is out of range \[0, 999\]$"),
    ([-1], r"^t: -1 is out of range \[0, 999\]$"),
    ([50, 0, 50], r"^t: duplicate value 50$"),
    ([], r"^t: no timestep given"),
    ([2.5], r"^t: 2.5 is not an integer"),
    ([True], r"^t: True is not an integer"),
])
def test_check_timesteps_errors_name_the_option(ts: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_timesteps(ts)
