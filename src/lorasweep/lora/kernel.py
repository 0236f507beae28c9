"""y = x·W0ᵀ + b + scale·(x·Aᵀ)·Bᵀ as ONE autograd node.

Why not `base(x) + scale * B(A(x))` like peft: that builds a second full-size output and adds it (one extra
pass over y forward), and autograd adds the two full-size input gradients (one more pass backward), plus four
extra graph nodes per layer. Here the low-rank term is accumulated into the base matmul's output with
`addmm_`, and its input gradient into the base input gradient, so a LoRA layer costs the frozen layer plus
two thin (N×r) matmuls each way.

DoRA passes a per-output `gain` g = m / ‖W0 + scale·B·A‖ (the norm detached, as the DoRA paper and peft do):
y = g ⊙ (x·W0ᵀ + scale·(x·Aᵀ)·Bᵀ) + b, still one node. The gain is applied in place on the accumulated output;
its gradient Σ_N grad_y ⊙ (y − b) / g is read from the saved output (which the next layer holds anyway), so no
second full-size activation is kept.

An output may be split into slices (fused q|k|v projections): slice j adds B_j·A_j only to its own rows.
A slice is `OutputSlice(start, size, groups)`: the output is seen as `groups` equal blocks (attention heads
for GPT-NeoX's interleaved [q k v] per head; 1 for contiguous layouts) and the slice owns rows
[start, start+size) of every block.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class OutputSlice(NamedTuple):
    start: int
    size: int
    groups: int = 1

    @property
    def rows(self) -> int:
        return self.size * self.groups

    def row_index(self, d_out: int) -> torch.Tensor:
        """Indices of this slice's rows in the full output, in the order B's rows are stored."""
        block = d_out // self.groups
        offsets = torch.arange(self.groups).unsqueeze(1) * block
        return (offsets + torch.arange(self.start, self.start + self.size)).reshape(-1)

    def view(self, y: torch.Tensor) -> torch.Tensor:
        """This slice's part of a (N, d_out) tensor, as a view: (N, size) or (N, groups, size)."""
        if self.groups == 1:
            return y[:, self.start : self.start + self.size]
        return y.view(y.shape[0], self.groups, -1)[:, :, self.start : self.start + self.size]


def full_output(d_out: int) -> tuple[OutputSlice, ...]:
    return (OutputSlice(0, d_out),)


def _add_low_rank(y, xa, lora_B, slices, rank, scale):
    """y[slice j] += scale · xa_j · B_jᵀ, in place."""
    row = 0
    for j, sl in enumerate(slices):
        xa_j = xa[:, j * rank : (j + 1) * rank]
        b_j = lora_B[row : row + sl.rows]
        row += sl.rows
        if sl.groups == 1:
            sl.view(y).addmm_(xa_j, b_j.t(), alpha=scale)
        else:
            sl.view(y).add_((xa_j @ b_j.t()).view(y.shape[0], sl.groups, sl.size), alpha=scale)


def _slice_grads(g, slices):
    """Each slice's part of the output gradient as a (N, rows) matrix."""
    return [sl.view(g).reshape(g.shape[0], sl.rows) for sl in slices]


class LowRankLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_lora, weight_t, bias, lora_A, lora_B, gain, scale, slices, dtype):
        lead, d_in = x.shape[:-1], x.shape[-1]
        x2 = _to(x, dtype).reshape(-1, d_in)
        xl2 = x2 if x_lora is None else _to(x_lora, dtype).reshape(-1, d_in)
        w, b, a, lb, g = (_to(t, dtype) for t in (weight_t, bias, lora_A, lora_B, gain))
        bias_first = b is not None and g is None
        y = torch.addmm(b, x2, w) if bias_first else x2 @ w
        xa = xl2 @ a.t()
        rank = lora_A.shape[0] // len(slices)
        _add_low_rank(y, xa, lb, slices, rank, scale)
        if g is not None:
            y.mul_(g)
            if b is not None:
                y.add_(b)
        # The weights are saved as they are (the parameters themselves, no copies) and cast again in backward.
        ctx.save_for_backward(
            x2,
            None if x_lora is None else xl2,
            weight_t,
            lora_A,
            lora_B,
            xa,
            g,
            None if g is None else y,
            None if g is None else b,
        )
        ctx.scale, ctx.slices, ctx.rank, ctx.lead, ctx.dtype = scale, slices, rank, lead, dtype
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (x, x_lora, weight_t, bias, lora_A, lora_B, gain))
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x2, xl2, weight_t, lora_A, lora_B, xa, gain, y, bias = ctx.saved_tensors
        scale, slices, rank, dtype = ctx.scale, ctx.slices, ctx.rank, ctx.dtype
        need_x, need_xl, need_w, need_b, need_A, need_B, need_gain = ctx.needs_input_grad[:7]
        a, lb = _to(lora_A, dtype), _to(lora_B, dtype)
        separate_lora_input = xl2 is not None
        if not separate_lora_input:
            xl2 = x2
        g = _to(grad_y, dtype).reshape(-1, grad_y.shape[-1])
        grad_bias = grad_gain = None
        if need_b:
            grad_bias = g.sum(0)
        if gain is not None:
            if need_gain:  # Σ_N g ⊙ (y − b) / gain: the pre-gain output from the saved one
                grad_gain = (g * y).sum(0)
                if bias is not None:
                    grad_gain.sub_(g.sum(0) * bias)
                grad_gain.div_(gain)
            g = g * gain
        g_slices = _slice_grads(g, slices)
        gb = _grad_through_B(g_slices, slices, lb)  # (N, k·r)

        grad_x = grad_xl = grad_w = grad_A = grad_B = None
        if need_x or need_xl:
            grad_x = g @ _to(weight_t, dtype).t()
            if separate_lora_input:
                grad_xl = (gb @ a).mul_(scale).view(*ctx.lead, -1)
            else:
                grad_x.addmm_(gb, a, alpha=scale)
            grad_x = grad_x.view(*ctx.lead, -1)
        if need_w:
            grad_w = x2.t() @ g
        if need_A:
            grad_A = (gb.t() @ xl2).mul_(scale)
        if need_B:
            grad_B = _grad_B(xa, g_slices, rank, scale)
        grads = (grad_x, grad_xl, grad_w, grad_bias, grad_A, grad_B, grad_gain)
        # Each gradient in its input's dtype: float32 adapters get float32 gradients from a bf16 computation.
        return (*(_to(t, d) for t, d in zip(grads, ctx.dtypes)), None, None, None)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's where it is on, else its input's (a bf16 base gives bf16 inputs).
    LoRA's float32 parameters are cast to it inside the kernels, as F.linear's weights are under autocast."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def low_rank_linear(
    x: torch.Tensor,
    x_lora: torch.Tensor | None,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    slices: Sequence[OutputSlice],
    gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """x: (..., d_in); weight_t: (d_in, d_out); lora_A: (k·r, d_in); lora_B: (Σ slice rows, r); gain: (d_out,)
    DoRA's per-output factor, or None for plain LoRA.

    x_lora is the (dropped-out) input of the low-rank path, or None when it is x itself.
    Every operand is cast to the compute dtype (compute_dtype) inside the one node, and each gradient comes back
    in its operand's dtype: no cast nodes, and no low-precision copy of a weight is kept for backward.
    """
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return LowRankLinear.apply(x, x_lora, weight_t, bias, lora_A, lora_B, gain, scale, tuple(slices), dtype)


