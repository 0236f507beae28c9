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
    def forward(ctx, x, x_lora, weight_t, bias, lora_A, lora_B, gain, scale, slices):
        lead, d_in = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, d_in)
        xl2 = x2 if x_lora is None else x_lora.reshape(-1, d_in)
        bias_first = bias is not None and gain is None
        y = torch.addmm(bias, x2, weight_t) if bias_first else x2 @ weight_t
        xa = xl2 @ lora_A.t()
        rank = lora_A.shape[0] // len(slices)
        _add_low_rank(y, xa, lora_B, slices, rank, scale)
        if gain is not None:
            y.mul_(gain)
            if bias is not None:
                y.add_(bias)
        ctx.save_for_backward(
            x2,
            None if x_lora is None else xl2,
            weight_t,
            lora_A,
            lora_B,
            xa,
            gain,
            None if gain is None else y,
            None if gain is None else bias,
        )
        ctx.scale, ctx.slices, ctx.rank, ctx.lead = scale, slices, rank, lead
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x2, xl2, weight_t, lora_A, lora_B, xa, gain, y, bias = ctx.saved_tensors
        scale, slices, rank = ctx.scale, ctx.slices, ctx.rank
        need_x, need_xl, need_w, need_b, need_A, need_B, need_gain = ctx.needs_input_grad[:7]
        separate_lora_input = xl2 is not None
        if not separate_lora_input:
            xl2 = x2
        g = grad_y.reshape(-1, grad_y.shape[-1])
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
        gb = _grad_through_B(g_slices, slices, lora_B)  # (N, k·r)

        grad_x = grad_xl = grad_w = grad_A = grad_B = None
        if need_x or need_xl:
            grad_x = g @ weight_t.t()
            if separate_lora_input:
                grad_xl = (gb @ lora_A).mul_(scale).view(*ctx.lead, -1)
            else:
                grad_x.addmm_(gb, lora_A, alpha=scale)
            grad_x = grad_x.view(*ctx.lead, -1)
        if need_w:
            grad_w = x2.t() @ g
        if need_A:
            grad_A = (gb.t() @ xl2).mul_(scale)
        if need_B:
            grad_B = _grad_B(xa, g_slices, rank, scale)
        return grad_x, grad_xl, grad_w, grad_bias, grad_A, grad_B, grad_gain, None, None


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
    Under autocast every operand is cast to the autocast dtype first, as F.linear would be.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        with torch.autocast(device_type, enabled=False):
            return LowRankLinear.apply(
                cast(x),
                cast(x_lora),
                cast(weight_t),
                cast(bias),
                cast(lora_A),
                cast(lora_B),
                cast(gain),
                scale,
                tuple(slices),
            )
    return LowRankLinear.apply(x, x_lora, weight_t, bias, lora_A, lora_B, gain, scale, tuple(slices))


class LowRankAdd(torch.autograd.Function):
    """y += scale·(x·Aᵀ)·Bᵀ in place on a base output computed elsewhere (a quantized base's own forward).

    The base's autograd node gives the input gradient through its (dequantized) weight; this node adds only
    the thin low-rank terms: the input gradient scale·(g·B)·A and the gradients of A and B. y is modified in
    place (no second full-size output, no full-size add), as in LowRankLinear.
    """

    @staticmethod
    def forward(ctx, y, x, lora_A, lora_B, scale, slices):
        d_in = x.shape[-1]
        x2 = x.reshape(-1, d_in)
        y2 = y.view(-1, y.shape[-1])
        xa = x2 @ lora_A.t()
        rank = lora_A.shape[0] // len(slices)
        _add_low_rank(y2, xa, lora_B, slices, rank, scale)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, lora_A, lora_B, xa)
        ctx.scale, ctx.slices, ctx.rank, ctx.lead = scale, slices, rank, x.shape[:-1]
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2, lora_A, lora_B, xa = ctx.saved_tensors
        scale, slices, rank = ctx.scale, ctx.slices, ctx.rank
        _, need_x, need_A, need_B = ctx.needs_input_grad[:4]
        g = grad_y.reshape(-1, grad_y.shape[-1])
        g_slices = _slice_grads(g, slices)
        gb = _grad_through_B(g_slices, slices, lora_B)
        grad_x = grad_A = grad_B = None
        if need_x:
            grad_x = (gb @ lora_A).mul_(scale).view(*ctx.lead, -1)
        if need_A:
            grad_A = (gb.t() @ x2).mul_(scale)
        if need_B:
            grad_B = _grad_B(xa, g_slices, rank, scale)
        return grad_y, grad_x, grad_A, grad_B, None, None


def low_rank_add(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    slices: Sequence[OutputSlice],
) -> torch.Tensor:
    """y (..., d_out), the base's output for x (..., d_in), plus the low-rank term, in y's dtype.

    The LoRA operands are cast to y's dtype (a bf16 compute dtype or autocast gives a bf16 y; the fp32 LoRA
    parameters then get fp32 gradients through the cast, as under autocast elsewhere).
    """
    dtype = y.dtype
    device_type = x.device.type
    cast = lambda t: t if t.dtype == dtype else t.to(dtype)  # noqa: E731
    if y._base is not None or not y.is_contiguous():  # a view (or strided) output cannot be modified in place
        y = y.contiguous() if not y.is_contiguous() else y.clone()
    with torch.autocast(device_type, enabled=False):
        return LowRankAdd.apply(y, cast(x), cast(lora_A), cast(lora_B), scale, tuple(slices))


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
