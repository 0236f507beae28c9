"""Whether bitsandbytes is installed, and which settings need it (a quantized base, an 8-bit optimizer): one
place for the check and its one-line error, used by the quantized base, the optimizer and the memory estimate."""

from __future__ import annotations

import importlib.util

from ..choices import EIGHT_BIT_OPTIMIZERS
from ..errors import UserError


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def uses_bitsandbytes(cfg) -> bool:
    """A quantized base or an 8-bit optimizer: the settings that load bitsandbytes."""
    return cfg.model.quantization != "none" or cfg.optim.name in EIGHT_BIT_OPTIMIZERS


def require_bitsandbytes(setting: str) -> None:
    """One-line error for a setting that needs bitsandbytes when it is not installed."""
    if not bitsandbytes_available():
        raise UserError(f"{setting} needs bitsandbytes, which is not installed: pip install 'lorasweep[qlora]'")
