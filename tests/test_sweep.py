"""Optuna sweeps: spec validation, trials as train() runs, failures, pruning, budgets, storages, report."""

import os
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from lorasweep.runs.store import RunStore
from lorasweep.sweep.launch import prepare, run_sweep
from lorasweep.sweep.report import leaderboard, write_html_report

FAST = [
    "trainer=smoke",
    "trainer.max_steps=2",
    "trainer.eval_every=1",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=24",
    "tracking=none",
]


def _spec(tmp_path, body: str, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


BASIC = """
study: basic
n_trials: 4
objectives: [{metric: eval/loss, direction: minimize}]
pruner: {name: none}
params:
  lora.rank: {type: categorical, choices: [2, 4]}
  lora.alpha: {type: categorical, choices: [1, 2], per_rank: true}
  lora.targets: {type: categorical, choices: [qv, all]}
"""


@pytest.mark.parametrize("path", ["sweeps/rank_alpha_targets.yaml", "sweeps/pareto.yaml"])
def test_shipped_specs_validate(path):
    spec, url = prepare(path, [])
    assert spec.n_trials > 0 and url.startswith("sqlite:///")


@pytest.mark.parametrize(
    "body, message",
    [
        ("params: {lora.rank: {type: integer, low: 1, high: 4}}", "type must be one of int, float, categorical"),
        ("params: {lora.rank: {type: int, low: 8, high: 4}}", r"low \(8\) > high \(4\)"),
        ("params: {lora.rnk: {type: int, low: 1, high: 4}}", "'lora.rnk' is not a key of the training config"),
        (
            "objectives: [{metric: eval/pearson}]\nparams: {lora.rank: {type: int, low: 1, high: 4}}",
            "objective metric 'eval/pearson' is never reported",
        ),
        (
            "objectives: [{metric: eval/loss}, {metric: params/trainable_fraction}]\n"
            "params: {lora.rank: {type: int, low: 1, high: 4}}",
            "pruning needs a single objective",
        ),
        ("params: {lora.alpha: {type: float, low: 1, high: 4, per_rank: true}}", "needs lora.rank"),
        ("n_trial: 3\nparams: {lora.rank: {type: int, low: 1, high: 4}}", "unknown key"),
        (
            "pruner: {name: median, n_warmup: 3}\nparams: {lora.rank: {type: int, low: 1, high: 4}}",
            "pruner median: .*n_warmup",
        ),
    ],
)
def test_bad_specs_fail_before_any_trial(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        prepare(_spec(tmp_path, body), [])


@pytest.mark.slow
def test_sweep_runs_trials_as_runs_and_continues_to_budget(tmp_path):
    root = tmp_path / "runs"
    path = _spec(tmp_path, BASIC)
    study, spec = run_sweep(path, [*FAST, f"run_root={root}"], n_trials=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    store = RunStore(root)
    for t in trials:  # a trial maps to its run and back
        run = store.run(t.user_attrs["config_hash"])
        assert run.is_complete() and run.config().sweep == "basic"
        assert t.values[0] == run.metrics()["eval/loss"]
    study, _ = run_sweep(path, [*FAST, f"run_root={root}"], workers=0)  # queue up to the spec's 4, run none
    assert [t.state for t in study.get_trials()][3:] == [TrialState.WAITING]
    study, _ = run_sweep(path, [*FAST, f"run_root={root}"])  # rerun: continue up to the budget
    assert len(study.get_trials()) == 4 and all(t.state == TrialState.COMPLETE for t in study.get_trials())
    rows = leaderboard(study, spec)
    assert rows[0]["eval/loss"] == min(t.values[0] for t in study.get_trials())
    index = write_html_report(study, spec, tmp_path / "report")
    assert {"index.html", "plotly.min.js"} == {p.name for p in index.parent.iterdir()}
    assert "plot-parallel" in index.read_text() and "plot-rank" in index.read_text()


@pytest.mark.slow
def test_failures_end_the_trial_not_the_sweep(tmp_path):
    """Failures only a run can find (too few examples for a batch, a diverging loss) end their trial."""
    body = BASIC.replace("n_trials: 4", "n_trials: 6")
    body += "  data.max_train_examples: {type: categorical, choices: [32, 1]}\n"
    body += "  optim.lr: {type: categorical, choices: [1.0e-3, 1.0e+9]}\n"
    study, _ = run_sweep(_spec(tmp_path, body), [*FAST, f"run_root={tmp_path / 'runs'}", "optim.max_grad_norm=null"])
    trials = study.get_trials()
    assert len(trials) == 6  # the sweep went on to its budget
    for t in trials:  # each failing trial is FAIL with its own reason; every other trial completed
        if t.params["data.max_train_examples"] == 1:
            assert t.state == TrialState.FAIL and "fewer than one batch" in t.user_attrs["fail_reason"], t
        elif t.params["optim.lr"] > 1:  # lr 1e9 without clipping: FAIL once the loss is no longer finite
            assert t.state == TrialState.COMPLETE or "non-finite" in t.user_attrs["fail_reason"], t
        else:
            assert t.state == TrialState.COMPLETE, t
    assert any(t.state == TrialState.FAIL for t in trials) and any(t.state == TrialState.COMPLETE for t in trials)


def test_a_choice_that_cannot_train_is_refused_before_the_sweep(tmp_path):
    """What the config alone shows (rank 4096 on a 384-wide model) is judged for every choice up front."""
    body = BASIC.replace("choices: [2, 4]", "choices: [2, 4096]")
    with pytest.raises(ValueError, match=r"sweep param lora.rank, value 4096: .*exceeds min\(d_in, d_out\) = 384"):
        run_sweep(_spec(tmp_path, body), [*FAST, f"run_root={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_pruner_stops_trials_from_reported_eval_values(tmp_path):
    body = BASIC.replace("pruner: {name: none}", "pruner: {name: threshold, upper: 0.0}")
    study, _ = run_sweep(_spec(tmp_path, body), [*FAST, f"run_root={tmp_path / 'runs'}"], n_trials=2)
    for t in study.get_trials():
        assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]


def test_unreachable_storage_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="cannot open study storage"):
        run_sweep(
            _spec(tmp_path, BASIC),
            [*FAST, f"run_root={tmp_path / 'runs'}"],
            storage="postgresql://lorasweep@127.0.0.1:9/none",
        )
    assert not (tmp_path / "runs").exists()


def _parallel(tmp_path, storage, workers=4, n_trials=40):
    body = BASIC.replace("n_trials: 4", f"n_trials: {n_trials}")
    fast = [
        *FAST,
        "trainer.max_steps=1",
        "data.max_train_examples=8",
        "data.max_eval_examples=8",
        f"run_root={tmp_path / 'runs'}",
    ]
    study, _ = run_sweep(_spec(tmp_path, body), fast, workers=workers, storage=storage)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(trials) == n_trials and len(set(numbers)) == n_trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    assert all(t.values is not None for t in trials)


@pytest.mark.slow
def test_four_workers_sqlite(tmp_path):
    _parallel(tmp_path, f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
def test_four_workers_journal_file(tmp_path):
    _parallel(tmp_path, f"journal://{tmp_path / 'study.log'}")


POSTGRES = os.environ.get("LORASWEEP_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES, reason="set LORASWEEP_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")


def _fresh_postgres_url():
    """A clean database per test: drop every table optuna made."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    engine.dispose()
    return POSTGRES


@pytest.mark.slow
@needs_postgres
def test_four_workers_postgres(tmp_path):
    _parallel(tmp_path, _fresh_postgres_url())


@pytest.mark.slow
@needs_postgres
def test_killed_worker_trial_is_failed_and_retried(tmp_path):
    url = _fresh_postgres_url()
    env = {**os.environ, "LORASWEEP_HEARTBEAT_INTERVAL": "1", "LORASWEEP_GRACE_PERIOD": "4"}
    body = BASIC.replace("n_trials: 4", "n_trials: 3")
    fast = [
        *FAST,
        "trainer.max_steps=16",
        "trainer.eval_every=2",
        "trainer.log_every=1",
        f"run_root={tmp_path / 'runs'}",
    ]
    spec_path = _spec(tmp_path, body)
    spec, _ = prepare(spec_path, fast)
    from lorasweep.sweep.study import create_study

    create_study(spec, url, fast)
    victim = subprocess.Popen(
        [sys.executable, "-m", "lorasweep.cli", "worker", "--study", "basic", "--storage", url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    study = optuna.load_study(study_name="basic", storage=url)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it once its first trial has reported an eval value
        running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and t.intermediate_values]
        if running:
            break
        time.sleep(0.5)
    assert running, "the worker never reported an intermediate value"
    victim.kill()
    victim.wait()
    time.sleep(5)  # past the grace period: the next worker fails the stale trial and re-queues it
    fast_env = {**env}
    done = subprocess.run(
        [sys.executable, "-m", "lorasweep.cli", "worker", "--study", "basic", "--storage", url],
        env={**fast_env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 1 and failed[0].number == running[0].number
    assert len(complete) == 3
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert set(failed[0].intermediate_values) <= set(retry[0].intermediate_values)  # kept, then continued


@pytest.mark.slow
def test_worker_under_torchrun_trains_each_trial_on_two_processes(tmp_path):
    """Rank 0 talks to Optuna and broadcasts each trial's overrides; both ranks train it together."""
    from lorasweep.sweep.study import create_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    fast = [*FAST, "trainer.batch_size=8", "model.dropout=0.0", f"run_root={tmp_path / 'runs'}"]
    spec, _ = prepare(_spec(tmp_path, BASIC.replace("n_trials: 4", "n_trials: 2")), fast)
    create_study(spec, url, fast)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "lorasweep.cli",
        "worker",
        "--study",
        "basic",
        "--storage",
        url,
    ]
    done = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="basic", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = RunStore(tmp_path / "runs").run(t.user_attrs["config_hash"])
        assert run.is_complete() and '"num_processes": 2' in run.env_file.read_text()


def test_restarted_array_task_requeues_the_trial_it_left_running(tmp_path, monkeypatch):
    from lorasweep import internals
    from lorasweep.sweep.study import load_study
    from lorasweep.sweep.worker import run_worker

    url = f"journal://{tmp_path / 'study.log'}"  # no heartbeats here: only the task itself can know
    run_sweep(_spec(tmp_path, BASIC), [*FAST, f"run_root={tmp_path / 'runs'}"], workers=0, n_trials=1, storage=url)
    study, _, _ = load_study("basic", url)
    orphan = optuna.Trial(study, internals.pop_waiting_trial_id(study))  # taken, then the task was SIGKILLed
    orphan.set_user_attr("worker", "77_1")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert run_worker("basic", url) == 1
    first, retry = study.get_trials()
    assert (
        first.state == TrialState.FAIL
        and "left running by worker 77_1, which is gone" in first.user_attrs["fail_reason"]
    )
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == first.number