class LowRankAdd(torch.autograd.Function):
    """y += scale·(x·Aᵀ)·Bᵀ in place on a base output computed elsewhere (a quantized base's own forward).

    The base's autograd node gives the input gradient through its (dequantized) weight; this node adds only
    the thin low-rank terms: the input gradient scale·(g·B)·A and the gradients of A and B. y is modified in
    place (no second full-size output, no full-size add), as in LowRankLinear. Computed in y's dtype, each
    gradient returned in its operand's dtype.
    """

    @staticmethod
    def forward(ctx, y, x, lora_A, lora_B, scale, slices):
        dtype, d_in = y.dtype, x.shape[-1]
        x2 = _to(x, dtype).reshape(-1, d_in)
        y2 = y.view(-1, y.shape[-1])
        xa = x2 @ _to(lora_A, dtype).t()
        rank = lora_A.shape[0] // len(slices)
        _add_low_rank(y2, xa, _to(lora_B, dtype), slices, rank, scale)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, lora_A, lora_B, xa)
        ctx.scale, ctx.slices, ctx.rank, ctx.lead, ctx.dtype = scale, slices, rank, x.shape[:-1], dtype
        ctx.dtypes = (x.dtype, lora_A.dtype, lora_B.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2, lora_A, lora_B, xa = ctx.saved_tensors
        scale, slices, rank, dtype = ctx.scale, ctx.slices, ctx.rank, ctx.dtype
        _, need_x, need_A, need_B = ctx.needs_input_grad[:4]
        g = _to(grad_y, dtype).reshape(-1, grad_y.shape[-1])
        g_slices = _slice_grads(g, slices)
        gb = _grad_through_B(g_slices, slices, _to(lora_B, dtype))
        grad_x = grad_A = grad_B = None
        if need_x:
            grad_x = (gb @ _to(lora_A, dtype)).mul_(scale).view(*ctx.lead, -1)
        if need_A:
            grad_A = (gb.t() @ x2).mul_(scale)
        if need_B:
            grad_B = _grad_B(xa, g_slices, rank, scale)
        grads = (_to(t, d) for t, d in zip((grad_x, grad_A, grad_B), ctx.dtypes))
        return grad_y, *grads, None, None


def low_rank_add(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    slices: Sequence[OutputSlice],
) -> torch.Tensor:
    """y (..., d_out), the base's output for x (..., d_in), plus the low-rank term, in y's dtype.

    A bf16 compute dtype or autocast gives a bf16 y; the float32 LoRA parameters are cast to it inside the node
    and get float32 gradients.
    """
    if y._base is not None or not y.is_contiguous():  # a view (or strided) output cannot be modified in place
        y = y.contiguous() if not y.is_contiguous() else y.clone()
    with torch.autocast(x.device.type, enabled=False):
        return LowRankAdd.apply(y, x, lora_A, lora_B, scale, tuple(slices))


def _grad_through_B(g_slices, slices, lora_B: torch.Tensor) -> torch.Tensor:
    """g·B per slice, side by side: (N, k·r)."""
    row, parts = 0, []
    for g_j, sl in zip(g_slices, slices):
        # (B_jᵀ·g_jᵀ)ᵀ rather than g_j·B_j: BLAS is several times faster on this thin shape.
        parts.append(torch.mm(lora_B[row : row + sl.rows].t().contiguous(), g_j.t()).t())
        row += sl.rows
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _grad_B(xa: torch.Tensor, g_slices, rank: int, scale: float) -> torch.Tensor:
    """The gradient of B, slice by slice: scale · g_jᵀ·xa_j."""
    # (xa_jᵀ·g_j)ᵀ rather than g_jᵀ·xa_j: up to 6× faster for wide outputs (MLP up-projections).
    parts = [torch.mm(xa[:, j * rank : (j + 1) * rank].t(), g_j).mul_(scale).t() for j, g_j in enumerate(g_slices)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
