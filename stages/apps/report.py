"""Stage `report`: the metrics of scored entries as rows (categories, then the mean), CSV and JSON.

Rendering to the terminal is the CLI's job; this module only shapes and writes data. Several score entries
(variants) can be reported side by side: each gets its own block of columns.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from stages.errors import CacheMissError, ConfigError, Message, Option
from stages.method.metrics import METRIC_NAMES
from stages.store.cache import Entry, RunStore

LABELS = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_aupro": "P-AUPRO", "i_ap": "I-AP", "p_ap": "P-AP",
          "i_f1max": "I-F1max", "p_f1max": "P-F1max"}
ORDER = ("i_auroc", "p_auroc", "p_aupro", "i_ap", "p_ap", "i_f1max", "p_f1max")  # the paper's two first
HEADLINE = ("i_auroc", "p_auroc", "p_aupro")
assert set(ORDER) == set(METRIC_NAMES)


def variants(store: RunStore, keys: list[str] | None) -> list[Entry]:
    """The score entries to report: the given keys (prefixes allowed), or the current one."""
    if not keys:
        return [store.current("score")]
    out = []
    all_scores = [e for e in store.entries() if e.stage == "score" and e.is_complete]
    for k in keys:
        hits = [e for e in all_scores if e.key.startswith(k)]
        if len(hits) != 1:
            found = ", ".join(e.key for e in all_scores) or "none"
            raise CacheMissError(Option("variant", value=k), f": {'no' if not hits else 'ambiguous'} complete score "
                                 f"entry (complete score entries: {found})")
        out.append(hits[0])
    return out


def labels(entries: list[Entry]) -> list[str]:
    """Column-group names: the heatmap source (base, fuse), with the key's start when a source repeats."""
    sources = [e.params["source"] for e in entries]
    return [s if sources.count(s) == 1 else f"{s}:{e.key[:6]}" for s, e in zip(sources, entries)]


KIND_SEP = "/"  # a per-defect-kind row is named "<category>/<defect folder>"


def is_kind_row(row: dict) -> bool:
    return KIND_SEP in row["category"]


def rows(entries: list[Entry], table: str = "metrics") -> list[dict]:
    """One row per category then 'mean': {'category', '<variant>/<metric>': value in [0,1] or None}.
    table: "metrics" (the test split) or "val_metrics" (validation images with synthetic defects); an entry
    scored before validation existed has no validation rows (empty list). Test rows are followed by one row per
    defect folder of the category ("<category>/<defect>": those images against the category's good ones) when
    every entry has them (`drdc score` adds them to entries scored before)."""
    if not all(e.attrs.get(table) for e in entries):
        return []
    cats = list(entries[0].attrs[table].keys())
    names = labels(entries)
    kinds = table == "metrics" and all("test_by_kind" in e.attrs for e in entries)

    def row(name: str, of) -> dict:
        r: dict = {"category": name}
        for e, tag in zip(entries, names):
            m = of(e)
            for metric in ORDER:
                r[f"{tag}/{metric}" if len(entries) > 1 else metric] = m.get(metric)
        return r

    out = []
    for cat in cats:
        out.append(row(cat, lambda e: e.attrs[table].get(cat, {})))
        if kinds and cat != "mean":
            for d in entries[0].attrs["test_by_kind"].get(cat, {}):
                out.append(row(f"{cat}{KIND_SEP}{d}", lambda e: e.attrs["test_by_kind"].get(cat, {}).get(d, {})))
    return out


def by_kind_rows(entries: list[Entry]) -> list[dict]:
    """Validation metrics (mean over categories) per synthetic defect kind: one row per kind."""
    if not all(e.attrs.get("val_by_kind") for e in entries):
        return []
    names = labels(entries)
    out = []
    for kind in entries[0].attrs["val_by_kind"]:
        row: dict = {"category": f"synthetic-{kind}"}
        for e, tag in zip(entries, names):
            m = e.attrs["val_by_kind"].get(kind, {}).get("mean", {})
            for name in ORDER:
                row[f"{tag}/{name}" if len(entries) > 1 else name] = m.get(name)
        out.append(row)
    return out


