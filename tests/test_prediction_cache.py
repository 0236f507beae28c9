"""Memory predictions per shape (estimate/shape_cache.py): a key left out of the shape must not change the prediction;
trials of one shape share one trace, each with its own config hash."""

from lorasweep.config.schema import compose, config_hash
from lorasweep.estimate import estimate_config
from lorasweep.estimate import shape_cache as prediction_cache
from lorasweep.estimate.fit import cached_estimate

BASE = [
    "model=tiny_llama",
    "data=synth_sft",
    "lora=all",
    "tracking=none",
    "trainer=smoke",
    "trainer.grad_accum=2",
    "data.max_train_examples=32",
    "data.max_eval_examples=8",
    "trainer.eval_batch_size=8",
]
# One changed value for each key the shape leaves out (config.NON_SEMANTIC_KEYS aside: they compute nothing).
SHAPE_FREE = {
    "seed": 7,
    "optim.lr": 3e-3,
    "optim.schedule": "cosine",
    "optim.warmup_steps": 0,
    "lora.alpha": 3.0,
    "trainer.max_steps": 7,
    "trainer.epochs": 3,
    "trainer.eval_every": 2,
    "data.max_eval_examples": 5,
}


def _memory(account: dict) -> dict:
    return {k: v for k, v in account.items() if k.startswith("memory/") or k.startswith("params/")}


def test_every_shape_free_key_listed_is_tested():
    listed = set(prediction_cache.SHAPE_FREE_KEYS) - set(prediction_cache.NON_SEMANTIC_KEYS)
    assert listed == set(SHAPE_FREE)


def test_the_shape_free_keys_do_not_change_the_prediction(tmp_path):
    """All of them changed at once (one trace, not nine): the same account, to the byte."""
    base = compose([*BASE, f"run_root={tmp_path}"])
    changed = compose([*BASE, f"run_root={tmp_path}", *(f"{k}={v}" for k, v in SHAPE_FREE.items())])
    assert prediction_cache.shape_key(base, "cpu", 4, 1) == prediction_cache.shape_key(changed, "cpu", 4, 1)
    assert _memory(estimate_config(changed, "cpu")) == _memory(estimate_config(base, "cpu"))


def test_trials_of_one_shape_share_a_trace_and_keep_their_hashes(tmp_path):
    a = compose([*BASE, f"run_root={tmp_path}", "optim.lr=1e-3", "lora.alpha=4"])
    b = compose([*BASE, f"run_root={tmp_path}", "optim.lr=2e-4", "lora.alpha=32", "seed=3"])
    wider = compose([*BASE, f"run_root={tmp_path}", "lora.rank=32"])
    before = len(prediction_cache.PREDICTIONS)
    first, second = cached_estimate(a, "cpu", num_processes=1), cached_estimate(b, "cpu", num_processes=1)
    assert len(prediction_cache.PREDICTIONS) == before + 1
    assert _memory(first) == _memory(second)
    assert (first["config_hash"], second["config_hash"]) == (config_hash(a), config_hash(b))
    third = cached_estimate(wider, "cpu", num_processes=1)
    assert len(prediction_cache.PREDICTIONS) == before + 2
    assert third["memory/predicted_peak_bytes"] > first["memory/predicted_peak_bytes"]
    assert cached_estimate(a, "cpu", micro_batch=2, num_processes=1) is not None  # another micro batch: another
    assert len(prediction_cache.PREDICTIONS) == before + 3
