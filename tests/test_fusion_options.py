"""drdc's fusion options beyond Eq 19 (stages.method.fusion.refine): hand-computed fixtures, then end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.errors import ConfigError
from stages.method.fusion import gate_of, high_pass, low_pass, refine
from stages.store.cache import RunStore


def _fixture():
    # a 4 x 4 map on a 2 x 2 "base grid": each 2 x 2 block's mean is what the base map's resolution sees
    d = torch.tensor([[[1.0, 3.0, 0.0, 0.0],
                       [1.0, 3.0, 0.0, 4.0],
                       [2.0, 2.0, 5.0, 5.0],
                       [2.0, 2.0, 5.0, 5.0]]])
    b = torch.tensor([[[-1.0, 0.0, 1.0, 2.0],
                       [4.0, 0.5, 3.0, -2.0],
                       [0.0, 0.0, 0.0, 0.0],
                       [2.0, 2.0, 2.0, 2.0]]])
    return b, d


def test_low_and_high_pass_by_hand():
    b, d = _fixture()
    constant = torch.full((1, 4, 4), 7.0)
    assert torch.allclose(low_pass(constant, 2), constant) and torch.allclose(high_pass(constant, 2), 0 * constant)
    # block means 2, 1, 2, 5; bilinear (half-pixel centres) from 2 x 2 to 4 x 4, by hand: the outer pixels
    # take their block's mean, the inner ones 3/4 of it and 1/4 of the neighbour's
    means = np.array([[2.0, 1.0], [2.0, 5.0]])
    w = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # rows of the 1-D interpolation
    lp = w @ means @ w.T
    assert np.allclose(low_pass(d, 2)[0].numpy(), lp)
    assert np.allclose(high_pass(d, 2)[0].numpy(), d[0].numpy() - lp)


def test_gate_and_refine_by_hand():
    b, d = _fixture()
    g = np.clip(b[0].numpy() / 2.0, 0, 1)  # 0 at or below the normals' mean, 1 from 2 standard deviations up
    assert np.allclose(gate_of(b, 2.0)[0].numpy(), g)
    gamma = 0.25
    assert np.allclose(refine(b, d, gamma, "add", 2)[0].numpy(), 0.75 * b[0].numpy() + 0.25 * d[0].numpy())  # Eq 19
    assert np.allclose(refine(b, d, gamma, "gated", 2, 2.0)[0].numpy(),
                       0.75 * b[0].numpy() + 0.25 * g * d[0].numpy())
    assert np.allclose(refine(b, d, gamma, "highpass", 2)[0].numpy(),
                       0.75 * b[0].numpy() + 0.25 * high_pass(d, 2)[0].numpy())
    # where the base map is not raised, the gated refinement adds nothing of the diffusion map
    flat = refine(b, d, 1.0, "gated", 2, 2.0)[0].numpy()
    assert flat[0, 0] == 0 and flat[2, 2] == 0 and flat[1, 0] == d[0, 1, 0]


@pytest.mark.parametrize("kw, needle", [({"fusion": "blend"}, "fusion"), ({"fusion": "gated"}, "fusion"),
                                        ({"gate": 0.0, "norm": "pixel"}, "gate"),
                                        ({"image_gamma": 1.5}, "image_gamma")])
def test_bad_fusion_options(kw, needle):
    from stages.pipeline.selection import FuseParams

    with pytest.raises(ConfigError) as e:
        FuseParams(**kw)
    assert e.value.param.startswith(needle)


def _fuse_entry(run, **params):
    return next(e for e in reversed(list(RunStore(run).entries())) if e.stage == "fuse"
                and all(e.params.get(k) == v for k, v in params.items()))


def test_fuse_with_each_option_matches_the_formula_and_scores_images_on_their_own_map(full_run, cli):
    """fuse --fusion gated --norm pixel --image-gamma 0: H_out is refine() of the normalised maps, image scores
    come from the gamma-0 (base only) fusion; and keys made without the options are unchanged."""
    from stages.method.anomaly_map import image_score
    from stages.method.fusion import mean_filter, normalise
    from stages.pipeline.heatmaps import CrossFitStats, read_diff, source_maps
    from stages.pipeline.selection import FuseParams, resolve

    before = {e.key for e in RunStore(full_run).entries()}
    cli("fuse", "--run", full_run, "--c", "1,8", "-q")  # as the fixture made it: cached, same key
    assert {e.key for e in RunStore(full_run).entries()} == before
    cli("fuse", "--run", full_run, "--c", "1,8", "--norm", "pixel", "--gamma", "0.5", "--fusion", "gated",
        "--gate", "1.5", "--image-gamma", "0", "-q")
    store = RunStore(full_run)
    e = store.current("fuse")
    assert (e.params["fusion"], e.params["gate"], e.params["image_gamma"]) == ("gated", 1.5, 0)
    s, diffs = resolve(store, FuseParams(c=(1, 8), norm="pixel", gamma=0.5, fusion="gated", gate=1.5,
                                         image_gamma=0.0))
    base, index = store.current("infer_base"), store.current("index")
    records, rec = index.attrs["records"], base.array("record")[:]
    rows = np.array([k for k, i in enumerate(rec) if records[i]["split"] == "test"][:4])  # test rows: no folds
    assert len(rows) == 4
    hf = torch.from_numpy(base.array("h_base").get_orthogonal_selection((rows,)))
    hb, h_st = source_maps(hf, read_diff(diffs, s, rows), int(index.params["image_size"]), s)
    st = CrossFitStats.load(e).all.per_image([records[rec[k]]["category"] for k in rows])
    want = refine(normalise(hb, st[0]), normalise(mean_filter(h_st, s.filter), st[1]), 0.5, "gated",
                  hf.shape[-1], 1.5)
    assert np.allclose(e.array("maps").get_orthogonal_selection((rows,)), want.numpy(), atol=1e-5)
    image = e.array("image_maps").get_orthogonal_selection((rows,))
    assert np.allclose(image, normalise(hb, st[0]).numpy(), atol=1e-5)  # gamma 0: the normalised base map
    cli("score", "--run", full_run, "--source", "fuse", "-q")
    sc = RunStore(full_run).current("score")
    assert np.allclose(sc.array("scores").get_orthogonal_selection((rows,)),
                       image_score(torch.from_numpy(image), 16).numpy(), atol=1e-6)


def test_tune_rationale_names_the_base_and_diffusion_alternatives():
    from stages.pipeline.tune import rationale

    def trial(gamma, mean, image_gamma=None):
        return {"settings": {"gamma": gamma, "image_gamma": image_gamma}, "metrics": {"mean": mean}}

    trials = [trial(0.9, 0.80), trial(0.0, 0.90), trial(0.25, 0.95), trial(0.0, 0.93, image_gamma=0.5),
              trial(1.0, 0.70), trial(1.0, 0.75, image_gamma=0.0)]
    r = rationale(trials, "mean")
    # base only: gamma 0 with no image gamma of its own; diffusion only: gamma 1 with image scores from it too
    assert (r["chosen"], r["base_only"], r["diffusion_only"]) == (0.95, 0.90, 0.70)
    assert rationale([trial(0.5, 0.9)], "mean")["base_only"] is None
    from drdc_cli.tune_cmd import why

    # the verdict names what won: the refinement, the base map alone, or the diffusion map alone
    assert why(trials, "mean").endswith("the diffusion refinement added to the base map")
    assert why(trials + [trial(0.0, 0.99)], "mean").endswith("base only won")
    assert why([trial(1.0, 0.7), trial(1.0, 0.6, image_gamma=0.25)], "mean").endswith("the diffusion map alone won")
