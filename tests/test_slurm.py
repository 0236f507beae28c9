"""Sweeps on a real SLURM (slurmctld + slurmd from Debian's packages, started by scripts/ci/start_slurm.sh):
job arrays of workers, a requeue in the middle of a trial, a multi-process trial through the template launcher.

Run with `make test-slurm` (LORASWEEP_TEST_SLURM=1: a missing SLURM is then a failure, not a skip)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from wandb_reader import find_runs, read_run

from lorasweep.config.schema import compose
from lorasweep.runs.metrics import deterministic_metrics
from lorasweep.runs.store import RunStore
from lorasweep.sweep.slurm_array import submit_sweep
from lorasweep.training.lifecycle import train

REQUIRED = os.environ.get("LORASWEEP_TEST_SLURM") == "1"


def _slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and bool(done.stdout.strip())


if not REQUIRED and not _slurm_up():
    pytest.skip("no SLURM here (scripts/ci/start_slurm.sh starts one; make test-slurm)", allow_module_level=True)

pytestmark = pytest.mark.slurm

SPEC = """
study: {name}
n_trials: {n}
objectives: [{{metric: eval/loss, direction: minimize}}]
sampler: {{name: random, seed: 3}}
pruner: {{name: none}}
params:
  lora.rank: {{type: categorical, choices: [2, 4, 8]}}
  lora.alpha: {{type: categorical, choices: [1, 2], per_rank: true}}
  lora.targets: {{type: categorical, choices: [qv, all]}}
