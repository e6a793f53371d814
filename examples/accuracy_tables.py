"""Markdown tables of scored variants, validation and test side by side, per category and per defect kind.

    python examples/accuracy_tables.py NAME=RUN:SCORE_KEY [NAME=RUN:SCORE_KEY ...] [--category magnetic_tile]

Each argument names a score entry (a key prefix, as `drdc report --variant` takes it) of a run store. Prints, for
every variant, I-AUROC / P-AUROC / AUPRO in % of: the validation mean over categories, the test mean, the chosen
category on validation and test, and each of that category's test defect folders (each against the category's
good images) and each synthetic validation kind. Every number in examples/RESULTS_MTD.md's tables comes from
this script over the entries the commands beside them made.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.store.cache import RunStore  # noqa: E402

HEAD = ("i_auroc", "p_auroc", "p_aupro")


def fmt(m: dict | None) -> str:
    if not m:
        return "-"
    return " / ".join("-" if m.get(k) is None else f"{100 * m[k]:.1f}" for k in HEAD)


def entry(spec: str):
    run, _, key = spec.rpartition(":")
    store = RunStore(run)
    hits = [e for e in store.entries() if e.stage == "score" and e.key.startswith(key) and e.is_complete]
    if len(hits) != 1:
        raise SystemExit(f"error: {spec}: {len(hits)} complete score entries match")
    return hits[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+", help="NAME=RUN:SCORE_KEY")
    ap.add_argument("--category", default="magnetic_tile")
    a = ap.parse_args()
    rows = [(spec.split("=", 1)[0], entry(spec.split("=", 1)[1])) for spec in a.variants]
    c = a.category
    print(f"| variant | validation, mean | test, mean | {c} validation | {c} test |")
    print("|---|---|---|---|---|")
    for name, e in rows:
        at = e.attrs
        print(f"| {name} | {fmt(at['val_metrics'].get('mean'))} | {fmt(at['metrics'].get('mean'))} | "
              f"{fmt(at['val_metrics'].get(c))} | {fmt(at['metrics'].get(c))} |")
    kinds = list(rows[0][1].attrs.get("test_by_kind", {}).get(c, {}))
    if kinds:
        print(f"\n{c}, test, per defect folder (each against the good test images):\n")
        print("| variant | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for name, e in rows:
            by = e.attrs.get("test_by_kind", {}).get(c, {})
            print(f"| {name} | " + " | ".join(fmt(by.get(k)) for k in kinds) + " |")
    vk = list(rows[0][1].attrs.get("val_by_kind", {}))
    if vk:
        print("\nvalidation, per synthetic kind (mean over categories):\n")
        print("| variant | " + " | ".join(vk) + " |")
        print("|---|" + "---|" * len(vk))
        for name, e in rows:
            by = e.attrs.get("val_by_kind", {})
            print(f"| {name} | " + " | ".join(fmt(by.get(k, {}).get("mean")) for k in vk) + " |")


if __name__ == "__main__":
    main()
