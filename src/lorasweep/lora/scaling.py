"""The LoRA scale, in one place.

W = W0 + scale · B·A with A ∈ R^{r×d_in}, B ∈ R^{d_out×r}.
  standard (Hu et al. 2021):  scale = α / r
  rslora   (Kalajdzievski 2023): scale = α / √r   (keeps the update's size stable as r grows)
"""

from __future__ import annotations

import math

from ..errors import UserError

SCALINGS = ("standard", "rslora")


def lora_scale(alpha: float, rank: int, scaling: str = "standard") -> float:
    """The factor that multiplies B·A."""
    if scaling == "standard":
        return alpha / rank
    if scaling == "rslora":
        return alpha / math.sqrt(rank)
    raise UserError(f"unknown LoRA scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")


def alpha_for_scale(scale: float, rank: int, scaling: str = "standard") -> float:
    """The α that gives `scale` at `rank` (inverse of lora_scale), for exporting a re-shaped adapter."""
    if scaling == "standard":
        return scale * rank
    if scaling == "rslora":
        return scale * math.sqrt(rank)
    raise UserError(f"unknown LoRA scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")


def validate_hyperparameters(rank: int, alpha: float, dropout: float, scaling: str) -> None:
    """Reject values that cannot define a LoRA update, with a message naming the value."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise UserError(f"LoRA rank must be an integer, got {rank!r}")
    if rank <= 0:
        raise UserError(f"LoRA rank must be > 0, got {rank}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if scaling not in SCALINGS:
        raise UserError(f"unknown LoRA scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")
