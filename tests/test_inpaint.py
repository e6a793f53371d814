"""Tests for stages.method.inpaint: the dual conditions (Eq 12-15), noise order, batch independence, assembly (Eq 10)."""
from __future__ import annotations

import pytest
import torch

from stages.method.diffusion import ddim_step, linear_schedule, predict_x0, q_sample
from stages.errors import ConfigError
from stages.method.inpaint import assemble, inpaint, make_input
from stages.method.masks import grid_masks, image_generator

S = linear_schedule()
TS = (250, 200, 150, 100, 50, 0)
SIZE, N_S, CS = 16, 2, (4, 2)  # two grid sizes of two masks: 4 sequences per image


class FakeEps:
    """A deterministic per-sample eps model, linear in x_t, cond and t, that records its inputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), None if cond is None else cond.clone(), t.clone()))
        return self.eps(x, cond, t)

    @staticmethod
    def eps(x: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        c = torch.zeros_like(x) if cond is None else cond
        return 0.3 * x + 0.2 * c + 1e-3 * t.view(-1, 1, 1, 1).to(x.dtype)


def _image(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's sequences: I_ori repeated (4, 3, S, S) in [-1, 1] and its masks (4, 1, S, S), c-major."""
    g = image_generator(seed, 0, stream=99)
    img = torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=dtype) * 2 - 1
    m = torch.cat([grid_masks(SIZE, c, N_S, image_generator(seed, 0, stream=c)) for c in CS]).to(dtype)
    return img.expand(m.shape[0], -1, -1, -1).clone(), m


def _draws(seed: int, n: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


# ------------------------------------------------------------------------------------------ dual conditions
@pytest.mark.parametrize("model_condition", [True, False])
def test_model_condition_and_noise_order(model_condition: bool) -> None:
    I_ori, M = _image(0)  # noqa: N806
    model = FakeEps()
    inpaint(model, I_ori, M, TS, S, torch.Generator().manual_seed(5), model_condition=model_condition)
    n0, n1 = _draws(5, 2, I_ori.shape)  # documented order: n0 (I_in), n1 (x_{t_1}), then one per later t
    I_in = make_input(I_ori, M, n0)  # noqa: N806
    assert torch.equal(I_in[M.expand_as(I_in) == 1], I_ori[M.expand_as(I_in) == 1])  # known region: the image
    assert torch.equal(I_in[M.expand_as(I_in) == 0], n0[M.expand_as(I_in) == 0])  # unknown region: the n0 noise
    assert torch.equal(model.calls[0][0], q_sample(I_in, TS[0], n1, S))
    assert [int(t[0]) for _, _, t in model.calls] == list(TS)
    for x, cond, t in model.calls:
        assert t.dtype == torch.long and t.shape == (4,) and bool((t == t[0]).all())
        assert torch.equal(cond, I_in) if model_condition else cond is None


@pytest.mark.parametrize("test_time_condition", [True, False])
def test_each_step_merges_known_forward_sample_and_unknown_ddim_step(test_time_condition: bool) -> None:
    I_ori, M = _image(1)  # noqa: N806
    model, traj = FakeEps(), []
    out = inpaint(model, I_ori, M, TS, S, torch.Generator().manual_seed(6),
                  test_time_condition=test_time_condition, trajectory=traj)
    assert list(out) == list(TS) and [s[0] for s in traj] == list(TS[1:])
    later = _draws(6, 2 + len(TS) - 1, I_ori.shape)[2:]
    known, unknown = M.expand_as(I_ori) == 1, M.expand_as(I_ori) == 0
    for k, (t_next, x_after, n) in enumerate(traj):
        x, cond, t = model.calls[k]
        eps = FakeEps.eps(x, cond, t)
        assert torch.equal(out[TS[k]], predict_x0(x, eps, TS[k], S, clip=True))  # Eq 9
        step = ddim_step(x, eps, TS[k], t_next, S, clip=True)
        assert torch.equal(model.calls[k + 1][0], x_after)  # the merged sample feeds the next step
        if test_time_condition:
            assert torch.equal(n, later[k])
            assert torch.equal(x_after[known], q_sample(I_ori, t_next, n, S)[known])  # Eq 13
            assert torch.equal(x_after[unknown], step[unknown])  # Eq 14, 15
        else:
            assert n is None and torch.equal(x_after, step)


def test_oracle_noise_recovers_the_clean_image() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)  # partly outside [-1, 1]
    n = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    for t in (0, 50, 250, 999):
        x_t = q_sample(x0, t, n, S)
        torch.testing.assert_close(predict_x0(x_t, n, t, S), x0.clamp(-1, 1), rtol=0, atol=1e-9)
        torch.testing.assert_close(predict_x0(x_t, n, t, S, clip=False), x0, rtol=0, atol=1e-9)


