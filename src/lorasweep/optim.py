"""The optimizer of a run: `optim.name` adamw (torch) | adamw8bit | paged_adamw8bit (bitsandbytes).

adamw8bit keeps both Adam moments as uint8 with a float32 absmax per block of 256 elements and a shared 256-entry
float32 code book (qmap) per moment: about 2.03 bytes per parameter instead of 8. bitsandbytes keeps 32-bit
state for tensors with fewer than `optim.min_8bit_size` elements (its default, 4096, is ours too), so the LoRA
matrices of a small model (r·d_in < 4096, e.g. MiniLM r=8) are not 8-bit at all: lower min_8bit_size to see the
saving there. paged_adamw8bit puts large states (≥ 1e5 elements) in CUDA unified memory that can be paged
out to the host under memory pressure; on CPU bitsandbytes runs it as plain adamw8bit.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Iterable

import torch

from .errors import UserError

# Said at the first step of every paged_adamw8bit run on CPU; the module docstring says it once.
warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")

EIGHT_BIT = ("adamw8bit", "paged_adamw8bit")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def require_bitsandbytes(setting: str) -> None:
    """One-line error for a setting that needs bitsandbytes when it is not installed."""
    if not bitsandbytes_available():
        raise UserError(f"{setting} needs bitsandbytes, which is not installed: pip install 'lorasweep[qlora]'")


def validate_optimizer(optim_cfg) -> None:
    name = optim_cfg.name
    if optim_cfg.min_8bit_size < 0:
        raise UserError(f"optim.min_8bit_size must be >= 0, got {optim_cfg.min_8bit_size}")
    if name in EIGHT_BIT:
        require_bitsandbytes(f"optim.name={name}")


def build_optimizer(optim_cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer `optim_cfg` names over `params` (the trainable parameters)."""
    params = list(params)
    kwargs = dict(lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if optim_cfg.name in EIGHT_BIT:
        validate_optimizer(optim_cfg)
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit if optim_cfg.name == "adamw8bit" else bnb.optim.PagedAdamW8bit
        return cls(params, min_8bit_size=optim_cfg.min_8bit_size, **kwargs)
    raise UserError(f"optim.name must be one of adamw, {', '.join(EIGHT_BIT)}; got {optim_cfg.name!r}")
