"""What a report shows, collected once: one row per trial with its parameters, status, objectives and costs.

Figures come from the trial's user attrs (`metrics`, set for complete trials) first, then from the run's record
in the run store (runstore.RunDir: metrics.json, which also records pruned, failed and interrupted runs); a
figure found in neither is None (shown as '-').
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ...runs.metrics import HEADLINE, label
from ...runs.store import RunDir
from ..spec import SweepSpec

# What each trial cost, as columns: metric -> title (the registry's label).
COSTS = {
    m: label(m)
    for m in (
        "params/trainable_fraction",
        "memory/optimizer_state_bytes",
        "memory/peak_bytes",
        "memory/predicted_peak_bytes",
        "perf/loop_time_s",
    )
}


@dataclass
class TrialRow:
    number: int
    state: str  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    status: str  # for people: complete / pruned at step N / failed: reason / running / waiting
    params: dict  # searched values as sampled (α/r for a per_rank lora.alpha)
    objectives: dict  # metric -> value (complete trials only)
    metrics: dict  # every known final figure (attrs, else metrics.json)
    config_hash: str
    run_dir: str | None  # the run's folder when it exists
    curve: list = field(default_factory=list)  # [(step, first objective)] from the intermediate values
    alpha: float | None = None  # the actual α when the spec searches α/r

    @property
    def finished(self) -> bool:
        return self.state == "COMPLETE"

    def as_columns(self, spec: SweepSpec) -> dict:
        """The table's columns, in order (the page, the terminal and the W&B table all use these)."""
        row = {"trial": self.number, "status": self.status}
        for param in spec.params:
            row[param.key] = self.params.get(param.key)
        if any(p.per_rank for p in spec.params):
            row["α"] = self.alpha
        for objective in spec.objectives:
            row[objective.metric] = self.objectives.get(objective.metric)
        for metric in HEADLINE.values():  # the task's own figure (accuracy, Pearson), where no objective is it
            if metric in self.metrics and metric not in row:
                row[metric] = self.metrics[metric]
        for metric, title in COSTS.items():
            row[title] = self.metrics.get(metric)
        from ...lora.adapter_io import read_label_names  # here: lora imports torch, which `status` never needs

        if self.run_dir is not None and (names := read_label_names(Path(self.run_dir) / "adapter")):
            row["labels"] = ", ".join(names)
        row["config hash"] = self.config_hash or None
        row["run directory"] = self.run_dir
        return row


@dataclass
class ReportData:
    study_name: str
    spec: SweepSpec
    rows: list[TrialRow]
    directions: list[str]
    pareto: set[int]  # trial numbers on the Pareto front (the best trial for one objective)

    @property
    def finished(self) -> list[TrialRow]:
        return [r for r in self.rows if r.finished]

    @property
    def metric(self) -> str:
        return self.spec.objectives[0].metric

    def table(self) -> list[dict]:
        """Every row with the same columns (a figure or labels some trials lack: None there)."""
        rows = [r.as_columns(self.spec) for r in self.rows]
        columns = list(dict.fromkeys(c for row in rows for c in row))
        return [{c: row.get(c) for c in columns} for row in rows]


def collect(study: optuna.Study, spec: SweepSpec, run_root: str | Path = "runs") -> ReportData:
    """Every trial of the study as a TrialRow, best finished trial first, then the rest by number."""
    rows = [_row(t, spec, Path(run_root)) for t in study.get_trials(deepcopy=False)]
    first = spec.objectives[0]
    rows = best_first(rows, lambda r: r.objectives.get(first.metric), first.direction, lambda r: r.number)
    try:
        pareto = {t.number for t in study.best_trials}
    except ValueError:  # no complete trial
        pareto = set()
    return ReportData(study.study_name, spec, rows, [o.direction for o in spec.objectives], pareto)


def _row(t: FrozenTrial, spec: SweepSpec, default_root: Path) -> TrialRow:
    digest = t.user_attrs.get("config_hash", "")
    run = RunDir(_run_root(t, default_root) / digest) if digest else None
    stored = run.record() if run else {}
    metrics = {**stored, **_finite(t.user_attrs.get("metrics", {}))}
    params = {**t.system_attrs.get("fixed_params", {}), **t.params}
    objectives = {}
    if t.state == TrialState.COMPLETE and t.values:
        objectives = {o.metric: v for o, v in zip(spec.objectives, t.values)}
    curve = sorted(t.intermediate_values.items())
    if not curve and run is not None:
        metric = spec.objectives[0].metric
        curve = [(r["step"], r[metric]) for r in run.history() if metric in r and "step" in r]
    alpha = None
    for param in spec.params:
        if param.per_rank and param.key in params and params.get("lora.rank") is not None:
            alpha = param.config_value(params[param.key], params)
    return TrialRow(
        number=t.number,
        state=t.state.name,
        status=_status(t, curve, stored),
        params=params,
        objectives=objectives,
        metrics=metrics,
        config_hash=digest,
        run_dir=str(run.path) if run is not None and run.path.is_dir() else None,
        curve=curve,
        alpha=alpha,
    )


def _status(t: FrozenTrial, curve: list, stored: dict) -> str:
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED and t.user_attrs.get("skip_reason"):  # over the memory cap: never trained
        return f"not trained: {t.user_attrs['skip_reason']}"
    if t.state == TrialState.PRUNED:
        step = curve[-1][0] if curve else stored.get("step")
        return f"pruned at step {step}" if step is not None else "pruned"
    if t.state == TrialState.FAIL:
        reason = t.user_attrs.get("fail_reason") or stored.get("fail_reason") or stored.get("status") or "unknown"
        return f"failed: {reason}"
    return t.state.name.lower()


def _run_root(t: FrozenTrial, default: Path) -> Path:
    """The run root the trial trained under: its last `run_root=` override, else the report's."""
    for override in reversed(t.user_attrs.get("overrides", [])):
        if override.startswith("run_root="):
            return Path(override.split("=", 1)[1])
    return default


def _finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def best_first(rows: list, value, direction: str, number) -> list:
    """`rows` sorted best first by value(row) (minimize or maximize), rows without a value last, ties by
    number(row): the order of every trial table (the report's rows, the terminal leaderboard)."""
    sign = 1 if direction == "minimize" else -1

    def key(row):
        v = value(row)
        return (v is None, sign * v if v is not None else 0, number(row))

    return sorted(rows, key=key)


def state_summary(states) -> str:
    """ "2 complete, 1 pruned" from Optuna state names (any case), alphabetical; "" when there are none."""
    counts = Counter(state.lower() for state in states)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def searched(spec: SweepSpec) -> list[str]:
    return [p.key for p in spec.params]
