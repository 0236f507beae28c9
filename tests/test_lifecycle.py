"""The run lifecycle off the demo path: one process per run directory, per-run peak memory, records of runs that
did not complete, Ctrl-C, and the command line's precedence in sweeps."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lorasweep.config.schema import compose, config_hash
from lorasweep.runs.store import RunStore
from lorasweep.training.lifecycle import Callbacks, train
from lorasweep.training.resources import Resources

SMALL = [
    "trainer=smoke",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    "data.max_length=32",
    "tracking=none",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(*argv, cwd=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lorasweep.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
        **kwargs,
    )


def _hold_lock(run_dir) -> subprocess.Popen:
    """Another process holding the run's lock (until killed), started and holding when this returns."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from lorasweep.runs.lock import RunLock
        with RunLock({str(run_dir)!r}):
            print("held", flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def _records(run) -> list[tuple]:
    return [(h.get("step"), tuple(sorted(h))) for h in run.history()]


@pytest.mark.slow
def test_two_processes_on_one_hash_train_it_once(tmp_path):
    args = [
        "train",
        *SMALL,
        f"run_root={tmp_path}",
        "trainer.max_steps=12",
        "trainer.eval_every=4",
        "trainer.checkpoint_every=4",
    ]
    first, second = _cli(*args), _cli(*args)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    (run,) = RunStore(tmp_path).runs()
    records = _records(run)
    assert len(records) == len(set(records)), "a history record was written twice"
    assert [s for s, keys in records if "eval/loss" in keys] == [4, 8, 12]
    metrics = run.metrics()
    assert metrics["status"] == "completed" and metrics["step"] == 12
    printed = "".join(out for out, _ in outs)
    assert "reusing its result" in printed or "already has a complete run" in printed


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    cfg = compose([*SMALL, f"run_root={tmp_path}", "trainer.lock_timeout_s=60"])
    run_dir = tmp_path / config_hash(cfg)
    holder = _hold_lock(run_dir)
    holder.kill()  # SIGKILL: no chance to release anything
    holder.wait()
    started = time.perf_counter()
    assert train(cfg)["status"] == "completed"
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_lock_that_cannot_be_had_in_time_is_a_one_line_error(tmp_path):
    overrides = [*SMALL, f"run_root={tmp_path}", "trainer.lock_timeout_s=1"]
    run_dir = tmp_path / config_hash(compose(overrides))
    holder = _hold_lock(run_dir)
    try:
        out, err = _cli("train", *overrides).communicate(timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is locked by" in lines[0] and str(run_dir) in lines[0], err
    assert f"pid {holder.pid}" in lines[0]
    assert not run_dir.exists()  # nothing of a run written


@pytest.mark.slow
def test_peak_memory_is_the_runs_own(tmp_path):
    """One worker process (shared Resources) runs a batch-256 trial and then a batch-2 trial."""
    resources = Resources()
    common = [
        "trainer=smoke",
        "trainer.max_steps=1",
        "trainer.eval_every=0",
        "data.max_train_examples=256",
        "data.max_eval_examples=8",
        "data.max_length=64",
        "tracking=none",
        f"run_root={tmp_path}",
    ]
    big = train(compose([*common, "trainer.batch_size=256"]), resources=resources)
    small = train(compose([*common, "trainer.batch_size=2"]), resources=resources)
    assert big["memory/peak_bytes"] > small["memory/peak_bytes"] + 200 * 2**20, (big, small)


@pytest.mark.slow
def test_pruned_and_failed_runs_leave_a_record(tmp_path, capsys):
    cfg = compose([*SMALL, f"run_root={tmp_path}", "trainer.max_steps=6"])
    pruned = train(cfg, callbacks=Callbacks(on_eval=lambda step, metrics: step >= 2))
    assert pruned["status"] == "pruned"
    run = RunStore(tmp_path).run(pruned["config_hash"])
    record = run.metrics()
    assert record["status"] == "pruned" and record["step"] == 2 and not run.is_complete()
    for key in ("eval/loss", "params/trainable_fraction", "memory/optimizer_state_bytes", "memory/peak_bytes"):
        assert record[key] > 0, key

    steps = []

    def explode():
        steps.append(1)
        if len(steps) == 3:
            raise RuntimeError("disk on fire")
        return False

    failing = compose([*SMALL, f"run_root={tmp_path}", "trainer.max_steps=5"])
    with pytest.raises(RuntimeError):
        train(failing, callbacks=Callbacks(should_stop=explode))
    failing_hash = config_hash(failing)
    failed = RunStore(tmp_path).run(failing_hash).metrics()
    assert failed["status"] == "failed" and "disk on fire" in failed["error"] and failed["step"] == 3
    assert failed["params/trainable"] > 0

    from lorasweep.cli.main import main

    capsys.readouterr()
    assert main(["runs", "--run-root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    pruned_line = next(line for line in table.splitlines() if pruned["config_hash"] in line)
    failed_line = next(line for line in table.splitlines() if failing_hash in line)
    assert "pruned" in pruned_line and "failed" in failed_line
    assert f"{100 * record['params/trainable_fraction']:.3f}" in pruned_line or "0.00" in pruned_line

    # Rerunning a pruned config with `train` extends it to completion, as before.
    assert train(cfg)["status"] == "completed" and run.is_complete()


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_rerun_resumes(tmp_path):
    args = [
        "train",
        *SMALL,
        f"run_root={tmp_path}",
        "trainer.max_steps=300",
        "trainer.eval_every=0",
        "trainer.batch_size=4",
    ]
    proc = _cli(*args)
    deadline = time.time() + 300
    while time.time() < deadline and not any(len(r.history()) >= 3 for r in RunStore(tmp_path).runs()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    (run,) = RunStore(tmp_path).runs()
    record = run.metrics()
    assert record["status"] == "interrupted" and (run.checkpoints_dir / f"step_{record['step']:08d}").is_dir()
    resumed = subprocess.run(
        [sys.executable, "-m", "lorasweep.cli", *args], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run.hash} from step {record['step']}" in resumed.stdout
    assert run.is_complete() and [h["step"] for h in run.history() if "event" in h] == [record["step"]]


SPEC = """
study: s
n_trials: {n}
objectives: [{{metric: eval/loss, direction: minimize}}]
pruner: {{name: none}}
fixed: [trainer.max_steps=5]
params:
  lora.rank: {{type: categorical, choices: {ranks}}}
"""


@pytest.mark.slow
def test_command_line_beats_the_specs_fixed_overrides(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(n=1, ranks="[4]"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorasweep.cli",
            "sweep",
            str(spec),
            "--workers",
            "1",
            *SMALL,
            f"run_root={tmp_path / 'runs'}",
            "trainer.max_steps=3",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (run,) = RunStore(tmp_path / "runs").runs()
    assert run.config().trainer.max_steps == 3 and run.metrics()["step"] == 3


@pytest.mark.slow
def test_workers_drawing_the_same_config_train_it_once(tmp_path):
    from lorasweep.sweep.launch import run_sweep

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(n=3, ranks="[4]"))  # one point: every trial draws the same config
    study, _ = run_sweep(
        str(spec), [*SMALL, f"run_root={tmp_path / 'runs'}", "trainer.max_steps=8", "trainer.eval_every=4"], workers=2
    )
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.values[0] for t in trials}) == 1
    (run,) = RunStore(tmp_path / "runs").runs()
    records = _records(run)
    assert len(records) == len(set(records)) and [s for s, k in records if "eval/loss" in k] == [4, 8]


@pytest.mark.slow
def test_killed_local_worker_is_requeued_and_resumed(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(n=2, ranks="[2, 4]").replace("trainer.max_steps=5", "trainer.max_steps=200"))
    args = [
        "sweep",
        str(spec),
        "--workers",
        "1",
        *SMALL,
        f"run_root={tmp_path / 'runs'}",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=5",
        "trainer.batch_size=4",
    ]
    first = _cli(*args)
    store = RunStore(tmp_path / "runs")
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        r.checkpoints_dir.is_dir() and any(r.checkpoints_dir.glob("step_*")) for r in store.runs()
    ):
        time.sleep(0.2)
    first.kill()  # SIGKILL, as the OOM killer does: no checkpoint, no re-queue
    first.communicate()
    (killed,) = store.runs()
    out, err = _cli(*args).communicate(timeout=900)
    assert "left running by worker" in out, (out, err)
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1, states
    assert killed.is_complete() and any(h.get("event") == "resume" for h in killed.history())


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_requeues_its_trial(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(n=1, ranks="[4]").replace("trainer.max_steps=5", "trainer.max_steps=300"))
    args = [
        "sweep",
        str(spec),
        "--workers",
        "1",
        *SMALL,
        f"run_root={tmp_path / 'runs'}",
        "trainer.eval_every=0",
        "trainer.batch_size=4",
    ]
    first = _cli(*args)
    store = RunStore(tmp_path / "runs")
    deadline = time.time() + 300
    while time.time() < deadline and not any(len(r.history()) >= 3 for r in store.runs()):
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 130 and "Traceback" not in err, (out, err)
    assert "re-queued" in out and "the same command continues" in err
    import optuna

    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=url).get_trials()]
    assert states == ["FAIL", "WAITING"], states
    (run,) = store.runs()
    step = run.metrics()["step"]
    done = subprocess.run(
        [sys.executable, "-m", "lorasweep.cli", *args], capture_output=True, text=True, env=ENV, timeout=900
    )
    assert done.returncode == 0 and f"resuming {run.hash} from step {step}" in done.stdout, done.stderr
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=url).get_trials()]
    assert states == ["FAIL", "COMPLETE"] and run.is_complete()


