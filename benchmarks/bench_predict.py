"""Images per second of scoring on the CPU: `drdc predict` (in process: stages.apps.predict.loop with a loaded
Predictor) against the exported folder's infer.py (onnxruntime, `drdc export`), base-only and DRDC, on the same
images in one run; then onnxruntime with explicit options and OpenVINO (when installed) on the same ONNX graphs.

Every scorer runs on the same image files (copied out of the dataset, so every path seeds its masks and noise
from the file's bytes, as `drdc export --check` does), alternating A, B, ... after a warm-up, and the table reports
medians, images/s, the ratios to predict and to infer.py as shipped (same mode), and each scorer's largest relative
score difference to predict's. A runtime option is worth offering when it gives >= 1.5x infer.py's images/s with
scores within 1e-4 of predict's.

    python benchmarks/bench_predict.py --quick            # a tiny run made here (64 px, 32 px UNet): seconds
    python benchmarks/bench_predict.py                    # a run made here with the cpu preset's shapes (224 px,
                                                          # lite0, 64 px UNet; models barely trained): minutes
    python benchmarks/bench_predict.py --run drdc-demo/run.zarr --images 12   # a real run (`drdc demo` makes one)
    python benchmarks/bench_predict.py --run R --export deploy/               # ... and its existing export

The model load (Predictor, InferenceSession) is timed apart from the per-image work and not in images/s.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import alternate, fmt, machine, median, save_json, show
from runstore import StoreSpec, build

from stages.apps.export.folder import export
from stages.apps.export.check import spread
from stages.apps.predict.loop import predict
from stages.apps.predict.predictor import Predictor
from stages.pipeline import fuse
from stages.pipeline.infer_diff import InferDiffParams
from stages.pipeline.selection import FuseParams
from stages.pipeline.train_diff import TrainDiffParams
from stages.store.cache import RunStore
from stages.config.presets import build as preset

TINY = StoreSpec(image_size=64, n_test=6, n_train=4, feature_size=8,
                 diff=TrainDiffParams(size=32, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                      attention_resolutions=(16,), num_head_channels=8, grid=(1, 8)),
                 infer=InferDiffParams(t=(100, 50, 0), c=(1, 8), l=(1, 2)))
CPU = StoreSpec(image_size=224, n_test=6, n_train=4, feature_size=14,  # the cpu preset's shapes
                diff=preset(TrainDiffParams, "train_diff", "cpu"), infer=preset(InferDiffParams, "infer_diff", "cpu"))
TOLERANCE = 1e-4  # relative, on image scores: what `drdc export --check` asks of an export


def make_run(root: Path, spec: StoreSpec) -> RunStore:
    store = build(root, spec)
    fuse.run(store, FuseParams(), progress=False)  # the paper's fusion of every cached map
    return store


def infer_module(dest: Path):
    spec = importlib.util.spec_from_file_location("drdc_infer", dest / "infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def ort_session(graph: Path, threads: int | None):
    """onnxruntime as infer.py loads it (threads None: its defaults), or with explicit options."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return lambda *xs: s.run(None, dict(zip(names, xs)))


