"""The layers of a mixed-adapter batch (multi.py): the adapters' stacked LoRA factors or head weights, one slot
chosen per example.

Dtypes: the stacks are held in the dtype the base computes in (a float base's weight dtype; a 4-bit base's
compute_dtype, else float32) and each layer computes in the dtype of what it adds to: the base output (a bf16
model, a bf16 compute dtype, autocast). Where a forward arrives in another dtype the stacks are cast to it once
and kept, not at every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .kernel import compute_dtype
from .layer import is_quantized, linear_dims


class Selection:
    """The adapter index of every example of the current forward; shared by all layers of one AdapterSet."""

    ids: torch.Tensor | None = None  # (b,) adapter indices, base = K
    uniform: int | None = None  # the one index when every example uses the same adapter

    def current(self, x: torch.Tensor) -> tuple[torch.Tensor | None, int | None]:
        if self.ids is None:
            raise UserError("no adapter indices set: run the model inside `with adapters.use(ids):`")
        if x.dim() < 2 or x.shape[0] != self.ids.shape[0]:
            raise UserError(
                f"batch has {x.shape[0] if x.dim() else 0} examples but {self.ids.shape[0]} adapter "
                "indices were given (one per example)"
            )
        return self.ids, self.uniform


def serving_dtype(base_layer: nn.Module) -> torch.dtype:
    """What a base layer computes in, as far as its weights tell: a float weight's dtype, a 4-bit layer's
    compute_dtype, else float32 (an int8 layer returns its input's dtype: a forward recasts if need be)."""
    weight = base_layer.weight
    if not is_quantized(base_layer):
        return weight.dtype
    return getattr(base_layer, "compute_dtype", None) or torch.float32


class _Stacks(nn.Module):
    """Holds floating buffers that are cast together, once, to the dtype a forward computes in."""

    def _in(self, dtype: torch.dtype) -> None:
        for name, buffer in list(self.named_buffers(recurse=False)):
            if buffer is not None and buffer.dtype.is_floating_point and buffer.dtype != dtype:
                setattr(self, name, buffer.to(dtype))  # a registered buffer's name: replaced, still a buffer


class MultiLoraLayer(_Stacks):
    def __init__(
        self,
        base_layer,
        lora_A,
        lora_Bt,
        scales: list[float],
        ranks: list[int],
        slot_of: list[int],
        selection: Selection,
        gains: torch.Tensor | None = None,
    ):
        super().__init__()
        self.base_layer, self.selection = base_layer, selection
        self.d_in, self.d_out = linear_dims(base_layer)
        weight = base_layer.weight
        self.quantized = is_quantized(base_layer)  # a bitsandbytes base: only its own forward reads its weight
        to = dict(dtype=serving_dtype(base_layer), device=weight.device)
        self.register_buffer("lora_A", lora_A.to(**to), persistent=False)  # (S+1, R, d_in)
        self.register_buffer("lora_Bt", lora_Bt.to(**to), persistent=False)  # (S+1, R, d_out)
        self.register_buffer("scales", torch.tensor(scales, **to), persistent=False)  # (S+1,)
        self.register_buffer("slot_of", torch.tensor(slot_of, device=weight.device), persistent=False)  # (K+1,)
        # DoRA's per-row factors (S+1, d_out), or None when no adapter here is DoRA
        self.register_buffer("gains", None if gains is None else gains.to(**to), persistent=False)
        self.scale_list, self.ranks, self.slot_list = scales, ranks, slot_of

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, uniform = self.selection.current(x)
        if uniform is not None:
            return self._single(x, self.slot_list[uniform])
        y = self.base_layer(x)
        self._in(y.dtype)
        x = x if x.dtype == y.dtype else x.to(y.dtype)
        b, slots = x.shape[0], self.slot_of[ids]
        with torch.autocast(x.device.type, enabled=False):  # every operand is in y's dtype already
            xa = torch.bmm(x.reshape(b, -1, self.d_in), self.lora_A[slots].transpose(1, 2))  # (b, T, R)
            xa.mul_(self.scales[slots].view(b, 1, 1))
            bias = self.base_layer.bias
            if self.gains is not None and bias is not None:
                y.sub_(bias)
            y.view(b, -1, self.d_out).baddbmm_(xa, self.lora_Bt[slots])
            if self.gains is not None:
                y.view(b, -1, self.d_out).mul_(self.gains[slots].unsqueeze(1))
                if bias is not None:
                    y.add_(bias)
        return y

    def _single(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """One adapter for the whole batch: merged on the fly when the batch has enough tokens (the merge costs
        d_in·d_out·r, the low-rank path N·r·(d_in+d_out)), else the two thin matmuls."""
        r, scale = self.ranks[s], self.scale_list[s]
        if not r:
            return self.base_layer(x)
        weight, bias = self.base_layer.weight, self.base_layer.bias
        x2 = x.reshape(-1, self.d_in)
        if not self.quantized and x2.shape[0] * (self.d_in + self.d_out) >= 2 * self.d_in * self.d_out:
            a, bt = self.lora_A[s, :r], self.lora_Bt[s, :r]
            gain = None if self.gains is None else self.gains[s].to(weight.dtype)
            delta = (bt.t() @ a).mul_(scale).to(weight.dtype)  # rounded as LoraLayer.merge rounds it
            if isinstance(self.base_layer, nn.Linear):
                merged = weight + delta
                return F.linear(x, merged if gain is None else merged.mul_(gain.unsqueeze(1)), bias)
            merged_t = weight + delta.t()  # Conv1D keeps W as (d_in, d_out)
            if gain is not None:
                merged_t.mul_(gain)
            y = torch.addmm(bias, x2, merged_t) if bias is not None else x2 @ merged_t
            return y.view(*x.shape[:-1], self.d_out)
        y = self.base_layer(x)
        self._in(y.dtype)
        a, bt = self.lora_A[s, :r], self.lora_Bt[s, :r]
        gain = None if self.gains is None else self.gains[s]
        x2 = x2 if x2.dtype == y.dtype else x2.to(y.dtype)
        with torch.autocast(x.device.type, enabled=False):
            if gain is not None and bias is not None:
                y.sub_(bias)
            y.view(-1, self.d_out).addmm_(x2 @ a.t(), bt, alpha=scale)
            if gain is not None:
                y.mul_(gain)
                if bias is not None:
                    y.add_(bias)
        return y

    def extra_repr(self) -> str:
        return f"adapters={len(self.slot_list) - 1}, stacked={len(self.ranks) - 1}, max_rank={self.lora_A.shape[1]}"


class MultiHeadLinear(_Stacks):
    """A Linear in modules_to_save with its own weights per adapter (slot S: the base module's weights)."""

    def __init__(
        self,
        base_layer: nn.Linear,
        weights: list[torch.Tensor],
        biases: list,
        slot_of: list[int],
        selection: Selection,
    ):
        super().__init__()
        self.base_layer, self.selection, self.slot_list = base_layer, selection, slot_of
        to = dict(dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        stack = lambda ts: torch.stack([t.detach().to(**to) for t in ts])  # noqa: E731
        self.register_buffer("weight", stack(weights + [base_layer.weight]), persistent=False)
        bias = None if base_layer.bias is None else stack(biases + [base_layer.bias])
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("slot_of", torch.tensor(slot_of, device=to["device"]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, uniform = self.selection.current(x)
        dtype = compute_dtype(x)
        self._in(dtype)
        x = x if x.dtype == dtype else x.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            if uniform is not None:
                s = self.slot_list[uniform]
                return F.linear(x, self.weight[s], None if self.bias is None else self.bias[s])
            b, slots = x.shape[0], self.slot_of[ids]
            y = torch.bmm(x.reshape(b, -1, x.shape[-1]), self.weight[slots].transpose(1, 2))
            if self.bias is not None:
                y += self.bias[slots].unsqueeze(1)
        return y.view(*x.shape[:-1], -1)
