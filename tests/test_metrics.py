"""The metric registry is the one list: every metric a run records is in it, with a meaning and a unit."""

from lorasweep.config.schema import compose
from lorasweep.runs.metrics import BY_NAME, deterministic_metrics, objective_names
from lorasweep.training.lifecycle import train


def test_every_recorded_metric_is_registered_and_objectives_follow_the_task(tmp_path):
    metrics = train(
        compose(
            [
                "trainer=smoke",
                "data.max_train_examples=32",
                "data.max_eval_examples=16",
                "data.max_length=24",
                "tracking=none",
                "trainer.eval_at_start=true",
                f"run_root={tmp_path}",
            ]
        )
    )
    numeric = {k for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
    assert numeric <= set(BY_NAME), numeric - set(BY_NAME)
    assert set(deterministic_metrics(metrics)) == {k for k in numeric if BY_NAME[k].deterministic}
    assert "memory/peak_bytes" not in deterministic_metrics(metrics)
    assert "eval/accuracy" in objective_names("classification") and "eval/accuracy" not in objective_names("causal_lm")
    assert "eval/token_accuracy" in objective_names("causal_lm") and "train/lr" not in objective_names("causal_lm")
    assert all(m.meaning for m in BY_NAME.values())
