"""How a study stands, for `lorasweep sweep` and `lorasweep status`: the exit code and its one-line summary.

Failures are counted once: a failed trial that a copy replaced (preempted, heartbeat-stale, re-queued by a
rerun: sweep/retry.py) is not a failure. Pruned trials (by the pruner, or not trained over the memory cap) count
as neither failed nor completed: pruning them was the sweep's decision, not an error, and they rank no params. So
a study fails (exit 1) while its failures outnumber its completed trials; all pruned is a success (exit 0).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..errors import one_line
from .retry import open_failures, replaced_by

FAILED = 1  # ran, but failed trials outnumber completed ones (docs/errors.md)
NOTE_WIDTH = 60  # a table note past this is cut with "...": the whole reason is in the trial's fail_reason


def study_outcome(study: optuna.Study) -> tuple[int, str | None]:
    """(exit code, summary line): 0 and None without failures; the line also when failures are a minority."""
    trials = study.get_trials(deepcopy=False)
    failed = open_failures(trials)
    if not failed:
        return 0, None
    completed = sum(t.state == TrialState.COMPLETE for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    first = failed[0]
    reason = first.user_attrs.get("fail_reason") or "no reason recorded"
    line = (
        f"{len(failed)} trial(s) failed, {completed} completed, {pruned} pruned in study {study.study_name}; "
        f"first failure, trial {first.number}: {reason}"
    )
    return (FAILED if len(failed) > completed else 0), line


def clip(text: str, width: int = NOTE_WIDTH) -> str:
    """One short line of a table cell."""
    text = one_line(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def short_notes(rows: list[dict], study: optuna.Study) -> list[dict]:
    """The leaderboard's rows with each note on one short line (status and sweep tables); a failure that a copy
    replaced says which."""
    copies = replaced_by(study.get_trials(deepcopy=False))
    out = []
    for row in rows:
        note = row.get("note")
        if row["trial"] in copies and row["state"] == TrialState.FAIL.name:
            note = f"retried as trial {copies[row['trial']]}: {note or ''}"
        out.append({**row, "note": clip(note)} if note else row)
    return out
