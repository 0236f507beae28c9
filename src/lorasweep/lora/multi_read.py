"""Reading one adapter for a mixed-adapter batch (multi.py): its LoRA factors, scale and DoRA factor per module
and its saved heads, every shape checked against the base model before anything changes."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .adapter_io import PREFIX, _read, check_same_base
from .layer import is_adaptable, is_quantized, linear_dims
from .scaling import lora_scale


def _pattern(patterns: dict | None, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup (a key matches a module name or its dotted suffix)."""
    if module in (patterns or {}):
        return patterns[module]
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(model: nn.Module, path: Path) -> tuple[dict, dict]:
    """({module: (A, B, scale)}, {linear: {param: tensor}}) of one adapter, every shape checked against model."""
    config, tensors, meta = _read(path)
    if meta is not None:
        check_same_base(meta, model, path)
    if config.get("lora_bias"):
        raise UserError(f"adapter {path}: lora_bias adapters are not supported for mixed batches")
    dora = bool(config.get("use_dora"))
    scaling = "rslora" if config.get("use_rslora") else "standard"
    modules = dict(model.named_modules())
    lora, heads = {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise UserError(f"adapter {path}: unexpected tensor {key}")
        key = key[len(PREFIX) :]
        if ".lora_" in key:
            name, _, part = key.partition(".lora_")
            if part not in ("A.weight", "B.weight", "magnitude_vector") or (part == "magnitude_vector" and not dora):
                raise UserError(
                    f"adapter {path}: {key} is not supported for mixed batches (only lora_A/lora_B, and "
                    "lora_magnitude_vector of a use_dora adapter)"
                )
            lora.setdefault(name, {})[part[0]] = value
            continue
        name, _, param = key.rpartition(".")
        module = modules.get(name)
        if not isinstance(module, nn.Linear) or param not in ("weight", "bias"):
            kind = type(module).__name__ if module is not None else "nothing"
            raise UserError(
                f"adapter {path}: saved module {name} is {kind} in this model; mixed batches support "
                "Linear modules_to_save only"
            )
        heads.setdefault(name, {})[param] = value
    out = {}
    for name, ab in lora.items():
        module = modules.get(name)
        if module is None or not is_adaptable(module):
            kind = "missing" if module is None else type(module).__name__
            raise UserError(f"adapter {path}: module {name} is {kind} in this model, not a Linear/Conv1D")
        wanted = {"A", "B", "m"} if dora else {"A", "B"}
        if set(ab) != wanted:
            missing = sorted(wanted - set(ab))
            raise UserError(
                f"adapter {path}: module {name} lacks "
                + ", ".join("lora_magnitude_vector" if m == "m" else f"lora_{m}" for m in missing)
            )
        d_in, d_out = linear_dims(module)
        a, b = ab["A"], ab["B"]
        r = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != d_in or tuple(b.shape) != (d_out, r):
            raise UserError(
                f"adapter {path}: module {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                f"this model needs ({r}, {d_in}) and ({d_out}, {r})"
            )
        if _pattern(config.get("rank_pattern"), name, config.get("r")) != r:
            raise UserError(f"adapter {path}: module {name} has lora_A of rank {r}, unlike its adapter_config.json")
        alpha = _pattern(config.get("alpha_pattern"), name, config.get("lora_alpha"))
        scale = lora_scale(alpha, r, scaling)
        out[name] = (a, b, scale, _dora_gain(module, a, b, scale, ab["m"], path, name) if dora else None)
    if not out:
        raise UserError(f"adapter {path} has no LoRA weights")
    for name, params in heads.items():
        module = modules[name]
        if name in out:
            raise UserError(f"adapter {path}: module {name} is both LoRA-adapted and saved whole")
        for p, ref in (("weight", module.weight), ("bias", module.bias)):
            got = params.get(p)
            if (ref is None) != (got is None) or (ref is not None and got.shape != ref.shape):
                raise UserError(
                    f"adapter {path}: saved {name}.{p} is {None if got is None else tuple(got.shape)}, "
                    f"this model has {None if ref is None else tuple(ref.shape)}"
                )
    return out, heads


@torch.no_grad()
def _dora_gain(module: nn.Module, a, b, scale: float, magnitude, path: Path, name: str) -> torch.Tensor:
    """m / ‖W0 + scale·B·A‖ per output row: DoRA's factor, constant at inference."""
    d_in, d_out = linear_dims(module)
    if is_quantized(module):
        raise UserError(
            f"adapter {path}: DoRA on module {name} needs the float base weight, and this base is "
            "quantized; load the base without model.quantization for DoRA adapters"
        )
    if tuple(magnitude.shape) != (d_out,):
        raise UserError(
            f"adapter {path}: module {name} has lora_magnitude_vector {tuple(magnitude.shape)}; this "
            f"model needs ({d_out},)"
        )
    weight = module.weight if isinstance(module, nn.Linear) else module.weight.t()
    w = weight.float() + scale * (b.float() @ a.float())
    return magnitude.float() / torch.linalg.norm(w, dim=1)
