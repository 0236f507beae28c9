"""A packed sweep worker: up to K queued trials train at once on one copy of the frozen base (lorasweep/pack/).

Each trial is exactly what an unpacked worker runs (`worker._run_trial`: compose, memory check, `run.train` with
pruning and signals), inside the pack. The moment a trial ends (completed, pruned, failed, skipped) it is told to
the study and the next queued trial takes its place, so the pack stays full until the queue is empty. A signal
stops every trial at its next step: each checkpoints and is re-queued on its own, to resume alone or in any pack.
An out-of-memory error in an op the trials share stops them all (pack/scheduler.py's PackRetry): each is
re-queued, to resume from its last checkpoint, and the worker packs half as many trials from then on.
"""

from __future__ import annotations

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from .. import internals
from ..errors import one_line
from ..pack.scheduler import Pack, PackRetry, Slot
from ..step.ranks import broadcast_from_main
from .heartbeat import Heartbeat


def run_packed(state, study, size: int, resources, should_stop, run_trial, requeue, label: str) -> int:
    """Trials until the queue is empty (or a signal), `size` at a time; returns how many ended here.
    run_trial(trial) -> (state, values) | None (interrupted): what an unpacked worker does with one trial;
    requeue(study, trial_id, reason): fail an interrupted trial and queue its copy.

    Under torchrun rank 0 decides: at every refill it tells the other ranks how many trials it started
    (`follow_packed` starts as many), and each trial broadcasts its overrides as an unpacked one does. The pack
    runs the same on every rank, so their collectives (DDP's gradient reduction included) pair up."""
    multi = state.num_processes > 1
    pack = Pack(size)  # its trials' micro_batch=auto fits a share of `size` (the pack shrinks, the share stays)
    resources.pack = pack
    storage = internals.study_storage(study)
    done = 0

    def fill() -> None:
        started = 0
        while len(pack) < size and not (should_stop is not None and should_stop()):
            optuna.storages.fail_stale_trials(study)
            queued = internals.pop_waiting_trial_id(study)
            if queued is None:
                break
            started += 1
            trial = optuna.Trial(study, queued)
            trial.set_user_attr("worker", label)
            trial.set_user_attr("pack", size)
            heartbeat = Heartbeat(storage, internals.trial_id(trial)).__enter__()
            slot = pack.start(f"trial {trial.number}", run_trial, trial)
            slot.trial, slot.heartbeat = trial, heartbeat
        if multi:
            broadcast_from_main(state, started)

    def on_done(slot: Slot) -> None:
        nonlocal done, size
        slot.heartbeat.__exit__(None, None, None)
        trial = slot.trial
        try:
            if isinstance(slot.error, PackRetry):  # the pack's out of memory, not the trial's: train it again
                if slot.error.size < size:
                    size = slot.error.size
                    print(f"packing up to {size} trials from now on (out of memory with more)", flush=True)
                requeue(study, internals.trial_id(trial), one_line(str(slot.error), 500))
                if multi:  # the other ranks did not run out: end the worker, as a failure there does
                    raise slot.error
            elif isinstance(slot.error, UpdateFinishedTrialError):
                print(
                    f"trial {trial.number} was failed as heartbeat-stale by another worker; its retry is queued",
                    flush=True,
                )
            elif slot.error is not None and multi:  # told FAIL already; the other ranks may be in a collective:
                raise slot.error  # end the worker, so that torchrun stops them all (as an unpacked worker does)
            elif slot.error is not None:  # outside the trial's own handling (it fails the trial itself)
                trial.set_user_attr("fail_reason", one_line(f"{type(slot.error).__name__}: {slot.error}", 500))
                study.tell(trial, state=TrialState.FAIL)
            elif slot.result is None:  # interrupted by a signal: checkpointed
                requeue(study, internals.trial_id(trial), "interrupted by a signal (preemption or time limit)")
            else:
                trial_state, values = slot.result
                study.tell(trial, values=values, state=trial_state)
        except UpdateFinishedTrialError:
            print(
                f"trial {trial.number} was failed as heartbeat-stale by another worker; its retry is queued", flush=True
            )
        done += 1
        fill()  # the freed place goes to the next queued trial at once

    _drive(resources, pack, fill, on_done)
    return done


def follow_packed(state, resources, run_trial) -> int:
    """Ranks other than 0: hold the same pack as rank 0, starting as many trials as it says at every refill;
    run_trial() receives one trial's overrides and trains it."""
    pack = Pack()
    resources.pack = pack
    done = 0

    def fill() -> None:
        for _ in range(broadcast_from_main(state, 0)):
            pack.start("follower", run_trial)

    def on_done(slot: Slot) -> None:
        nonlocal done
        if slot.error is not None:
            raise slot.error  # as an unpacked follower: torchrun stops every rank
        done += 1
        fill()

    _drive(resources, pack, fill, on_done)
    return done


def _drive(resources, pack: Pack, fill, on_done) -> None:
    """Fill the pack, run it until no trial is left, and give the resources back unpacked."""
    fill()
    try:
        pack.run(on_done)
    finally:
        resources.pack = None