def test_a_perfect_model_of_the_image_reproduces_it() -> None:
    """If z_theta returns the noise that separates x_t from I_ori, every x0_t and I_out equal I_ori: zero heatmap."""
    I_ori, M = _image(2, torch.float64)  # noqa: N806
    abar = S.alphas_cumprod

    def oracle(x: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * I_ori) / (1 - a).sqrt()

    out = inpaint(oracle, I_ori, M, TS, S, torch.Generator().manual_seed(0))
    for t in TS:
        torch.testing.assert_close(out[t], I_ori, rtol=0, atol=1e-9)
        torch.testing.assert_close(assemble(out[t], M, N_S), I_ori[::N_S], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_bit_identical_results() -> None:
    I_ori, M = _image(3)  # noqa: N806
    a = inpaint(FakeEps(), I_ori, M, TS, S, torch.Generator().manual_seed(1))
    b = inpaint(FakeEps(), I_ori, M, TS, S, torch.Generator().manual_seed(1))
    c = inpaint(FakeEps(), I_ori, M, TS, S, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[t], b[t]) for t in TS) and not torch.equal(a[0], c[0])


def test_results_do_not_depend_on_batch_composition() -> None:
    (ia, ma), (ib, mb) = _image(4), _image(5)
    alone_a = inpaint(FakeEps(), ia, ma, TS, S, image_generator(0, 4))
    alone_b = inpaint(FakeEps(), ib, mb, TS, S, image_generator(0, 5))
    both = inpaint(FakeEps(), torch.cat([ib, ia]), torch.cat([mb, ma]), TS, S,
                   [image_generator(0, 5), image_generator(0, 4)])  # B then A, one generator per image
    # one generator per (image, c), i.e. per group of n_s sequences: a grid size's result does not need the others
    per_c = inpaint(FakeEps(), ia, ma, TS, S, [image_generator(0, 4, stream=100 + c) for c in CS])
    c2_alone = inpaint(FakeEps(), ia[N_S:], ma[N_S:], TS, S, image_generator(0, 4, stream=100 + CS[1]))
    for t in TS:
        assert torch.equal(both[t][:4], alone_b[t]) and torch.equal(both[t][4:], alone_a[t])
        assert torch.equal(per_c[t][N_S:], c2_alone[t])


def test_generators_must_split_the_batch_evenly() -> None:
    I_ori, M = _image(0)  # noqa: N806
    with pytest.raises(ValueError, match="3 generators"):
        inpaint(FakeEps(), I_ori, M, TS, S, [torch.Generator()] * 3)


@pytest.mark.parametrize("ts, message", [((250, 1000), r"^t: 1000 is out of range \[0, 999\]$"),
                                         ((50, 50), r"^t: duplicate value 50$")])
def test_bad_timesteps_raise_config_error_naming_t(ts: tuple[int, ...], message: str) -> None:
    I_ori, M = _image(0)  # noqa: N806
    with pytest.raises(ConfigError, match=message):
        inpaint(FakeEps(), I_ori, M, ts, S, torch.Generator())


def test_timesteps_run_in_descending_order_whatever_the_input_order() -> None:
    I_ori, M = _image(0)  # noqa: N806
    model = FakeEps()
    out = inpaint(model, I_ori, M, (0, 100, 50), S, torch.Generator())
    assert list(out) == [100, 50, 0] and [int(t[0]) for _, _, t in model.calls] == [100, 50, 0]


# ------------------------------------------------------------------------------------------------ assembly
def test_assemble_takes_each_pixel_from_the_run_where_it_was_unknown() -> None:
    _, M = _image(6)  # noqa: N806  (K = 2 grid sizes of n_s = 2 masks)
    consts = torch.tensor([-0.5, 0.25, 0.75, -1.0]).view(4, 1, 1, 1)
    out = assemble(consts.expand(4, 3, SIZE, SIZE), M, N_S)
    assert out.shape == (2, 3, SIZE, SIZE)
    for k in range(2):  # piecewise: const_i on S_i
        want = sum((1 - M[k * N_S + i]) * consts[k * N_S + i] for i in range(N_S))
        assert torch.equal(out[k], want.expand(3, -1, -1))
        assert set(out[k].unique().tolist()) == set(consts[k * N_S:(k + 1) * N_S].flatten().tolist())
    x0 = torch.randn(4, 3, SIZE, SIZE)
    out = assemble(x0, M, N_S)
    for j in range(4):
        unknown = (M[j, 0] == 0)
        assert torch.equal(out[j // N_S][:, unknown], x0[j][:, unknown])


def test_assemble_rejects_ungroupable_batches() -> None:
    with pytest.raises(ValueError):
        assemble(torch.zeros(3, 3, 4, 4), torch.ones(3, 1, 4, 4), 2)
