"""Which modules get LoRA: presets resolved per architecture, or an explicit list of module-name suffixes.

Presets name roles inside a transformer block:
  q, k, v, o — one attention matrix (on a fused q|k|v module: that slice alone)
  qv   — attention query and value (the LoRA paper's choice)
  qkvo — all four attention projections
  all  — qkvo plus every MLP matrix: 6 matrices per block on BERT-style, GPT-2 and OPT models, but 7 on
         Llama/Mistral/Qwen2 (gate, up, down) — "all" means every projection the block has.

A fused projection (GPT-2 `c_attn` = q|k|v, GPT-NeoX `query_key_value`, Phi-3 `qkv_proj` and `gate_up_proj`)
gets one LoRA per wanted slice (separate A, B), so `qv` leaves k untouched, as loralib's MergedLinear did.
Rank r is therefore per logical matrix on every architecture.

An explicit list follows peft's rule (a module matches entry t if its name is t or ends with "." + t) and adapts
whole modules, fused or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from ..errors import UserError
from .kernel import OutputSlice
from .layer import is_adaptable, linear_dims

PRESETS: dict[str, tuple[str, ...]] = {
    "q": ("q",),  # single matrices, as the LoRA paper's Table 5 compares them (fused modules: that slice only)
    "k": ("k",),
    "v": ("v",),
    "o": ("o",),
    "qv": ("q", "v"),
    "qkvo": ("q", "k", "v", "o"),
    "all": ("q", "k", "v", "o", "mlp"),
}

Slicer = Callable[[object, int], dict[str, OutputSlice]]


@dataclass(frozen=True)
class Projection:
    """One linear module of a transformer block: its path inside the block and the roles it computes."""

    suffix: str
    roles: tuple[str, ...]
    slicer: Slicer | None = None  # for fused modules: role -> rows of the output


def _thirds(config, d_out):
    d = d_out // 3
    return {"q": OutputSlice(0, d), "k": OutputSlice(d, d), "v": OutputSlice(2 * d, d)}


def _neox_interleaved(config, d_out):
    heads = config.num_attention_heads
    size = d_out // (3 * heads)
    return {role: OutputSlice(i * size, size, heads) for i, role in enumerate("qkv")}


def _phi3_qkv(config, d_out):
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = heads * head_dim
    kv = (d_out - q) // 2
    return {"q": OutputSlice(0, q), "k": OutputSlice(q, kv), "v": OutputSlice(q + kv, kv)}


def _halves(config, d_out):
    half = d_out // 2
    return {"mlp.gate": OutputSlice(0, half), "mlp.up": OutputSlice(half, half)}


def _plain(suffix: str, role: str) -> Projection:
    return Projection(suffix, (role,))


_BERT = (
    _plain("attention.self.query", "q"),
    _plain("attention.self.key", "k"),
    _plain("attention.self.value", "v"),
    _plain("attention.output.dense", "o"),
    _plain("intermediate.dense", "mlp"),
    _plain("output.dense", "mlp"),
)
_LLAMA = (
    _plain("self_attn.q_proj", "q"),
    _plain("self_attn.k_proj", "k"),
    _plain("self_attn.v_proj", "v"),
    _plain("self_attn.o_proj", "o"),
    _plain("mlp.gate_proj", "mlp"),
    _plain("mlp.up_proj", "mlp"),
    _plain("mlp.down_proj", "mlp"),
)

ARCHITECTURES: dict[str, tuple[Projection, ...]] = {
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "distilbert": (
        _plain("attention.q_lin", "q"),
        _plain("attention.k_lin", "k"),
        _plain("attention.v_lin", "v"),
        _plain("attention.out_lin", "o"),
        _plain("ffn.lin1", "mlp"),
        _plain("ffn.lin2", "mlp"),
    ),
    "gpt2": (
        Projection("attn.c_attn", ("q", "k", "v"), _thirds),
        _plain("attn.c_proj", "o"),
        _plain("mlp.c_fc", "mlp"),
        _plain("mlp.c_proj", "mlp"),
    ),
    "opt": (
        _plain("self_attn.q_proj", "q"),
        _plain("self_attn.k_proj", "k"),
        _plain("self_attn.v_proj", "v"),
        _plain("self_attn.out_proj", "o"),
        _plain("fc1", "mlp"),
        _plain("fc2", "mlp"),
    ),
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2", "qwen3")},
    "gpt_neox": (
        Projection("attention.query_key_value", ("q", "k", "v"), _neox_interleaved),
        _plain("attention.dense", "o"),
        _plain("mlp.dense_h_to_4h", "mlp"),
        _plain("mlp.dense_4h_to_h", "mlp"),
    ),
    "phi3": (
        Projection("self_attn.qkv_proj", ("q", "k", "v"), _phi3_qkv),
        _plain("self_attn.o_proj", "o"),
        Projection("mlp.gate_up_proj", ("mlp.gate", "mlp.up"), _halves),
        _plain("mlp.down_proj", "mlp"),
    ),
}


@dataclass(frozen=True)
class Target:
    """A module to adapt; `slices` is None for a whole module, else the rows of each adapted slice."""

    name: str
    slices: tuple[OutputSlice, ...] | None = None
    slice_names: tuple[str, ...] | None = None


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _in_block(name: str, suffix: str) -> bool:
    """`name` is `suffix` inside a numbered block (…layer.3.<suffix>), not a longer path ending the same way."""
    return re.search(rf"\.\d+\.{re.escape(suffix)}$", name) is not None


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_adaptable(module)]


def block_suffixes(names: Sequence[str]) -> list[str]:
    return sorted({re.sub(r"^(?:.*?\.)?\d+\.", "", n) for n in names})


def as_targets(value) -> str | list[str]:
    """A target setting as plain Python: a preset name, or a list of module-name suffixes (from OmegaConf too)."""
    return value if isinstance(value, str) else [str(v) for v in value]


def targets_label(targets) -> str:
    """One string per target setting, for tables, W&B and tags: a preset's name, or a list as "[a,b]" (Hydra's
    list syntax, so `lora.targets=<label>` is a valid override; parse_targets_label reverses it)."""
    targets = as_targets(targets)
    return targets if isinstance(targets, str) else "[" + ",".join(targets) + "]"


def parse_targets_label(label: str) -> str | list[str]:
    if label.startswith("[") and label.endswith("]"):
        return [part.strip() for part in label[1:-1].split(",") if part.strip()]
    return label


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> list[Target]:
    """The modules (and slices) that `targets` names in `model`; ValueError if it names none."""
    linear = _linear_names(model)
    if isinstance(targets, str):
        return _resolve_preset(model, targets, linear)
    return _resolve_list(model, list(targets), linear)


def _role_wanted(role: str, wanted: tuple[str, ...]) -> bool:
    return role in wanted or role.split(".")[0] in wanted


def _resolve_preset(model: nn.Module, preset: str, linear: list[str]) -> list[Target]:
    if preset not in PRESETS:
        raise UserError(
            f"unknown target preset {preset!r}: expected one of {', '.join(PRESETS)} or a list of module names"
        )
    mtype = model_type(model)
    if mtype not in ARCHITECTURES:
        raise UserError(
            f"no target presets for model type {mtype!r}; pass an explicit list of module names instead. "
            f"Its linear modules (per block): {', '.join(block_suffixes(linear)) or 'none'}"
        )
    wanted = PRESETS[preset]
    config = getattr(model, "config", None)
    found: list[Target] = []
    for name in linear:
        for proj in ARCHITECTURES[mtype]:
            if not _in_block(name, proj.suffix):
                continue
            roles = [r for r in proj.roles if _role_wanted(r, wanted)]
            if roles and proj.slicer is None:
                found.append(Target(name))
            elif roles:
                rows = proj.slicer(config, linear_dims(model.get_submodule(name))[1])
                found.append(Target(name, tuple(rows[r] for r in roles), tuple(roles)))
            break
    if not found:
        raise UserError(
            f"target preset {preset!r} matched no module in model type {mtype!r}; its linear modules (per block): "
            f"{', '.join(block_suffixes(linear)) or 'none'}"
        )
    return found


def matches_suffix(name: str, entry: str) -> bool:
    """peft's rule for target_modules / modules_to_save entries."""
    return name == entry or name.endswith("." + entry)


def _resolve_list(model: nn.Module, entries: list[str], linear: list[str]) -> list[Target]:
    if not entries:
        raise UserError("the list of target modules is empty")
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise UserError(f"target module names must be non-empty strings, got {entry!r}")
        if not any(matches_suffix(n, entry) for n in linear):
            raise UserError(
                f"target module {entry!r} matches no linear module in model type {model_type(model)!r}; its linear "
                f"modules (per block): {', '.join(block_suffixes(linear)) or 'none'}"
            )
    return [Target(n) for n in linear if any(matches_suffix(n, e) for e in entries)]
