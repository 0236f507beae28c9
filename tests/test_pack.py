"""Packed trials (lorasweep/pack/): K trials on one frozen base equal the same configs trained alone, end as
ordinary runs, refill their places at once, fail alone, and stop and resume per trial on a signal."""

import json
import math
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from lorasweep.cli.main import main
from lorasweep.config.schema import compose, config_hash
from lorasweep.errors import UserError
from lorasweep.pack.scheduler import Pack
from lorasweep.pack.size import parse_pack
from lorasweep.runs.store import RunDir, RunStore
from lorasweep.sweep.launch import run_sweep
from lorasweep.sweep.worker import run_worker
from lorasweep.training.lifecycle import train
from lorasweep.training.resources import Resources

SMALL = [
    "tracking=none",
    "trainer.progress=false",
    "trainer.predict_memory=false",
    "trainer.batch_size=8",
    "trainer.eval_every=3",
    "trainer.eval_at_start=true",
    "data.max_train_examples=64",
    "data.max_eval_examples=16",
    "data.max_length=24",
    "optim.warmup_steps=0",
    "optim.lr=3e-3",
]
# What a sweep varies, dropout on (the base's and LoRA's): each trial's masks must be its own.
VARIANTS = [
    ["lora.rank=2", "trainer.max_steps=6"],
    ["lora.rank=8", "lora.targets=all", "lora.dropout=0.1", "trainer.max_steps=6"],
    ["lora.rank=4", "seed=3", "optim.lr=1e-3", "optim.schedule=cosine", "trainer.max_steps=5"],
]


def _close(a, b, rel=1e-4) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)
    return a == b


def _assert_same_history(packed: list[dict], solo: list[dict]) -> None:
    assert len(packed) == len(solo)
    for p, s in zip(packed, solo):
        assert set(p) == set(s)
        for key in p:
            if key.startswith("perf/"):
                continue  # timings
            assert _close(p[key], s[key]), (key, p[key], s[key])


def _train_pack(cfgs, resources) -> dict:
    pack, results = resources.pack, {}
    for i, cfg in enumerate(cfgs):
        pack.start(str(i), train, cfg, resources=resources)
    pack.run(lambda slot: results.__setitem__(slot.label, slot.error or slot.result))
    return results, pack


def test_packed_trials_equal_their_solo_runs(tmp_path):
    cfgs = [compose([*SMALL, f"run_root={tmp_path / 'packed'}", *v]) for v in VARIANTS]
    results, pack = _train_pack(cfgs, Resources(pack=Pack()))
    assert pack.batched_calls > 0  # the base matmuls really were shared
    hashes = [config_hash(c) for c in cfgs]
    for cfg, digest in zip(cfgs, hashes):
        packed = results[digest]
        assert not isinstance(packed, BaseException), packed
        assert packed["status"] == "completed" and packed["config_hash"] == digest
        assert packed["packed_with"] == sorted(set(hashes) - {digest})
        assert "memory/pack_peak_bytes" in packed and "memory/peak_bytes" not in packed
        assert "memory/tensor_peak_bytes" not in packed  # a pack's tensors are every trial's at once
        solo_dir = tmp_path / "solo" / digest
        solo = train(cfg, resources=Resources(), run_dir=solo_dir)
        for key, value in solo.items():
            if key.startswith(("perf/", "memory/peak", "memory/tensor_peak")) or key == "status":
                continue
            assert _close(packed[key], value), (key, packed[key], value)
        _assert_same_history(RunStore(cfg.run_root).run(digest).history(), RunDir(solo_dir).history())
        # an ordinary run: complete, with its adapter, reused by hash
        assert train(cfg)["status"] == "reused"
    # two runs, two different figures: the pack did not blend the trials
    assert len({results[h]["eval/loss"] for h in hashes}) == 3


def test_each_packed_trial_is_its_own_wandb_run(tmp_path):
    """Offline W&B files read back: two packed trials, two runs (open at the same time), each with its own history
    and summary."""
    from wandb_reader import find_runs, read_run

    overrides = [*SMALL, "tracking=wandb", "tracking.mode=offline", "trainer.log_every=1", "trainer.max_steps=3"]
    cfgs = [compose([*overrides, f"run_root={tmp_path}", f"lora.rank={r}"]) for r in (2, 4)]
    results, _ = _train_pack(cfgs, Resources(pack=Pack()))
    runs = {run.run_id: run for run in map(read_run, find_runs(tmp_path))}
    assert set(runs) == {config_hash(c) for c in cfgs}
    for digest, run in runs.items():
        assert run.exit_code == 0
        assert [h["train/loss"] for h in run.history if "train/loss" in h] == [
            r["train/loss"] for r in RunStore(tmp_path).run(digest).history() if "train/loss" in r
        ]
        assert math.isclose(run.summary["eval/loss"], results[digest]["eval/loss"])
    losses = [tuple(h.get("train/loss") for h in run.history) for run in runs.values()]
    assert losses[0] != losses[1]


