"""Putting a trial back in the queue: a WAITING copy with the same parameters, linked to the original the way
Optuna's RetryHeartbeatStaleTrialCallback links them (system attrs `failed_trial`, `retry_history`).

Three reasons, each counted apart:
- preempted (a signal, a worker gone): the copy keeps the reported values for the pruner and resumes from the
  checkpoint; always retried;
- heartbeat-stale: the same, but a trial that keeps killing its workers is given up after MAX_STALE_RETRIES;
- failed (an exception, a non-finite loss), re-queued by a rerun of `lorasweep sweep` (`--retry-failed N`): a
  fresh attempt (no reported values, no figures of the failed attempt), at most N times per trial over all its
  copies (`failed_retries`), so a typo fixed on the command line or in the spec's `fixed` trains it.
Every copy leaves out who ran the trial and why it failed, so it is never mistaken for the old worker's. A trial
whose number is in a copy's `retry_history` is superseded: it no longer counts toward the budget or as a failure.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

MAX_STALE_RETRIES = 3
RUN_ATTRS = ("worker", "fail_reason", "status")  # about one attempt, not the trial
FAILED_RETRIES = "failed_retries"  # system attr: reruns that re-queued this trial after it failed


def requeue_copy(study: optuna.Study, trial: FrozenTrial, stale: bool = False, failed: bool = False) -> bool:
    """Enqueue the copy; False when a stale trial has used up its retries. `failed`: a fresh attempt of a failed
    trial (only its parameters carried over)."""
    stale_retries = trial.system_attrs.get("stale_retries", 0) + int(stale)
    if stale and stale_retries > MAX_STALE_RETRIES:
        return False
    system = {
        **trial.system_attrs,
        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
        "retry_history": [*trial.system_attrs.get("retry_history", []), trial.number],
        "stale_retries": stale_retries,
        FAILED_RETRIES: trial.system_attrs.get(FAILED_RETRIES, 0) + int(failed),
    }
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={} if failed else {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS},
            system_attrs=system,
            intermediate_values={} if failed else trial.intermediate_values,
        )
    )
    return True


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """The storage's heartbeat_stale_trial_callback."""
    requeue_copy(study, trial, stale=True)


def superseded(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials a queued copy replaced: they count neither toward the budget nor as failures."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def replaced_by(trials: list[FrozenTrial]) -> dict[int, int]:
    """Each superseded trial's number -> the number of the copy that replaced it."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}


def open_failures(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """FAIL trials no copy replaced, by number: the study's failures as the exit code and the summary count them."""
    replaced = superseded(trials)
    return sorted(
        (t for t in trials if t.state == TrialState.FAIL and t.number not in replaced), key=lambda t: t.number
    )


def requeue_failed(study: optuna.Study, limit: int) -> tuple[int, int]:
    """Queue a fresh copy of every open failure retried fewer than `limit` times; returns (re-queued, left as
    they are because they used up their retries)."""
    queued = left = 0
    for trial in open_failures(study.get_trials(deepcopy=False)):
        if trial.system_attrs.get(FAILED_RETRIES, 0) >= limit:
            left += 1
            continue
        requeue_copy(study, trial, failed=True)
        queued += 1
    return queued, left
