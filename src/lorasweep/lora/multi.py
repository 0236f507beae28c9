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
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .adapter_io import PREFIX, _read, check_same_base
from .inject import SETTINGS_ATTR, lora_layers
from .layer import is_adaptable, is_quantized, linear_dims
from .scaling import lora_scale

MULTI_ATTR = "lorasweep_multi"
BASE = "base"  # the adapter name meaning "no adapter"; index -1


class _Selection:
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


class MultiLoraLayer(nn.Module):
    def __init__(
        self,
        base_layer,
        lora_A,
        lora_Bt,
        scales: list[float],
        ranks: list[int],
        slot_of: list[int],
        selection: _Selection,
        gains: torch.Tensor | None = None,
    ):
        super().__init__()
        self.base_layer, self.selection = base_layer, selection
        self.d_in, self.d_out = linear_dims(base_layer)
        weight = base_layer.weight
        self.quantized = is_quantized(base_layer)  # a bitsandbytes base: only its own forward reads its weight
        to = dict(dtype=torch.float32 if self.quantized else weight.dtype, device=weight.device)
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
        b, slots = x.shape[0], self.slot_of[ids]
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
        a, bt = self.lora_A[s, :r], self.lora_Bt[s, :r]
        gain = None if self.gains is None else self.gains[s]
        weight, bias = self.base_layer.weight, self.base_layer.bias
        x2 = x.reshape(-1, self.d_in)
        if not self.quantized and x2.shape[0] * (self.d_in + self.d_out) >= 2 * self.d_in * self.d_out:
            delta = (bt.t() @ a).mul_(scale)  # rounded as LoraLayer.merge rounds it
            if isinstance(self.base_layer, nn.Linear):
                merged = weight + delta
                return F.linear(x, merged if gain is None else merged.mul_(gain.unsqueeze(1)), bias)
            merged_t = weight + delta.t()  # Conv1D keeps W as (d_in, d_out)
            if gain is not None:
                merged_t.mul_(gain)
            y = torch.addmm(bias, x2, merged_t) if bias is not None else x2 @ merged_t
            return y.view(*x.shape[:-1], self.d_out)
        y = self.base_layer(x)
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


