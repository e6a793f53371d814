"""Build a small real run store for the benchmarks: synthetic data -> index -> extract -> train-base (1 epoch) ->
infer-base -> train-diff (1 step) -> infer-diff, all through the production stage functions.

The models are barely trained: the benchmarks time the work and check memory, not detection quality.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from stages.data.synthetic import SyntheticSpec, make_dataset
from stages.pipeline import extract, index, infer_base, infer_diff, train_base, train_diff
from stages.store.cache import RunStore


@dataclass(frozen=True)
class StoreSpec:
    image_size: int = 224  # the index (and fuse / score) resolution
    n_test: int = 8  # test images, spread over the categories (at least 3 defects each)
    n_train: int = 4  # train/good images per category
    categories: tuple[str, ...] = ("weave", "disc", "grain")
    feature_size: int = 14
    diff: train_diff.TrainDiffParams = train_diff.TrainDiffParams()  # the UNet shape; steps are forced to 1
    infer: infer_diff.InferDiffParams = infer_diff.InferDiffParams()
    base: bool = True  # extract, train-base and infer-base too (fuse needs them; the memory benchmark does not)


def dataset(root: Path, s: StoreSpec) -> Path:
    per_cat = -(-s.n_test // len(s.categories))
    good = max(1, per_cat // 3)
    spec = SyntheticSpec(size=s.image_size, n_train=s.n_train, n_test_good=good,
                         n_test_defect=max(3, per_cat - good), categories=s.categories)
    return make_dataset(root / "data", spec)


def build(root: Path, s: StoreSpec, diffusion: bool = True, infer: bool = True) -> RunStore:
    """A run store under root with every stage done (train-diff only when ``diffusion``, infer-diff only when
    ``infer`` too)."""
    data = dataset(root, s)
    store = RunStore(root / "run.zarr", create=True)
    # no validation split: the benchmarks time the per-test-image work of each stage
    index.run(store, index.IndexParams(root=str(data), image_size=s.image_size, val_fraction=0.0), progress=False)
    if s.base:
        extract.run(store, extract.ExtractParams(feature_size=s.feature_size), device="cpu", progress=False)
        train_base.run(store, train_base.TrainBaseParams(
            epochs=1, batch_size=4, hidden_dim=32, dim_feedforward=64, nhead=4, num_encoder_layers=1,
            num_decoder_layers=1, neighbor_size=3), device="cpu", progress=False)
        infer_base.run(store, device="cpu", progress=False)
    if not diffusion:
        return store
    train_diff.run(store, replace(s.diff, steps=1, batch_size=2, ckpt_every=1, grid=tuple(s.infer.c)),
                   device="cpu", progress=False)
    if infer:
        infer_diff.run(store, s.infer, device="cpu", progress=False)
    return store


def n_test(store: RunStore) -> int:
    return sum(r["split"] == "test" for r in store.current("index").attrs["records"])
