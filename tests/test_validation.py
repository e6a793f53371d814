"""The validation split: held out from every trainer, synthetic defects where their masks say, normalisation
statistics from normals only, and tuning that never reads a test label, mask or map."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stages.store.cache import RunStore
from stages.data.dataset import EVAL_SPLITS, split_indices
from stages.data.defects import KINDS
from stages.method.fusion import norm_stats
from stages.data.dataset import split_train
from stages.data.validation import held_out, with_validation

from conftest import copy_run


def _records(n_train: int = 40, cats=("a", "b")) -> list[dict]:
    out = []
    for c in cats:
        out += [{"category": c, "split": "train", "label": 0, "defect": "good", "path": f"{c}/train/good/{i}.png",
                 "mask": None} for i in range(n_train)]
        out += [{"category": c, "split": "test", "label": 1, "defect": "crack", "path": f"{c}/test/crack/{i}.png",
                 "mask": f"{c}/ground_truth/crack/{i}_mask.png"} for i in range(3)]
    return out


def test_split_is_seeded_per_category_and_bounded():
    recs = _records()
    val = held_out(recs, 0.1, 4, 0)
    assert val == held_out(recs, 0.1, 4, 0) and val != held_out(recs, 0.1, 4, 1)
    for c in "ab":
        assert sum(recs[i]["category"] == c for i in val) == 4  # round(0.1 * 40) = 4
    assert all(recs[i]["split"] == "train" for i in val)
    small = _records(n_train=6)
    assert sum(small[i]["category"] == "a" for i in held_out(small, 0.1, 4, 0)) == 3  # at most half
    assert held_out(recs, 0.0, 4, 0) == set()


def test_validation_records_balanced_and_after_the_dataset():
    recs = _records()
    out = with_validation(recs, 0.1, 4, 2, 0)
    assert out[: len(recs)] != recs and len(out) == len(recs) + 2 * 8
    synth = out[len(recs):]
    assert all(r["split"] == "val" and r["label"] == 1 and r["mask"] is None for r in synth)
    for c in "ab":
        kinds = [r["synthetic"] for r in synth if r["category"] == c]
        assert sorted(kinds) == sorted(KINDS * 2)  # 8 copies, every kind twice
    for r in synth:
        assert out[r["source"]]["split"] == "val" and out[r["source"]]["label"] == 0
        assert out[r["donor"]]["split"] == "train" and out[r["donor"]]["category"] == r["category"]
    assert out == with_validation(recs, 0.1, 4, 2, 0)


def test_held_out_images_reach_no_trainer():
    """What each trainer reads: train-base fits split_train's fit indices, train-diff split_indices('train')."""
    out = with_validation(_records(), 0.1, 4, 2, 0)
    val = set(np.flatnonzero([r["split"] == "val" for r in out]))
    fit, held = split_train(out, 0.25, 0)
    assert val.isdisjoint(fit) and val.isdisjoint(held)
    assert val.isdisjoint(split_indices(out, "train"))
    assert val <= set(split_indices(out, EVAL_SPLITS))