"""
CLUSTER = [
    "cluster=slurm",
    "cluster.partition=null",
    "cluster.time=00:20:00",
    "cluster.gpus_per_node=0",
    "cluster.cpus_per_task=1",
]
SMALL = [
    "trainer=smoke",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=24",
    "model.dropout=0.0",
]


def _submit(tmp_path, name, n_trials, overrides, array, pack=None):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name=name, n=n_trials)))
    storage = f"journal://{tmp_path / name}.log"
    result = submit_sweep(
        str(spec), [*overrides, f"run_root={tmp_path / 'runs'}"], array=array, storage=storage, pack=pack
    )
    return result["job_id"], optuna.load_study(study_name=name, storage=_storage(storage))


def _storage(url):
    from lorasweep.sweep.storage import open_storage

    return open_storage(url)


def _wait_for_job(job_id, tmp_path, timeout=420):
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True)
        if not queue.stdout.strip():
            return
        time.sleep(2)
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "slurm-logs").glob("*.out"))
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} still queued after {timeout}s:\n{logs}")


def _logs(tmp_path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp_path / "slurm-logs").glob("*.out")))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # slurm-logs/ and the rendered script land here


def test_array_of_two_workers_runs_every_trial(tmp_path):
    job_id, study = _submit(
        tmp_path,
        "array",
        4,
        [*CLUSTER, *SMALL, "trainer.max_steps=3", "trainer.eval_every=1", "tracking=wandb"],
        array=2,
    )
    _wait_for_job(job_id, tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, _logs(tmp_path)
    assert {t.user_attrs["worker"] for t in trials} <= {f"{job_id}_0", f"{job_id}_1"}
    store = RunStore(tmp_path / "runs")
    offline = [read_run(p) for p in find_runs(tmp_path / "runs")]
    for t in trials:
        run = store.run(t.user_attrs["config_hash"])
        assert run.is_complete() and run.metrics()["eval/loss"] == pytest.approx(t.value)
        assert any(r.run_id == run.hash and r.group == "array" for r in offline)
    assert (tmp_path / "slurm-logs" / "array.sbatch").is_file()
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorasweep.cli",
            "status",
            "--study",
            "array",
            "--storage",
            f"journal://{tmp_path / 'array'}.log",
        ],
        capture_output=True,
        text=True,
    )
    assert "4 complete" in status.stdout and f"SLURM jobs {job_id}" in status.stdout, status.stderr


def test_array_of_packed_workers_runs_every_trial(tmp_path):
    """--pack 2 on SLURM: the pack is stored with the study, so each array task packs its trials."""
    overrides = [*CLUSTER, *SMALL, "trainer.max_steps=4", "trainer.eval_every=2", "tracking=none"]
    job_id, study = _submit(tmp_path, "packed", 4, overrides, array=2, pack=2)
    _wait_for_job(job_id, tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, _logs(tmp_path)
    assert "packing up to 2 trials" in _logs(tmp_path)
    store = RunStore(tmp_path / "runs")
    records = [store.run(t.user_attrs["config_hash"]).metrics() for t in trials]
    assert all("packed_with" in r and "memory/pack_peak_bytes" in r for r in records)
    assert any(r["packed_with"] for r in records)  # trials of one task shared base matmuls


def test_requeued_task_resumes_its_trial_from_the_checkpoint(tmp_path):
    overrides = [*CLUSTER, *SMALL, "trainer.max_steps=60", "trainer.eval_every=2", "tracking=wandb"]
    job_id, study = _submit(tmp_path, "requeue", 3, overrides, array=2)
    deadline, victim = time.time() + 300, None
    while victim is None and time.time() < deadline:  # requeue a worker once its trial has reported a few evals
        for t in study.get_trials():
            if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3:
                victim = t
                break
        time.sleep(0.5)
    assert victim is not None, _logs(tmp_path)
    subprocess.run(["scontrol", "requeue", victim.user_attrs["worker"]], check=True)
    _wait_for_job(job_id, tmp_path)

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 3, _logs(tmp_path)
    assert [t.number for t in failed] == [victim.number], [t.user_attrs for t in failed]
    assert "interrupted" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].params == victim.params  # retried once, same parameters, not duplicated
    assert retry[0].user_attrs["config_hash"] == victim.user_attrs["config_hash"]

    run = RunStore(tmp_path / "runs").run(victim.user_attrs["config_hash"])
    events = [r for r in run.history() if r.get("event") == "resume"]
    assert len(events) == 1 and 0 < events[0]["step"] < 60, run.history()
    assert "received SIGTERM" in _logs(tmp_path)

    # The resumed run's results equal an uninterrupted run of the same config, bitwise (CPU).
    reference = train(compose([*victim.user_attrs["overrides"], f"run_root={tmp_path / 'reference'}", "tracking=none"]))
    assert reference["config_hash"] == run.hash
    assert deterministic_metrics(run.metrics()) == deterministic_metrics(reference)


def test_multi_process_trial_through_the_template_launcher(tmp_path):
    overrides = [
        *CLUSTER[:-1],
        "cluster.cpus_per_task=2",
        "cluster.processes_per_node=2",
        *SMALL,
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "tracking=none",
    ]
    job_id, study = _submit(tmp_path, "multi", 1, overrides, array=1)
    _wait_for_job(job_id, tmp_path)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE, _logs(tmp_path)
    env = json.loads((tmp_path / "runs" / trial.user_attrs["config_hash"] / "env.json").read_text())
    assert env["num_processes"] == 2
    assert "accelerate.commands.launch --multi_gpu" in Path(tmp_path / "slurm-logs" / "multi.sbatch").read_text()


def test_time_limit_signal_checkpoints_requeues_and_the_same_task_resumes(tmp_path):
    overrides = [*CLUSTER, *SMALL, "trainer.max_steps=60", "trainer.eval_every=2", "tracking=none"]
    job_id, study = _submit(tmp_path, "timelimit", 2, overrides, array=1)  # one worker: it must resume itself
    deadline, victim = time.time() + 300, None
    while victim is None and time.time() < deadline:
        victim = next(
            (t for t in study.get_trials() if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3), None
        )
        time.sleep(0.5)
    assert victim is not None, _logs(tmp_path)
    # What --signal=B:USR1@120 does before the time limit, sent now: USR1 to the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", victim.user_attrs["worker"]], check=True)
    _wait_for_job(job_id, tmp_path)
    logs = _logs(tmp_path)
    assert "restart 1" in logs and "received SIGTERM" in logs, logs
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2, logs
    run = RunStore(tmp_path / "runs").run(victim.user_attrs["config_hash"])
    assert [r["event"] for r in run.history() if "event" in r] == ["resume"] and run.is_complete()
