"""Adapters on disk in peft's format, so peft (and vLLM) load what lorasweep trains.

    <dir>/adapter_config.json        peft LoraConfig fields
    <dir>/labels.json                id2label / label2id, where the labels have names
    <dir>/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, d_in)
                                     base_model.model.<module>.lora_B.weight (d_out, r)
                                     base_model.model.<module>.<param> for modules_to_save

A module with k LoRA slices (fused q|k|v) is written as ONE rank-k·r LoRA on the fused module: A stacked,
B block-structured (B_j in slice j's rows and columns j·r…(j+1)·r, zeros elsewhere — so k rows stay untouched),
with α chosen so peft computes the same scale. Modules whose exported rank differs from the most common one go
into peft's rank_pattern / alpha_pattern. lorasweep's own settings (preset, per-slice layout, base-model
signature) ride in the safetensors metadata, which peft ignores, so load_adapter restores the slices exactly.

DoRA: `<module>.lora_magnitude_vector` (d_out,) and `use_dora: true`, as peft writes them; rows outside a fused
module's adapted slices get the base row norms (a gain of exactly what peft computes for a zero update).
pissa/olora moved B0·A0 out of the base during training; the adapter is written for the UNTOUCHED base as peft's
own conversion does: per slice a rank-2r LoRA [A; A0], [B, −B0] with α giving the same scale.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json
from .inject import apply_lora, lora_layers, lora_settings, resolve_modules_to_save
from .layer import LoraLayer, is_adaptable, linear_dims
from .scaling import alpha_for_scale
from .targets import Target, block_suffixes, matches_suffix, resolve_targets

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LABELS_NAME = "labels.json"  # id2label / label2id of a string-labelled classifier (peft's config has no field)
PREFIX = "base_model.model."
META_KEY = "lorasweep"
_SIGNATURE_FIELDS = ("model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "vocab_size")


def base_signature(model: nn.Module) -> dict:
    """Architecture facts an adapter depends on; paths are not among them (they differ per machine)."""
    config = getattr(model, "config", None)
    return {f: getattr(config, f) for f in _SIGNATURE_FIELDS if getattr(config, f, None) is not None}


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    return None


def _is_whole(layer: LoraLayer) -> bool:
    return len(layer.slices) == 1 and layer.slices[0].rows == layer.d_out


MAGNITUDE = "lora_magnitude_vector"


def export_factors(layer: LoraLayer) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """(A (k·r', d_in), [B_j (rows_j, r')], r') of the LoRA that reproduces the layer on the UNTOUCHED base:
    the layer's own A, B (r' = r), or for pissa/olora per slice [A_j; A0_j], [B_j, −B0_j] (r' = 2r)."""
    r = layer.rank
    a = layer.lora_A.detach().cpu()
    b_parts = list(layer.lora_B.detach().cpu().split([s.rows for s in layer.slices]))
    if getattr(layer, "lora_A0", None) is None:
        return a, b_parts, r
    a0 = layer.lora_A0.cpu()
    b0_parts = layer.lora_B0.cpu().split([s.rows for s in layer.slices])
    a_out = torch.cat([t for j in range(len(layer.slices)) for t in (a[j * r : (j + 1) * r], a0[j * r : (j + 1) * r])])
    return a_out, [torch.cat([b_j, -b0_j], dim=1) for b_j, b0_j in zip(b_parts, b0_parts)], 2 * r


def _export_B(layer: LoraLayer, b_parts: list[torch.Tensor], r: int) -> torch.Tensor:
    if _is_whole(layer):
        return b_parts[0]
    full = torch.zeros(layer.d_out, len(layer.slices) * r, dtype=layer.lora_B.dtype)
    for j, (sl, b_j) in enumerate(zip(layer.slices, b_parts)):
        full[sl.row_index(layer.d_out), j * r : (j + 1) * r] = b_j
    return full


@torch.no_grad()
def _export_magnitude(layer: LoraLayer) -> torch.Tensor:
    """DoRA's m over every output row: base row norms outside the adapted slices."""
    m = layer.lora_magnitude.detach()
    if layer.dora_rows is None:
        return m.cpu()
    full = torch.linalg.norm(layer.weight_t().t().to(m.dtype), dim=1)
    return full.index_put((layer.dora_rows,), m).cpu()


def _target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """Short names (as peft configs usually have) when they select exactly the adapted modules, else full names."""
    short = block_suffixes(adapted)
    linear = [
        n
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer) or (is_adaptable(m) and not n.endswith(".base_layer"))
    ]
    selected = {n for n in linear if any(matches_suffix(n, s) for s in short)}
    return short if selected == set(adapted) else sorted(adapted)


