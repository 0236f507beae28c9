"""estimate_config(cfg, device) -> the memory account of one training step, predicted from the config alone.

The run's own code builds and trains the model on fake tensors (FakeTensorMode: shapes and dtypes, no data, no
memory): the transformers class from the architecture's config, quantize_model's layer choice, apply_lora (the
project's kernel), gradient checkpointing, accelerate's autocast, the configured optimizer (8-bit included) and
the task's loss (a causal LM's LM head in chunks at its target positions, step/lm_loss.py: fake labels have no values,
so every position counts as a target, the upper bound). A LiveBytes counter follows every storage through two
steps; the second step's peak is the prediction (see step.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..config.schema import config_hash
from ..errors import UserError
from ..model.bitsandbytes_check import uses_bitsandbytes
from .fake_model import bitsandbytes_constants, build_fake_model, int8_without_outliers
from .live import CUDA_BLOCK, LiveBytes
from .step import batch_of, measure_eval, measure_steps, prepare, weight_account, with_mixed_precision

DEVICES = ("cpu", "cuda")


def default_device(cfg) -> str:
    """The device a run of `cfg` would use: CUDA where the cluster gives GPUs or this machine has one."""
    return "cuda" if cfg.cluster.gpus_per_node > 0 or torch.cuda.is_available() else "cpu"


def processes(cfg) -> int:
    return max(1, int(cfg.cluster.nodes) * int(cfg.cluster.processes_per_node))


def micro_batch_of(cfg) -> int:
    """The global micro batch a run takes per forward pass (trainer.batch_size / grad_accum)."""
    return cfg.trainer.batch_size // cfg.trainer.grad_accum


def estimate_config(
    cfg,
    device: str | None = None,
    micro_batch: int | None = None,
    sequence: tuple[int, str] | None = None,
    num_processes: int | None = None,
) -> dict:
    """The predicted account (memory/* keys as the run records them, plus memory/activation_bytes and
    memory/predicted_peak_bytes), with config_hash, the device, the micro batch and the sequence length assumed.

    `micro_batch`: predict for this global micro batch instead of the config's (micro_batch=auto tries several);
    `sequence`: (length, where it comes from), to skip reading the data again; `num_processes`: the processes
    sharing each micro batch (default: the cluster config's nodes x processes_per_node)."""
    device = device or default_device(cfg)
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
    micro = micro_batch or micro_batch_of(cfg)
    per_process = max(1, micro // (num_processes or processes(cfg)))
    length, length_source = sequence or sequence_length(cfg)
    accum = cfg.trainer.batch_size // micro
    traced_on = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.random.fork_rng(devices=[]), fake, bitsandbytes_constants(uses_bitsandbytes(cfg)):
        model = build_fake_model(cfg.model, cfg.data.task, cfg.data.num_labels, traced_on)
        report, optimizer = prepare(model, cfg)
        account = weight_account(model)
        model = with_mixed_precision(model, cfg.trainer.mixed_precision, traced_on)
        # Two micro-batches show an accumulating step's peak (the second holds the first's gradients).
        batches = [batch_of(per_process, length, cfg.data.task, traced_on) for _ in range(min(accum, 2))]
        counter = LiveBytes(CUDA_BLOCK if device == "cuda" else 1)
        steps = measure_steps(model, optimizer, batches, cfg, counter)
        del batches
        # Evaluation runs each eval batch one training micro-batch at a time (tasks.evaluate, Loop._eval_metrics).
        eval_rows = min(max(1, cfg.trainer.eval_batch_size // (num_processes or processes(cfg))), per_process)
        eval_batch = batch_of(eval_rows, length, cfg.data.task, traced_on)
        with int8_without_outliers(model):
            eval_peak = measure_eval(model, eval_batch, cfg.data.task, counter)
    return {
        "config_hash": config_hash(cfg),
        "device": device,
        "traced_with": _traced_with(device, traced_on),
        "micro_batch": micro,
        "micro_batch_per_process": per_process,
        "sequence_length": length,
        "sequence_length_source": length_source,
        "params/lora": report.lora_parameters,
        **account,
        "memory/optimizer_state_bytes": steps.optimizer_state_bytes,
        "memory/activation_bytes": steps.activation_bytes,
        "memory/predicted_peak_bytes": steps.peak_bytes,
        "memory/predicted_eval_peak_bytes": eval_peak,  # one evaluation forward (a micro-batch of an eval batch)
    }


def _traced_with(device: str, traced_on: str) -> str:
    if traced_on == "cuda":
        return "CUDA kernels"
    return "CPU kernels" + (
        " (no CUDA here; CUDA's 512-byte allocation granularity applied)" if device == "cuda" else ""
    )


_LONGEST: dict[str, int | None] = {}


def sequence_length(cfg) -> tuple[int, str]:
    """(length, why): the collator pads each batch to its longest example, so the peak comes with the longest
    training example: read from the tokenised data when it is on disk and the tokenizer loads offline, else
    data.max_length (an upper bound)."""
    bound = int(cfg.data.max_length)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    key = json.dumps([data, cfg.model.source, cfg.model.get("name_or_path")], sort_keys=True)
    if key not in _LONGEST:  # read once per data and tokenizer in a process (a sweep estimates every trial)
        _LONGEST[key] = _longest_training_example(cfg)
    longest = _LONGEST[key]
    if longest is None:
        return bound, "data.max_length (the data or tokenizer is not available offline)"
    return min(bound, longest), f"the longest training example ({longest} tokens, data.max_length {bound})"


def _longest_training_example(cfg) -> int | None:
    from ..data import tokenized_splits
    from ..model.load import offline_tokenizer

    if cfg.data.source == "hub" and not Path(str(cfg.data.path)).expanduser().is_dir():
        return None  # a hub dataset is not read here (no network in an estimate)
    try:
        tokenizer = offline_tokenizer(cfg.model)
        if tokenizer is None:
            return None  # a hub model's tokenizer that is not cached: not fetched here either
        train_set, _ = tokenized_splits(cfg.data, tokenizer, Path(cfg.run_root) / ".cache" / "tokenized")
    except (UserError, OSError, ValueError):
        return None
    return max((len(ids) for ids in train_set["input_ids"]), default=None)


def format_account(account: dict) -> str:
    """`lorasweep estimate` without --json: the account, one line each, then what it assumed."""
    from .byte_sizes import format_bytes

    rows = [
        ("base weights", "memory/base_weights_bytes"),
        ("trainable (LoRA, head)", "memory/trainable_bytes"),
        ("gradients", "memory/gradient_bytes"),
        ("optimizer state", "memory/optimizer_state_bytes"),
        ("activations (held for backward)", "memory/activation_bytes"),
        ("predicted peak of a step", "memory/predicted_peak_bytes"),
        ("predicted peak of an eval batch", "memory/predicted_eval_peak_bytes"),
    ]
    lines = [f"{label:34} {format_bytes(account[key]):>10}" for label, key in rows]
    lines += [
        f"config {account['config_hash']} on {account['device']} (traced with {account['traced_with']}); "
        f"micro batch {account['micro_batch']} x {account['sequence_length']} tokens: "
        f"{account['sequence_length_source']}"
    ]
    return "\n".join(lines)
