"""Setup: a config, the accelerator and the worker's resources -> the run's components (the model with LoRA, the
optimizer and schedule, the tokenised data and collator, the batch plan and the figures known before training).

training/lifecycle.py (the lifecycle) and the Loop use these; the memory estimate (estimate/) and the preflight check
(training/preflight.py) adapt the model the same way (model/adapt.py), so the three cannot drift apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from ..choices import SCHEDULES
from ..data.chat import replaced_template_note
from ..errors import UserError
from ..model.adapt import adapt_model


@dataclass
class Components:
    model: nn.Module  # prepared by the accelerator (wrapped under DDP)
    optimizer: object
    scheduler: object
    train_set: list
    eval_set: list
    collate: object
    micro: int  # the global micro batch: examples per forward pass over all processes
    total_steps: int
    loop_cfg: object  # cfg with trainer.grad_accum matching `micro` (the global batch, and the hash, unchanged)
    figures: dict = field(default_factory=dict)  # params/* and memory/* known before the first step
    backward: Callable | None = None  # loss -> None: the accelerator's, or the pack's (batched with other trials)
    packed: bool = False  # trained in a pack with other trials (lorasweep/pack/)
    tokenizer: object = None  # decodes eval generations (trainer.eval_generate)
    data_info: dict = field(default_factory=dict)  # label names, rows max_length dropped or truncated (data/)


def build_components(cfg, accelerator, resources) -> Components:
    """Everything a run trains with, in the order that keeps runs bitwise reproducible: the base model is built
    right after seeding, then LoRA's A matrices are drawn, then the data and the optimizer."""
    from ..data import make_collator
    from ..estimate.fit import plan_run, with_micro_batch
    from ..lora.accounting import count_parameters, memory_account
    from ..step.optim import build_optimizer

    # trainer.micro_batch (auto: the largest that fits; in a pack, its share) and the predicted peak, recorded
    # beside the measured one
    micro, planned = plan_run(cfg, accelerator.device.type, accelerator.num_processes, resources.pack)
    if micro % accelerator.num_processes:
        raise UserError(
            f"the micro batch {micro} (trainer.batch_size / grad_accum, or trainer.micro_batch) must "
            f"be divisible by the {accelerator.num_processes} processes"
        )
    model, tokenizer = resources.model(cfg)  # seeded: the head and then the LoRA A matrices are drawn from it
    report = adapt_model(model, cfg)  # model/adapt.py
    with accelerator.main_process_first():
        train_set, eval_set, data_info = resources.datasets(cfg, tokenizer, tokenized_cache(cfg))
    name_labels(model, data_info["label_names"])
    note = replaced_template_note(tokenizer, cfg.data.chat_template) if cfg.data.task == "causal_lm" else None
    if note and accelerator.is_main_process:
        print(note, flush=True)
    if accelerator.is_main_process and any(c["dropped"] or c["truncated"] for c in data_info["counts"].values()):
        from ..data.show import counts_line

        print(counts_line(cfg, data_info), flush=True)  # recorded too (data/*): never dropped without a word
    loop_cfg = with_micro_batch(cfg, micro)
    total_steps = total_optimizer_steps(loop_cfg, len(train_set), micro)
    optimizer = build_optimizer(cfg.optim, model)  # its trainable parameters, LoRA+ groups
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    backward = accelerator.backward
    if resources.pack is not None:  # a packed trial: its frozen layers and its backward go through the pack
        from ..model.shared_base import join

        join(resources.pack, accelerator.unwrap_model(model))
        backward = functools.partial(_packed_backward, resources.pack, accelerator)
    counts = count_parameters(accelerator.unwrap_model(model))
    figures = {
        "params/trainable": counts.trainable,
        "params/total": counts.total,
        "params/trainable_fraction": counts.fraction,
        "params/lora": report.lora_parameters,
        **memory_account(accelerator.unwrap_model(model)),
        **planned,
        **data_figures(data_info),
    }  # base, trainable, gradient bytes
    return Components(
        model,
        optimizer,
        scheduler,
        train_set,
        eval_set,
        make_collator(cfg.data.task, tokenizer),
        micro,
        total_steps,
        loop_cfg,
        figures,
        backward,
        packed=resources.pack is not None,
        tokenizer=tokenizer,
        data_info=data_info,
    )


def data_figures(info: dict) -> dict:
    """data/<split>_rows, _dropped, _truncated: what data.max_length did, recorded with the run (not silent)."""
    return {f"data/{split}_{k}": n for split, counts in info["counts"].items() for k, n in counts.items()}


def tokenized_cache(cfg) -> Path:
    return Path(cfg.run_root) / ".cache" / "tokenized"


def name_labels(model, names: list[str] | None) -> None:
    """String labels' names in the model config (id2label / label2id), as transformers and peft users expect."""
    if names:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}


def _packed_backward(pack, accelerator, loss) -> None:
    """accelerator.backward's arithmetic (fp16's loss scale), the backward itself batched by the pack."""
    if accelerator.scaler is not None:
        loss = accelerator.scaler.scale(loss)
    pack.backward(loss)


def total_optimizer_steps(cfg, n_examples: int, micro: int) -> int:
    batches_per_epoch = n_examples // micro
    if batches_per_epoch < cfg.trainer.grad_accum:
        raise UserError(f"{n_examples} training examples are fewer than one batch of {cfg.trainer.batch_size}")
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return cfg.trainer.epochs * (batches_per_epoch // cfg.trainer.grad_accum)


# choices.SCHEDULES -> transformers' name (every one warms up first).
TRANSFORMERS_SCHEDULES = dict(zip(SCHEDULES, ("linear", "cosine", "constant_with_warmup")))


def build_scheduler(optimizer, optim_cfg, total_steps: int):
    """transformers' schedules: warmup from 0 over warmup_steps, then linear/cosine decay to 0 or constant."""
    from transformers import get_scheduler

    name = TRANSFORMERS_SCHEDULES[optim_cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=optim_cfg.warmup_steps, num_training_steps=total_steps)