def save_adapter(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA weights (and modules_to_save) as a peft adapter directory."""
    settings = lora_settings(model)
    layers = list(lora_layers(model))
    use_rslora = settings.scaling == "rslora"
    tensors: dict[str, torch.Tensor] = {}
    export: dict[str, tuple[int, float]] = {}
    slice_rank = settings.rank
    for name, layer in layers:
        a, b_parts, slice_rank = export_factors(layer)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = _export_B(layer, b_parts, slice_rank).contiguous()
        if layer.dora:
            tensors[f"{PREFIX}{name}.{MAGNITUDE}"] = _export_magnitude(layer).contiguous()
        rank = a.shape[0]
        export[name] = (rank, alpha_for_scale(layer.scale, rank, settings.scaling))
    to_save = resolve_modules_to_save(model, settings.modules_to_save)
    for module_name in to_save:
        for key, value in model.get_submodule(module_name).state_dict().items():
            tensors[f"{PREFIX}{module_name}.{key}"] = value.detach().cpu().contiguous()

    (rank, alpha), _ = Counter(export.values()).most_common(1)[0]
    odd = {name: ra for name, ra in export.items() if ra != (rank, alpha)}
    config = {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": settings.dropout,
        "use_rslora": use_rslora,
        "target_modules": _target_modules(model, [n for n, _ in layers]),
        "rank_pattern": {name: ra[0] for name, ra in odd.items()},
        "alpha_pattern": {name: ra[1] for name, ra in odd.items()},
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
        "modules_to_save": settings.modules_to_save or None,
        "use_dora": settings.dora,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path or getattr(model, "name_or_path", None),
    }
    # A pissa/olora adapter is written as the plain rank-2r LoRA on the untouched base that it is equal to.
    converted = slice_rank != settings.rank
    meta = {
        "targets": settings.targets,
        "rank": slice_rank,
        "alpha": alpha_for_scale(layers[0][1].scale, slice_rank, settings.scaling) if converted else settings.alpha,
        "dora": settings.dora,
        "init": settings.init,  # how training started (a record: loading always gets the plain LoRA above)
        "dropout": settings.dropout,
        "scaling": settings.scaling,
        "modules_to_save": settings.modules_to_save,
        "base": base_signature(model),
        "slices": {name: list(layer.slice_names) for name, layer in layers if not _is_whole(layer)},
    }
    path = Path(path)
    # Weights first, config last: a directory with a config always has its weights.
    atomic_write_bytes(
        path / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt", META_KEY: json.dumps(meta)})
    )
    names = label_names(model)
    if names:  # before the config: a directory with a config is complete
        atomic_write_json(path / LABELS_NAME, {"id2label": dict(enumerate(names)), "label2id": _ids(names)})
    atomic_write_json(path / CONFIG_NAME, config)
    return path


def label_names(model: nn.Module) -> list[str] | None:
    """The names of a classifier's labels from its config, or None where they are transformers' LABEL_<i>."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def read_label_names(path: str | Path) -> list[str] | None:
    """labels.json of an adapter directory (string-labelled classifiers), or None."""
    file = Path(path) / LABELS_NAME
    if not file.is_file():
        return None
    id2label = json.loads(file.read_text())["id2label"]
    return [id2label[k] for k in sorted(id2label, key=int)]


def _ids(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise UserError(f"adapter directory {path} has no {f.name}")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file} is not valid JSON: {exc}") from None
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights_file} is not a readable safetensors file: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"{config_file}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    meta = json.loads(metadata[META_KEY]) if META_KEY in metadata else None
    return config, tensors, meta


def _settings_from_peft(config: dict, model: nn.Module) -> dict:
    """lorasweep settings for an adapter written by peft itself (whole modules, one rank)."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError("adapters with rank_pattern/alpha_pattern are only loadable when lorasweep wrote them")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and (init.startswith("pissa") or init.startswith("olora")):
        raise UserError(
            f"adapter init_lora_weights={init!r} was saved without peft's conversion: its A, B apply to a "
            "residual base, not this one; save it with path_initial_model_for_weight_conversion"
        )
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        raise UserError(f"target_modules {targets!r}: only a list of module names is supported")
    names = [n for n, _ in model.named_modules()]
    to_save = [e for e in (config.get("modules_to_save") or []) if any(matches_suffix(n, e) for n in names)]
    return {
        "targets": targets,
        "rank": config["r"],
        "alpha": config["lora_alpha"],
        "dropout": config.get("lora_dropout", 0.0),
        "scaling": "rslora" if config.get("use_rslora") else "standard",
        "dora": bool(config.get("use_dora", False)),
        "modules_to_save": to_save,
        "slices": {},
    }


def check_same_base(meta: dict, model: nn.Module, path: Path) -> None:
    """The adapter's recorded base-model signature matches `model`'s; ValueError naming what differs."""
    expected, actual = meta.get("base", {}), base_signature(model)
    diff = [f"{k}: adapter {v!r} vs model {actual.get(k)!r}" for k, v in expected.items() if v != actual.get(k)]
    if diff:
        raise UserError(f"adapter {path} was trained on a different base model ({', '.join(diff)})")


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a peft-format LoRA adapter into `model` (applying LoRA first if it has none). All-or-nothing:
    every shape is checked before anything in the model changes."""
    path = Path(path)
    config, tensors, meta = _read(path)
    if meta is not None:
        check_same_base(meta, model, path)
    settings = meta if meta is not None else _settings_from_peft(config, model)
    has_lora = any(True for _ in lora_layers(model))
    plan = _plan(model, settings, has_lora)
    updates = _check_tensors(model, plan, tensors, settings, path)
    if not has_lora:
        apply_lora(
            model,
            targets=settings["targets"],
            rank=settings["rank"],
            alpha=settings["alpha"],
            dropout=settings["dropout"],
            scaling=settings["scaling"],
            modules_to_save=settings["modules_to_save"],
            dora=settings.get("dora", False),
        )
    with torch.no_grad():
        for name, (a, b_parts, magnitude) in updates["lora"].items():
            layer = model.get_submodule(name)
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(torch.cat(b_parts, dim=0))
            if magnitude is not None:
                layer.lora_magnitude.copy_(magnitude if layer.dora_rows is None else magnitude[layer.dora_rows.cpu()])
        for key, value in updates["saved"].items():
            model.get_parameter(key).copy_(value) if _is_param(model, key) else model.get_buffer(key).copy_(value)
    return model


