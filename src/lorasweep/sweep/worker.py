"""A sweep worker: takes queued trials from the study until none is left; each trial is one train() run.

The worker keeps base models and tokenised data between its trials (Resources). A trial that raises, hits a
non-finite loss or runs out of memory ends FAIL with the reason on the trial (user attr `fail_reason`); the
worker goes on. A trial stopped by a signal (SLURM preemption or time limit) is checkpointed, marked FAIL and
re-queued with the same parameters at once, so whichever worker takes it next resumes it from its checkpoint
(same config hash, same run directory). A trial another worker failed as heartbeat-stale is given up quietly:
its retry is already queued and will reuse this worker's run directory. Under torchrun / accelerate launch,
rank 0 talks to Optuna and broadcasts each trial's overrides, so all ranks train the same config together.
"""

from __future__ import annotations

import math
import os
import socket

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from .. import internals
from ..config.schema import compose, config_hash
from ..errors import one_line
from ..estimate.fit import check_trial_memory
from ..runs.rows import settings
from ..slurm import identity
from ..step.ranks import broadcast_from_main
from ..training.lifecycle import Callbacks, train
from ..training.resources import Resources
from .heartbeat import Heartbeat
from .packed import follow_packed, run_packed
from .retry import requeue_copy
from .spec import SweepSpec, trial_overrides
from .study import load_study

STOP = None  # broadcast to the other ranks: no trial left
SKIP = "skip"  # broadcast to the other ranks: this trial is not trained (predicted over the memory cap)
PACK = "pack"  # broadcast to the other ranks as (PACK, size): hold the same pack of trials (sweep/packed.py)


def worker_index() -> int:
    """Distinguishes workers' sampler seeds: the local launcher's index, else the SLURM array task's."""
    local = os.environ.get("LORASWEEP_WORKER_INDEX")
    return int(local) if local is not None else identity.array_index() or 0


def worker_label() -> str:
    """Who runs a trial: the SLURM array task (for `lorasweep status` and `scontrol`), else host:pid."""
    task = identity.array_task()
    if task:
        local = os.environ.get("LORASWEEP_WORKER_INDEX")  # several local workers inside one array task
        return f"{task}/{local}" if local else task
    return f"{socket.gethostname()}:{os.getpid()}"


def run_worker(
    study_name: str,
    storage_url: str,
    resources: Resources | None = None,
    should_stop=None,
    memory_cap=None,
    pack=None,
) -> int:
    """Run queued trials until none is left; returns how many this worker ran (on rank 0). `pack`: train up to
    that many at once on one frozen base (an int or auto; default: the spec's `pack`, else 1; sweep/packed.py)."""
    import torch
    from accelerate import PartialState

    # Joins the process group when launched by torchrun / accelerate launch (gloo on CPU needs cpu=True).
    state = PartialState(cpu=not torch.cuda.is_available())
    resources = resources or Resources()
    if state.num_processes > 1 and not state.is_main_process:
        return _follow(state, resources, should_stop)
    study, spec, cli_overrides = load_study(study_name, storage_url)
    # Parallel workers, and a requeued array task restarting, must not replay the same sampler stream.
    offset = worker_index() + 1000 * identity.restart_count()
    if offset:
        study.sampler = _reseeded(study.sampler, spec, offset)
    _reclaim_orphans(study)
    from .pack_plan import plan_pack

    size = plan_pack(spec, cli_overrides, pack if pack is not None else (spec.pack or 1), memory_cap)
    if size > 1:
        print(f"packing up to {size} trials on one frozen base", flush=True)
        broadcast_from_main(state, (PACK, size))  # under torchrun every rank holds the same pack
        run_one = lambda trial: _run_trial(state, trial, spec, cli_overrides, resources, should_stop, memory_cap)  # noqa: E731
        return run_packed(state, study, size, resources, should_stop, run_one, _requeue, worker_label())
    done = 0
    while True:
        if should_stop is not None and should_stop():  # a signal between trials: take no new one
            broadcast_from_main(state, STOP)
            return done
        optuna.storages.fail_stale_trials(study)
        queued = internals.pop_waiting_trial_id(study)  # only queued trials: the budget is the queue (study.py)
        if queued is None:
            broadcast_from_main(state, STOP)
            return done
        trial = optuna.Trial(study, queued)
        try:
            trial.set_user_attr("worker", worker_label())
            with Heartbeat(internals.study_storage(study), internals.trial_id(trial)):
                outcome = _run_trial(state, trial, spec, cli_overrides, resources, should_stop, memory_cap)
            if outcome is None:  # interrupted (preemption): checkpointed; queue it again and exit
                _requeue(study, internals.trial_id(trial), "interrupted by a signal (preemption or time limit)")
                broadcast_from_main(state, STOP)
                return done
            state_, values = outcome
            study.tell(trial, values=values, state=state_)
        except UpdateFinishedTrialError:
            print(
                f"trial {trial.number} was failed as heartbeat-stale by another worker; its retry is queued", flush=True
            )
            continue
        done += 1


