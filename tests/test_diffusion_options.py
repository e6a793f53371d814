"""Issue 12's diffusion options: the reverse process's start (--init), training that matches inference
(--task inpaint), the feature-space distance (--distance feature), and their path through fuse, tune and predict."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.store.cache import RunStore
from stages.method.diffusion import linear_schedule, predict_x0, q_sample
from stages.errors import ConfigError
from stages.method.feature_distance import feature_heatmap
from stages.pipeline.infer_diff import InferDiffParams
from stages.method.inpaint import condition, inpaint, make_input, reverse_process, start
from stages.method.masks import grid_masks, image_generator
from stages.pipeline.train_diff import STREAM, TrainDiffParams, _batch, inpaint_batch, inpaint_loss

from conftest import TINY_DIFF, TINY_INFER, copy_run, options

S = linear_schedule()
CHAIN = (250, 150, 50)


class LinearEps(torch.nn.Module):
    """A deterministic eps model that records what it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def forward(self, x, cond, t):
        self.calls.append((x.clone(), None if cond is None else cond.clone(), t.clone()))
        c = torch.zeros_like(x) if cond is None else cond
        return 0.3 * x + 0.2 * c + 1e-3 * t.view(-1, 1, 1, 1).to(x.dtype)


def _fixture(b: int = 64, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    M = torch.cat([grid_masks(size, 2, 2, image_generator(seed, k))[:1] for k in range(b)])  # noqa: N806
    n0, n1 = torch.randn(img.shape, generator=g), torch.randn(img.shape, generator=g)
    return img, M, n0, n1


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------------ --init
def test_each_start_builds_its_documented_x_t1() -> None:
    img, M, n0, n1 = _fixture()  # noqa: N806
    known, unknown = M.expand_as(img) == 1, M.expand_as(img) == 0
    I_in, x = start(img, M, 250, S, n0, n1, "paper")  # noqa: N806
    assert torch.equal(I_in, make_input(img, M, n0)) and torch.equal(x, q_sample(I_in, 250, n1, S))
    for init in ("noise", "ddad"):
        I_in2, x = start(img, M, 250, S, n0, n1, init)  # noqa: N806
        assert torch.equal(I_in2, I_in)  # the masked condition is the same for every start
        assert torch.equal(x[known], q_sample(img, 250, n1, S)[known])  # the known region of Eq 13
        want = n1 if init == "noise" else q_sample(img, 250, n1, S)
        assert torch.equal(x[unknown], want[unknown])
    with pytest.raises(ConfigError, match="^init: "):
        start(img, M, 250, S, n0, n1, "bogus")


def test_noise_start_is_independent_of_the_condition_noise_and_the_paper_start_is_not() -> None:
    img, M, n0, n1 = _fixture(256)  # noqa: N806
    unknown = M.expand_as(img) == 0
    _, x_paper = start(img, M, 250, S, n0, n1, "paper")
    _, x_noise = start(img, M, 250, S, n0, n1, "noise")
    assert _corr(x_paper[unknown], n0[unknown]) > 0.6  # sqrt(abar_250) = 0.72 of the condition's own noise
    assert abs(_corr(x_noise[unknown], n0[unknown])) < 0.03
    assert abs(_corr(x_noise[unknown], img[unknown])) < 0.03 and abs(float(x_noise[unknown].std()) - 1) < 0.03


# ------------------------------------------------------------------------------------- --task inpaint
def _params(**kw) -> TrainDiffParams:
    return TrainDiffParams(**{"size": 16, "grid": (1, 2, 4), "batch_size": 8, "task": "inpaint", "chain": CHAIN,
                              **kw})


@pytest.mark.parametrize("step", range(6))
def test_training_feeds_the_unet_exactly_what_inference_feeds_it_at_the_drawn_step(step: int) -> None:
    """Replaying the training draws (images, masks, step k) and then running infer-diff's reverse process (init
    noise) with the same generator and model: the UNet input at step k is the training input, bit for bit."""
    p = _params()
    images = (torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    model = LinearEps()
    x0, M, x_t, cond, t = inpaint_batch(p, model, images, step, S, torch.device("cpu"))  # noqa: N806
    g = image_generator(p.seed, step, stream=STREAM)
    idx = torch.randint(5, (p.batch_size,), generator=g)
    assert torch.equal(x0, images[idx].float().div(127.5).sub(1.0))
    which_c, which_set = torch.randint(3, (8,), generator=g), torch.randint(2, (8,), generator=g)
    M_ref = torch.stack([grid_masks(16, p.grid[int(k)], 2, g)[int(i)] for k, i in zip(which_c, which_set)])  # noqa: N806
    assert torch.equal(M, M_ref)
    k = int(torch.randint(len(CHAIN), (1,), generator=g))
    ref = LinearEps()
    inpaint(ref, x0, M, CHAIN, S, g, init="noise")
    x_ref, cond_ref, t_ref = ref.calls[k]
    assert torch.equal(x_t, x_ref) and torch.equal(cond, cond_ref) and torch.equal(t, t_ref)
    assert int(t[0]) == CHAIN[k] and len(model.calls) == k  # k UNet calls to get there, none wasted


def test_first_training_state_has_noise_where_inference_has_it_unlike_the_paper_task() -> None:
    """The paper's training input keeps sqrt(abar_t) of I_ori in the masked region; the inpaint task's first
    state holds none of it, as inference's first state does."""
    images = (torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    p_in = _params(batch_size=64, chain=(250,))
    x0, M, x_t, cond, _ = inpaint_batch(p_in, LinearEps(), images, 0, S, torch.device("cpu"))  # noqa: N806
    unknown = M.expand_as(x0) == 0
    assert abs(_corr(x_t[unknown], x0[unknown])) < 0.05
    assert abs(_corr(x_t[unknown], cond[unknown])) < 0.05  # independent of the condition's noise
    p_pa = TrainDiffParams(size=16, grid=(1, 2, 4), batch_size=64, t_max=250)
    x0, _, t, eps = _batch(p_pa, images, 0)
    x_pa = q_sample(x0, t, eps, S)
    assert _corr(x_pa, x0) > 0.5  # every pixel of the paper task's x_t carries the original


def test_inpaint_loss_is_the_inverse_snr_weighted_eps_loss_on_the_unknown_region() -> None:
    img, M, _, n1 = (v.double() for v in _fixture(8))  # noqa: N806
    t = torch.tensor([250, 150, 50, 0] * 2)
    x_t = q_sample(make_input(img, M, n1), t, n1, S)
    abar = S.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_star = (x_t - abar.sqrt() * img) / (1 - abar).sqrt()  # the eps whose x0_hat is I_ori
    assert float(inpaint_loss(eps_star, x_t, t, img, M, S)) == pytest.approx(0.0, abs=1e-10)
    eps = torch.randn(img.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    unknown = (1 - M).expand_as(img)
    want = (((1 - abar) / abar) * (eps - eps_star) ** 2 * unknown).sum() / unknown.sum()
    assert float(inpaint_loss(eps, x_t, t, img, M, S)) == pytest.approx(float(want), rel=1e-4)
    known_only = eps_star + (1 - unknown) * 5.0  # an error in the known region costs nothing
    assert float(inpaint_loss(known_only, x_t, t, img, M, S)) == pytest.approx(0.0, abs=1e-10)


def test_keys_of_the_paper_procedure_are_unchanged() -> None:
    assert "task" not in TrainDiffParams().key_params() and "chain" not in TrainDiffParams().key_params()
    assert "t_max" not in _params().key_params() and _params().key_params()["chain"] == list(CHAIN)
    q = InferDiffParams().entry_params(1, 64)
    assert "init" not in q and "distance" not in q
    assert InferDiffParams(init="ddad", distance="feature").entry_params(1, 64)["init"] == "ddad"


@pytest.mark.parametrize("kw, needle", [({"task": "copy"}, "^task: "), ({"chain": ()}, "^chain: "),
                                        ({"chain": (250, 250)}, "duplicate")])
def test_bad_training_task_options(kw, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        TrainDiffParams(**kw)


# ------------------------------------------------------------------------------------------------ --crop
@pytest.mark.parametrize("task", ["paper", "inpaint"])
def test_crops_cut_image_and_mask_at_the_same_place(task: str) -> None:
    """--crop: every sample is a window of one training image and the same window of a full-size grid mask
    (cells stay c pixels wide), at an offset drawn after the images and masks; --crop 0 draws what it drew."""
    images = (torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    p = TrainDiffParams(size=32, grid=(1, 4, 8), batch_size=16, crop=16, task=task, chain=CHAIN, channel_mult=(1, 2))
    if task == "paper":
        x0, I_in, _, _ = _batch(p, images, 3)  # noqa: N806
        M = (I_in == x0).all(1, keepdim=True).float()  # noqa: N806  known pixels are copied from I_ori
    else:
        x0, M, _, _, _ = inpaint_batch(p, LinearEps(), images, 3, S, torch.device("cpu"))  # noqa: N806
    assert x0.shape == (16, 3, 16, 16) and M.shape == (16, 1, 16, 16)
    g = image_generator(p.seed, 3, stream=STREAM)
    idx = torch.randint(5, (16,), generator=g)
    which_c, which_set = torch.randint(3, (16,), generator=g), torch.randint(2, (16,), generator=g)
    full = [grid_masks(32, p.grid[int(k)], 2, g)[int(i)] for k, i in zip(which_c, which_set)]
    at = torch.randint(32 - 16 + 1, (16, 2), generator=g)
    for b in range(16):
        y, x = int(at[b, 0]), int(at[b, 1])
        img = images[idx[b]].float().div(127.5).sub(1.0)
        assert torch.equal(x0[b], img[:, y:y + 16, x:x + 16])
        assert torch.equal(M[b], full[b][:, y:y + 16, x:x + 16])
    assert len({tuple(a) for a in at.tolist()}) > 8  # the windows move
    whole = TrainDiffParams(size=32, grid=(1, 4, 8), batch_size=16)
    assert "crop" not in whole.key_params() and p.key_params()["crop"] == 16  # older keys stay valid
    x_whole, *_ = _batch(whole, images, 3)
    assert torch.equal(x_whole, images[idx].float().div(127.5).sub(1.0))


@pytest.mark.parametrize("crop", [10, 48, -16])
def test_bad_crop_is_one_line(crop: int) -> None:
    with pytest.raises(ConfigError, match="^crop: "):
        TrainDiffParams(size=32, grid=(1, 4), channel_mult=(1, 2, 2), crop=crop)


def test_a_unet_trained_on_crops_makes_maps_of_the_whole_image(full_run_pristine, tmp_path, cli) -> None:
    run = copy_run(full_run_pristine, tmp_path / "r.zarr")
    cli("train-diff", "--run", run, *TINY_DIFF, "--crop", "16")
    cli("infer-diff", "--run", run, *TINY_INFER, "--c", "4")
    s = RunStore(run)
    unet = s.current("train_diff")
    assert unet.params["crop"] == 16 and unet.params["size"] == 32
    e = next(e for e in s.entries() if e.stage == "infer_diff" and e.inputs["train_diff"] == unet.key)
    h = e.array("heatmaps")[:].astype(np.float32)
    assert h.shape[-2:] == (32, 32) and np.isfinite(h).all() and h.std() > 0
    from drdc_cli.commands import entry_line as entry_command
    assert "--crop 16" in entry_command(unet)  # hints and run files remake the same key


# ------------------------------------------------------------------------------------- feature distance
def test_feature_heatmap_against_a_numpy_cosine() -> None:
    g = torch.Generator().manual_seed(4)
    f_a = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    f_b = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    h = feature_heatmap(f_a, f_b, 4)
    a, b = f_a[0].numpy(), f_b[0].numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    a2, b2 = f_a[1].numpy(), f_b[1].numpy()
    cos2 = (a2 * b2).sum(1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1))
    up2 = torch.nn.functional.interpolate(torch.from_numpy(1 - cos2)[:, None], size=(4, 4), mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(h.numpy(), ((1 - cos) + up2) / 2, atol=1e-5)
    assert torch.allclose(feature_heatmap(f_a, f_a, 4), torch.zeros(2, 4, 4), atol=1e-5)  # same image: zero


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def option_run(full_run_pristine, tmp_path_factory):
    """The tiny run with an inpaint-task UNet and its noise-start maps, pixel and feature."""
    from conftest import _invoke_all

    run = copy_run(full_run_pristine, tmp_path_factory.mktemp("opt") / "r.zarr")
    _invoke_all(run, [["train-diff", *TINY_DIFF, "--task", "inpaint", "--chain", "100,50,0"],
                      ["infer-diff", *TINY_INFER[:6], "--c", "1,8", "--init", "noise", "--distance", "feature"],
                      ["fuse", "--distance", "feature"], ["score", "--source", "fuse"]])
    return run


def test_feature_maps_are_cached_beside_the_pixel_maps(option_run) -> None:
    s = RunStore(option_run)
    e = next(e for e in s.entries() if e.stage == "infer_diff" and e.params.get("distance") == "feature")
    assert e.params["init"] == "noise" and e.inputs["train_diff"] == s.current_keys["train_diff"]
    h, f = e.array("heatmaps")[:], e.array("feature")[:]
    assert h.shape[:2] == f.shape[:2] == (h.shape[0], 3) and f.shape[2:] == (32, 32)
    f = f.astype(np.float32)
    assert np.isfinite(f).all() and f.min() >= 0 and f.max() <= 2 and f.std() > 0
    fuse = s.current("fuse")
    assert fuse.params["distance"] == "feature" and fuse.params["init"] == "noise" and fuse.params["l"] == [1]


def test_predict_reproduces_the_feature_distance_scores(option_run, tiny_data, cli, tmp_path) -> None:
    s = RunStore(option_run)
    records = s.current("index").attrs["records"]
    e = s.current("score")
    stored = {records[i]["path"]: float(v) for i, v in zip(e.array("record")[:], e.array("scores")[:])}
    cli("predict", "--run", option_run, tiny_data / "grain" / "test", "--out", tmp_path / "o", "--no-pictures")
    rows = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    assert rows
    for r in rows:
        rel = Path(r["path"]).resolve().relative_to(tiny_data.resolve()).as_posix()
        assert float(r["score"]) == pytest.approx(stored[rel], rel=1e-4, abs=1e-6)


def test_tune_searches_the_cached_variants(option_run, cli) -> None:
    cli("infer-diff", "--run", option_run, *TINY_INFER[:6], "--c", "1,8", "--init", "ddad", "--distance", "pixel")
    cli("tune", "--run", option_run, "--rounds", "1", "--norms", "none,pixel", "--gammas", "0.5,1",
        "--filters", "1,41")
    s = RunStore(option_run)
    trials = s.get("tune", s.current_keys["tune"]).attrs["trials"]
    seen = {(q["settings"]["init"], q["settings"]["distance"]) for q in trials}
    assert {("noise", "pixel"), ("noise", "feature"), ("ddad", "pixel")} <= seen


def test_fuse_names_the_infer_diff_command_of_a_missing_variant(option_run, cli) -> None:
    res = cli("fuse", "--run", option_run, "--init", "ddad", "--distance", "feature", code=1)
    assert "--init ddad --distance feature" in res.output


@pytest.mark.parametrize("args, needle", [
    (["fuse", "--distance", "feature", "--l", "2"], "--l: feature maps have one scale"),
    (["fuse", "--distance", "texture"], "--distance"), (["fuse", "--init", "zero"], "--init"),
    (["infer-diff", "--init", "zero"], "--init"), (["infer-diff", "--distance", "texture"], "--distance"),
    (["train-diff", "--task", "copy"], "--task"), (["train-diff", "--task", "inpaint", "--chain", "5,5"], "--chain: duplicate"),
])
def test_bad_option_values_are_one_line(option_run, cli, args, needle) -> None:
    before = len(list(RunStore(option_run).entries()))
    res = cli(args[0], "--run", option_run, *args[1:], code=None)
    assert res.exit_code in (1, 2) and needle in res.output and "Traceback" not in res.output
    assert len(list(RunStore(option_run).entries())) == before


def test_pyramid_cut_short_equals_the_full_pyramid() -> None:
    from stages.models.backbone import load_backbone

    net = load_backbone("tf_efficientnet_lite0", feature_size=4, allow_random=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, cut = net.pyramid(x), net.pyramid(x, upto=2)
    assert len(full) == 4 and len(cut) == 3
    assert all(torch.equal(a, b) for a, b in zip(full, cut))
    assert [f.shape[-1] for f in cut] == [32, 16, 8]  # strides 2, 4, 8


# ------------------------------------------------------------------------------------- noise schedule
def test_the_schedule_is_part_of_the_key_and_the_paper_one_keeps_its_keys() -> None:
    from stages.pipeline.trained import schedule_of

    paper = TrainDiffParams()
    assert not {"diffusion_steps", "beta_start", "beta_end"} & set(paper.key_params())
    short = TrainDiffParams(diffusion_steps=500, beta_end=0.03, chain=(250, 0), task="inpaint", t_max=499)
    assert short.key_params()["diffusion_steps"] == 500 and short.key_params()["beta_end"] == 0.03
    s = schedule_of(short.key_params())
    assert s.T == 500 and float(s.betas[-1]) == pytest.approx(0.03) and float(s.betas[0]) == pytest.approx(1e-4)
    assert torch.equal(schedule_of({}).alphas_cumprod, S.alphas_cumprod)  # absent: the paper's
    with pytest.raises(ConfigError, match="^chain: 600 is out of range"):
        TrainDiffParams(diffusion_steps=500, task="inpaint", chain=(600, 0))
    assert TrainDiffParams(diffusion_steps=500).t_max == 999  # t_max is used up to T - 1 (the key keeps it)


def test_infer_diff_and_predict_run_the_unets_own_schedule(full_run_pristine, tiny_data, cli, tmp_path) -> None:
    run = copy_run(full_run_pristine, tmp_path / "r.zarr")
    cli("train-diff", "--run", run, *TINY_DIFF, "--diffusion-steps", "200", "--beta-end", "0.05")
    res = cli("infer-diff", "--run", run, *options(TINY_INFER, "--t", "250,100"), "--c", "4", code=2)
    assert "--t: 250 is out of range [0, 199]" in res.output
    cli("infer-diff", "--run", run, *options(TINY_INFER, "--t", "150,100,50"), "--c", "4", "-q")
    cli("fuse", "--run", run, "--c", "4", "-q")
    cli("score", "--run", run, "--source", "fuse", "-q")
    s = RunStore(run)
    records = s.current("index").attrs["records"]
    e = s.current("score")
    stored = {records[i]["path"]: float(v) for i, v in zip(e.array("record")[:], e.array("scores")[:])}
    cli("predict", "--run", run, tiny_data / "grain" / "test", "--out", tmp_path / "o", "--no-pictures", "-q")
    rows = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    for r in rows:
        rel = Path(r["path"]).resolve().relative_to(tiny_data.resolve()).as_posix()
        assert float(r["score"]) == pytest.approx(stored[rel], rel=1e-4, abs=1e-6)
