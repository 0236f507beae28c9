"""The terminal leaderboard (`lorasweep sweep`, `status`, `report`): one short row per trial, best first."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ...runs.rows import SETTINGS, settings_columns
from ...tables import format_rows
from ..spec import SweepSpec
from .collect import best_first


def leaderboard(study: optuna.Study, spec: SweepSpec) -> list[dict]:
    """One row per trial, best first (by the first objective); unfinished trials last."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics", {})
        row = {
            "trial": t.number,
            "state": t.state.name,
            "hash": t.user_attrs.get("config_hash", ""),
            **trial_settings(t, spec),
        }
        for objective in spec.objectives:
            row[objective.metric] = metrics.get(objective.metric)
        if t.state == TrialState.FAIL:
            row["note"] = t.user_attrs.get("fail_reason", "")
        elif t.user_attrs.get("skip_reason"):  # over the memory cap: pruned before training
            row["note"] = f"not trained: {t.user_attrs['skip_reason']}"
        rows.append(row)
    first = spec.objectives[0]
    return best_first(rows, lambda r: r[first.metric], first.direction, lambda r: r["trial"])


def trial_settings(trial, spec: SweepSpec) -> dict:
    """The trial's settings as its worker recorded them (runrow.settings of the composed config); for a trial
    not yet started, the sampled values it has (α from α/r where the spec searches it per rank)."""
    recorded = trial.user_attrs.get("settings")
    if recorded:
        return dict(recorded)
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    out = {"targets": params.get("lora.targets"), "rank": params.get("lora.rank"), "alpha": None}
    for param in spec.params:
        if param.key == "lora.alpha" and param.key in params:
            out["alpha"] = param.config_value(params[param.key], params)
    return out


def format_table(rows: list[dict]) -> str:
    """trial, state, hash, the settings that tell the trials apart, the objectives, then extra columns."""
    if not rows:
        return "(no trials)"
    known = {c for c, _, _ in SETTINGS}
    shown = settings_columns(rows)
    quiet = [c for c in ("quant", "optim") if len({repr(r.get(c)) for r in rows}) == 1 and c in shown]
    shown = [c for c in shown if c not in quiet]  # the same for every trial: said once, above the table
    rest = [c for c in rows[0] if c not in known and c not in ("trial", "state", "hash", "note")]
    columns = ["trial", "state", "hash", *shown, *rest] + (["note"] if any("note" in r for r in rows) else [])
    same = ", ".join(f"{c} {rows[0].get(c)}" for c in quiet if rows[0].get(c) is not None)
    return (f"(every trial: {same})\n" if same else "") + format_rows(rows, columns)
