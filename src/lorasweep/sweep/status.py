"""`lorasweep status --study NAME`: trial states from the storage next to the SLURM array's queue state."""

from __future__ import annotations

import optuna

from ..slurm import queue
from .outcome import short_notes
from .report import format_table, leaderboard
from .report.collect import state_summary
from .retry import superseded
from .spec import SweepSpec
from .study import BUDGET_ATTR


def study_status(study: optuna.Study, spec: SweepSpec) -> str:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    summary = state_summary(t.state.name for t in trials.values()) or "no trials"
    requeued = len(superseded(list(trials.values())))
    if requeued:  # failures whose copy replaced them (preempted, stale, retried by a rerun): not failures now
        summary += f" ({requeued} of them re-queued)"
    lines = [f"study {study.study_name}: {summary} (budget {study.user_attrs.get(BUDGET_ATTR, '?')} trials)"]
    rows = short_notes(leaderboard(study, spec), study)  # a note on one short line; the whole reason is on the trial
    for row in rows:
        trial = trials[row["trial"]]
        row["worker"] = trial.user_attrs.get("worker", "")
        row["last step"] = max(trial.intermediate_values, default=None)
    lines.append(format_table(rows))
    jobs = queue.study_jobs(study)
    if jobs:
        queued = queue.job_states(jobs)
        lines.append(
            f"SLURM jobs {', '.join(jobs)}: "
            + (
                "; ".join(f"{job} {state} ({where})" for job, state, where in queued)
                if queued
                else "none left in squeue (finished or cancelled)"
            )
        )
    return "\n".join(lines)
