"""modules_to_save: modules trained whole beside LoRA (a task head), held in float32 on any base.

A bf16 or fp16 base would otherwise train its head in 16 bits, with 16-bit Adam moments, where small updates
round away (peft keeps its adapters in float32 for the same reason). The head's parameters are converted in
place (a weight tied to another module stays one tensor) and every module that holds one of them is cast at its
boundary: floating inputs to float32 (not under autocast, which casts a Linear's operands itself), its floating
outputs back to the dtype it had, so the layers around it see the dtypes they saw before.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .layer import adapter_dtype

CAST_ATTR = "lorasweep_cast_back"  # the dtype a converted module's outputs are cast back to


def train_whole(model: nn.Module, names: list[str]) -> None:
    """Make every parameter of the named modules trainable, in float32 where the base holds 16-bit weights."""
    params = {id(p): p for name in names for p in model.get_submodule(name).parameters()}
    for name in names:
        for p in model.get_submodule(name).parameters():
            if not p.dtype.is_floating_point:
                raise UserError(
                    f"modules_to_save entry {name!r} is quantized (model.quantization) and cannot be "
                    "trained; quantization keeps only the task head and lm_head in full precision"
                )
    converted: dict[int, torch.dtype] = {}
    for key, p in params.items():
        p.requires_grad_(True)
        wanted = adapter_dtype(p.dtype)
        if p.dtype != wanted:
            converted[key] = p.dtype
            p.data = p.data.to(wanted)  # in place: the Parameter (and any tie) stays the same object
    if not converted:
        return
    for module in model.modules():
        owned = [converted[id(p)] for p in module.parameters(recurse=False) if id(p) in converted]
        if owned and not hasattr(module, CAST_ATTR):
            setattr(module, CAST_ATTR, owned[0])
            module.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True)
            module.register_forward_hook(_outputs_back)


def _autocast_on(args, kwargs) -> bool:
    tensors = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t)]
    return bool(tensors) and torch.is_autocast_enabled(tensors[0].device.type)


def _cast(value, dtype):
    if torch.is_tensor(value) and value.dtype.is_floating_point and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _inputs_to_float32(module, args, kwargs):
    if _autocast_on(args, kwargs):
        return None
    dtype = next(module.parameters(recurse=False)).dtype
    return _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}


def _outputs_back(module, args, output):
    return _cast(output, getattr(module, CAST_ATTR))
