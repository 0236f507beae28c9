"""`lorasweep runs` (a table of runs) and `lorasweep compare` (config differences, metrics side by side, loss
curves on an HTML page)."""

from __future__ import annotations

import html
from pathlib import Path

from ..config.schema import flatten
from ..errors import UserError
from ..runs.metrics import final_names
from ..runs.rows import run_row, settings_columns
from ..runs.store import RunDir, RunStore
from ..sweep.report.page import PLOTLY_JS, write_folder
from ..tables import format_rows

FIGURES = (
    "trainable_fraction",
    "optimizer_bytes",
    "peak_bytes",
    "predicted_peak_bytes",
    "eval/loss",
    "eval/accuracy",
    "eval/pearson",
    "labels",
    "state",
    "step",
)


def list_runs(run_root: str | Path, study: str | None = None, sort: str | None = None) -> list[dict]:
    rows = [run_row(r) for r in RunStore(run_root).runs()]
    if study:
        rows = [r for r in rows if r["sweep"] == study]
    if sort:
        if rows and sort not in rows[0]:
            raise UserError(f"cannot sort by {sort!r}: choose one of {', '.join(c for c in rows[0] if c != 'sweep')}")
        rows.sort(key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else 0))
    return rows


def format_runs(rows: list[dict]) -> str:
    """hash, the settings that tell runs apart (runs/rows.py), then the record's figures (a column nobody has, such
    as a predicted peak before estimates existed, is left out)."""
    figures = [c for c in FIGURES if any(r.get(c) is not None for r in rows)]
    leading = ["model", *(["data"] if "data" in settings_columns(rows) else [])]
    return format_rows(rows, ["hash", *leading, *[c for c in settings_columns(rows) if c not in leading], *figures])


def config_differences(runs: list[RunDir]) -> dict[str, list]:
    """Only the keys whose value differs between the runs."""
    flats = [flatten(r.config()) for r in runs]
    keys = sorted(set().union(*flats))
    return {k: [f.get(k) for f in flats] for k in keys if len({repr(f.get(k)) for f in flats}) > 1}


def compare_from_store(
    run_root: str | Path, hashes: list[str], study: str | None = None, out: str | Path | None = None
) -> tuple[str, Path]:
    """`lorasweep compare`: the runs named by hash (or prefix), or every run of a study, side by side."""
    store = RunStore(run_root)
    runs = [r for r in store.runs() if r.config().sweep == study] if study else [store.find(h) for h in hashes]
    out_dir = Path(out or Path(run_root) / "compare" / "-".join(r.hash[:6] for r in runs[:6]))
    return compare_runs(runs, out_dir)


def compare_runs(runs: list[RunDir], out_dir: Path) -> tuple[str, Path]:
    """A text summary (differences and metrics) and an HTML page with the overlaid loss curves (plotly, the
    report's library; plotly.min.js beside the page, so it works offline from disk)."""
    if len(runs) < 2:
        raise UserError("compare needs at least two runs")
    diffs = config_differences(runs)
    metrics = [r.record() for r in runs]
    keys = [k for k in final_names() if any(k in m for m in metrics)]  # the registry's order
    names = [r.hash for r in runs]  # one column per run, separated however long the values (tables.py)
    diff_rows = [{"key": k, **{n: _num(v) for n, v in zip(names, values)}} for k, values in diffs.items()]
    metric_rows = [
        {"metric": "status", **{n: r.status() for n, r in zip(names, runs)}},
        {"metric": "step", **{n: _num(m.get("step")) for n, m in zip(names, metrics)}},
        *({"metric": k, **{n: _num(m.get(k)) for n, m in zip(names, metrics)}} for k in keys),
    ]
    text = "\n".join(
        [
            "config differences:",
            format_rows(diff_rows, ["key", *names]),
            "",
            "final metrics:",
            format_rows(metric_rows, ["metric", *names]),
        ]
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>compare</title>"
        f"<script src='{PLOTLY_JS}'></script></head><body>"
        f"<h1>Runs {html.escape(', '.join(names))}</h1><pre>{html.escape(text)}</pre>"
        f"{_loss_curves(runs).to_html(full_html=False, include_plotlyjs=False, div_id='loss-curves')}"
        f"</body></html>"
    )
    return text, write_folder(out_dir, page)


def _loss_curves(runs: list[RunDir]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("train/loss", "eval/loss"))
    for i, run in enumerate(runs):
        history = run.history()
        for col, metric, mode in ((1, "train/loss", "lines"), (2, "eval/loss", "lines+markers")):
            points = [(h["step"], h[metric]) for h in history if metric in h]
            if points:
                steps, values = zip(*points)
                figure.add_trace(
                    go.Scatter(
                        x=steps,
                        y=values,
                        mode=mode,
                        name=run.hash,
                        legendgroup=run.hash,
                        showlegend=col == 1,
                        line={"color": _COLORS[i % len(_COLORS)]},
                    ),
                    row=1,
                    col=col,
                )
    figure.update_xaxes(title_text="step")
    figure.update_layout(template="plotly_white", height=420, width=1100)
    return figure


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
