"""Put LoRA layers into a model, freeze the rest, and fold them into the base weights and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from torch import nn

from ..errors import UserError
from .accounting import count_parameters
from .init import changes_base, validate_init
from .layer import LoraLayer, check_variant_on_base
from .saved import train_whole
from .scaling import validate_hyperparameters
from .targets import Target, as_targets, matches_suffix, model_type, resolve_targets

SETTINGS_ATTR = "lorasweep_lora"


@dataclass
class LoraSettings:
    """What apply_lora was asked for; kept on the model so the adapter can be saved with it."""

    targets: str | list[str]
    rank: int
    alpha: float
    dropout: float
    scaling: str
    modules_to_save: list[str]
    model_type: str
    dora: bool = False
    init: str = "kaiming"


@dataclass
class LoraReport:
    adapted: list[str]
    slices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fused modules: which slices
    lora_parameters: int = 0
    trainable: int = 0
    total: int = 0

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"LoRA on {len(self.adapted)} modules ({self.lora_parameters:,} LoRA parameters); "
            f"trainable {self.trainable:,} / {self.total:,} = {100 * self.trainable_fraction:.3f}%"
        )


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def lora_settings(model: nn.Module) -> LoraSettings:
    settings = getattr(model, SETTINGS_ATTR, None)
    if settings is None:
        raise UserError("this model has no LoRA layers: call apply_lora (or load_adapter) first")
    return settings


def apply_lora(
    model: nn.Module,
    targets: str | Sequence[str] = "qv",
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    scaling: str = "standard",
    modules_to_save: Sequence[str] | None = None,
    *,
    dora: bool = False,
    init: str = "kaiming",
) -> LoraReport:
    """Wrap the target modules in LoraLayer, freeze everything else except `modules_to_save`.

    The LoRA A matrices (and pissa_niter_N's random projections) are drawn from torch's global RNG in module
    order: seed before calling for reproducible runs. dora and init: see layer.py and init.py.
    """
    validate_hyperparameters(rank, alpha, dropout, scaling)
    validate_init(init)
    existing = sum(1 for _ in lora_layers(model))
    if existing or hasattr(model, SETTINGS_ATTR):
        raise UserError(f"LoRA is already applied to this model ({existing} LoRA layers); apply it once")
    resolved = resolve_targets(model, targets)
    to_save = resolve_modules_to_save(model, list(modules_to_save or []))

    # pissa/olora change the base: only once every layer has passed its checks, so bad input leaves it untouched.
    for t in resolved:
        check_variant_on_base(model.get_submodule(t.name), dora, init, t.name)
    first = "kaiming" if changes_base(init) else init
    new_layers = {t.name: _make_layer(model, t, rank, alpha, dropout, scaling, dora, first) for t in resolved}
    if first != init:
        for layer in new_layers.values():
            layer.initialise(init)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, layer in new_layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    train_whole(model, to_save)  # float32 on a 16-bit base, like LoRA's A and B (saved.py)
    setattr(
        model,
        SETTINGS_ATTR,
        LoraSettings(
            targets=as_targets(targets),
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            scaling=scaling,
            modules_to_save=list(modules_to_save or []),
            model_type=model_type(model),
            dora=dora,
            init=init,
        ),
    )
    counts = count_parameters(model)
    return LoraReport(
        adapted=[t.name for t in resolved],
        slices={t.name: t.slice_names for t in resolved if t.slice_names},
        lora_parameters=sum(
            p.numel() for l in new_layers.values() for n, p in l.named_parameters() if n.startswith("lora_")
        ),  # A, B and DoRA's magnitude
        trainable=counts.trainable,
        total=counts.total,
    )


def apply_lora_config(model: nn.Module, lora_cfg, modules_to_save: Sequence[str]) -> LoraReport:
    """apply_lora with every key of a run's `lora` config group (config.LoraConfig)."""
    return apply_lora(
        model,
        as_targets(lora_cfg.targets),
        lora_cfg.rank,
        lora_cfg.alpha,
        lora_cfg.dropout,
        lora_cfg.scaling,
        modules_to_save,
        dora=bool(getattr(lora_cfg, "dora", False)),
        init=str(getattr(lora_cfg, "init", "kaiming")),
    )


def _make_layer(model, target: Target, rank, alpha, dropout, scaling, dora, init) -> LoraLayer:
    return LoraLayer(
        model.get_submodule(target.name),
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        scaling=scaling,
        slices=target.slices,
        slice_names=target.slice_names,
        name=target.name,
        dora=dora,
        init=init,
    )


def resolve_modules_to_save(model: nn.Module, entries: list[str]) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    found = []
    for entry in entries:
        hits = [n for n in names if matches_suffix(n, entry)]
        if not hits:
            raise UserError(f"modules_to_save entry {entry!r} matches no module of this model")
        found.extend(hits)
    return found


def merge_lora(model: nn.Module) -> int:
    """Fold scale·B·A into every adapted base weight (for inference); returns the number of layers merged."""
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise UserError("this model has no LoRA layers to merge")
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Subtract scale·B·A again, restoring W0 (up to float rounding)."""
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise UserError("this model has no LoRA layers to unmerge")
    for layer in layers:
        layer.unmerge()
    return len(layers)
