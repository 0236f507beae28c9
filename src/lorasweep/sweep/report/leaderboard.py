"""The terminal leaderboard (`lorasweep sweep`, `status`, `report`): one short row per trial, best first."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ...tables import format_rows
from ..spec import SweepSpec


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
            return param.config_value(trial.params[param.key], trial.params)
    return None


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c != "note"] + (["note"] if any("note" in r for r in rows) else [])
    return format_rows(rows, columns)
