"""Test metrics per real defect kind: each defect folder of a category against that category's good images."""
from __future__ import annotations

import csv
import json

from sklearn.metrics import roc_auc_score

from stages.store.cache import RunStore


def _score_entry(run, source="base"):
    return next(e for e in RunStore(run).entries() if e.stage == "score" and e.params["source"] == source)


def test_each_defect_kind_against_the_good_images(full_run, cli):
    e = _score_entry(full_run)
    index = RunStore(full_run).current("index")
    records = index.attrs["records"]
    scores, rec = e.array("scores")[:], e.array("record")[:]
    by_kind = e.attrs["test_by_kind"]
    checked = 0
    for cat, kinds in by_kind.items():
        test = [(k, records[i]) for k, i in enumerate(rec) if records[i]["category"] == cat
                and records[i]["split"] == "test"]
        folders = sorted({r["defect"] for _, r in test if r["label"] == 1})
        assert list(kinds) == folders  # every defect folder, nothing else
        for d in folders:
            sel = [k for k, r in test if r["label"] == 0 or r["defect"] == d]
            y = [records[rec[k]]["label"] for k in sel]
            assert abs(kinds[d]["i_auroc"] - roc_auc_score(y, scores[sel])) < 1e-9  # sklearn as the oracle
            checked += 1
    assert checked >= 4


def test_report_lists_kind_rows_under_their_category_and_score_adds_them_to_old_entries(full_run, cli, tmp_path):
    e = _score_entry(full_run)
    kinds = e.attrs["test_by_kind"]
    attrs = dict(e.attrs)
    attrs.pop("test_by_kind")  # an entry scored before the per-kind rows existed, in a store made before seals
    attrs.pop("seal")
    e.group.attrs.put(attrs)
    root = RunStore(full_run).root
    root.attrs.put({k: v for k, v in root.attrs.items() if k != "sealed"})
    cli("report", "--run", full_run, "--variant", e.key, "--csv", tmp_path / "old.csv")
    names = [r["category"] for r in csv.DictReader(open(tmp_path / "old.csv"))]
    assert not any("/" in n for n in names)
    cli("score", "--run", full_run, "--source", "base", "-q")
    assert RunStore(full_run).get("score", e.key).attrs["test_by_kind"] == kinds  # the same numbers again
    cli("report", "--run", full_run, "--variant", e.key, "--csv", tmp_path / "m.csv", "--json", tmp_path / "m.json")
    names = [r["category"] for r in csv.DictReader(open(tmp_path / "m.csv"))]
    for cat, ks in kinds.items():
        at = names.index(cat)
        assert names[at + 1: at + 1 + len(ks)] == [f"{cat}/{d}" for d in ks]  # right under their category
    doc = json.loads((tmp_path / "m.json").read_text())
    assert any(r["category"].endswith("/" + next(iter(kinds[c]))) for r in doc["rows"] for c in kinds)
