"""Putting a trial back in the queue: a WAITING copy with the same parameters, linked to the original the way
Optuna's RetryHeartbeatStaleTrialCallback links them (system attrs `failed_trial`, `retry_history`), keeping the
reported values for the pruner. Unlike that callback it leaves out who ran the trial and why it failed (so the
copy is never mistaken for the old worker's) and it counts heartbeat failures apart from preemptions: a trial
preempted many times is still retried, a trial that keeps killing its workers is not."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

MAX_STALE_RETRIES = 3
RUN_ATTRS = ("worker", "fail_reason", "status")  # about one attempt, not the trial


def requeue_copy(study: optuna.Study, trial: FrozenTrial, stale: bool = False) -> bool:
    """Enqueue the copy; False when a stale trial has used up its retries."""
    stale_retries = trial.system_attrs.get("stale_retries", 0) + int(stale)
    if stale and stale_retries > MAX_STALE_RETRIES:
        return False
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS},
            system_attrs={
                **trial.system_attrs,
                "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                "retry_history": [*trial.system_attrs.get("retry_history", []), trial.number],
                "stale_retries": stale_retries,
            },
            intermediate_values=trial.intermediate_values,
        )
    )
    return True


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """The storage's heartbeat_stale_trial_callback."""
    requeue_copy(study, trial, stale=True)
