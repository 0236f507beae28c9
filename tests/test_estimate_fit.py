"""What runs and sweeps do with the prediction: the run's own step against it, micro_batch=auto, the memory cap
in sweeps (skipped and explained, infeasible to the sampler), `sweep --estimate`."""

import html
import textwrap

import pytest
from optuna.trial import TrialState

from lorasweep.config.schema import compose, config_hash
from lorasweep.errors import UserError
from lorasweep.estimate import estimate_config
from lorasweep.estimate.fit import OVER_CAP_ATTR, constraint, plan_micro_batch
from lorasweep.runs.store import RunStore
from lorasweep.sweep.memory_estimate import estimate_sweep, format_sweep_estimate

LLAMA = [
    "model=tiny_llama",
    "data=synth_sft",
    "lora=all",
    "tracking=none",
    "trainer=smoke",
    "data.max_train_examples=64",
    "data.max_eval_examples=8",
    "trainer.eval_batch_size=8",
]


def _peak(cfg, micro):
    return estimate_config(cfg, "cpu", micro_batch=micro)["memory/predicted_peak_bytes"]


def test_the_runs_own_second_step_holds_what_was_predicted(tmp_path, monkeypatch):
    """The real Loop.step (collator, accelerate, scheduler) under a live-storage counter, against the prediction
    that the run itself recorded for its config."""
    from lorasweep.estimate.live import LiveBytes
    from lorasweep.estimate.step import model_tensors
    from lorasweep.training import loop as loop_module
    from lorasweep.training.lifecycle import train

    cfg = compose(
        [
            *LLAMA,
            "model.quantization=nf4",
            "trainer.max_steps=2",
            "trainer.eval_every=0",
            "data.max_length=5",
            "data.style=text",
            "data.text_field=instruction",
            f"run_root={tmp_path}",
        ]
    )  # max_length 5 cuts every example: 8 x 5, every token a target (what the estimate assumes: step/lm_loss.py)
    peaks, real_step = [], loop_module.Loop.step

    def counted_step(self, micro_batches):
        if self.position.step == 0:
            return real_step(self, micro_batches)
        counter = LiveBytes()
        states = [t for s in self.optimizer.state.values() for t in s.values() if hasattr(t, "untyped_storage")]
        counter.track([*model_tensors(self.model), *states])
        with counter:
            real_step(self, micro_batches)
        peaks.append(counter.peak)

    monkeypatch.setattr(loop_module.Loop, "step", counted_step)
    metrics = train(cfg)
    predicted = metrics["memory/predicted_peak_bytes"]
    assert predicted == estimate_config(cfg, "cpu")["memory/predicted_peak_bytes"]
    assert abs(predicted / peaks[0] - 1) <= 0.05, (predicted, peaks)


def _auto(tmp_path):
    base = [*LLAMA, "trainer.batch_size=8", "trainer.max_steps=2", "trainer.eval_batch_size=2", f"run_root={tmp_path}"]
    cfg = compose(base)
    cap = (_peak(cfg, 4) + _peak(cfg, 8)) // 2
    return base, cfg, cap, compose([*base, "trainer.micro_batch=auto", f"cluster.memory_cap={cap}"])


def test_micro_batch_auto_picks_the_largest_divisor_that_fits_and_keeps_the_hash(tmp_path):
    _, cfg, cap, auto = _auto(tmp_path)
    assert config_hash(auto) == config_hash(cfg)  # the global batch, and so the run, are the same
    micro, figures = plan_micro_batch(auto, "cpu")
    assert micro == 4 and figures["memory/predicted_peak_bytes"] <= cap < _peak(cfg, 8)
    assert plan_micro_batch(compose([*LLAMA, "trainer.batch_size=8", "trainer.micro_batch=2"]), "cpu")[0] == 2


