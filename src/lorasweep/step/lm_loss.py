"""The causal-LM loss without the full-vocabulary logits: the LM head runs only at the trained positions, in
chunks (TRL's chunked NLL, Liger's fused linear cross-entropy).

The model runs with its output embedding swapped for a capture that keeps the last hidden state (and the
autocast in effect where the head would have run); the head is then applied to the positions whose shifted label
is not IGNORE, `chunk_rows` rows at a time, each chunk's logits in float32 as the full computation has them. No
(batch, sequence, vocabulary) tensor exists: a Llama-3 eval batch of 128 × 1024 tokens held 67 GB of float32
logits (and a copy); a chunk holds CHUNK_BYTES of them.

Training goes through one autograd node (`_ChunkedNLL`) that holds n × hidden, never the log-softmax of every
position (n × vocabulary): for a frozen lm_head the hidden rows' gradient, computed with each chunk's logits
(Liger's fusion); for a head with trainable parts (a LoRA on lm_head, `modules_to_save: [lm_head]`) or one a
pack routes, the rows themselves, each chunk's logits recomputed in backward (the head's dropout replayed from
the saved generator state) for the gradients of the rows and of the head's parameters.

Selecting the target rows (a boolean index) waits for the device once per forward: their number sets the
shapes. On fake tensors (the memory estimate) labels have no values, and every position counts as a target.

A model whose head is not a plain last step (logit soft-capping, a logit scale) or is a mixed-adapter layer
(lora/multi_layers.py: one adapter per example, so it needs the batch's rows) takes the full computation.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE  # the label the loss skips (the collator writes it)

CHUNK_BYTES = 128 * 2**20  # float32 logits per chunk: 261 rows of Llama-3's 128,256-token vocabulary
_AFTER_HEAD = ("final_logit_softcapping", "logit_scale")  # config fields of heads that are not a last step


def causal_lm_losses(model: nn.Module, inputs: dict, labels: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """(mean loss, summed loss (detached), target count, correct): next-token cross-entropy at every position
    whose shifted label is not IGNORE, and how many of them the argmax predicts; the head's float32 logits at
    most `chunk_bytes` at a time."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    head = _plain_head(core)
    if head is None:
        return full_logits_losses(model(**inputs).logits.float(), labels)
    with _captured(core, head) as capture:
        model(**inputs, use_cache=False)
    hidden, autocast = capture.hidden, capture.autocast
    if hidden is None:
        raise RuntimeError(f"{type(core).__name__} did not call its output embedding")
    rows_h, targets = _trained_rows(hidden, labels)
    rows = chunk_rows(head, chunk_bytes)
    params = [p for p in head.parameters() if p.requires_grad]
    with _autocast(autocast):
        if torch.is_grad_enabled() and (rows_h.requires_grad or params):
            total, correct = _ChunkedNLL.apply(rows_h, targets, head, rows, autocast, *params)
        else:
            total, correct = _chunked(head, rows_h, targets, rows)
    count = (labels[:, 1:] != IGNORE).sum()
    return total / count.clamp(min=1), total.detach(), count, correct


def full_logits_losses(logits: torch.Tensor, labels: torch.Tensor):
    """The same figures from the (batch, sequence, vocabulary) logits: the reference, and the fallback."""
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    losses = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="none")
    mask = shift_labels != IGNORE
    correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum()
    count = mask.sum()
    total = losses.sum()
    return total / count.clamp(min=1), total.detach(), count, correct


