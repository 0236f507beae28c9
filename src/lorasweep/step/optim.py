"""The optimizer of a run: `optim.name` adamw (torch) | adamw8bit | paged_adamw8bit (bitsandbytes).

adamw8bit keeps both Adam moments as uint8 with a float32 absmax per block of 256 elements and a shared 256-entry
float32 code book (qmap) per moment: about 2.03 bytes per parameter instead of 8. bitsandbytes keeps 32-bit
state for tensors with fewer than `optim.min_8bit_size` elements (its default, 4096, is ours too), so the LoRA
matrices of a small model (r·d_in < 4096, e.g. MiniLM r=8) are not 8-bit at all: lower min_8bit_size to see the
saving there. paged_adamw8bit puts large states (≥ 1e5 elements) in CUDA unified memory that can be paged
out to the host under memory pressure; on CPU bitsandbytes runs it as plain adamw8bit.

LoRA+ (Hayou et al. 2024; peft's `create_loraplus_optimizer`): `optim.lora_plus_ratio` = λ puts the LoRA B matrices
in a second parameter group at λ·lr; the scheduler scales every group's lr by the same factor, so both follow one
schedule. Only the B matrices: peft also moves every 1-D parameter (biases, DoRA's magnitude) to λ·lr, which is
its own choice, not the paper's.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import torch

from ..choices import EIGHT_BIT_OPTIMIZERS, require_choice
from ..errors import UserError
from ..model.bitsandbytes_check import require_bitsandbytes

# Said at the first step of every paged_adamw8bit run on CPU; the module docstring says it once.
warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")


def validate_optimizer(optim_cfg) -> None:
    name = optim_cfg.name
    if optim_cfg.min_8bit_size < 0:
        raise UserError(f"optim.min_8bit_size must be >= 0, got {optim_cfg.min_8bit_size}")
    ratio = getattr(optim_cfg, "lora_plus_ratio", 1.0)
    if not math.isfinite(ratio) or ratio <= 0:
        raise UserError(
            f"optim.lora_plus_ratio must be a finite number > 0 (1: plain LoRA; LoRA+ suggests 16), got {ratio}"
        )
    if name in EIGHT_BIT_OPTIMIZERS:
        require_bitsandbytes(f"optim.name={name}")


def parameter_groups(optim_cfg, model: torch.nn.Module) -> list[dict]:
    """The trainable parameters of `model` as optimizer groups: everything at lr, and with LoRA+ (ratio ≠ 1) the
    LoRA B matrices in their own group at ratio × lr."""
    ratio = float(getattr(optim_cfg, "lora_plus_ratio", 1.0))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if ratio == 1.0:
        return [{"params": [p for _, p in trainable]}]
    b = [p for n, p in trainable if is_lora_B(n)]
    if not b:
        raise UserError(f"optim.lora_plus_ratio={ratio} needs LoRA B matrices, and this model has none")
    rest = [p for n, p in trainable if not is_lora_B(n)]
    return [{"params": rest}, {"params": b, "lr": optim_cfg.lr * ratio}]


def is_lora_B(parameter_name: str) -> bool:
    return parameter_name.endswith("lora_B")


def build_optimizer(
    optim_cfg, model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimizer `optim_cfg` names over the trainable parameters of a model (LoRA+ groups, see
    parameter_groups), or over a list of parameters (one group: no LoRA+ without parameter names)."""
    if isinstance(model_or_params, torch.nn.Module):
        params = parameter_groups(optim_cfg, model_or_params)
    else:
        params = list(model_or_params)
        if float(getattr(optim_cfg, "lora_plus_ratio", 1.0)) != 1.0:
            raise UserError("optim.lora_plus_ratio needs the model, not a parameter list: build_optimizer(cfg, model)")
    kwargs = dict(
        lr=optim_cfg.lr,
        betas=(optim_cfg.beta1, optim_cfg.beta2),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    require_choice("optim.name", optim_cfg.name)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    validate_optimizer(optim_cfg)  # the 8-bit ones: bitsandbytes
    import bitsandbytes as bnb

    cls = bnb.optim.AdamW8bit if optim_cfg.name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, min_8bit_size=optim_cfg.min_8bit_size, **kwargs)