@pytest.mark.slow
def test_a_run_with_micro_batch_auto_records_its_choice_and_trains_the_same_batch(tmp_path):
    from lorasweep.training.lifecycle import train

    base, cfg, cap, auto = _auto(tmp_path)
    metrics = train(auto)
    assert metrics["trainer/micro_batch"] == 4 and metrics["memory/predicted_peak_bytes"] <= cap
    assert RunStore(tmp_path).run(config_hash(cfg)).is_complete()
    plain = train(compose([*base, f"run_root={tmp_path / 'plain'}"]))  # the same global batch in one pass
    assert metrics["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-4)


def test_micro_batch_that_fits_nothing_or_does_not_divide_is_one_line():
    cfg = compose([*LLAMA, "trainer.micro_batch=auto", "cluster.memory_cap=1MiB"])
    with pytest.raises(UserError, match="nothing fits in 1.0 MiB, not even micro batch 1") as info:
        plan_micro_batch(cfg, "cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="trainer.micro_batch must be auto, null or a divisor"):
        plan_micro_batch(compose([*LLAMA, "trainer.micro_batch=3"]), "cpu")
    with pytest.raises(UserError, match="cluster.memory_cap: cannot read 'lots'"):
        plan_micro_batch(compose([*LLAMA, "trainer.micro_batch=auto", "cluster.memory_cap=lots"]), "cpu")


def _grid_spec(tmp_path, cap):
    path = tmp_path / "cap.yaml"
    path.write_text(
        textwrap.dedent(f"""
        study: capped
        sampler: {{name: grid}}
        pruner: {{name: none}}
        memory_cap: {cap}
        params:
          trainer.batch_size: {{type: categorical, choices: [2, 16]}}
    """)
    )
    return str(path)


@pytest.mark.slow
def test_a_sweep_with_a_cap_skips_and_explains_what_does_not_fit(tmp_path):
    from lorasweep.sweep.launch import run_sweep

    overrides = [*LLAMA, "trainer.max_steps=2", f"run_root={tmp_path / 'runs'}"]
    small, big = (_peak(compose([*overrides, f"trainer.batch_size={b}"]), b) for b in (2, 16))
    cap = (small + big) // 2
    rows = estimate_sweep(
        __import__("lorasweep.sweep.spec", fromlist=["x"]).load_spec(_grid_spec(tmp_path, cap)), overrides, device="cpu"
    )
    assert [r["over_cap"] is not None for r in rows] == [False, True]
    table = format_sweep_estimate(rows)
    assert "OVER: predicted" in table and "2 points, 1 over the cap" in table

    study, _ = run_sweep(_grid_spec(tmp_path, cap), overrides)
    trials = {t.params["trainer.batch_size"]: t for t in study.get_trials()}
    assert trials[2].state == TrialState.COMPLETE and trials[2].user_attrs[OVER_CAP_ATTR] < 0
    skipped = trials[16]
    assert skipped.state == TrialState.PRUNED and skipped.user_attrs["status"] == "over_memory_cap"
    assert skipped.user_attrs["skip_reason"].startswith("predicted ") and "> cap" in skipped.user_attrs["skip_reason"]
    assert constraint(skipped)[0] > 0 >= constraint(trials[2])[0]
    assert not RunStore(tmp_path / "runs").run(skipped.user_attrs["config_hash"]).path.exists()  # never trained

    from lorasweep.cli.main import main  # the reason where a user reads the sweep: status and the report

    assert main(["status", "--study", "capped", "--run-root", str(tmp_path / "runs")]) == 0
    assert main(["report", "--study", "capped", "--run-root", str(tmp_path / "runs"), "--wandb", "none"]) == 0
    page = (tmp_path / "runs" / "reports" / "capped" / "index.html").read_text()
    assert html.escape(f"not trained: {skipped.user_attrs['skip_reason']}") in page


def test_samplers_that_take_constraints_learn_the_cap():
    from lorasweep.sweep.samplers import make_sampler
    from lorasweep.sweep.spec import parse_spec

    for name in ("tpe", "nsga2"):
        spec = parse_spec(
            {"sampler": {"name": name}, "params": {"lora.rank": {"type": "int", "low": 1, "high": 8}}}, "s"
        )
        assert make_sampler(spec)._constraints_func is constraint


def test_spec_memory_cap_is_checked_and_the_command_line_wins():
    from lorasweep.sweep.spec import parse_spec

    spec = parse_spec({"memory_cap": "80GiB", "params": {"lora.rank": {"type": "int", "low": 1, "high": 8}}}, "s")
    assert spec.fixed[0] == "cluster.memory_cap=80GiB"  # first: --memory-cap (cluster.memory_cap=...) comes later
    with pytest.raises(UserError, match="memory_cap: cannot read"):
        parse_spec({"memory_cap": "big", "params": {"lora.rank": {"type": "int", "low": 1, "high": 8}}}, "s")


def test_predict_memory_false_skips_the_per_run_prediction_and_keeps_the_hash(tmp_path):
    """The per-run prediction is advice: trainer.predict_memory=false leaves it out (and is not hashed)."""
    from lorasweep.training.lifecycle import train

    small = [
        "trainer=smoke",
        "trainer.max_steps=1",
        "tracking=none",
        "data.max_train_examples=16",
        "data.max_eval_examples=8",
        f"run_root={tmp_path}",
    ]
    with_prediction = train(compose(small))
    without = compose([*small, "trainer.predict_memory=false"])
    assert config_hash(without) == with_prediction["config_hash"]
    assert with_prediction["memory/predicted_peak_bytes"] > 0
    assert "memory/predicted_peak_bytes" not in train(without, force=True)
