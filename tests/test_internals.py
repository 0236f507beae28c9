"""One test per private library API in lorasweep.internals: when Optuna, Accelerate or Hydra move one, this fails
first."""

import optuna
import pytest
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


# --- Hydra: composing over several folders, and value overrides applied after the merge -----------------------


def test_hydra_search_path_puts_user_folders_first_then_the_package_then_the_schemas(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    elements = internals.hydra_search_path([first, second]).get_path()
    assert [e.path for e in elements] == [
        "pkg://hydra.conf",
        f"file://{first}",
        f"file://{second}",
        "pkg://lorasweep.conf",
        "structured://",
    ]
    assert elements[-1].provider == "schema"


def test_hydra_compose_reads_the_first_folder_that_has_a_file(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from lorasweep.config.schema import register_configs

    register_configs()
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "qv.yaml").write_text("targets: qv\nrank: 3\n")  # shadows the packaged lora/qv.yaml
    mine = internals.hydra_compose(["trainer=smoke"], internals.hydra_search_path([tmp_path]))
    packaged = internals.hydra_compose(["trainer=smoke"], internals.hydra_search_path([]))
    assert (mine.lora.rank, packaged.lora.rank) == (3, 8)
    assert mine.trainer == packaged.trainer and mine.trainer.max_steps != 150  # the group choice was applied
    assert not GlobalHydra.instance().is_initialized()  # nothing global left behind for the next compose


def test_hydra_apply_value_overrides_is_what_a_full_compose_does():
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    from lorasweep.config.schema import register_configs

    register_configs()
    search = internals.hydra_search_path([])
    cfg = internals.hydra_compose(["lora=all"], search)
    values = ["lora.rank=4", "seed=3", "model.dropout=null", "lora.targets=[query,value]"]
    internals.hydra_apply_value_overrides(values, cfg)
    assert cfg == internals.hydra_compose(["lora=all", *values], search)
    assert cfg.lora.rank == 4 and list(cfg.lora.targets) == ["query", "value"]
    with pytest.raises(ConfigCompositionException) as bad:  # the schema's types hold, as in Hydra's compose
        internals.hydra_apply_value_overrides(["lora.rank=abc"], cfg)
    assert isinstance(bad.value.__cause__, ValidationError)
