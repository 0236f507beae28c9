"""Memory predictions remembered per shape, in this process: what a sweep's trials share.

A prediction traces two training steps and an evaluation batch on fake tensors (about 1 s for MiniLM on 2 cores,
docs/benchmarks.md). Most of a sweep's trials differ only in what cannot change what a step holds: the learning
rate, α, the seed, the schedule, how long it trains and how often it evaluates and logs. So the key is the
resolved config without SHAPE_FREE_KEYS, plus the device, micro batch and process count the prediction is for;
trials with the same key share one trace. A key listed here wrongly would give a trial another shape's figures:
tests/test_prediction_cache.py predicts a config with each one changed and requires the same figures.

estimate/fit.py's `cached_estimate` (a run's prediction, a capped sweep's check, a pack's plan) keeps its
predictions here. The cache holds only the figures; a caller gets them with its own config's hash.
"""

from __future__ import annotations

import json
from typing import Callable

from ..config.schema import NON_SEMANTIC_KEYS, config_hash, flatten

# Keys that change what is learned or logged, never a tensor's shape or count (and so not the prediction);
# the groups and keys that do not change what is computed at all (config.NON_SEMANTIC_KEYS) come with them:
# where a prediction is made for is the device, micro batch and processes in the key.
SHAPE_FREE_KEYS = (
    *NON_SEMANTIC_KEYS,
    "seed",
    "optim.lr",
    "optim.schedule",
    "optim.warmup_steps",
    "lora.alpha",
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.eval_every",
    "data.max_eval_examples",  # an evaluation batch is predicted at trainer.eval_batch_size
)

PREDICTIONS: dict[str, dict] = {}  # shape key -> the predicted account (this process)


def shape_key(cfg, device: str, micro_batch: int, num_processes: int) -> str:
    """What decides a prediction: the config without SHAPE_FREE_KEYS, and where it is predicted for."""
    shape = {k: v for k, v in flatten(cfg).items() if not _shape_free(k)}
    return json.dumps([shape, device, micro_batch, num_processes], sort_keys=True, default=str)


def per_shape(cfg, device: str, micro_batch: int, num_processes: int, predict: Callable[[], dict]) -> dict:
    """`predict()` once per shape; the account with this config's hash (a copy: callers may add to it)."""
    key = shape_key(cfg, device, micro_batch, num_processes)
    if key not in PREDICTIONS:
        PREDICTIONS[key] = predict()
    return {**PREDICTIONS[key], "config_hash": config_hash(cfg)}


def _shape_free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SHAPE_FREE_KEYS)