def _is_param(model: nn.Module, key: str) -> bool:
    try:
        model.get_parameter(key)
        return True
    except AttributeError:
        return False


def _plan(model: nn.Module, settings: dict, has_lora: bool) -> dict[str, Target]:
    """Module -> slice layout the adapter needs, from the model's existing LoRA or from resolving targets."""
    if has_lora:
        current = lora_settings(model)
        if current.rank != settings["rank"]:
            raise UserError(f"model has LoRA rank {current.rank}, adapter has rank {settings['rank']}")
        if current.dora != settings.get("dora", False):
            raise UserError(f"model has lora.dora={current.dora}, adapter has use_dora={settings.get('dora', False)}")
        return {n: Target(n, l.slices, l.slice_names) for n, l in lora_layers(model)}
    return {t.name: t for t in resolve_targets(model, settings["targets"])}


def _check_tensors(model, plan: dict[str, Target], tensors: dict, settings: dict, path: Path) -> dict:
    rank, dora = settings["rank"], settings.get("dora", False)
    lora: dict[str, tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]] = {}
    for name, target in plan.items():
        module = model.get_submodule(name)
        d_in, d_out = (module.d_in, module.d_out) if isinstance(module, LoraLayer) else linear_dims(module)
        slices = target.slices or (None,)
        k = len(slices)
        a = tensors.get(f"{PREFIX}{name}.lora_A.weight")
        b = tensors.get(f"{PREFIX}{name}.lora_B.weight")
        if a is None or b is None:
            raise UserError(f"adapter {path} has no LoRA weights for module {name}")
        if tuple(a.shape) != (k * rank, d_in) or tuple(b.shape) != (d_out, k * rank):
            raise UserError(
                f"adapter {path}: module {name} expects lora_A {(k * rank, d_in)} and lora_B {(d_out, k * rank)}, "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        magnitude = tensors.get(f"{PREFIX}{name}.{MAGNITUDE}") if dora else None
        if dora and (magnitude is None or tuple(magnitude.shape) != (d_out,)):
            raise UserError(
                f"adapter {path}: module {name} needs a DoRA {MAGNITUDE} of shape ({d_out},), got "
                f"{None if magnitude is None else tuple(magnitude.shape)}"
            )
        if target.slices is None:
            lora[name] = (a, [b], magnitude)
        else:
            parts = [b[sl.row_index(d_out), j * rank : (j + 1) * rank] for j, sl in enumerate(target.slices)]
            lora[name] = (a, parts, magnitude)
    known = {f"{PREFIX}{n}.lora_{m}.weight" for n in plan for m in "AB"}
    known |= {f"{PREFIX}{n}.{MAGNITUDE}" for n in plan} if dora else set()
    stray = sorted(k for k in tensors if ".lora_" in k and k not in known)
    if stray:
        raise UserError(f"adapter {path} has LoRA weights for modules this model does not adapt: {stray[0]}")
    saved = {}
    for module_name in resolve_modules_to_save(model, settings["modules_to_save"]):
        for key, value in model.get_submodule(module_name).state_dict().items():
            stored = tensors.get(f"{PREFIX}{module_name}.{key}")
            if stored is None:
                raise UserError(f"adapter {path} lacks {module_name}.{key} (listed in modules_to_save)")
            if stored.shape != value.shape:
                raise UserError(
                    f"adapter {path}: {module_name}.{key} has shape {tuple(stored.shape)}, "
                    f"model has {tuple(value.shape)}"
                )
            saved[f"{module_name}.{key}"] = stored
    return {"lora": lora, "saved": saved}
