"""`lorasweep report --study NAME`: a leaderboard, an HTML page with PNG plots, and a W&B summary run."""

from __future__ import annotations

import html
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..fileio import atomic_write_text
from ..tables import cell, format_rows
from .spec import SweepSpec


def leaderboard(study: optuna.Study, spec: SweepSpec) -> list[dict]:
    """One row per trial, best first (by the first objective); unfinished trials last."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics", {})
        row = {
            "trial": t.number,
            "state": t.state.name,
            "hash": t.user_attrs.get("config_hash", ""),
            "rank": t.params.get("lora.rank"),
            "alpha": _alpha(t, spec),
            "targets": t.params.get("lora.targets"),
        }
        for objective in spec.objectives:
            row[objective.metric] = metrics.get(objective.metric)
        if t.state == TrialState.FAIL:
            row["note"] = t.user_attrs.get("fail_reason", "")
        rows.append(row)
    first = spec.objectives[0]
    sign = 1 if first.direction == "minimize" else -1
    return sorted(rows, key=lambda r: (r[first.metric] is None, sign * (r[first.metric] or 0), r["trial"]))


def _alpha(trial, spec: SweepSpec):
    for param in spec.params:
        if param.key == "lora.alpha" and param.key in trial.params:
            value = trial.params[param.key]
            return value * trial.params.get("lora.rank", 1) if param.per_rank else value
    return None


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c != "note"] + (["note"] if any("note" in r for r in rows) else [])
    return format_rows(rows, columns)


def write_html_report(study: optuna.Study, spec: SweepSpec, out_dir: Path) -> Path:
    """index.html plus PNGs: optimisation history, parameter importances, metric vs rank per target set, and
    the Pareto front for multi-objective studies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = leaderboard(study, spec)
    plots: list[tuple[str, str]] = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    metric = spec.objectives[0].metric

    def save(plot, name: str, title: str) -> None:
        fig = plot if hasattr(plot, "savefig") else plot.figure  # optuna's plots return Axes
        fig.savefig(out_dir / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
        plots.append((name, title))

    from optuna.visualization import matplotlib as ovm

    target = (lambda t: t.values[0]) if study._is_multi_objective() else None
    if complete:
        save(ovm.plot_optimization_history(study, target=target, target_name=metric), "history.png",
             "Optimisation history")
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        try:
            save(ovm.plot_param_importances(study, target=target, target_name=metric), "importances.png",
                 "Parameter importances")
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few distinct trials to rank parameters
            pass
    if complete and any("lora.rank" in t.params for t in complete):
        fig, ax = plt.subplots(figsize=(6, 4))
        groups: dict[str, list] = {}
        for t in complete:
            groups.setdefault(str(t.params.get("lora.targets", "?")), []).append(
                (t.params.get("lora.rank"), t.values[0]))
        for name, points in sorted(groups.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"targets={name}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel(metric)
        ax.legend()
        ax.set_title(f"{metric} vs rank per target set")
        save(fig, "metric_vs_rank.png", "Metric vs rank per target set")
    if study._is_multi_objective() and complete:
        names = [o.metric for o in spec.objectives]
        save(ovm.plot_pareto_front(study, target_names=names), "pareto.png", "Pareto front")

    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in rows[0]) + "</tr>" for r in rows
    ) if rows else ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (rows[0] if rows else []))
    images = "".join(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for n, t in plots)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study.study_name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
            "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
            f"<h1>Study {html.escape(study.study_name)}</h1><p>{len(rows)} trials; objective "
            f"{html.escape(', '.join(o.metric + ' (' + o.direction + ')' for o in spec.objectives))}</p>"
            f"<table><tr>{head}</tr>{table}</table>{images}</body></html>")
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


def best_trials(study: optuna.Study) -> list:
    try:
        return study.best_trials
    except ValueError:
        return []


def log_summary_to_wandb(study: optuna.Study, spec: SweepSpec, rows: list[dict], root: Path,
                         mode: str = "offline", project: str = "lorasweep") -> None:
    """One W&B run per study (job_type sweep-summary, group = study): best parameters and the leaderboard."""
    import os

    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=project, mode=mode, dir=str(root), group=study.study_name, job_type="sweep-summary",
                     name=f"{study.study_name}-summary", id=f"{study.study_name}-summary",
                     reinit="finish_previous", settings=wandb.Settings(console="off", x_disable_stats=True))
    try:
        best = best_trials(study)
        if best:
            run.summary["best/trial"] = best[0].number
            run.summary["best/config_hash"] = best[0].user_attrs.get("config_hash", "")
            for key, value in best[0].params.items():
                run.summary[f"best/{key}"] = value
            for objective, value in zip(spec.objectives, best[0].values):
                run.summary[f"best/{objective.metric}"] = value
        columns = list(rows[0]) if rows else []
        data = [[_plain(r.get(c)) for c in columns] for r in rows]
        run.log({"leaderboard": wandb.Table(columns=columns, data=data)})
    finally:
        run.finish()


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str)) or value is None else str(value)
