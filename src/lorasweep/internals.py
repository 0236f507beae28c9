"""Every private API of another library that lorasweep relies on, in one place, each with a test
(tests/test_internals.py) and checked against the versions that pyproject.toml bounds (optuna 5.0, accelerate
1.15). When one of them moves, this file and its test are what change."""

from __future__ import annotations


def pop_waiting_trial_id(study) -> int | None:
    """Take a queued (WAITING) trial and mark it RUNNING, or None: lets a worker run only queued trials, so the
    budget is the queue (Optuna's public `ask()` would create a new trial when the queue is empty)."""
    return study._pop_waiting_trial_id()


def study_storage(study):
    """The storage object behind a study (for heartbeats, trial re-queues, and the dashboard)."""
    return study._storage


def study_id(study) -> int:
    return study._study_id


def trial_id(trial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return trial._trial_id


def heartbeat_storage(storage):
    """The storage when it supports heartbeats (RDB storages with heartbeat_interval set), else None."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return storage if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage) else None


def reset_accelerator_settings() -> None:
    """Accelerate keeps its settings (mixed precision, ...) in a process-wide singleton; a worker that runs
    trials with different settings must clear them, keeping the process group (PartialState)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
