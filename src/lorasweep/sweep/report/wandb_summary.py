"""The study's summary run in W&B (job_type sweep-summary, group = the study): the best trial in the summary,
the report's trial table as a `wandb.Table` ("trials") and the pivot ("pivot"), so the W&B dashboard shows what
the page shows."""

from __future__ import annotations

import math
import os
from pathlib import Path

import optuna

from ..spec import SweepSpec
from .collect import ReportData
from .pivot import Pivot


def log_summary_to_wandb(
    study: optuna.Study,
    spec: SweepSpec,
    data: ReportData,
    root: Path,
    pivot: Pivot | None = None,
    mode: str = "offline",
    project: str = "lorasweep",
) -> None:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=project,
        mode=mode,
        dir=str(root),
        group=study.study_name,
        job_type="sweep-summary",
        name=f"{study.study_name}-summary",
        id=f"{study.study_name}-summary",
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    try:
        best = data.finished[0] if data.finished else None
        if best is not None:
            run.summary["best/trial"] = best.number
            run.summary["best/config_hash"] = best.config_hash
            for key, value in best.params.items():
                run.summary[f"best/{key}"] = _plain(value)
            for metric, value in best.objectives.items():
                run.summary[f"best/{metric}"] = value
        tables = {"trials": _table(wandb, data.table())}
        if pivot is not None:
            tables["pivot"] = _table(wandb, pivot.as_rows())
            run.summary["pivot/rows"] = pivot.row_key
            run.summary["pivot/columns"] = pivot.col_key
            run.summary["pivot/metric"] = pivot.metric
        run.log(tables)
    finally:
        run.finish()


def _table(wandb, rows: list[dict]):
    columns = list(rows[0]) if rows else []
    return wandb.Table(columns=columns, data=[[_plain(r.get(c)) for c in columns] for r in rows])


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str)) or value is None else str(value)
