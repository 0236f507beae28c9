"""`lorasweep report --study NAME [--table ROW COL]`: the leaderboard, an interactive offline HTML page
(plotly) and a W&B summary run, from one collection of the study's trials (collect.py)."""

from __future__ import annotations

from pathlib import Path

import optuna

from ...errors import UserError
from ..spec import SweepSpec
from .collect import ReportData, TrialRow, collect, state_summary
from .leaderboard import format_table, leaderboard
from .pivot import Pivot, check_table_keys, format_pivot, make_pivot
from .wandb_summary import log_summary_to_wandb

__all__ = [
    "ReportData",
    "TrialRow",
    "Pivot",
    "collect",
    "format_table",
    "leaderboard",
    "check_table_keys",
    "format_pivot",
    "make_pivot",
    "log_summary_to_wandb",
    "make_report",
    "prepare_report",
    "summary_mode",
    "write_html_report",
]


def prepare_report(
    study: optuna.Study, spec: SweepSpec, run_root: str | Path = "runs", table: list[str] | None = None
) -> tuple[ReportData, Pivot | None]:
    """Everything the report shows; ValueError (one line) for a bad --table or a study with nothing finished.
    Nothing is written yet."""
    if table:
        check_table_keys(spec, table)
    data = collect(study, spec, run_root)
    if not data.finished:
        found = state_summary(r.state for r in data.rows) or "no trials"
        raise UserError(f"study {study.study_name!r} has no finished trial yet ({found}); nothing to report")
    return data, (make_pivot(data, *table) if table else None)


def summary_mode(spec: SweepSpec, overrides: list[str], asked: str = "auto") -> str | None:
    """The W&B mode of the study's summary run, or None for none: `asked` (offline | online | none), or with
    "auto" the trials' own tracking (their spec's `fixed` and the sweep's command line): a sweep whose runs were
    not tracked in W&B gets no summary run there either."""
    if asked != "auto":
        return None if asked == "none" else asked
    from ...config.schema import compose

    tracking = compose([*spec.fixed, *overrides]).tracking
    return tracking.mode if tracking.backend == "wandb" and tracking.mode != "disabled" else None


def make_report(
    study_name: str,
    storage: str | None,
    run_root: str,
    out: str | None = None,
    wandb_mode: str = "auto",
    table: list[str] | None = None,
) -> list[str]:
    """`lorasweep report`: the leaderboard, the pivot, the HTML page and (where the trials were tracked, or when
    asked) the W&B summary run; returns the lines to print. Bad --table or nothing finished: UserError first."""
    from ..study import open_study

    study, spec, overrides = open_study(study_name, storage, run_root)
    data, pivot = prepare_report(study, spec, run_root, table)
    lines = [format_table(leaderboard(study, spec))]
    if pivot is not None:
        lines += ["", format_pivot(pivot)]
    index = write_html_report(study, spec, Path(out or Path(run_root) / "reports" / study_name), prepared=(data, pivot))
    lines.append(f"report: {index}")
    mode = summary_mode(spec, overrides, wandb_mode)
    if mode is not None:
        log_summary_to_wandb(study, spec, data, Path(run_root), pivot=pivot, mode=mode)
        lines.append(f"W&B summary run: {study_name}-summary ({mode})")
    return lines


def write_html_report(
    study: optuna.Study,
    spec: SweepSpec,
    out_dir: str | Path,
    run_root: str | Path = "runs",
    table: list[str] | None = None,
    prepared: tuple | None = None,
) -> Path:
    """out_dir/index.html (+ plotly.min.js), replaced whole; returns the index path."""
    from .figures import build_figures
    from .page import render_page, write_folder

    data, pivot = prepared or prepare_report(study, spec, run_root, table)
    return write_folder(Path(out_dir), render_page(data, build_figures(study, data), pivot))
