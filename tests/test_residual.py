"""The residual norm of Eq 2 (stages/method/residual.py) and `infer-base --residual-norm`: the Mahalanobis map against
sklearn's own Mahalanobis distances, statistics from train-base's fit images only, predict and export scoring new
images the way infer-base scored the dataset, and Eq 2 as printed keeping its key."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from stages.store.cache import RunStore
from stages.pipeline.infer_base import InferBaseParams, ResidualStats
from stages.method.residual import fit_gaussian, mahalanobis, residual_map, stage_channels
from stages.pipeline.train_base import TrainBaseParams
from stages.data.dataset import split_train
from stages.data.validation import is_validation_normal


def test_mahalanobis_equals_sklearns_at_every_position():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(30, 5, 3, 2, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0])[None, :, None, None]
    query = torch.randn(4, 5, 3, 2, generator=g) * 2
    ticks = []
    mu, prec = fit_gaussian(train, on_position=lambda: ticks.append(1))  # infer-base's bar: a tick per position
    assert mu.shape == (6, 5) and prec.shape == (6, 5, 5) and len(ticks) == 6
    got = mahalanobis(query, mu[None], prec[None])[:, 0]  # one category
    for p, (y, x) in enumerate([(y, x) for y in range(3) for x in range(2)]):
        lw = LedoitWolf().fit(train[:, :, y, x].double().numpy())
        want = np.sqrt(lw.mahalanobis(query[:, :, y, x].double().numpy()))  # sklearn gives squared distances
        np.testing.assert_allclose(got[:, y, x].numpy(), want, rtol=1e-4)


def test_l2_is_eq2_and_a_constant_reconstruction_gives_padim_on_the_features():
    g = torch.Generator().manual_seed(1)
    f_train, f_in = torch.randn(40, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    out = torch.randn(3, 4, 2, 2, generator=g)
    assert torch.allclose(residual_map(f_in, out), torch.linalg.vector_norm(f_in - out, dim=1))
    const = torch.randn(1, 4, 2, 2, generator=g)  # F_out the same for every image: an untrained model's
    mu, prec = fit_gaussian(f_train - const)
    mu_f, prec_f = fit_gaussian(f_train)
    on_residual = residual_map(f_in, const.expand(3, -1, -1, -1), None, mu[None], prec[None], torch.zeros(3).long())
    on_features = mahalanobis(f_in, mu_f[None], prec_f[None])[:, 0]
    assert torch.allclose(on_residual, on_features, rtol=1e-4, atol=1e-5)


def test_stage_channels_follow_the_concatenation_order():
    assert stage_channels([16, 24, 40, 112], (3, 4)) == list(range(40, 192))
    assert stage_channels([2, 3], ()) == [0, 1, 2, 3, 4]
    assert stage_channels([2, 3], (2,)) == [2, 3, 4]
    with pytest.raises(ValueError, match="stage 3"):
        stage_channels([2, 3], (3,))


def test_eq2_keeps_its_key_and_l2_ignores_a_presets_stages():
    assert InferBaseParams().key_params() == {}
    assert InferBaseParams("l2", (3, 4)).residual_stages == ()
    assert InferBaseParams("mahalanobis", (4, 3)).key_params() == {"residual_norm": "mahalanobis",
                                                                   "residual_stages": [3, 4]}
    assert "standardize" not in TrainBaseParams().key_params()
    assert TrainBaseParams(standardize=True).key_params()["standardize"] is True


@pytest.fixture(scope="module")
def maha_run(full_run_pristine, tmp_path_factory):
    from conftest import _invoke_all, copy_run

    run = copy_run(full_run_pristine, tmp_path_factory.mktemp("maha") / "r.zarr")
    _invoke_all(run, [["infer-base", "--residual-norm", "mahalanobis", "--residual-stages", "3,4"],
                      ["score", "--source", "base"]])
    return run


def test_statistics_come_from_the_fit_images_of_train_base_only(maha_run):
    from stages.pipeline.trained import load_model

    store = RunStore(maha_run)
    ib, tb = store.current("infer_base"), store.current("train_base")
    assert ib.params == {"residual_norm": "mahalanobis", "residual_stages": [3, 4]}
    assert ib.inputs["train_base"] == tb.key
    records = store.current("index").attrs["records"]
    fit, held = split_train(records, float(tb.params["holdout"]), int(tb.params["seed"]))
    assert held and all(records[i]["split"] == "train" for i in fit)
    assert not any(is_validation_normal(records[i]) or records[i]["split"] != "train" for i in fit)
    stats = ResidualStats.load(ib)
    ch = stats.channels
    assert ch == stage_channels(store.current("extract").attrs["backbone_channels"], (3, 4))
    feats = store.current("extract").array("features")
    model = load_model(tb, torch.device("cpu"))
    for k, cat in enumerate(stats.categories):  # refit from exactly those images: the same Gaussian
        idx = [i for i in fit if records[i]["category"] == cat]
        f = torch.from_numpy(feats.get_orthogonal_selection((np.array(idx),)))
        with torch.inference_mode():
            mu, prec = fit_gaussian((f - model(f))[:, ch])
        assert torch.allclose(stats.mu[k], mu, atol=1e-5) and torch.allclose(stats.prec[k], prec, rtol=1e-4,
                                                                             atol=1e-4)


def test_the_stored_maps_are_the_mahalanobis_norm_of_each_images_own_category(maha_run):
    from stages.pipeline.trained import load_model

    store = RunStore(maha_run)
    ib = store.current("infer_base")
    stats = ResidualStats.load(ib)
    records = store.current("index").attrs["records"]
    rec = ib.array("record")[:]
    f = torch.from_numpy(store.current("extract").array("features").get_orthogonal_selection((rec,)))
    with torch.inference_mode():
        out = load_model(store.current("train_base"), torch.device("cpu"))(f)
    own = [stats.categories.index(records[i]["category"]) for i in rec]
    want = residual_map(f, out, stats.channels, stats.mu, stats.prec.double(), torch.tensor(own))
    np.testing.assert_allclose(ib.array("h_base")[:], want.numpy(), rtol=1e-5)
    nearest = stats.heatmap(f[:2], out[:2], [None, None])  # unknown category: the nearest Gaussian
    every = torch.stack([residual_map(f[:2], out[:2], stats.channels, stats.mu, stats.prec.double(),
                                      torch.tensor([k, k])).float() for k in range(len(stats.categories))])
    assert torch.allclose(nearest, every.amin(0))
    assert (nearest <= torch.from_numpy(ib.array("h_base")[:2]) + 1e-5).all()


def test_predict_scores_dataset_images_as_infer_base_and_score_did(maha_run, tiny_data):
    from stages.apps.predict.loop import predict
    from stages.apps.predict.predictor import Predictor

    store = RunStore(maha_run)
    images = sorted((tiny_data / "disc" / "test").rglob("*.png"))[:3]
    maps = {}
    got = predict(Predictor(store, "cpu", base_only=True), images, None, progress=False,
                  on_batch=lambda b: maps.update({p.path: p.h_base.copy() for p in b}))
    ib, records = store.current("infer_base"), store.current("index").attrs["records"]
    root = store.current("index").params["root"]
    row = {int(r): k for k, r in enumerate(ib.array("record")[:])}
    from stages.method.anomaly_map import upsample
    for p in got:
        i = next(j for j, r in enumerate(records) if f"{root}/{r['path']}" == str(p.path.resolve()))
        want = upsample(torch.from_numpy(ib.array("h_base")[row[i]][None]), 64)[0].numpy()
        np.testing.assert_allclose(maps[p.path], want, rtol=1e-4, atol=1e-5)


def test_bad_stages_are_one_line_naming_the_option(maha_run, cli):
    res = cli("infer-base", "--run", maha_run, "--residual-norm", "mahalanobis", "--residual-stages", "5", code=2)
    assert "--residual-stages" in res.output and "1..4" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_damaged_gaussians_file_is_one_line_naming_it_and_the_fix(maha_run, tmp_path, cli, tiny_data):
    from conftest import copy_run

    run = copy_run(maha_run, tmp_path / "r.zarr")
    ib = RunStore(run).current("infer_base")
    (ib.files / "residual.pt").write_bytes(b"not a checkpoint")
    image = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    res = cli("predict", "--run", run, str(image), "--base-only", "--out", tmp_path / "p", code=None)
    assert res.exit_code != 0 and "residual.pt" in res.output and "drdc cache gc" in res.output
    assert len(res.output.strip().splitlines()) == 1