def test_a_signal_while_waiting_for_the_lock_stops_the_wait(tmp_path):
    overrides = [*SMALL, f"run_root={tmp_path}"]
    run_dir = tmp_path / config_hash(compose(overrides))
    holder = _hold_lock(run_dir)
    try:
        started = time.perf_counter()
        result = train(compose(overrides), callbacks=Callbacks(should_stop=lambda: time.perf_counter() > started + 2))
    finally:
        holder.kill()
        holder.wait()
    assert result["status"] == "interrupted" and time.perf_counter() - started < 30
    assert not run_dir.exists()


@pytest.mark.slow
def test_force_reruns_from_step_zero_and_a_late_failure_leaves_a_record(tmp_path, monkeypatch):
    cfg = compose([*SMALL, f"run_root={tmp_path}", "trainer.checkpoint_every=2"])
    first = train(cfg)
    again = train(cfg, force=True)
    run = RunStore(tmp_path).run(first["config_hash"])
    assert not [h for h in run.history() if "event" in h]  # no resume: a rerun from step 0
    assert again["status"] == "completed" and again["eval/loss"] == first["eval/loss"]

    import lorasweep.training.lifecycle

    def full_disk(*_args, **_kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(lorasweep.training.lifecycle, "save_adapter", full_disk)
    with pytest.raises(OSError):
        train(cfg, force=True)
    record = run.metrics()
    assert record["status"] == "failed" and "No space left" in record["error"] and record["step"] == 4


def test_one_ctrl_c_after_a_term_still_checkpoints():
    from lorasweep.training.signals import StopOnSignal

    stop = StopOnSignal()
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGINT, None)  # not a second Ctrl-C: no KeyboardInterrupt
    assert stop() and stop.exit_code == 128 + signal.SIGTERM
    ctrl_c = StopOnSignal()
    ctrl_c._handle(signal.SIGINT, None)  # the first Ctrl-C only sets the flag
    assert ctrl_c() and ctrl_c.exit_code == 130
    with pytest.raises(KeyboardInterrupt):  # the second one does not wait
        ctrl_c._handle(signal.SIGINT, None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
