"""The base curve's reference point: PaDiM on drdc's own features, i.e. the Mahalanobis base map with F_out = 0.

    python examples/padim_on_features.py --run runs/mtd.zarr [--stages 3,4] [--json out.json]

The run's cached features F_in (drdc extract) get a per-category, per-position Ledoit-Wolf Gaussian fitted to the
images train-base fits (stages.method.residual, as infer-base --residual-norm mahalanobis does for the residual
F_in - F_out), and the validation and test images are scored by `drdc score`'s own code (validation, test, per
category and per defect folder). Nothing is written to the store. Compare it with the base map after train-base
epochs 0, 1, 5, 25 (examples/RESULTS_MTD.md): if they score alike, the transformer adds nothing to this base map.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stages.data.dataset import EVAL_SPLITS, split_indices, split_train  # noqa: E402
from stages.method.residual import fit_gaussian, residual_map, stage_channels  # noqa: E402
from stages.pipeline.score import ScoreParams, measure  # noqa: E402
from stages.store.cache import RunStore  # noqa: E402


class _Maps:
    """The two arrays `measure` reads of a maps entry, held in memory."""

    class _Array:
        def __init__(self, a: np.ndarray) -> None:
            self.a, self.shape = a, a.shape

        def get_orthogonal_selection(self, sel):
            return self.a[sel[0]]

        def __getitem__(self, k):
            return self.a[k]

    def __init__(self, **arrays: np.ndarray) -> None:
        self._arrays = {k: self._Array(v) for k, v in arrays.items()}

    def array(self, name: str):
        return self._arrays[name]

    def has(self, name: str) -> bool:
        return name in self._arrays


def padim_tables(run: Path, stages: tuple[int, ...] = (3, 4)) -> dict:
    store = RunStore(run)
    extract = store.current("extract")
    index = store.get("index", extract.inputs["index"])
    records, feats = index.attrs["records"], extract.array("features")
    channels = stage_channels(extract.attrs["backbone_channels"], stages)
    tb = store.current("train_base").params  # the same fit images as the base map's Gaussians
    fit, _ = split_train(records, float(tb.get("holdout", 0.0)), int(tb.get("seed", 0)))
    cats = sorted({records[i]["category"] for i in fit})
    mus, precs = [], []
    for c in cats:
        f = torch.from_numpy(feats.get_orthogonal_selection((np.array([i for i in fit if records[i]["category"] == c]),)))
        mu, prec = fit_gaussian(f[:, channels])
        mus.append(mu), precs.append(prec)
    mu, prec = torch.stack(mus), torch.stack(precs).double()
    idx = split_indices(records, EVAL_SPLITS)
    maps = []
    for a in range(0, len(idx), 32):
        f = torch.from_numpy(feats.get_orthogonal_selection((idx[a:a + 32],)))
        k = torch.tensor([cats.index(records[i]["category"]) for i in idx[a:a + 32]])
        maps.append(residual_map(f, torch.zeros_like(f), channels, mu, prec, k).float().numpy())
    _, tables = measure(index, _Maps(record=idx, h_base=np.concatenate(maps)), "h_base", ScoreParams(), False)
    return tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--stages", default="3,4", help="backbone stages the Gaussian sees (the cpu preset's 3,4)")
    ap.add_argument("--json", type=Path, help="write every table here")
    a = ap.parse_args()
    tables = padim_tables(a.run, tuple(int(s) for s in a.stages.split(",")))
    f = lambda m: " / ".join("-" if m.get(k) is None else f"{100 * m[k]:.1f}" for k in ("i_auroc", "p_auroc", "p_aupro"))  # noqa: E731
    print(f"PaDiM on F_in (I-AUROC / P-AUROC / AUPRO): validation mean {f(tables['val_metrics']['mean'])}, "
          f"test mean {f(tables['metrics']['mean'])}")
    for cat, m in tables["metrics"].items():
        kinds = "; ".join(f"{d} {f(k)}" for d, k in tables["test_by_kind"].get(cat, {}).items())
        print(f"  test {cat}: {f(m)}" + (f" ({kinds})" if kinds else ""))
    if a.json:
        a.json.write_text(json.dumps(tables, indent=1))


if __name__ == "__main__":
    main()