class MultiHeadLinear(nn.Module):
    """A Linear in modules_to_save with its own weights per adapter (slot S: the base module's weights)."""

    def __init__(
        self,
        base_layer: nn.Linear,
        weights: list[torch.Tensor],
        biases: list,
        slot_of: list[int],
        selection: _Selection,
    ):
        super().__init__()
        self.base_layer, self.selection, self.slot_list = base_layer, selection, slot_of
        to = dict(dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        stack = lambda ts: torch.stack([t.detach() for t in ts]).to(**to)  # noqa: E731
        self.register_buffer("weight", stack(weights + [base_layer.weight]), persistent=False)
        bias = None if base_layer.bias is None else stack(biases + [base_layer.bias])
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("slot_of", torch.tensor(slot_of, device=to["device"]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, uniform = self.selection.current(x)
        if uniform is not None:
            s = self.slot_list[uniform]
            return F.linear(x, self.weight[s], None if self.bias is None else self.bias[s])
        b, slots = x.shape[0], self.slot_of[ids]
        y = torch.bmm(x.reshape(b, -1, x.shape[-1]), self.weight[slots].transpose(1, 2))
        if self.bias is not None:
            y += self.bias[slots].unsqueeze(1)
        return y.view(*x.shape[:-1], -1)


class AdapterSet:
    """K adapters loaded onto one model; `use(ids)` selects one per example for the forwards inside it."""

    def __init__(self, model, names: list[str], paths: list[Path], selection: _Selection, originals: dict):
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


def _pattern(patterns: dict | None, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup (a key matches a module name or its dotted suffix)."""
    if module in (patterns or {}):
        return patterns[module]
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _parse(model: nn.Module, path: Path) -> tuple[dict, dict]:
    """({module: (A, B, scale)}, {linear: {param: tensor}}) of one adapter, every shape checked against model."""
    config, tensors, meta = _read(path)
    if meta is not None:
        check_same_base(meta, model, path)
    if config.get("lora_bias"):
        raise UserError(f"adapter {path}: lora_bias adapters are not supported for mixed batches")
    dora = bool(config.get("use_dora"))
    scaling = "rslora" if config.get("use_rslora") else "standard"
    modules = dict(model.named_modules())
    lora, heads = {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise UserError(f"adapter {path}: unexpected tensor {key}")
        key = key[len(PREFIX) :]
        if ".lora_" in key:
            name, _, part = key.partition(".lora_")
            if part not in ("A.weight", "B.weight", "magnitude_vector") or (part == "magnitude_vector" and not dora):
                raise UserError(
                    f"adapter {path}: {key} is not supported for mixed batches (only lora_A/lora_B, and "
                    "lora_magnitude_vector of a use_dora adapter)"
                )
            lora.setdefault(name, {})[part[0]] = value
            continue
        name, _, param = key.rpartition(".")
        module = modules.get(name)
        if not isinstance(module, nn.Linear) or param not in ("weight", "bias"):
            kind = type(module).__name__ if module is not None else "nothing"
            raise UserError(
                f"adapter {path}: saved module {name} is {kind} in this model; mixed batches support "
                "Linear modules_to_save only"
            )
        heads.setdefault(name, {})[param] = value
    out = {}
    for name, ab in lora.items():
        module = modules.get(name)
        if module is None or not is_adaptable(module):
            kind = "missing" if module is None else type(module).__name__
            raise UserError(f"adapter {path}: module {name} is {kind} in this model, not a Linear/Conv1D")
        wanted = {"A", "B", "m"} if dora else {"A", "B"}
        if set(ab) != wanted:
            missing = sorted(wanted - set(ab))
            raise UserError(
                f"adapter {path}: module {name} lacks "
                + ", ".join("lora_magnitude_vector" if m == "m" else f"lora_{m}" for m in missing)
            )
        d_in, d_out = linear_dims(module)
        a, b = ab["A"], ab["B"]
        r = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != d_in or tuple(b.shape) != (d_out, r):
            raise UserError(
                f"adapter {path}: module {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                f"this model needs ({r}, {d_in}) and ({d_out}, {r})"
            )
        if _pattern(config.get("rank_pattern"), name, config.get("r")) != r:
            raise UserError(f"adapter {path}: module {name} has lora_A of rank {r}, unlike its adapter_config.json")
        alpha = _pattern(config.get("alpha_pattern"), name, config.get("lora_alpha"))
        scale = lora_scale(alpha, r, scaling)
        out[name] = (a, b, scale, _dora_gain(module, a, b, scale, ab["m"], path, name) if dora else None)
    if not out:
        raise UserError(f"adapter {path} has no LoRA weights")
    for name, params in heads.items():
        module = modules[name]
        if name in out:
            raise UserError(f"adapter {path}: module {name} is both LoRA-adapted and saved whole")
        for p, ref in (("weight", module.weight), ("bias", module.bias)):
            got = params.get(p)
            if (ref is None) != (got is None) or (ref is not None and got.shape != ref.shape):
                raise UserError(
                    f"adapter {path}: saved {name}.{p} is {None if got is None else tuple(got.shape)}, "
                    f"this model has {None if ref is None else tuple(ref.shape)}"
                )
    return out, heads


@torch.no_grad()
def _dora_gain(module: nn.Module, a, b, scale: float, magnitude, path: Path, name: str) -> torch.Tensor:
    """m / ‖W0 + scale·B·A‖ per output row: DoRA's factor, constant at inference."""
    d_in, d_out = linear_dims(module)
    if is_quantized(module):
        raise UserError(
            f"adapter {path}: DoRA on module {name} needs the float base weight, and this base is "
            "quantized; load the base without model.quantization for DoRA adapters"
        )
    if tuple(magnitude.shape) != (d_out,):
        raise UserError(
            f"adapter {path}: module {name} has lora_magnitude_vector {tuple(magnitude.shape)}; this "
            f"model needs ({d_out},)"
        )
    weight = module.weight if isinstance(module, nn.Linear) else module.weight.t()
    w = weight.float() + scale * (b.float() @ a.float())
    return magnitude.float() / torch.linalg.norm(w, dim=1)


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
    parsed = [_parse(model, p) for p in paths]

    selection, replacements = _Selection(), {}
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