def base_only_note(store: RunStore, entries: list[Entry]) -> Message | None:
    """Why a fused variant equals base only, in words, when its fusion uses no diffusion map (gamma 0 and no image
    gamma of its own above 0): tune chose gamma 0 on validation, or fuse was asked for it. None otherwise."""
    for tag, e in zip(labels(entries), entries):
        fuse = store.get("fuse", e.inputs["fuse"]) if e.params.get("source") == "fuse" and "fuse" in e.inputs else None
        if fuse is None or fuse.params.get("gamma") != 0 or (fuse.params.get("image_gamma") or 0) > 0:
            continue
        norm = fuse.params.get("norm", "none")
        what = (f"the '{tag}' column is base only: its fusion (fuse {fuse.key}) has gamma 0, so no diffusion map "
                f"enters it and it scores H_base{f' normalised ({norm})' if norm != 'none' else ''}")
        tune = store.get("tune", store.current_keys["tune"]) if "tune" in store.current_keys else None
        trials = tune.attrs.get("trials", []) if tune is not None else []
        if trials:
            obj = tune.attrs.get("objective", "mean")
            best = max(trials, key=lambda r: r["metrics"][obj])
            rest = [r for r in trials if r["settings"]["gamma"] > 0]
            q = best["settings"]
            if q["gamma"] == 0 and q["norm"] == norm and q["filter"] == fuse.params.get("filter"):  # tune's fusion
                other = (f" against {100 * max(r['metrics'][obj] for r in rest):.1f} for the best trial with a "
                         "diffusion map" if rest else "")
                return (f"{what}. Why: tune {tune.key} chose gamma 0 on the validation images ({obj} "
                        f"{100 * best['metrics'][obj]:.1f}{other}).")
        return (f"{what}. Why: fuse was run with ", Option("gamma", value=0), ".")
    return None


def with_validation(test: list[dict], val: list[dict], kinds: list[dict]) -> list[dict]:
    """One table for CSV: the test rows, then the validation rows and per-kind rows, their category prefixed
    'val:' (validation images are synthetic: never mix them with the test numbers)."""
    return test + [{**r, "category": f"val:{r['category']}"} for r in val + kinds]


def write_csv(table: list[dict], path: Path, outs=None) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0].keys()), lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in r.items()})
    write_text(path, buf.getvalue(), outs)


def write_json(table: list[dict], entries: list[Entry], path: Path, outs=None) -> None:
    doc = {"variants": [{"label": tag, "key": e.key, "params": e.params, "inputs": e.inputs}
                        for e, tag in zip(entries, labels(entries))],
           "rows": table,
           "validation_rows": rows(entries, "val_metrics"),  # held-out normals vs their synthetic-defect copies
           "validation_by_kind": by_kind_rows(entries)}
    write_text(path, json.dumps(doc, indent=1), outs)


def write_text(path: Path, text: str, outs=None) -> None:
    """Write a result file, its folder created; an unwritable path is one ConfigError naming it. outs: the
    command's stages.apps.outputs.Outputs, which claimed the path (so no file it did not write is replaced)."""
    if outs is None:
        from stages.apps.outputs import Outputs

        outs = Outputs()
        outs.claim(path, "out")
    try:
        outs.write_text(path, text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None


def per_image(store: RunStore, entry: Entry, path: Path, outs=None) -> int:
    """CSV of every scored image: split (val or test), path, category, defect, label, score. Validation
    anomalies share their normal's path; their defect names the synthetic kind. Returns the row count."""
    index = store.get("index", entry.inputs["index"])
    records = index.attrs["records"]
    scores, rec = entry.array("scores")[:], entry.array("record")[:]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "path", "category", "defect", "label", "score"])
    for i, s in zip(rec, scores):
        r = records[i]
        w.writerow([r["split"], r["path"], r["category"], r["defect"], r["label"], f"{s:.6g}"])
    write_text(path, buf.getvalue(), outs)
    return len(rec)
