"""One test per private library API in lorasweep.internals: when Optuna or Accelerate move one, this fails first."""

import optuna
from optuna.trial import TrialState

from lorasweep import internals


def _study(tmp_path, **kwargs):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", **kwargs)
    return optuna.create_study(study_name="s", storage=storage)


def test_pop_waiting_trial_id_takes_only_queued_trials(tmp_path):
    study = _study(tmp_path)
    assert internals.pop_waiting_trial_id(study) is None  # an empty queue creates nothing
    study.enqueue_trial({"x": 1})
    queued = internals.pop_waiting_trial_id(study)
    assert queued is not None and study.get_trials()[0].state == TrialState.RUNNING
    assert internals.pop_waiting_trial_id(study) is None and len(study.get_trials()) == 1


def test_study_storage_id_and_trial_id(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    storage = internals.study_storage(study)
    assert storage.get_trial(internals.trial_id(trial)).number == trial.number
    assert storage.get_study_id_from_name("s") == internals.study_id(study)


def test_heartbeat_storage_only_when_heartbeats_are_on(tmp_path):
    assert internals.heartbeat_storage(internals.study_storage(_study(tmp_path))) is None
    beating = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=5, grace_period=20)
    assert internals.heartbeat_storage(beating) is beating


def test_reset_accelerator_settings_keeps_the_process_state():
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    internals.reset_accelerator_settings()  # whatever an earlier test in this process set
    Accelerator(cpu=True, mixed_precision="bf16")
    assert AcceleratorState().mixed_precision == "bf16"
    internals.reset_accelerator_settings()
    assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    assert PartialState().initialized
