"""Each benchmark script's --quick mode runs end to end in a subprocess, prints its table and writes its JSON.

Not a timing test: the numbers are only checked where they are exact (the production heatmaps equal the naive
reference loop's within the stated tolerance, bytes read are counted, throughputs are positive).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "machine: cpu=" in proc.stdout and "┃" in proc.stdout, proc.stdout  # the header and a rich table
    return json.loads(out.read_text())


def test_bench_infer_diff_quick(tmp_path: Path) -> None:
    r = _run("bench_infer_diff.py", tmp_path)
    # the production path (batched over every (image, c, i) sequence) gives the naive batch-1 loop's heatmaps
    assert r["max_abs_diff"]["B production"] <= r["tolerance"]
    assert r["flops_per_pass"] > 0 and r["matmul_gflops"] > 0
    assert len(r["seconds"]["A naive"]) == len(r["seconds"]["B production"]) == r["config"]["repeats"]


def test_bench_fuse_quick(tmp_path: Path) -> None:
    r = _run("bench_fuse.py", tmp_path)
    # the larger store's 8 images x (2 t x 2 c x 2 l) float16 32x32 maps + float32 8x8 h_base
    assert r["images"] == [4, 8] and r["bytes"] == 8 * (8 * 32 * 32 * 2 + 8 * 8 * 4)
    assert all(v > 0 for v in r["heavy"]["fuse+score@4"] + r["heavy"]["fuse+score@8"] + r["light"]["plain read"])
    # the line through the two sizes gives back both timings
    for n in (4, 8):
        want = np.median(r["heavy"][f"fuse+score@{n}"])
        assert r["fixed_s"] + n * r["per_image_s"] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_bench_base_quick(tmp_path: Path) -> None:
    r = _run("bench_base.py", tmp_path)
    assert r["config"]["steps/run"] == 2 and all(v > 0 for v in r["train"]["plain fp32 loop"])


@pytest.mark.slow
def test_bench_memory_quick(tmp_path: Path) -> None:
    r = _run("bench_memory.py", tmp_path)
    assert set(r["results"]) == {"8", "16"} and all(v["peak_rss_mb"] > 0 for v in r["results"].values())


@pytest.mark.slow
def test_gpu_accuracy_script_on_cpu_at_a_tiny_size(tiny_data: Path, tmp_path: Path) -> None:
    """benchmarks/gpu_accuracy.sh, the prepared device run, end to end on the CPU (TINY=1): three scorings side by
    side (base only, the diffusion map alone, tuned DRDC), each with per-defect-folder test rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TINY": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_accuracy.sh"), str(tiny_data), str(tmp_path / "w")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "w" / "report.json").read_text())
    sources = [v["params"]["source"] for v in doc["variants"]]
    assert sources == ["base", "fuse", "fuse"] and "diffusion only" in proc.stdout
    kinds = [r["category"] for r in doc["rows"] if "/" in r["category"]]
    assert kinds and all(r["category"].split("/")[0] in {"disc", "grain", "weave"} for r in doc["rows"]
                         if "/" in r["category"])


def test_bench_startup_quick(tmp_path: Path) -> None:
    r = _run("bench_startup.py", tmp_path)
    assert set(r["ratio"]) == {r["baseline"], "drdc --version", "drdc --help", "drdc cache ls --run R",
                               "drdc fuse --run R --gamma 2 (error)"}
    assert r["ratio"][r["baseline"]] == 1 and all(v > 0 for v in r["ratio"].values())
    # none of them loads torch or matplotlib (python -X importtime's report of each)
    assert all(v == [] for v in r["heavy_imports"].values()), r["heavy_imports"]


def test_bench_predict_quick(exported, tmp_path: Path) -> None:
    """On the suite's exported tiny run (--run/--export: the script's own --quick run would export a run again,
    a minute): predict and the exported graphs score the same images alike, at positive speeds."""
    run, dest, _ = exported
    r = _run("bench_predict.py", tmp_path, "--run", str(run), "--export", str(dest), "--no-openvino")
    assert r["reference"] == {"base-only": "predict base-only (torch)", "DRDC": "predict DRDC (torch)"}
    assert len(r["images_per_s"]) == 6 and all(v > 0 for v in r["images_per_s"].values())
    # infer.py is the same method: its scores are predict's within the export's tolerance, in both modes
    assert all(v <= r["tolerance"] for v in r["max_rel_score_diff"].values()), r["max_rel_score_diff"]
    assert all(len(v) == r["config"]["images"] == 4 for v in r["scores"].values())

