"""One training step as the run takes it, instrumented: shared by the prediction (fake tensors) and the
measurement it is judged against (real tensors, benchmarks/memory_estimate.py and the tests).

`prepare` is what training/lifecycle.py does between building the model and the loop (LoRA, gradient checkpointing, the
optimizer); `measure_steps` runs Loop.step's computation (forward and task loss under the run's autocast,
the weighted backward per micro-batch, clipping, optimizer step, zero_grad) twice under a LiveBytes counter and reports
the second step: the first creates the optimizer state, the second is what every later step holds (what
torch.cuda.max_memory_allocated reports for a step after the first).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..lora.accounting import quantization_statistics
from ..step.optim import build_optimizer
from ..step.tasks import forward_loss
from .live import LiveBytes

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def prepare(model: nn.Module, cfg):
    """(LoRA report, optimizer): the run's own setup after the model is built (training/components.py), in its order."""
    from ..model.adapt import adapt_model

    report = adapt_model(model, cfg)
    return report, build_optimizer(cfg.optim, model)


def with_mixed_precision(model: nn.Module, mixed_precision: str, device_type: str) -> nn.Module:
    """Accelerate's prepare for native AMP: forward under autocast, outputs converted to float32."""
    if mixed_precision not in AUTOCAST:
        return model
    from accelerate.utils import convert_outputs_to_fp32

    forward = torch.autocast(device_type, dtype=AUTOCAST[mixed_precision])(model.forward)
    model.forward = convert_outputs_to_fp32(forward)
    return model


def batch_of(micro: int, length: int, task: str, device) -> dict[str, torch.Tensor]:
    """A collated batch of `micro` examples padded to `length` (data.Collator's keys, dtypes and shapes).

    The last example is one token shorter: a batch padded to its longest example has padding, and with padding
    transformers passes attention an explicit mask (without, SDPA may skip it and hold less); fake tensors
    cannot tell, so both the prediction and the measurement take the padded path."""
    shape = (micro, length)
    dtype = torch.float32 if task == "regression" else torch.long  # regression: one float per example
    labels = torch.zeros(shape if task == "causal_lm" else (micro,), dtype=dtype, device=device)
    mask = torch.ones(shape, dtype=torch.long, device=device)
    if length > 1:
        mask[-1, -1] = 0
    return {"input_ids": torch.ones(shape, dtype=torch.long, device=device), "attention_mask": mask, "labels": labels}


@dataclass
class StepMemory:
    peak_bytes: int  # the most bytes live during the second step
    activation_bytes: int  # held for backward at the end of the forward pass (second step, last micro-batch)
    optimizer_state_bytes: int
    start_bytes: int  # live when the second step begins: weights, optimizer state, the batch


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What the model holds: parameters, buffers, and quantized layers' statistics (not module attributes)."""
    tensors = [*model.parameters(), *model.buffers()]
    for parameter in list(tensors):
        tensors += quantization_statistics(parameter)
    return tensors


def measure_steps(
    model, optimizer, batches: list[dict], cfg, counter: LiveBytes | None = None, on_second_step=None
) -> StepMemory:
    """Two optimizer steps over `batches` (the micro-batches of one step); `on_second_step(counter)` is a
    context for the second step (the benchmark's allocator profile)."""
    counter = counter or LiveBytes()
    model.train()  # as Loop.run: dropout on (from_pretrained returns an eval-mode model)
    counter.track([*model_tensors(model), *(t for b in batches for t in b.values())])
    params = [p for p in model.parameters() if p.requires_grad]
    activation = 0
    with counter:
        _one_step(model, optimizer, batches, cfg, params)
        counter.reset_peak()
        start = counter.current
        with on_second_step() if on_second_step else nullcontext():
            activation = _one_step(model, optimizer, batches, cfg, params, counter)
    state = _unique_bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    return StepMemory(counter.peak, activation, state, start)


def measure_eval(model, batch: dict, task: str, counter: LiveBytes) -> int:
    """The peak of one evaluation forward (tasks.evaluate's: eval mode, no gradients) on top of what the counter
    holds after training steps (weights, optimizer state): evaluation runs between steps, each eval batch a
    training micro-batch at a time, and a causal LM's loss in chunks of the LM head (step/lm_loss.py)."""
    counter.track(batch.values())
    was_training = model.training
    model.eval()
    counter.reset_peak()
    with counter, torch.no_grad():
        outputs = forward_loss(model, batch, task)
        del outputs
    model.train(was_training)
    return counter.peak


def _one_step(model, optimizer, batches, cfg, params, counter: LiveBytes | None = None) -> int:
    """Loop.step without the bookkeeping: returns the bytes the last forward pass left for backward. Each
    micro-batch's mean loss is weighted by its share of the step's items, as Loop.step weighs it (batch_of's
    micro-batches are alike: 1 / len(batches)), and the step's loss summed on the device."""
    held, step_loss = 0, torch.zeros((), device=batches[0]["labels"].device)
    for batch in batches:
        before = counter.current if counter else 0
        loss, *_ = forward_loss(model, batch, cfg.data.task)
        held = (counter.current - before) if counter else 0
        weighted = loss * (1 / len(batches))
        weighted.backward()
        step_loss += weighted.detach()
        del loss, weighted
    if cfg.optim.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return held


def _unique_bytes(tensors) -> int:
    """Bytes of distinct storages (shared code books count once); keyed by the storage object, which works for
    fake tensors too (their data_ptr is 0)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if id(storage) not in seen:
            seen.add(id(storage))
            total += storage.nbytes()
    return total


def weight_account(model: nn.Module) -> dict[str, int]:
    """accounting.memory_account's base / trainable / gradient bytes, keyed by storage object (fake-safe)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    base = _unique_bytes([*frozen, *(s for p in frozen for s in quantization_statistics(p)), *model.buffers()])
    trainable_bytes = _unique_bytes(trainable)
    return {
        "memory/base_weights_bytes": base,
        "memory/trainable_bytes": trainable_bytes,
        "memory/gradient_bytes": trainable_bytes,
    }
