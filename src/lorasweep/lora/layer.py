"""LoraLayer: a frozen linear map (nn.Linear or transformers' Conv1D) plus a trainable low-rank update.

y = base(x) + scale · B·A·dropout(x), per output slice (see kernel.py); scale comes from scaling.lora_scale.
A: (k·r, d_in), kaiming-uniform(a=√5) like nn.Linear; B: (Σ slice rows, r), zeros, so the layer starts
exactly at the base model. k is the number of slices (1 for a plain projection).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError
from .kernel import OutputSlice, full_output, low_rank_add, low_rank_linear
from .scaling import lora_scale, validate_hyperparameters

try:  # GPT-2 style layers store the weight as (d_in, d_out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes Linear4bit / Linear8bitLt: its weight is packed integers, only its own forward reads it."""
    return type(module).__module__.startswith("bitsandbytes") and isinstance(module, nn.Linear)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    d_in, d_out = module.weight.shape
    return d_in, d_out


class LoraLayer(nn.Module):
    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        scaling: str = "standard",
        slices: Sequence[OutputSlice] | None = None,
        slice_names: Sequence[str] | None = None,
        name: str = "",
    ):
        super().__init__()
        if not is_adaptable(base_layer):
            raise UserError(f"{name or 'module'}: LoRA needs nn.Linear or Conv1D, got {type(base_layer).__name__}")
        validate_hyperparameters(rank, alpha, dropout, scaling)
        d_in, d_out = linear_dims(base_layer)
        self.slices = tuple(slices) if slices else full_output(d_out)
        self.slice_names = tuple(slice_names) if slice_names else ("",) * len(self.slices)
        smallest = min(d_in, *(s.rows for s in self.slices))
        if rank > smallest:
            raise UserError(
                f"{name or 'module'}: LoRA rank {rank} exceeds min(d_in, d_out) = {smallest}; a rank that large "
                "is not low-rank"
            )
        self.base_layer = base_layer
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.quantized = is_quantized(base_layer)
        self.d_in, self.d_out = d_in, d_out
        self.rank, self.alpha, self.scaling_mode = rank, alpha, scaling
        self.scale = lora_scale(alpha, rank, scaling)
        self.dropout_p = dropout
        weight = base_layer.weight
        # A quantized base holds integers: LoRA is trained in float32 there (QLoRA's choice).
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        self.lora_A = nn.Parameter(torch.empty(len(self.slices) * rank, d_in, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(
            torch.zeros(sum(s.rows for s in self.slices), rank, dtype=dtype, device=weight.device)
        )
        for block in self.lora_A.data.split(rank):
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.merged = False
        self.train(base_layer.training)  # a wrapper made for an eval-mode model must not drop out

    def weight_t(self) -> torch.Tensor:
        """The base weight as (d_in, d_out), a view either way."""
        weight = self.base_layer.weight
        return weight if self.fan_in_fan_out else weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        x_lora = None
        if self.dropout_p > 0 and self.training:
            x_lora = nn.functional.dropout(x, self.dropout_p, training=True)
        if self.quantized:
            # The base through bitsandbytes (its autograd gives the input gradient through the dequantized
            # weight); the low-rank term accumulated into its output in place by lorasweep's kernel.
            return low_rank_add(self.base_layer(x), x if x_lora is None else x_lora, self.lora_A, self.lora_B,
                                self.scale, self.slices)
        return low_rank_linear(
            x, x_lora, self.weight_t(), self.base_layer.bias, self.lora_A, self.lora_B, self.scale, self.slices
        )

    def delta_weight(self) -> torch.Tensor:
        """scale · B·A as a dense (d_out, d_in) matrix, zero outside the adapted slices."""
        delta = torch.zeros(self.d_out, self.d_in, dtype=self.lora_A.dtype, device=self.lora_A.device)
        for j, (sl, b_j) in enumerate(zip(self.slices, self.lora_B.split([s.rows for s in self.slices]))):
            a_j = self.lora_A[j * self.rank : (j + 1) * self.rank]
            delta[sl.row_index(self.d_out).to(delta.device)] = b_j @ a_j
        return delta * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if self.quantized:
            raise UserError(
                "cannot merge LoRA into a quantized base (model.quantization): requantizing W0 + scale·B·A would "
                "round most of the small update away and add a fresh quantization error, so the merged model "
                "would not compute what was trained; load the base unquantized, load_adapter, then merge"
            )
        if not self.merged:
            self._shift_base(+1)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._shift_base(-1)
            self.merged = False

    def _shift_base(self, sign: int) -> None:
        delta = self.delta_weight().to(self.base_layer.weight.dtype)
        self.base_layer.weight.add_(delta.t() if self.fan_in_fan_out else delta, alpha=sign)

    def extra_repr(self) -> str:
        names = ",".join(n for n in self.slice_names if n)
        return f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:g}" + (f", slices={names}" if names else "")