def _requeue(study: optuna.Study, trial_id: int, reason: str) -> None:
    """Fail the trial and queue a copy with the same parameters (Optuna's retry attributes link the two)."""
    storage = internals.study_storage(study)
    storage.set_trial_user_attr(trial_id, "fail_reason", f"{reason}; re-queued")
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    frozen = storage.get_trial(trial_id)
    requeue_copy(study, frozen)
    print(f"trial {frozen.number} {reason}: re-queued", flush=True)


def _reclaim_orphans(study: optuna.Study) -> None:
    """Re-queue RUNNING trials whose worker is known to be gone (killed outright: no chance to checkpoint or
    re-queue; journal storages have no heartbeats, and others fail them only after the grace period):
    - a SLURM array task runs once at a time, so trials under its own label are its own from before;
    - a local worker's label is host:pid, so on the same host a trial whose pid is no longer alive is orphaned."""
    me, host = worker_label(), socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        label = str(trial.user_attrs.get("worker", ""))
        mine = identity.array_task() is not None and label == me
        if mine or _dead_local_worker(label, host):
            try:
                _requeue(study, internals.trial_id(trial), f"left running by worker {label}, which is gone")
            except UpdateFinishedTrialError:
                pass  # another worker failed it as stale meanwhile and queued its retry


def _dead_local_worker(label: str, host: str) -> bool:
    worker_host, _, pid = label.rpartition(":")
    if worker_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _reseeded(sampler, spec: SweepSpec, index: int):
    from .samplers import make_sampler

    shifted = SweepSpec.from_dict(
        {**spec.to_dict(), "sampler": {**spec.sampler, "seed": (spec.sampler.get("seed") or 0) + 1000 * index}}
    )
    return make_sampler(shifted)


def _run_trial(state, trial, spec: SweepSpec, cli_overrides, resources, should_stop, memory_cap=None):
    objective = spec.objectives[0].metric
    try:
        values = {p.key: p.suggest(trial) for p in spec.params}
        overrides = trial_overrides(spec, cli_overrides, values)
        trial.set_user_attr("overrides", overrides)
        cfg = compose(overrides)
        trial.set_user_attr("config_hash", config_hash(cfg))
        trial.set_user_attr("settings", settings(cfg))  # what the leaderboard shows (runs/rows.py)
        # Predicted over the memory cap (this worker's --memory-cap, else the config's): not trained (estimate/fit.py)
        skip = check_trial_memory(trial, cfg, memory_cap)
        if skip:
            print(f"trial {trial.number} not trained: {skip}", flush=True)
            broadcast_from_main(state, SKIP)
            return TrialState.PRUNED, None
        broadcast_from_main(state, overrides)

        def on_eval(step: int, metrics: dict) -> bool:
            trial.report(metrics[objective], step)
            return trial.should_prune()

        metrics = train(
            cfg,
            callbacks=Callbacks(on_eval=on_eval if len(spec.objectives) == 1 else None, should_stop=should_stop),
            resources=resources,
        )
    except UpdateFinishedTrialError:
        raise  # not this trial's failure: another worker already failed it as stale (run_worker)
    except Exception as exc:  # noqa: BLE001 - any failure ends this trial, never the sweep
        trial.set_user_attr("fail_reason", one_line(f"{type(exc).__name__}: {exc}", 500))
        if state.num_processes > 1:  # the other ranks may be inside a collective: end the worker, so that
            trial.study.tell(trial, state=TrialState.FAIL)  # torchrun stops them all (other workers go on)
            raise
        return TrialState.FAIL, None
    trial.set_user_attr("status", metrics["status"])
    # The run's figures whatever its ending (a pruned trial's parameters and memory are known too).
    trial.set_user_attr(
        "metrics", {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    )
    if metrics["status"] == "interrupted":
        return None
    if metrics["status"] == "pruned":
        return TrialState.PRUNED, None
    values = [metrics[o.metric] for o in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr("fail_reason", f"non-finite objective values {values}")
        return TrialState.FAIL, None
    return TrialState.COMPLETE, values


def _follow(state, resources, should_stop) -> int:
    """Ranks other than 0: train whatever config rank 0 sends, until it sends STOP (or hold its pack)."""
    done = 0
    while True:
        overrides = broadcast_from_main(state, STOP)
        if overrides is STOP:
            return done
        if isinstance(overrides, tuple) and overrides[0] == PACK:
            return follow_packed(state, resources, lambda: _follow_one(state, resources, should_stop))
        if overrides == SKIP:
            continue
        # A failure here ends this process (rank 0 records the trial's failure): torchrun then stops every rank,
        # rather than leave rank 0 waiting in a collective this rank will never join.
        train(compose(overrides), callbacks=Callbacks(should_stop=should_stop), resources=resources)
        done += 1


def _follow_one(state, resources, should_stop):
    """One trial of a follower's pack: the overrides rank 0's trial broadcasts, trained with it."""
    overrides = broadcast_from_main(state, STOP)
    if overrides in (STOP, SKIP):
        return None
    return train(compose(overrides), callbacks=Callbacks(should_stop=should_stop), resources=resources)
