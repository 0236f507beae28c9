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


def hydra_search_path(user_folders):
    """Hydra's config search path: its own configs, the user's folders (first match wins), the packaged conf
    (pkg://lorasweep.conf), then the structured-config schemas. Hydra's public API takes only one folder."""
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    from .sources import PACKAGED_CONF

    search = create_config_search_path(None)  # hydra's own configs and the "schema" source (structured://)
    before_schema = SearchPathQuery(provider="schema")
    for path in user_folders:
        search.prepend("lorasweep user conf", f"file://{path}", anchor=before_schema)
    search.prepend("main", PACKAGED_CONF, anchor=before_schema)
    return search


def hydra_compose(overrides, search_path):
    """hydra.compose("train", overrides) over `search_path`: what hydra.initialize_config_dir does, with a path
    of several folders. The schema train.yaml names must already be in Hydra's ConfigStore
    (config.register_configs; config.compose does that)."""
    from hydra import compose, version
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    version.setbase("1.3")
    try:
        Hydra.create_main_hydra2(task_name="lorasweep", config_search_path=search_path)
        return compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def hydra_apply_value_overrides(overrides, cfg) -> None:
    """Apply `key=value` overrides (Hydra's grammar) to a composed config exactly as Hydra's compose does after
    merging the defaults list (ConfigLoaderImpl._apply_overrides_to_config)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
