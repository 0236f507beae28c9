"""Many LoRA adapters on one frozen base model, chosen per example: mixed-adapter batches.

    adapters = load_adapters(model, {"sst": "runs/ab12/adapter", "news": "runs/cd34/adapter"})
    with adapters.use(["sst", "base", "news", "sst"]):     # one adapter per example ("base": none)
        logits = model(**batch).logits

Every adapted module becomes a MultiLoraLayer holding the adapters' exported A (r, d_in) and B (d_out, r) stacked
as A: (S+1, R, d_in), Bᵀ: (S+1, R, d_out) — S adapters that touch the module, R their largest rank (smaller ranks
padded with zeros: the same function), slot S all zeros for "base" and for adapters without this module. A fused
q|v adapter is exported as one rank-k·r LoRA on the whole fused module (block-structured B), so it needs no slice
code. For x (b, T, d_in) with slots s (b,): y = base(x) + scale[s] · bmm(bmm(x, A[s]ᵀ), Bᵀ[s]) — two batched
matmuls per layer for any mix of adapters, no Python loop over adapters. A batch using one adapter takes the
single-adapter path (merged on the fly for large batches). Linear modules_to_save (a classifier head per adapter)
become MultiHeadLinear: the same per-example gather over the head weights.

DoRA adapters mix with plain ones (peft refuses such batches): at inference DoRA's factor g = m / ‖W0 + s·B·A‖
is a constant per output row, computed once at load; a module where some adapter is DoRA holds gains (S+1, d_out)
(1 for plain adapters and the base) and computes y = g[s] ⊙ (x·W0ᵀ + s·x·Aᵀ·Bᵀ) + b: one extra elementwise pass.

Here: the AdapterSet and loading; multi_read.py reads and checks one adapter; multi_layers.py holds the layers
(and their dtypes: every base, bf16, fp16, 4-bit with a bf16 compute dtype, int8, computes in its own dtype).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError
from .inject import SETTINGS_ATTR, lora_layers
from .layer import linear_dims
from .multi_layers import MultiHeadLinear, MultiLoraLayer, Selection
from .multi_read import read_adapter

__all__ = ["BASE", "AdapterSet", "MultiHeadLinear", "MultiLoraLayer", "load_adapters"]

MULTI_ATTR = "lorasweep_multi"
BASE = "base"  # the adapter name meaning "no adapter"; index -1


class AdapterSet:
    """K adapters loaded onto one model; `use(ids)` selects one per example for the forwards inside it."""

    def __init__(self, model, names: list[str], paths: list[Path], selection: Selection, originals: dict):
        self.model, self.names, self.paths = model, names, paths
        self.index = {n: i for i, n in enumerate(names)}
        self._selection, self._originals = selection, originals

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, adapters) -> torch.Tensor:
        """(b,) int64 adapter indices from names ("base" → -1) or ints; ValueError for unknown/out of range."""
        if isinstance(adapters, torch.Tensor):
            if adapters.dim() != 1 or adapters.dtype.is_floating_point or adapters.dtype == torch.bool:
                raise UserError(
                    f"adapter indices must be a 1-D integer tensor, got {adapters.dtype} {tuple(adapters.shape)}"
                )
            ids = adapters.long()
        else:
            ids = torch.tensor([self._one(a) for a in adapters], dtype=torch.long)
        bad = ids[(ids < -1) | (ids >= len(self))]
        if bad.numel():
            raise UserError(
                f"adapter index {int(bad[0])} out of range: {len(self)} adapters loaded, valid "
                f"indices are 0..{len(self) - 1} and -1 for the base model"
            )
        return ids

    def _one(self, a) -> int:
        if a is None or a == BASE:
            return -1
        if isinstance(a, str):
            if a not in self.index:
                raise UserError(f"unknown adapter {a!r}: loaded adapters are {', '.join(self.names)} (or 'base')")
            return self.index[a]
        if isinstance(a, bool) or not isinstance(a, int):
            raise UserError(f"adapter must be a name or an integer index, got {a!r}")
        return a

    @contextmanager
    def use(self, adapters):
        """Forwards inside use one adapter per example: names, ints (-1 = base) or a 1-D int tensor."""
        ids = self.indices(adapters)
        ids = torch.where(ids < 0, len(self), ids)
        uniq = ids.unique()
        previous = (self._selection.ids, self._selection.uniform)
        self._selection.ids = ids.to(self.model.get_submodule(next(iter(self._originals))).slot_of.device)
        self._selection.uniform = int(uniq[0]) if uniq.numel() == 1 else None
        try:
            yield self
        finally:
            self._selection.ids, self._selection.uniform = previous

    def bytes_per_adapter(self) -> dict[str, int]:
        """Bytes each adapter occupies in the stacks (its padded A and Bᵀ slots and its own head weights)."""
        out = dict.fromkeys(self.names, 0)
        for m in self.model.modules():
            if isinstance(m, (MultiLoraLayer, MultiHeadLinear)):
                per_slot = sum(t[0].numel() * t.element_size() for t in m.buffers(recurse=False) if t.dim() > 1)
                zero = (m.lora_A if isinstance(m, MultiLoraLayer) else m.weight).shape[0] - 1
                for name, s in zip(self.names, m.slot_list):
                    out[name] += per_slot if s != zero else 0
        return out

    def unload(self) -> nn.Module:
        """Put the original modules back: the model is the bare base model again."""
        for name, module in self._originals.items():
            _set_module(self.model, name, module)
        delattr(self.model, MULTI_ATTR)
        return self.model


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _stack_lora(base: nn.Module, found: list[tuple], slot_of: list[int], selection) -> MultiLoraLayer:
    (d_in, d_out), ranks = linear_dims(base), [a.shape[0] for a, _, _, _ in found]
    a_stack = torch.zeros(len(found) + 1, max(ranks), d_in)
    bt_stack = torch.zeros(len(found) + 1, max(ranks), d_out)
    for s, (a, b, _, _) in enumerate(found):
        a_stack[s, : a.shape[0]], bt_stack[s, : a.shape[0]] = a, b.t()
    scales = [scale for _, _, scale, _ in found] + [0.0]
    gains = None
    if any(g is not None for *_, g in found):
        gains = torch.ones(len(found) + 1, d_out)
        for s, (*_, g) in enumerate(found):
            if g is not None:
                gains[s] = g
    return MultiLoraLayer(base, a_stack, bt_stack, scales, ranks + [0], slot_of, selection, gains)


def _stack_head(base: nn.Linear, found: list[dict], slot_of: list[int], selection) -> MultiHeadLinear:
    return MultiHeadLinear(base, [f["weight"] for f in found], [f.get("bias") for f in found], slot_of, selection)


def load_adapters(
    model: nn.Module, adapters: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]]
) -> AdapterSet:
    """Load K peft-format adapters onto a bare base model for mixed batches. Everything is read and checked before
    the model changes: any error (other base model, shapes, duplicate names) leaves it untouched."""
    pairs = list(adapters.items()) if isinstance(adapters, Mapping) else [tuple(p) for p in adapters]
    if not pairs:
        raise UserError("no adapters given")
    names = [n for n, _ in pairs]
    for n in names:
        if not isinstance(n, str) or not n or n == BASE:
            raise UserError(f"adapter name {n!r} is not allowed (non-empty, and {BASE!r} means no adapter)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"duplicate adapter names: {', '.join(dupes)}")
    if hasattr(model, MULTI_ATTR) or hasattr(model, SETTINGS_ATTR) or any(True for _ in lora_layers(model)):
        raise UserError("load_adapters needs a bare base model; this one already has LoRA or adapters loaded")
    paths = [Path(p) for _, p in pairs]
    parsed = [read_adapter(model, p) for p in paths]

    selection, replacements = Selection(), {}
    for part, make in ((0, _stack_lora), (1, _stack_head)):
        for name in sorted({m for p in parsed for m in p[part]}):
            users = [i for i, p in enumerate(parsed) if name in p[part]]
            slot_of = [users.index(i) if i in users else len(users) for i in range(len(pairs))] + [len(users)]
            found = [parsed[i][part][name] for i in users]
            replacements[name] = make(model.get_submodule(name), found, slot_of, selection)
    originals = {name: model.get_submodule(name) for name in replacements}
    for name, module in replacements.items():
        _set_module(model, name, module)
    found = AdapterSet(model, names, paths, selection, originals)
    setattr(model, MULTI_ATTR, found)
    return found