def test_trainers_of_a_run_never_read_validation_images(full_run_pristine: Path, monkeypatch):
    """Every image a trainer of the real pipeline fetches from the store is a split 'train' image."""
    import stages.pipeline.train_base as tb
    import stages.pipeline.train_diff as td

    store = RunStore(full_run_pristine)
    index = store.current("index")
    records = index.attrs["records"]
    val = {i for i, r in enumerate(records) if r["split"] == "val"}
    assert len(val) > 0
    tb_entry, td_entry = store.current("train_base"), store.current("train_diff")
    n_train = sum(r["split"] == "train" for r in records)
    fit, _ = split_train(records, tb_entry.params["holdout"], tb_entry.params["seed"])
    assert tb_entry.attrs["n_fit"] == len(fit) and val.isdisjoint(fit)
    assert td_entry.attrs["n_train"] == n_train
    # and the validation loss is measured on the validation normals
    assert tb_entry.attrs["n_val"] >= sum(r["split"] == "val" and r["label"] == 0 for r in records)
    # every training batch, as the losses see it (the validation loss runs without gradients: not a batch)
    batches: list[torch.Tensor] = []
    real_mse = torch.nn.functional.mse_loss

    def mse(pred, target, *a, **k):
        if torch.is_grad_enabled():
            batches.append(target.detach().flatten(1))
        return real_mse(pred, target, *a, **k)

    x0s: list[torch.Tensor] = []
    real_batch = td._batch

    def batch(*a, **k):
        out = real_batch(*a, **k)
        x0s.append(out[0].flatten(1))
        return out

    monkeypatch.setattr(tb.nn.functional, "mse_loss", mse)
    monkeypatch.setattr(td, "_batch", batch)
    fresh = copy_run(full_run_pristine, full_run_pristine.parent / "spy.zarr")
    try:
        s2 = RunStore(fresh)
        tb.run(s2, tb.TrainBaseParams(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in {**tb_entry.params, "epochs": 1}.items()}),
               device="cpu", progress=False)
        td.run(s2, td.TrainDiffParams(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in {**td_entry.params, "steps": 2}.items()}),
               device="cpu", progress=False)
    finally:
        import shutil

        shutil.rmtree(fresh, ignore_errors=True)
    from stages.data.images import to_model_space

    feats = torch.from_numpy(store.current("extract").array("features")[:]).flatten(1)
    size = td_entry.params["size"]
    pics = to_model_space(index.array("images")[:], size, as_uint8=True).float().div(127.5).sub(1.0).flatten(1)
    train_batches, diff_batches = torch.cat(batches[: len(batches) // 2 or 1]), torch.cat(x0s)
    for i in sorted(val):
        assert not (train_batches == feats[i]).all(1).any(), f"train-base trained on validation record {i}"
        assert not (diff_batches == pics[i]).all(1).any(), f"train-diff trained on validation record {i}"
    train = [i for i, r in enumerate(records) if r["split"] == "train"]
    assert any((diff_batches == pics[i]).all(1).any() for i in train)  # the check can see a match


def test_synthetic_defects_are_painted_where_their_masks_say(full_run_pristine: Path):
    index = RunStore(full_run_pristine).current("index")
    records = index.attrs["records"]
    images, masks = index.array("images"), index.array("masks")
    synth = [i for i, r in enumerate(records) if r.get("synthetic")]
    assert {records[i]["synthetic"] for i in synth} == set(KINDS)
    for i in synth:
        img, src, m = images[i].astype(int), images[records[i]["source"]].astype(int), masks[i].astype(bool)
        assert m.any()
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(m[None, None].astype(np.float32)), 3, 1, 1)[0, 0]
        outside = ~grown.numpy().astype(bool)
        assert (img[outside] == src[outside]).all()
        change = np.abs(img[m] - src[m]).mean()
        # a cut-paste patch is the category's own texture moved: on a periodic texture it can differ little
        assert change >= (1 if records[i]["synthetic"] == "cutpaste" else 10), (records[i]["synthetic"], change)
    for i, r in enumerate(records):
        if r["split"] == "val" and r["label"] == 0:
            assert not masks[i].any()


def test_normalisation_statistics_come_from_validation_normals_only(full_run: Path, cli):
    cli("fuse", "--run", full_run, "--c", "1,8", "--norm", "pixel")
    store = RunStore(full_run)
    fuse, base = store.current("fuse"), store.current("infer_base")
    index = store.current("index")
    records = index.attrs["records"]
    rec = base.array("record")[:]
    cats = fuse.attrs["norm_categories"]
    stored = fuse.array("norm_base")[:]
    size = index.params["image_size"]
    for j, c in enumerate(cats):
        pos = [k for k, i in enumerate(rec) if records[i]["category"] == c and records[i]["split"] == "val"
               and records[i]["label"] == 0]
        hb = torch.nn.functional.interpolate(torch.from_numpy(base.array("h_base")[:][pos])[:, None],
                                             size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(stored[j], norm_stats(hb, "pixel").numpy(), rtol=1e-5, atol=1e-6)
    # the fused maps of the normals are centred: per position their mean is ~0 under "pixel"
    assert fuse.array("norm_diff").shape == stored.shape


def _scramble_test(run: Path) -> None:
    """Change every test label, mask and heatmap of a run in place: nothing tuning may read."""
    store = RunStore(run)
    index = store.current("index")
    records = index.attrs["records"]
    test = [i for i, r in enumerate(records) if r["split"] == "test"]
    rng = np.random.default_rng(0)
    new = [dict(r, label=1 - r["label"]) if r["split"] == "test" else r for r in records]
    index.update(records=new)  # resealed: the scrambling is a change tuning must not see, not damage
    masks = index.array("masks")
    for i in test:
        masks[i] = rng.integers(0, 2, masks.shape[1:], dtype=np.uint8)
    base = store.current("infer_base")
    rec = base.array("record")[:]
    h = base.array("h_base")
    for k, i in enumerate(rec):
        if records[i]["split"] == "test":
            h[k] = rng.random(h.shape[1:]).astype(np.float32)


def _complete_table(text: str, headers: list[str]) -> None:
    """A table as a file or a pipe receives it: every header word whole, no cell cut to an ellipsis."""
    assert "…" not in text, text
    for h in headers:
        assert h in text, f"{h!r} missing or cut:\n{text}"


def test_tuning_never_reads_test_labels(full_run: Path, tmp_path: Path, cli, monkeypatch):
    from drdc_cli.app import out
    from stages.apps.report import LABELS

    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal's width: piped output must not be cut to it
    monkeypatch.setattr(out, "_width", 40)
    scrambled = copy_run(full_run, tmp_path / "scrambled.zarr")
    _scramble_test(scrambled)
    for run in (full_run, scrambled):
        res = cli("tune", "--run", run, "--rounds", "1", "--filters", "1,11", "--gammas", "0,0.9", "--eval-size", "32")
        kinds = list(RunStore(run).current("tune").attrs["trials"][0]["by_kind"])
        _complete_table(res.output, ["maps", "norm", "gamma", "fusion", "image γ", "I-AUROC", "P-AUROC", "AUPRO",
                                     "mean", *kinds, "current fusion chosen on validation"])
    _complete_table(cli("report", "--run", full_run).output, ["Category", *LABELS.values(), "VALIDATION", "TEST",
                                                               "synthetic-scratch", "Mean"])
    trials = [RunStore(r).current("tune").attrs["trials"] for r in (full_run, scrambled)]
    assert json.dumps(trials[0], sort_keys=True) == json.dumps(trials[1], sort_keys=True)
    assert len(trials[0]) >= 4
    from stages.pipeline.tune import TuneParams, ValidationSet, trial_bound

    p = TuneParams(rounds=1, filters=(1, 11), gammas=(0.0, 0.9), eval_size=32)
    assert len(trials[0]) <= trial_bound(ValidationSet(RunStore(full_run), p), p)  # the progress bar's total
    # the chosen settings became the current fuse result, and the test split was scored once with them
    for r in (full_run, scrambled):
        s = RunStore(r)
        assert s.current("score").params["source"] == "fuse"
        assert s.current("score").attrs["val_metrics"]


def test_tune_refuses_a_run_without_validation(tiny_data: Path, tmp_path: Path, cli):
    from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN

    run = tmp_path / "r.zarr"
    cli("index", "--data", tiny_data, "--run", run, *TINY_INDEX, "--val-fraction", "0")
    cli("extract", "--run", run, *TINY_EXTRACT)
    cli("train-base", "--run", run, *TINY_TRAIN)
    cli("infer-base", "--run", run)
    res = cli("tune", "--run", run, code=2)
    assert "--val-fraction" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("norm", ["pixel", "quantile"])
def test_norm_stats_oracle(norm):
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((20, 8, 8)).astype(np.float32))
    st = norm_stats(maps, norm).numpy()
    x = maps.numpy().astype(np.float64)
    if norm == "pixel":
        np.testing.assert_allclose(st[0], x.mean(0), rtol=1e-6)
        med = lambda a: np.quantile(a, 0.5, method="lower")  # noqa: E731  torch's median of an even count
        floor = max(0.1 * med(x.std(0)), 0.01 * med(np.abs(x.mean(0))))
        np.testing.assert_allclose(st[1], np.maximum(x.std(0), floor), rtol=1e-5)
        one = norm_stats(maps[:1], norm).numpy()  # a single normal: no spread, the floor holds the scale up
        np.testing.assert_allclose(one[1], 0.01 * med(x[0]), rtol=1e-5)
    else:
        q = np.quantile(x, [0.9, 0.995])
        np.testing.assert_allclose(st[0], q[0], rtol=1e-6)
        np.testing.assert_allclose(st[1], q[1] - q[0], rtol=1e-5)


def test_validation_rows_are_normalised_by_the_other_fold(full_run: Path, cli):
    """A validation row's fused map uses statistics of the other fold's normals only (cross-fitting); test rows
    use every validation normal's, and those are what the entry stores for predict."""
    from stages.pipeline.selection import row_folds
    from stages.method.fusion import normalise

    cli("fuse", "--run", full_run, "--gamma", "0", "--norm", "pixel")
    store = RunStore(full_run)
    fuse, base, index = store.current("fuse"), store.current("infer_base"), store.current("index")
    records, rec = index.attrs["records"], base.array("record")[:]
    fold = row_folds(index, rec)
    size = index.params["image_size"]
    hb = torch.nn.functional.interpolate(torch.from_numpy(base.array("h_base")[:])[:, None], size=(size, size),
                                         mode="bilinear", align_corners=False)[:, 0]
    maps = torch.from_numpy(fuse.array("maps")[:])
    cats = fuse.attrs["norm_categories"]
    for k, i in enumerate(rec):
        c = records[i]["category"]
        if k in fold:  # oracle: stats of the category's normals in the other fold
            others = [j for j, q in enumerate(rec) if records[q]["category"] == c and fold.get(j) == 1 - fold[k]
                      and records[q]["label"] == 0]
            st = norm_stats(hb[others], "pixel")
        else:
            st = torch.from_numpy(fuse.array("norm_base")[:][cats.index(c)])
        np.testing.assert_allclose(maps[k].numpy(), normalise(hb[k:k + 1], st[None])[0].numpy(), rtol=1e-4,
                                   atol=1e-4)
    assert {records[rec[k]]["source"] for k in fold if records[rec[k]].get("synthetic")} <= {rec[k] for k in fold}


def test_predict_normalises_a_validation_image_as_fuse_did(full_run: Path, cli, tmp_path: Path):
    """predict (and so calibrate, which scores the validation normals) uses the cross-fitted statistics for a
    validation image: its score equals the one `score` stored for that row, and a test image's too."""
    import csv

    cli("fuse", "--run", full_run, "--c", "1,8", "--norm", "pixel")
    cli("score", "--run", full_run, "--source", "fuse")
    store = RunStore(full_run)
    index, sc = store.current("index"), store.current("score")
    records, rec, scores = index.attrs["records"], sc.array("record")[:], sc.array("scores")[:]
    root = Path(index.params["root"])
    val = next(k for k, i in enumerate(rec) if records[i]["split"] == "val" and records[i]["label"] == 0)
    test = next(k for k, i in enumerate(rec) if records[i]["split"] == "test")
    picks = [val, test]
    cli("predict", "--run", full_run, *[root / records[rec[k]]["path"] for k in picks], "--out", tmp_path / "p",
        "--no-pictures")
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    for k, row in zip(picks, rows):
        assert float(row["score"]) == pytest.approx(float(scores[k]), rel=1e-4, abs=1e-4)