def openvino_model(graph: Path, threads: int):
    import openvino as ov

    m = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                    "EXECUTION_MODE_HINT": "ACCURACY"})
    outs = m.outputs
    return lambda *xs: [r[o] for r in (m(list(xs)),) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny run, 4 images, 1 round (the test suite's smoke run)")
    ap.add_argument("--run", type=Path, help="a trained run store (default: make one in a temp dir)")
    ap.add_argument("--export", type=Path, help="the run's ONNX export (default: export it into a temp dir)")
    ap.add_argument("--images", type=int, help="test images of the run to score (default 8; --quick 4)")
    ap.add_argument("--repeats", type=int, help="rounds of the alternation (default 3; --quick 1)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch's threads, and the explicit onnxruntime / OpenVINO ones (default: torch's)")
    ap.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even when it is installed")
    ap.add_argument("--json", help="write the timings here")
    a = ap.parse_args()
    n_img = a.images or (4 if a.quick else 8)
    repeats = a.repeats or (1 if a.quick else 3)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="drdc-bench-predict-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        store = RunStore(a.run) if a.run else make_run(tmp_path / "made", TINY if a.quick else CPU)
        dest = a.export or tmp_path / "export"
        if a.export is None:
            export(store, dest, "onnx", None, False, progress=False)
        setup = time.perf_counter() - t0
        index = store.current("index")
        root = Path(index.params["root"])
        images = tmp_path / "images"
        images.mkdir()
        paths = []
        for k, r in enumerate(spread(index.attrs["records"], n_img)):  # outside the dataset: seeded by bytes
            paths.append(images / f"{k:03d}{Path(r['path']).suffix}")
            shutil.copyfile(root / r["path"], paths[-1])
        manifest = json.loads((dest / "manifest.json").read_text())
        infer = infer_module(dest)

        loads: dict[str, float] = {}

        def timed_load(name: str, make):
            t = time.perf_counter()
            obj = make()
            loads[name] = time.perf_counter() - t
            return obj

        scorers: dict[str, tuple[str, object]] = {}  # name -> (mode, fn() -> scores)
        for mode, base_only, graph in (("base-only", True, "base"), ("DRDC", False, "drdc")):
            if graph not in manifest["graphs"]:
                continue
            onnx = dest / manifest["graphs"][graph]
            pred = timed_load(f"predict {mode}", lambda b=base_only: Predictor(store, "cpu", base_only=b))
            scorers[f"predict {mode} (torch)"] = (mode, lambda p=pred: [q.score for q in predict(p, paths, None,
                                                                                               progress=False)])
            m = "base" if base_only else "fuse"
            backends = [("infer.py " + mode + " (onnxruntime as shipped)", lambda g=onnx: ort_session(g, None)),
                        (f"onnxruntime {mode}, ENABLE_ALL, {a.threads} threads",
                         lambda g=onnx: ort_session(g, a.threads))]
            if not a.no_openvino and importlib.util.find_spec("openvino"):
                backends.append((f"openvino {mode}, {a.threads} threads", lambda g=onnx: openvino_model(g, a.threads)))
            for name, make in backends:
                try:
                    run = timed_load(name, make)
                except Exception as e:  # an optional runtime that cannot take the graph: said, not fatal
                    loads[name] = float("nan")
                    print(f"{name}: cannot load the graph ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                    continue
                scorers[name] = (mode, lambda r=run, md=m: [infer.score_image(r, manifest, md, p, None, "torch")[0]
                                                             for p in paths])
        seconds = alternate({k: fn for k, (_, fn) in scorers.items()}, repeats, torch.device("cpu"))
        scores = {k: np.array(fn(), dtype=np.float64) for k, (_, fn) in scorers.items()}
    reference = {mode: next(k for k, (md, _) in scorers.items() if md == mode and k.startswith("predict"))
                 for mode, _ in scorers.values()}
    ips = {k: len(paths) / median(v) for k, v in seconds.items()}
    ratio = {k: ips[k] / ips[reference[md]] for k, (md, _) in scorers.items()}
    error = {k: float(np.max(np.abs(scores[k] - scores[reference[md]]) / np.maximum(np.abs(scores[reference[md]]),
                                                                                     1e-12)))
             for k, (md, _) in scorers.items()}
    shipped = {md: next(k for k, (m, _) in scorers.items() if m == md and "as shipped" in k) for md in reference}
    vs_shipped = {k: ips[k] / ips[shipped[md]] for k, (md, _) in scorers.items()}
    # an option worth offering: >= 1.5x what infer.py does today, with predict's scores
    offer = {k: bool(vs_shipped[k] >= 1.5 and error[k] <= TOLERANCE) for k in scorers
             if not k.startswith("predict") and "as shipped" not in k}
    info = machine(torch.device("cpu"))
    config = {"run": str(a.run or ("a tiny run made here" if a.quick else "a cpu-preset-shaped run made here")),
              "images": len(paths), "image_size": index.params["image_size"], "repeats": repeats,
              "threads": a.threads, "setup_s": round(setup, 1)}
    rows = [[k, fmt(ips[k]), fmt(1000 / ips[k]), fmt(ratio[k]), fmt(vs_shipped[k]), f"{error[k]:.1e}",
             fmt(loads.get(k.split(" (")[0], 0)) if k.startswith("predict") else fmt(loads.get(k, 0)),
             "yes" if offer.get(k) else "-"] for k in scorers]
    show("predict vs the exported graphs: images/s on the CPU (median), ratios to predict and to infer.py as "
         "shipped, of the same mode", info, config,
         ["scorer", "images/s", "ms/image", "x predict", "x infer.py", "max rel. score diff", "load s",
          "offer: >= 1.5x infer.py, <= 1e-4"], rows)
    save_json(a.json, {"machine": info, "config": config, "seconds": seconds, "images_per_s": ips, "ratio": ratio,
                       "ratio_to_shipped": vs_shipped,
                       "max_rel_score_diff": error, "load_s": loads, "offer": offer, "tolerance": TOLERANCE,
                       "reference": reference, "scores": {k: v.tolist() for k, v in scores.items()}})


if __name__ == "__main__":
    main()
