"""Parameter and optimizer-memory accounting, measured from the tensors themselves."""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch
from torch import nn


class ParameterCount(NamedTuple):
    trainable: int
    total: int
    fraction: float


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters; shared (tied) tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return ParameterCount(trainable, total, trainable / total if total else 0.0)


def optimizer_state_breakdown(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes held in optimizer.state per state key (AdamW: exp_avg, exp_avg_sq, step)."""
    sizes: dict[str, int] = defaultdict(int)
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                sizes[key] += value.numel() * value.element_size()
    return dict(sizes)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of tensors the optimizer keeps (moments and step counters); 0 before the first step."""
    return sum(optimizer_state_breakdown(optimizer).values())
