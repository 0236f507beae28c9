"""Parameter and optimizer-memory accounting, measured from the tensors themselves."""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch
from torch import nn

from ..choices import FOUR_BIT


class ParameterCount(NamedTuple):
    trainable: int
    total: int
    fraction: float


def logical_numel(parameter: torch.Tensor) -> int:
    """Weights a parameter stands for: a 4-bit bitsandbytes weight packs two per byte (its tensor is
    (n·m/2, 1) uint8), so its count is that of the matrix it quantizes."""
    quant_state = getattr(parameter, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    if shape is not None and getattr(parameter, "quant_type", None) in FOUR_BIT:
        return int(torch.Size(shape).numel())
    return parameter.numel()


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters; shared (tied) tensors counted once; 4-bit weights as weights, not bytes."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += logical_numel(parameter)
        if parameter.requires_grad:
            trainable += parameter.numel()
    return ParameterCount(trainable, total, trainable / total if total else 0.0)


def _storage_key(tensor: torch.Tensor) -> tuple:
    """Tensors that share memory (bitsandbytes' code books shared by every parameter's state) count once."""
    try:
        return (
            tensor.device.type,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tensor.numel(),
            tensor.dtype,
        )
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return ("id", id(tensor))


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def optimizer_state_breakdown(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes held in optimizer.state per state key, each tensor counted once however many parameters share it.

    torch AdamW: exp_avg, exp_avg_sq (float32), step (a float32 scalar per parameter).
    bitsandbytes AdamW8bit: state1, state2 (uint8 moments; float32 for tensors under min_8bit_size), absmax1,
    absmax2 (float32, one per block of 256), qmap1, qmap2 (the 256-entry float32 code books, shared by all).
    """
    sizes: dict[str, int] = defaultdict(int)
    seen: set[tuple] = set()
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                k = _storage_key(value)
                if k in seen:
                    continue
                seen.add(k)
                sizes[key] += _nbytes(value)
    return dict(sizes)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of tensors the optimizer keeps (moments and step counters); 0 before the first step."""
    return sum(optimizer_state_breakdown(optimizer).values())


def quantization_statistics(parameter: torch.Tensor) -> list[torch.Tensor]:
    """Tensors a quantized weight needs besides its packed integers: 4-bit absmax (uint8 plus the nested
    absmax and code book under double quantization) and code book; int8 row scales (SCB)."""
    extra = []
    quant_state = getattr(parameter, "quant_state", None)
    if quant_state is not None:
        extra += [quant_state.absmax, quant_state.code]
        if getattr(quant_state, "state2", None) is not None:
            extra += [quant_state.state2.absmax, quant_state.state2.code]
    scb = getattr(parameter, "SCB", None)
    if torch.is_tensor(scb):
        extra.append(scb)
    return [t for t in extra if torch.is_tensor(t)]


def memory_account(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """What a run holds, from the tensors themselves (bytes):

    memory/base_weights_bytes      frozen parameters and buffers of the model as stored: a quantized base counts
                                   its packed integers plus their quantization statistics
    memory/trainable_bytes         the trainable parameters (LoRA A, B, DoRA's magnitude and modules_to_save):
                                   float32 on any base, a bf16 one too (lora/layer.py adapter_dtype), so 4
                                   bytes per params/trainable
    memory/gradient_bytes          their gradients (same dtype and shape as the parameters, held between
                                   backward and the optimizer step)
    memory/optimizer_state_bytes   what the optimizer keeps (optimizer_state_breakdown): 0 before its first step;
                                   only when an optimizer is given
    Shared tensors (tied embeddings, shared code books) count once.
    """
    seen: set[tuple] = set()
    base = trainable = 0
    for parameter in model.parameters():
        key = _storage_key(parameter)
        if key in seen:
            continue
        seen.add(key)
        if parameter.requires_grad:
            trainable += _nbytes(parameter)
            continue
        base += _nbytes(parameter)
        for extra in quantization_statistics(parameter):
            extra_key = _storage_key(extra)
            if extra_key not in seen:
                seen.add(extra_key)
                base += _nbytes(extra)
    for buffer in model.buffers():
        key = _storage_key(buffer)
        if key not in seen:
            seen.add(key)
            base += _nbytes(buffer)
    account = {
        "memory/base_weights_bytes": base,
        "memory/trainable_bytes": trainable,
        "memory/gradient_bytes": trainable,
    }
    if optimizer is not None:
        account["memory/optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
    return account