def chunk_rows(head: nn.Module, chunk_bytes: int = CHUNK_BYTES) -> int:
    vocab = getattr(head, "out_features", None) or getattr(head, "d_out", None) or head.weight.shape[0]
    return max(1, chunk_bytes // (4 * int(vocab)))


def _plain_head(core: nn.Module) -> nn.Module | None:
    from ..lora.multi_layers import MultiHeadLinear, MultiLoraLayer

    get = getattr(core, "get_output_embeddings", None)
    head = get() if get is not None else None
    config = getattr(core, "config", None)
    if head is None or isinstance(head, (MultiHeadLinear, MultiLoraLayer)):
        return None
    if any(getattr(config, key, None) is not None for key in _AFTER_HEAD):
        return None
    return head


class _Capture(nn.Module):
    """Stands in for the output embedding for one forward: keeps its input and the autocast around it, and returns
    a zero-width tensor as the logits (what the model does with them afterwards costs nothing)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.autocast = None, None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden, device = hidden, hidden.device.type
        if torch.is_autocast_enabled(device):
            self.autocast = (device, torch.get_autocast_dtype(device))
        return hidden[..., :0]


@contextmanager
def _captured(core: nn.Module, head: nn.Module):
    parent, attr = next((m, n) for m in core.modules() for n, child in m.named_children() if child is head)
    capture = _Capture()
    setattr(parent, attr, capture)
    try:
        yield capture
    finally:
        setattr(parent, attr, head)


def _trained_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states (n, hidden) that predict a trained label, and those labels (n,)."""
    states, targets = hidden[:, :-1], labels[:, 1:]
    if _has_no_values(labels):  # the memory estimate's fake tensors: every position trained (the worst case)
        return states.reshape(-1, states.shape[-1]), targets.reshape(-1)
    mask = targets != IGNORE
    return states[mask], targets[mask]


def _has_no_values(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _chunked(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, rows: int):
    """(summed loss, correct) over the rows, `rows` at a time."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        logits = _float(head(hidden[start : start + rows]))
        target = targets[start : start + rows]
        total = total + _nll(logits, target)
        correct = correct + (logits.argmax(-1) == target).sum()
    return total, correct


def _float(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits from a 16-bit head, as the full computation's .float() (a float64 model keeps float64)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")


def _draws_random(head: nn.Module) -> bool:
    return any(
        m.training and (getattr(m, "dropout_p", 0) > 0 or (isinstance(m, nn.Dropout) and m.p > 0))
        for m in head.modules()
    )


class _ChunkedNLL(torch.autograd.Function):
    """(summed loss, correct) of head(hidden) against targets, in chunks. A frozen plain Linear head (the usual
    lm_head) is fused: each chunk's hidden gradient, (softmax − onehot)·W, is computed with its logits and kept
    (n × hidden, the size of the rows themselves). Any other head (a LoRA on it, a trained head, one the pack
    routes) keeps the rows and recomputes each chunk in backward, its dropout replayed."""

    @staticmethod
    def forward(ctx, hidden, targets, head, rows, autocast, *params):
        ctx.fused = not params and type(head) is nn.Linear and "forward" not in vars(head)
        ctx.mark_non_differentiable(targets)
        if ctx.fused:
            total, correct, grad = _fused(head, hidden, targets, rows)
            ctx.save_for_backward(grad)
            ctx.mark_non_differentiable(correct)
            return total, correct
        device = hidden.device
        ctx.rng = None
        if _draws_random(head):  # replayed in backward, as torch.utils.checkpoint does
            ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        total, correct = _chunked(head, hidden, targets, rows)
        ctx.save_for_backward(hidden, targets)
        ctx.head, ctx.rows, ctx.autocast, ctx.params = head, rows, autocast, params
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        if ctx.fused:
            (grad,) = ctx.saved_tensors
            return (grad * grad_total, None, None, None, None)
        hidden, targets = ctx.saved_tensors
        need_hidden = ctx.needs_input_grad[0]
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[5:]) if need]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_params = [None] * len(ctx.params)
        device = hidden.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=ctx.rng is not None):
            if ctx.rng is not None:
                torch.set_rng_state(ctx.rng[0])
                if ctx.rng[1] is not None:
                    torch.cuda.set_rng_state(ctx.rng[1], device)
            for start in range(0, hidden.shape[0], ctx.rows):
                rows = hidden[start : start + ctx.rows].detach().requires_grad_(need_hidden)
                with torch.enable_grad(), _autocast(ctx.autocast):
                    loss = _nll(_float(ctx.head(rows)), targets[start : start + ctx.rows])
                inputs = ([rows] if need_hidden else []) + [ctx.params[i] for i in wanted]
                grads = list(torch.autograd.grad(loss, inputs, grad_total, allow_unused=True))
                if need_hidden:
                    grad_hidden[start : start + ctx.rows] = grads.pop(0)
                for i, g in zip(wanted, grads):
                    if g is not None:
                        grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
        return (grad_hidden, None, None, None, None, *grad_params)


def _fused(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, rows: int):
    """(summed loss, correct, d loss / d hidden) for a frozen Linear head, one chunk of logits at a time. The
    gradient is what autograd's backward computes: d/dlogits in float32, cast to the logits' dtype, times W."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    grad = torch.empty_like(hidden)
    for start in range(0, hidden.shape[0], rows):
        z = head(hidden[start : start + rows])
        logits, target = _float(z), targets[start : start + rows]
        total = total + _nll(logits, target)
        correct = correct + (logits.argmax(-1) == target).sum()
        trained = (target != IGNORE).unsqueeze(1).to(logits.dtype)  # (static shapes: fake tensors too)
        d_logits = torch.softmax(logits, dim=-1).mul_(trained)
        d_logits.scatter_add_(1, target.clamp(min=0).unsqueeze(1), -trained)
        grad[start : start + rows] = d_logits.to(z.dtype) @ head.weight.to(z.dtype)
    return total, correct, grad


def _autocast(state: tuple | None):
    """The autocast the head ran under inside the model's forward ((device, dtype), or None: off)."""
    return nullcontext() if state is None else torch.autocast(state[0], dtype=state[1])
