"""Study storages under concurrent workers: every queued trial is taken exactly once (no ML, just Optuna)."""

import os
import subprocess
import sys
import textwrap

import optuna
import pytest

from lorasweep.sweep.storage import open_storage

# Pop-and-tell as fast as possible: the tightest race a real worker's trial loop can have.
DRAIN = textwrap.dedent("""
    import sys, optuna
    from lorasweep.sweep.storage import open_storage
    study = optuna.load_study(study_name="race", storage=open_storage(sys.argv[1]))
    taken = []
    while (trial_id := study._pop_waiting_trial_id()) is not None:
        trial = optuna.Trial(study, trial_id)
        taken.append(trial.number)
        study.tell(trial, 1.0)
    print(" ".join(map(str, taken)))
""")

URLS = ["sqlite", "journal"] + (["postgresql"] if os.environ.get("LORASWEEP_TEST_POSTGRES_URL") else [])


@pytest.mark.slow
@pytest.mark.parametrize("kind", URLS)
def test_each_queued_trial_is_taken_once_by_concurrent_workers(tmp_path, kind):
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'race.db'}",
        "journal": f"journal://{tmp_path / 'race.log'}",
        "postgresql": os.environ.get("LORASWEEP_TEST_POSTGRES_URL"),
    }[kind]
    if kind == "postgresql":
        optuna.delete_study(study_name="race", storage=url) if "race" in optuna.get_all_study_names(url) else None
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for _ in range(120):
        study.enqueue_trial({})
    workers = [
        subprocess.Popen([sys.executable, "-c", DRAIN, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-600:] for _, err in outputs]
    taken = [int(n) for out, _ in outputs for n in out.split()]
    assert sorted(taken) == list(range(120))  # none lost, none taken twice
    assert all(t.state.name == "COMPLETE" for t in study.get_trials())


def test_requeued_copies_drop_the_attempt_and_count_stale_failures_apart():
    from lorasweep.sweep.retry import MAX_STALE_RETRIES, requeue_copy

    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={"overrides": ["lora.rank=4"]})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    trial.set_user_attr("worker", "77_1")
    trial.report(0.5, step=2)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    current = study.trials[-1]
    for _ in range(5):  # preemptions: always retried
        assert requeue_copy(study, current)
        current = study.trials[-1]
    assert current.user_attrs == {"overrides": ["lora.rank=4"]} and "worker" not in current.user_attrs
    assert current.params == {"x": 1.0} and current.intermediate_values == {2: 0.5}
    assert current.system_attrs["failed_trial"] == 0 and current.system_attrs["retry_history"] == [0, 1, 2, 3, 4]
    stale = [requeue_copy(study, study.trials[-1], stale=True) for _ in range(MAX_STALE_RETRIES + 1)]
    assert stale == [True] * MAX_STALE_RETRIES + [False]


def test_heartbeat_keeps_beating_through_storage_errors(tmp_path, capsys):
    import time

    from lorasweep.sweep.heartbeat import Heartbeat

    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real, calls = storage.record_heartbeat, []

    def flaky(trial_id):  # the first two beats hit a locked database
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise optuna.exceptions.StorageInternalError("database is locked")
        real(trial_id)

    storage.record_heartbeat = flaky
    with Heartbeat(storage, trial._trial_id):
        time.sleep(3.5)
    assert len(calls) >= 3  # Optuna's own thread would have stopped at the first error
    assert "heartbeat of trial id" in capsys.readouterr().out
    assert storage._get_stale_trial_ids(study._study_id) == []  # its later beats were recorded
