"""How well does validation rank fusion settings? The rank correlation between the validation and the test objective
over `drdc tune`'s trials.

    python examples/rank_correlation.py --run runs/mtd.zarr [--tune KEY] [--json out.json]

Every trial of the tune entry (default: the newest) is scored again on the validation images and, for this
measurement only, on the test split, with tune's own evaluation (stages.pipeline.tune.ValidationSet at the
entry's eval size; test rows normalised with every validation normal's statistics, as fuse does). Tune itself
never reads a test row; this script is how one checks whether what it chose on validation carries over. Prints
Spearman's rho (scipy) per category and for the mean over categories, of the tune entry's objective and of each of
its three terms, and the test rank of validation's choice.
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
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from tqdm import tqdm  # noqa: E402

from stages.pipeline.selection import resolve  # noqa: E402
from stages.pipeline.tune import TuneParams, ValidationSet, fuse_params  # noqa: E402
from stages.store.cache import RunStore  # noqa: E402

TERMS = ("mean", "i_auroc", "p_auroc", "p_aupro")


def measure(run: Path, tune_key: str | None = None, progress: bool = True) -> dict:
    store = RunStore(run)
    tunes = [e for e in store.entries() if e.stage == "tune" and e.is_complete]
    if not tunes:
        raise SystemExit(f"error: {run} has no tune result; run `drdc tune --run {run}` first")
    entry = next((e for e in tunes if e.key.startswith(tune_key)), None) if tune_key else tunes[-1]
    if entry is None:
        raise SystemExit(f"error: no tune entry {tune_key} in {run}")
    q = entry.params
    p = TuneParams(eval_size=q["eval_size"], pool=q["pool"])
    vs = ValidationSet(store, p, splits=("val", "test"))
    rows = []
    for trial in tqdm(entry.attrs["trials"], desc="trials", unit="trial", disable=not progress):
        s, _ = resolve(store, fuse_params(trial, vs.diffs))
        rows.append({"settings": trial["settings"], "val": vs.evaluate(s, p.pool, "val"),
                     "test": vs.evaluate(s, p.pool, "test")})
    objective = entry.attrs.get("objective", q["objective"])
    cats = list(rows[0]["test"]["by_category"])
    out: dict = {"run": str(run), "tune": entry.key, "objective": objective, "trials": len(rows), "rho": {}}
    for scope in ["mean", *cats]:
        pick = (lambda r, split: r[split]["metrics"]) if scope == "mean" else (
            lambda r, split, c=scope: r[split]["by_category"][c])
        out["rho"][scope] = {}
        for term in TERMS:
            v = np.array([pick(r, "val")[term] for r in rows], dtype=float)
            t = np.array([pick(r, "test")[term] for r in rows], dtype=float)
            ok = np.isfinite(v) & np.isfinite(t)
            rho = spearmanr(v[ok], t[ok]).statistic if ok.sum() > 2 and np.ptp(v[ok]) > 0 and np.ptp(t[ok]) > 0 else None
            out["rho"][scope][term] = None if rho is None or not np.isfinite(rho) else float(rho)
    best = max(range(len(rows)), key=lambda i: rows[i]["val"]["metrics"][objective])
    test_obj = [r["test"]["metrics"][objective] for r in rows]
    out["chosen"] = {"settings": rows[best]["settings"], "val": rows[best]["val"]["metrics"],
                     "test": rows[best]["test"]["metrics"],
                     "test_rank": int(1 + sum(t > test_obj[best] for t in test_obj)),
                     "test_best": rows[int(np.argmax(test_obj))]["settings"], "test_best_value": max(test_obj)}
    out["rows"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--tune", help="tune entry key (prefix); default: the newest")
    ap.add_argument("--json", type=Path, help="write every trial's validation and test metrics here")
    a = ap.parse_args()
    out = measure(a.run, a.tune)
    t = Table(title=f"Spearman rho, validation vs test objective over {out['trials']} tune trials ({a.run})",
              title_justify="left")
    t.add_column("scope")
    for term in TERMS:
        t.add_column(term, justify="right")
    for scope, r in out["rho"].items():
        t.add_row(scope, *["-" if r[k] is None else f"{r[k]:+.2f}" for k in TERMS])
    Console(width=150).print(t)
    c = out["chosen"]
    print(f"validation's choice ranks {c['test_rank']} of {out['trials']} on test by {out['objective']}: "
          f"test {100 * c['test'][out['objective']]:.1f} vs the test-best trial's {100 * c['test_best_value']:.1f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
