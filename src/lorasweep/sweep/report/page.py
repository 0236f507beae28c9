"""The report folder: index.html (the figures, the pivot, the trial table) and plotly.min.js beside it, so the
page works offline from disk. The folder is built under a temporary name and renamed into place: a reader (or a
failure half-way) never sees a half-written report."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from ...fileio import atomic_directory
from ...runs.metrics import BY_NAME
from ...runs.store import RunDir
from ...tables import cell
from .collect import COSTS, ReportData, state_summary
from .figures import Figure
from .numbers import full, short
from .pivot import Pivot, pivot_html

PLOTLY_JS = "plotly.min.js"

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;scroll-margin-top:2.6em}
nav#contents{position:sticky;top:0;z-index:10;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;
  font-size:.9em}
nav#contents a{margin-right:1.2em;color:#1a56b0;text-decoration:none} nav#contents a:hover{text-decoration:underline}
table.summary th{font-weight:normal;color:#666;padding-right:1.5em} table.summary td{white-space:normal}
[title]{text-decoration:underline dotted #aaa}
.note{color:#666;font-size:.9em;margin:.2em 0}
table{border-collapse:collapse;font-size:.85em}
td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #eee;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#f5f8ff}
td.best{font-weight:bold;background:#eef7ee}
caption{caption-side:bottom;color:#666;font-size:.85em;padding-top:4px}
.status-pruned{color:#a66b00} .status-failed{color:#b00020}
.scroll{overflow-x:auto}
"""


def render_page(data: ReportData, figures: list[Figure], pivot: Pivot | None) -> str:
    spec = data.spec
    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives)
    summary = state_summary(r.state for r in data.rows)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lorasweep report: {html.escape(data.study_name)}</title>",
        f"<style>{STYLE}</style><script src='{PLOTLY_JS}'></script></head><body>",
        f"<h1>Study {html.escape(data.study_name)}</h1>",
        f"<p class='note'>{len(data.rows)} trials ({summary}); objective {html.escape(objectives)}; sampler "
        f"{html.escape(str(spec.sampler.get('name')))}; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        contents_html(data, figures, pivot),
        "<h2 id='summary'>Summary</h2>",
        summary_html(data),
    ]
    if pivot is not None:
        parts += ["<h2 id='pivot-title'>Table</h2>", pivot_html(pivot)]
    for figure in figures:
        div = figure.figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"plot-{figure.key}",
            config={"displaylogo": False, "responsive": True},
        )
        note = f"<p class='note'>{html.escape(figure.note)}</p>" if figure.note else ""
        heading = f"<h2 id='figure-{figure.key}'>{html.escape(figure.title)}</h2>"
        parts.append(f"{heading}{note}<div class='plot'>{div}</div>")
    parts += [
        "<h2 id='trials-title'>Trials</h2>",
        "<div class='scroll'>",
        trial_table_html(data),
        "</div>",
        "</body></html>",
    ]
    return "\n".join(parts)


def contents_html(data: ReportData, figures: list[Figure], pivot: Pivot | None) -> str:
    """A bar that stays at the top of the window: every section one click away, the trial table first (it
    sits below the plots)."""
    links = [("trials-title", f"Trials ({len(data.rows)})"), ("summary", "Summary")]
    if pivot is not None:
        links.append(("pivot-title", "Table"))
    links += [(f"figure-{f.key}", f.title.split(" (")[0]) for f in figures]
    return (
        "<nav id='contents'>"
        + "".join(f"<a href='#{target}'>{html.escape(text)}</a>" for target, text in links)
        + "</nav>"
    )


def summary_html(data: ReportData) -> str:
    """The best trial (by the first objective): its objectives, parameters (rounded; the exact value on hover),
    config hash and adapter folder; with several objectives, the trials on the Pareto front."""
    if not data.finished:
        return "<p>(no finished trial)</p>"
    best = data.finished[0]
    rows = [("best trial", html.escape(str(best.number)))]
    rows += [(html.escape(metric), html.escape(f"{value:.4g}")) for metric, value in best.objectives.items()]
    rows.append(("parameters", ", ".join(f"{html.escape(k)}={_value_html(v)}" for k, v in best.params.items())))
    if best.alpha is not None:
        rows.append(("α", _value_html(best.alpha)))
    rows.append(("config hash", f"<code>{html.escape(best.config_hash)}</code>" if best.config_hash else "-"))
    rows.append(("adapter", _adapter_html(best)))
    if len(data.directions) > 1:
        rows.append(("Pareto front", "trials " + ", ".join(str(n) for n in sorted(data.pareto))))
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table class='summary' id='best'>{body}</table>"


def _adapter_html(row) -> str:
    if row.run_dir is None:
        return "- (no run folder in this run root)"
    adapter = RunDir(Path(row.run_dir)).adapter_dir
    if not adapter.is_dir():
        return f"- (no adapter in <code>{html.escape(row.run_dir)}</code>)"
    return f"<code>{html.escape(str(adapter))}</code>"


def _value_html(value) -> str:
    """short(value), with the exact value on hover where rounding hid digits."""
    text, exact = short(value), full(value)
    if text == exact:
        return html.escape(text)
    return f"<span title='{html.escape(exact, quote=True)}'>{html.escape(text)}</span>"


def trial_table_html(data: ReportData) -> str:
    table = data.table()
    if not table:
        return "<p>(no trials)</p>"
    columns = list(table[0])
    params = {p.key for p in data.spec.params} | {"α"}  # rounded to short(), exact on hover
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for values, row in zip(table, data.rows):
        kind = row.status.split()[0].rstrip(":")
        cells = []
        for c in columns:
            value = values[c]
            klass = "num" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            if c == "status":
                klass = f"status-{kind}"
            text = _value_html(value) if c in params else html.escape(_format(c, value))
            cells.append(f"<td class='{klass}'>{text}</td>")
        best = " class='best'" if row.number in data.pareto else ""
        rows.append(f"<tr{best}>{''.join(cells)}</tr>")
    return f"<table id='trials'><tr>{head}</tr>{''.join(rows)}</table>"


UNITS = {title: BY_NAME[metric].unit for metric, title in COSTS.items()}


def _format(column: str, value) -> str:
    if value is None:
        return "-"
    unit = UNITS.get(column)  # the cost columns' units, from the metric registry
    if unit == "bytes" and isinstance(value, (int, float)):
        return _bytes(value)
    if unit == "fraction" and isinstance(value, float):
        return f"{100 * value:.3f}%"
    if unit == "s" and isinstance(value, float):
        return f"{value:.1f}"
    return cell(value)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def write_folder(out_dir: Path, page: str) -> Path:
    """index.html and plotly.min.js into a sibling temporary folder, then renamed to out_dir."""
    from plotly.offline import get_plotlyjs

    with atomic_directory(out_dir) as tmp:
        (tmp / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out_dir) / "index.html"