def test_a_trial_that_fails_leaves_the_pack_alone(tmp_path):
    good = compose([*SMALL, f"run_root={tmp_path}", "trainer.max_steps=4"])
    bad = compose([*SMALL, f"run_root={tmp_path}", "trainer.max_steps=4", "optim.lr=1e30"])
    results, _ = _train_pack([bad, good], Resources(pack=Pack()))
    assert isinstance(results[config_hash(bad)], FloatingPointError)
    assert results[config_hash(good)]["status"] == "completed"
    solo = train(good, resources=Resources(), run_dir=tmp_path / "solo")
    assert _close(results[config_hash(good)]["eval/loss"], solo["eval/loss"])
    assert (
        json.loads((RunStore(tmp_path).run(config_hash(bad)).path / "metrics.json").read_text())["status"] == "failed"
    )


def _spec(tmp_path, body: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


REFILL = """
study: refill
sampler: {name: grid}
objectives: [{metric: eval/loss, direction: minimize}]
# every report from step 4 on is pruned: the 10-step trials stop at step 4, the 2-step ones complete
pruner: {name: threshold, upper: 0.0, n_warmup_steps: 4}
params:
  lora.rank: {type: categorical, choices: [2, 4]}
  trainer.max_steps: {type: categorical, choices: [10, 2]}
"""


def test_a_pack_refills_each_place_at_once(tmp_path):
    overrides = [*SMALL, "trainer.eval_every=1", "trainer.eval_at_start=false", f"run_root={tmp_path / 'runs'}"]
    study, _ = run_sweep(_spec(tmp_path, REFILL), overrides, pack=2)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    steps = [t.params["trainer.max_steps"] for t in trials]
    states = [t.state for t in trials]
    assert steps == [10, 2, 10, 2]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    t0, t1, t2, t3 = trials
    # trial 2 took trial 1's place (completed) while trial 0 still ran; trial 3 took trial 0's (pruned) while
    # trial 2 still ran: the pack never waited to empty
    assert t1.datetime_complete <= t2.datetime_start < t0.datetime_complete
    assert t0.datetime_complete <= t3.datetime_start < t2.datetime_complete
    assert all(t.user_attrs["pack"] == 2 for t in trials)


GRID = """
study: grid
sampler: {name: grid}
pruner: {name: none}
objectives: [{metric: eval/loss, direction: minimize}]
params:
  lora.rank: {type: categorical, choices: [2, 4]}
  lora.targets: {type: categorical, choices: [qv, all]}
"""


class _StopAfter:
    """should_stop that turns true after `calls` questions (the loop asks once per step per trial)."""

    def __init__(self, calls: int):
        self.calls, self.received = calls, None

    def __call__(self) -> bool:
        self.calls -= 1
        if self.calls < 0:
            self.received = "SIGTERM"
        return self.calls < 0


@pytest.mark.slow
def test_a_signal_checkpoints_each_trial_and_each_resumes_alone(tmp_path):
    root = tmp_path / "runs"
    overrides = [*SMALL, "trainer.max_steps=6", "trainer.eval_every=2", f"run_root={root}"]
    spec = _spec(tmp_path, GRID)
    study, sweep_spec = run_sweep(spec, overrides, workers=0, pack=3)
    url = f"sqlite:///{root}/optuna.db"
    stop = _StopAfter(calls=7)  # three trials ask about twice each: all are stopped mid-run
    run_worker(sweep_spec.study, url, should_stop=stop, pack=3)
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(interrupted) == 3 and all("re-queued" in t.user_attrs["fail_reason"] for t in interrupted)
    for t in interrupted:
        metrics = json.loads((RunStore(root).run(t.user_attrs["config_hash"]).path / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and 0 < metrics["step"] < 6
    run_worker(sweep_spec.study, url, pack=1)  # each resumes alone (the fourth trains from the start)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        cfg = compose(t.user_attrs["overrides"])
        solo = train(cfg, resources=Resources(), run_dir=tmp_path / "solo" / t.user_attrs["config_hash"])
        assert _close(t.values[0], solo["eval/loss"]), (t.number, t.values[0], solo["eval/loss"])


@pytest.mark.parametrize("value", [0, -1, "0", "x", "2.5", True])
def test_a_bad_pack_is_one_line(value):
    with pytest.raises(UserError, match="must be a positive integer or auto"):
        parse_pack(value)
    assert parse_pack("auto") == "auto" and parse_pack(4) == 4 and parse_pack("3") == 3


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lorasweep.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_bad_packs_from_the_command_line(tmp_path, monkeypatch, capsys):
    """Through the CLI's own entry point, in this process (the exit codes and stderr a shell sees; a subprocess
    each would only add its startup)."""
    monkeypatch.chdir(tmp_path)

    def cli(*args):
        code = main(list(args))
        return code, capsys.readouterr().err

    spec = _spec(tmp_path, GRID)
    for args in (
        ["sweep", spec, "--pack", "0"],
        ["worker", "--study", "s", "--storage", "sqlite:///x.db", "--pack", "x"],
    ):
        code, err = cli(*args)
        assert code == 2, err
        assert "--pack must be a positive integer or auto" in err and len(err.strip().splitlines()) == 1
    mixed = tmp_path / "mixed.yaml"  # an incompatible forced pack: accelerate holds one precision per process
    mixed.write_text(GRID + "  trainer.mixed_precision: {type: categorical, choices: ['no', bf16]}\n")
    code, err = cli("sweep", str(mixed), "--pack", "2", "tracking=none")
    assert code == 2 and "searches trainer.mixed_precision" in err, err
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(GRID + "pack: many\n")
    code, err = cli("sweep", str(bad_spec), "tracking=none")
    assert code == 2 and "pack must be a positive integer or auto" in err
    # eight trials of ~144 MiB each cannot fit 600 MiB: said before anything is queued
    code, err = cli("sweep", spec, "--pack", "8", "--memory-cap", "600MiB", "tracking=none")
    assert code == 2 and "over the memory cap 600.0 MiB; at most 3 fit" in err, err
    assert not (tmp_path / "runs" / "optuna.db").exists()  # no study (the estimate's data cache may be there)


@pytest.mark.slow
def test_sweep_pack_4_from_the_command_line_reproduces_solo(tmp_path):
    """The issue's done-when: a rank x targets grid with --pack 4 trains every point once; the packed runs
    reproduce alone (lorasweep reproduce compares within 1e-4)."""
    spec = _spec(tmp_path, GRID)
    args = ["sweep", spec, "--pack", "4", *SMALL, "trainer.max_steps=6"]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "packing up to 4 trials" in proc.stdout
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    points = {(t.params["lora.rank"], t.params["lora.targets"]) for t in trials}
    assert points == {(2, "qv"), (2, "all"), (4, "qv"), (4, "all")}
    for t in trials:
        digest = t.user_attrs["config_hash"]
        metrics = RunStore(tmp_path / "runs").run(digest).metrics()
        assert len(metrics["packed_with"]) == 3
        proc = _cli("reproduce", digest, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "within relative tolerance 0.0001" in proc.stdout


def test_pack_auto_sizes_from_the_memory_cap(tmp_path):
    """auto: as many trials as fit (base once + K x the largest trial's own bytes), at most MOST_AUTO."""
    from lorasweep.sweep.pack_plan import MOST_AUTO, plan_pack
    from lorasweep.sweep.spec import load_spec

    spec = load_spec(_spec(tmp_path, GRID))
    overrides = ["tracking=none", f"run_root={tmp_path / 'runs'}"]
    assert plan_pack(spec, overrides, "auto", cap="600MiB") == 3  # (600 - 87) // 144
    assert plan_pack(spec, overrides, "auto", cap="100GiB") == MOST_AUTO
    assert plan_pack(spec, overrides, "auto", cap="100MiB") == 1  # not even one fits: the cap skips trials
    assert plan_pack(spec, overrides, 3, cap="600MiB") == 3
    with pytest.raises(UserError, match="at most 3 fit"):
        plan_pack(spec, overrides, 4, cap="600MiB")


@pytest.mark.slow
def test_worker_under_torchrun_holds_the_same_pack_on_every_rank(tmp_path):
    """Two processes (gloo), pack 2, three trials: rank 0 pops the trials and tells rank 1 how many it started at
    each refill; each trial trains on both ranks (DDP) and equals its one-process solo run (no dropout: masks are
    drawn per process)."""
    import os

    from lorasweep.sweep.launch import prepare
    from lorasweep.sweep.study import create_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    overrides = [*SMALL, "trainer.max_steps=4", "model.dropout=0.0", f"run_root={tmp_path / 'runs'}"]
    spec, _ = prepare(_spec(tmp_path, GRID.replace("choices: [qv, all]", "choices: [qv]") + "n_trials: 2\n"), overrides)
    spec.n_trials = 2
    create_study(spec, url, overrides)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    command += ["-m", "lorasweep.cli", "worker", "--study", "grid", "--storage", url, "--pack", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "packing up to 2 trials" in done.stdout
    trials = optuna.load_study(study_name="grid", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = RunStore(tmp_path / "runs").run(t.user_attrs["config_hash"])
        assert '"num_processes": 2' in run.env_file.read_text()
        assert run.metrics()["packed_with"]
        solo = train(compose(t.user_attrs["overrides"]), resources=Resources(), run_dir=tmp_path / "solo" / run.hash)
        assert math.isclose(t.value, solo["eval/loss"], rel_tol=1e-4), (t.value, solo["eval/loss"])
