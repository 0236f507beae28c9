"""What tells runs apart, in one place: the settings columns of `lorasweep runs`, the sweep leaderboard
(`sweep`, `status`, `report`) and the report's trial table.

A sweep worker stores `settings(cfg)` on each trial (user attr "settings"), so the leaderboard shows the α a trial
trained with even where α was fixed and not searched, and the quantization and optimizer that distinguish a
QLoRA + 8-bit run from a plain one with the same LoRA settings.
"""

from __future__ import annotations

from .lora.targets import targets_label
from .runstore import RunDir

# (column, config key, value every run had before the key existed: shown as that when a config lacks it)
SETTINGS = (
    ("model", "model.name", None),
    ("quant", "model.quantization", "none"),
    ("optim", "optim.name", "adamw"),
    ("targets", "lora.targets", None),
    ("rank", "lora.rank", None),
    ("alpha", "lora.alpha", None),
    ("scaling", "lora.scaling", "standard"),
    ("dora", "lora.dora", False),
    ("init", "lora.init", "kaiming"),
    ("lora+", "optim.lora_plus_ratio", 1.0),
)
# Shown only where some row differs from the default (a sweep that searches them, runs that vary in them).
OPTIONAL = ("scaling", "dora", "init", "lora+")


def settings(cfg) -> dict:
    """The distinguishing settings of a config, as plain values ({column: value})."""
    from omegaconf import OmegaConf

    out = {}
    for column, key, default in SETTINGS:
        value = OmegaConf.select(cfg, key, default=default)
        out[column] = targets_label(value) if column == "targets" else _plain(value)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def settings_columns(rows: list[dict], always=("quant", "optim", "targets", "rank", "alpha")) -> list[str]:
    """The settings columns worth a table's width: `always`, plus any optional one where a row differs from
    its default (model too, where runs of several models are listed)."""
    defaults = {column: default for column, _, default in SETTINGS}
    columns = []
    for column, _, _ in SETTINGS:
        values = {repr(r.get(column, defaults[column])) for r in rows}
        if column in always:
            columns.append(column)
        elif column in OPTIONAL and values - {repr(defaults[column])}:
            columns.append(column)
        elif column == "model" and len(values) > 1:
            columns.append(column)
    return columns


def run_row(run: RunDir) -> dict:
    """One run of the store: its settings, record figures and state (pruned, failed and interrupted runs too)."""
    cfg = run.config()
    metrics = run.record()
    return {
        "hash": run.hash,
        **settings(cfg),
        "trainable_fraction": metrics.get("params/trainable_fraction"),
        "optimizer_bytes": metrics.get("memory/optimizer_state_bytes"),
        "peak_bytes": metrics.get("memory/peak_bytes"),
        "predicted_peak_bytes": metrics.get("memory/predicted_peak_bytes"),
        "eval/loss": metrics.get("eval/loss"),
        "eval/accuracy": metrics.get("eval/accuracy"),
        "state": run.status(),
        "step": metrics.get("step"),
        "sweep": cfg.sweep,
    }
