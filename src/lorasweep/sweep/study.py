"""A study in its storage: created once with its spec, then filled with a fixed budget of queued trials.

The budget is enforced by queueing: `lorasweep sweep` (or a rerun of it) enqueues exactly as many trials as the
budget still lacks, and workers only ever take queued trials. So K workers on one storage run exactly n_trials
trials, with no race on "one more?"; a heartbeat-stale trial is failed and re-queued by the storage's callback.
A rerun first re-queues the study's failed trials (`--retry-failed N`, sweep/retry.py): each copy takes its
failed trial's place in the count, so only then are the trials still missing queued.
The spec and the command-line overrides are stored on the study, so `lorasweep worker --study S --storage URL`
needs nothing else.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from .retry import requeue_failed, superseded
from .samplers import make_pruner, make_sampler
from .spec import SweepSpec, check_grid_budget, grid_points
from .storage import default_storage_url, open_storage

SPEC_ATTR, OVERRIDES_ATTR, BUDGET_ATTR = "lorasweep_spec", "lorasweep_overrides", "n_trials"


DEFAULT_RETRY_FAILED = 1  # a rerun retries each failed trial once (`--retry-failed N`; 0: never)


def create_study(
    spec: SweepSpec, storage_url: str, overrides: list[str], retry_failed: int = DEFAULT_RETRY_FAILED
) -> optuna.Study:
    """Create or reopen the study, re-queue its failed trials (each up to `retry_failed` times in all) and queue
    trials up to its budget."""
    check_retry_failed(retry_failed)
    check_grid_budget(spec, "--n-trials")  # the spec's own n_trials was checked when it was parsed
    make_sampler(spec)  # a sampler option Optuna does not take fails here, before the storage is touched
    storage = open_storage(storage_url)
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=[o.direction for o in spec.objectives],
        load_if_exists=True,
    )
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(OVERRIDES_ATTR, list(overrides))
    study.set_user_attr(BUDGET_ATTR, spec.n_trials)
    queued, left = requeue_failed(study, retry_failed)  # before the budget: a copy replaces its failed trial
    if queued:
        print(f"re-queued {queued} failed trial(s) with the same parameters", flush=True)
    if left:
        why = "retries off" if retry_failed == 0 else "each retried that many times already"
        print(f"{left} failed trial(s) not re-queued (--retry-failed {retry_failed}: {why})", flush=True)
    if spec.sampler["name"] == "grid":
        _enqueue_grid(study, spec)
    else:
        for _ in range(spec.n_trials - budget_used(study)):
            study.enqueue_trial({})
    return study


def _enqueue_grid(study: optuna.Study, spec: SweepSpec) -> None:
    """Queue each grid point that no counted trial holds yet, its values fixed: exactly once per point."""
    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    keys = [p.key for p in spec.params]
    taken = set()
    for t in trials:
        if t.state == TrialState.FAIL and t.number in retried:
            continue
        values = {**t.system_attrs.get("fixed_params", {}), **t.params}
        taken.add(tuple(repr(values.get(k)) for k in keys))
    for point in grid_points(spec.params):
        if tuple(repr(point[k]) for k in keys) not in taken:
            study.enqueue_trial(point, skip_if_exists=False)


def budget_used(study: optuna.Study) -> int:
    """Trials that count toward the budget: all but failures that were re-queued (their retry counts)."""
    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def check_retry_failed(retry_failed: int) -> None:
    if retry_failed < 0:
        raise UserError(f"--retry-failed must be >= 0, got {retry_failed}")


def load_study(
    study_name: str, storage_url: str, create: bool = True, sampling: bool = True
) -> tuple[optuna.Study, SweepSpec, list[str]]:
    """The study, its spec and the sweep's command-line overrides; `create=False`: a missing file storage is an
    error, not a new empty database (status, report); `sampling=False`: without the spec's sampler and pruner,
    for reading trials only (status, report: building the memory-cap constraint would import torch)."""
    storage = open_storage(storage_url, create=create)
    try:
        summary = optuna.study.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"no study {study_name!r} in {storage_url}; studies there: {', '.join(names) or 'none'}"
        ) from None
    attrs = summary.user_attrs
    if SPEC_ATTR not in attrs:
        raise UserError(f"study {study_name!r} was not created by lorasweep (no spec stored on it)")
    spec = SweepSpec.from_dict(attrs[SPEC_ATTR])
    if not sampling:
        return summary, spec, list(attrs.get(OVERRIDES_ATTR, []))
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
    )
    return study, spec, list(attrs.get(OVERRIDES_ATTR, []))


def open_study(study_name: str, storage_url: str | None, run_root: str = "runs"):
    """load_study of an existing study (nothing created), the storage defaulting to the run root's sqlite file
    (status, report)."""
    return load_study(study_name, storage_url or default_storage_url(run_root), create=False, sampling=False)
