"""LoraLayer: a frozen linear map (nn.Linear or transformers' Conv1D) plus a trainable low-rank update.

y = base(x) + scale · B·A·dropout(x), per output slice (see kernel.py); scale comes from scaling.lora_scale.
A: (k·r, d_in), B: (Σ slice rows, r), initialised as `init` says (init.py; default kaiming-uniform A and zero B,
so the layer starts exactly at the base model). k is the number of slices (1 for a plain projection).

DoRA (Liu et al. 2024, peft's use_dora): W' = m ⊙ (W0 + scale·B·A) / ‖W0 + scale·B·A‖ per adapted output row,
m (`lora_magnitude`, one per adapted row) trained and initialised to those row norms, so it also starts at the
base; the norm is detached (the paper's §4.3, as peft). Rows outside the adapted slices of a fused module keep a
gain of 1. The norm is computed without forming W0 + scale·B·A:
‖W0_i‖² (cached) + 2·scale·(W0·Aᵀ)_i·B_i + scale²·B_i·(A·Aᵀ)·B_iᵀ, which costs one r×d_in×d_out product.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import UserError
from .init import changes_base, init_low_rank, validate_init
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


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """What trained weights (LoRA's A, B, DoRA's magnitude, modules_to_save) are held in: float32 on a bf16, fp16
    or quantized base (peft's autocast_adapter_dtype: a small update to a bf16 weight rounds away, and Adam's
    moments would be bf16 too); the kernels cast them to the compute dtype. A float64 base keeps float64."""
    return torch.float64 if base_dtype == torch.float64 else torch.float32


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
        dora: bool = False,
        init: str = "kaiming",
    ):
        super().__init__()
        if not is_adaptable(base_layer):
            raise UserError(f"{name or 'module'}: LoRA needs nn.Linear or Conv1D, got {type(base_layer).__name__}")
        validate_hyperparameters(rank, alpha, dropout, scaling)
        validate_init(init)
        check_variant_on_base(base_layer, dora, init, name)
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
        dtype = adapter_dtype(weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(len(self.slices) * rank, d_in, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(
            torch.zeros(sum(s.rows for s in self.slices), rank, dtype=dtype, device=weight.device)
        )
        self.dora = dora
        self.initialise(init)
        self.merged = False
        self._merged_gain = None
        self.shared_base = False  # a packed trial's base is batched with other trials' (model/shared_base.py)
        self.train(base_layer.training)  # a wrapper made for an eval-mode model must not drop out

    @torch.no_grad()
    def initialise(self, init: str) -> None:
        """A and B per slice (init.py); pissa/olora also move their product out of the base (kept as A0, B0).
        DoRA's magnitude starts at the row norms of the (new) W0 + scale·B·A. Once, on a fresh layer."""
        self.init = init
        weight = self.base_layer.weight
        if not weight.is_meta:  # a skeleton for checking shapes has nothing to compute
            self._init_low_rank(init)
        if self.dora:
            d_out = self.d_out
            whole = len(self.slices) == 1 and self.slices[0].rows == d_out
            rows = None if whole else torch.cat([sl.row_index(d_out) for sl in self.slices]).to(weight.device)
            self.register_buffer("dora_rows", rows, persistent=False)  # adapted rows of a fused module
            self.register_buffer(
                "w0_row_sq", self._base_rows().float().pow(2).sum(1).to(self.lora_A.dtype), persistent=False
            )
            self.lora_magnitude = nn.Parameter(self.row_norms())

    def _init_low_rank(self, init: str) -> None:
        weight = self.base_layer.weight
        row = 0
        for j, sl in enumerate(self.slices):
            a_j, b_j = self.lora_A[j * self.rank : (j + 1) * self.rank], self.lora_B[row : row + sl.rows]
            index = sl.row_index(self.d_out).to(weight.device)
            w0 = self.weight_t().t()[index].float() if changes_base(init) else None
            init_low_rank(init, a_j.data, b_j.data, w0, self.scale)
            row += sl.rows
        if changes_base(init):
            self.register_buffer("lora_A0", self.lora_A.detach().clone(), persistent=False)
            self.register_buffer("lora_B0", self.lora_B.detach().clone(), persistent=False)
            self._shift_base(-1)  # the base keeps W0 − scale·B0·A0

    def _base_rows(self) -> torch.Tensor:
        """The base weight's adapted rows as (rows, d_in): a view for a whole module, a copy for slices."""
        w = self.weight_t().t()
        return w if self.dora_rows is None else w[self.dora_rows]

    @torch.no_grad()
    def row_norms(self) -> torch.Tensor:
        """‖W0 + scale·B·A‖ per adapted row (detached), without forming the matrix (see the module docstring).
        In the parameters' dtype even under autocast: a bf16 cross term would move the gain by ~1e-3."""
        device = self.lora_A.device.type
        if device not in ("cpu", "cuda"):  # meta (the preflight skeleton): no autocast there to switch off
            return self._row_norms()
        with torch.autocast(device, enabled=False):
            return self._row_norms()

    def _row_norms(self) -> torch.Tensor:
        w, a, b, s, r = self._base_rows(), self.lora_A, self.lora_B, self.scale, self.rank
        parts, row = [], 0
        for j, sl in enumerate(self.slices):
            a_j, b_j, w_j = a[j * r : (j + 1) * r], b[row : row + sl.rows], w[row : row + sl.rows]
            cross = (w_j.to(a.dtype) @ a_j.t()).mul_(b_j).sum(1)
            square = (b_j @ (a_j @ a_j.t())).mul_(b_j).sum(1)
            parts.append(square.mul_(s * s).add_(cross, alpha=2 * s))
            row += sl.rows
        sq = parts[0] if len(parts) == 1 else torch.cat(parts)
        return sq.add_(self.w0_row_sq).clamp_min_(0).sqrt_()

    def dora_gain(self) -> torch.Tensor | None:
        """m / ‖W0 + scale·B·A‖ per output row (1 outside the adapted slices), differentiable in m; None: no DoRA."""
        if not self.dora:
            return None
        gain = self.lora_magnitude / self.row_norms()
        if self.dora_rows is None:
            return gain
        return torch.ones(self.d_out, dtype=gain.dtype, device=gain.device).index_put((self.dora_rows,), gain)

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
        if self.quantized or self.shared_base:
            # The base through its own forward (bitsandbytes' autograd gives the input gradient through the
            # dequantized weight; a packed trial's base matmul is batched with other trials'); the low-rank term
            # accumulated into its output in place by lorasweep's kernel.
            return low_rank_add(
                self.base_layer(x), x if x_lora is None else x_lora, self.lora_A, self.lora_B, self.scale, self.slices
            )
        return low_rank_linear(
            x,
            x_lora,
            self.weight_t(),
            self.base_layer.bias,
            self.lora_A,
            self.lora_B,
            self.scale,
            self.slices,
            self.dora_gain(),
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
            gain = self.dora_gain()  # from the unmerged base, kept: unmerging needs the same factor (as peft)
            self._shift_base(+1)
            if gain is not None:
                self._scale_rows(gain)
                self._merged_gain = gain.detach()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            if self._merged_gain is not None:
                self._scale_rows(1 / self._merged_gain)
                self._merged_gain = None
            self._shift_base(-1)
            self.merged = False

    def _shift_base(self, sign: int, delta: torch.Tensor | None = None) -> None:
        delta = (self.delta_weight() if delta is None else delta).to(self.base_layer.weight.dtype)
        self.base_layer.weight.add_(delta.t() if self.fan_in_fan_out else delta, alpha=sign)

    def _scale_rows(self, gain: torch.Tensor) -> None:
        """W ← gain ⊙ W per output row."""
        gain = gain.to(self.base_layer.weight.dtype)
        self.base_layer.weight.mul_(gain if self.fan_in_fan_out else gain.unsqueeze(1))

    def extra_repr(self) -> str:
        names = ",".join(n for n in self.slice_names if n)
        return (
            f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:g}"
            + (f", slices={names}" if names else "")
            + (", dora" if self.dora else "")
            + (f", init={self.init}" if self.init != "kaiming" else "")
        )


def check_variant_on_base(base_layer: nn.Module, dora: bool, init: str, name: str = "") -> None:
    """DoRA and pissa/olora need the base's float weights; a bitsandbytes layer holds packed integers."""
    if not is_quantized(base_layer):
        return
    where = name or "module"
    if dora:
        raise UserError(
            f"{where}: lora.dora=true is not supported on a quantized base (model.quantization): DoRA "
            "needs the float weight's row norms; use model.quantization=none or lora.dora=false"
        )
    if changes_base(init):
        raise UserError(
            f"{where}: lora.init={init} needs the float base weights (it subtracts B·A from them); "
            "use model.quantization=none or lora.init=kaiming"
        )
