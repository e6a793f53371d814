"""One self-contained HTML report: metric tables (validation, then test, as `drdc report` prints them; side by side
per variant), ROC curves, score histograms and the worst false positives and negatives, every picture embedded as
a data URI. The page takes the window's full width, and says so plainly when the fused column is base only.

No script, no external file, no network: the page opens anywhere, from a mail attachment as well.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from stages.apps import report as rep
from stages.errors import ConfigError, render
from stages.store.cache import Entry, RunStore


def default_variants(store: RunStore) -> list[Entry]:
    """Base only and DRDC side by side: the newest complete score of the current H_base and of the current fused
    maps (whichever exist), else the current score."""
    cur = store.current_keys
    picks = []
    for stage in ("infer_base", "fuse"):
        if stage not in cur:
            continue
        found = [e for e in store.entries() if e.stage == "score" and e.is_complete and e.inputs.get(stage) == cur[stage]]
        if found:
            picks.append(found[-1])
    return picks or rep.variants(store, None)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(rows: list[dict], tags: list[str], caption: str) -> str:
    if not rows:
        return ""
    shown = rep.HEADLINE if len(tags) > 1 else rep.ORDER  # side by side: the three headline metrics (CSV: all)
    cols = [c for c in rows[0] if c != "category" and c.rpartition("/")[2] in shown]
    head = "".join(f"<th>{html.escape(rep.LABELS[c.rpartition('/')[2]])}"
                   f"{'<br><small>' + html.escape(c.rpartition('/')[0]) + '</small>' if len(tags) > 1 else ''}</th>"
                   for c in cols)
    body = []
    for r in rows:
        kind = rep.is_kind_row(r)  # a defect folder's row, under its category's
        name = "Mean" if r["category"] == "mean" else r["category"].partition(rep.KIND_SEP)[2] if kind else r["category"]
        cells = "".join("<td>-</td>" if r[c] is None else f"<td>{100 * r[c]:.1f}</td>" for c in cols)
        cls = "mean" if name == "Mean" else "kind" if kind else ""
        body.append(f"<tr class='{cls}'><th>{html.escape(name)}</th>{cells}</tr>")
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr><th>Category</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


STYLE = """html,body{width:100%;max-width:none;margin:0;box-sizing:border-box}
body{font-family:system-ui,sans-serif;padding:1em 2em;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}caption{text-align:left;font-weight:bold;margin-bottom:.3em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child{text-align:left}
tr.mean{background:#eef}tr.kind{color:#555}tr.kind th{padding-left:2em;font-weight:normal}
.figures{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.figures img{flex:1 1 30em}
img{max-width:100%;height:auto;border:1px solid #ddd}small{color:#666}
p.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em 1em}"""


def write_html(store: RunStore, path: Path, keys: list[str] | None = None, k: int = 3, progress: bool = False,
               outs=None) -> Path:
    """The report of score entries `keys` (default: base only and DRDC, see default_variants) as one file."""
    from tqdm import tqdm

    from stages.apps.plots import hist_figure, load, roc_figure, variant_labels, worst_figure

    entries = rep.variants(store, keys) if keys else default_variants(store)
    tags = variant_labels(entries)
    what = "; ".join(f"{t} = score {e.key} ({e.params['source']} heatmaps)" for t, e in zip(tags, entries))
    val = rep.rows(entries, "val_metrics") + rep.by_kind_rows(entries)
    note = rep.base_only_note(store, entries)
    # the sections in the order `drdc report` prints them: validation (what settings are chosen on), then test
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>drdc report: {html.escape(store.name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>drdc report: {html.escape(store.name)}</h1><p>{html.escape(what)}. Metrics in %.</p>",
             f"<p class='note'>{html.escape(render(note))}</p>" if note else "",
             _table(val, tags, "VALIDATION: held-out normals and synthetic defects, a proxy (what settings are "
                               "chosen on; rows synthetic-*: one defect kind each)"),
             _table(rep.rows(entries), tags, "TEST (indented rows: each defect folder against the category's good "
                                            "images)")]
    scored = [c for c in entries[0].attrs["metrics"] if c != "mean"]
    for cat in tqdm(scored, desc="html report", unit="category", disable=not progress):
        cats = [load(store, e, tag, cat) for e, tag in zip(entries, tags)]
        parts.append(f"<h2>{html.escape(cat)}</h2><div class='figures'>")
        parts.append(f"<img alt='ROC curves of {html.escape(cat)}' src='{_png(roc_figure(cats))}'>")
        parts.append(f"<img alt='score histograms of {html.escape(cat)}' src='{_png(hist_figure(cats))}'></div>")
        for c in cats:
            parts.append(f"<h3>worst false positives and negatives: {html.escape(c.variant)}</h3>"
                         f"<img alt='worst cases of {html.escape(cat)}, {html.escape(c.variant)}' "
                         f"src='{_png(worst_figure(c, k))}'>")
    parts.append("</body></html>")
    if outs is None:
        from stages.apps.outputs import Outputs

        outs = Outputs()
        outs.claim(path, "html")
    try:
        return outs.write_text(path, "\n".join(parts))
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror or e})", "html") from None
