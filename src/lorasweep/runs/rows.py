"""What tells runs apart, in one place: the settings columns of `lorasweep runs`, the sweep leaderboard
(`sweep`, `status`, `report`) and the report's trial table.

A sweep worker stores `settings(cfg)` on each trial (user attr "settings"), so the leaderboard shows the α a trial
trained with even where α was fixed and not searched, and the quantization and optimizer that distinguish a
QLoRA + 8-bit run from a plain one with the same LoRA settings.
"""

from __future__ import annotations

from .metrics import HEADLINE
from .store import RunDir

# (column, config key, value every run had before the key existed: shown as that when a config lacks it)
SETTINGS = (
    ("model", "model.name", None),
    ("data", "data.name", None),
    ("style", "data.style", None),
    ("template", "data.prompt_template", None),  # or data.chat_template: template_label
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
OPTIONAL = ("template", "scaling", "dora", "init", "lora+")
VARYING = ("model", "data", "style")  # shown where the rows differ in them
TEMPLATE_WIDTH = 24  # a template in a table: its first characters, one line


def settings(cfg) -> dict:
    """The distinguishing settings of a config, as plain values ({column: value})."""
    from omegaconf import OmegaConf

    from ..lora.targets import targets_label  # here, not at the top: lora imports torch, which `runs` never needs

    out = {}
    for column, key, default in SETTINGS:
        value = OmegaConf.select(cfg, key, default=default)
        out[column] = targets_label(value) if column == "targets" else _plain(value)
    out["template"] = template_label(cfg)
    out["style"] = _style(cfg)
    return out


def _style(cfg) -> str | None:
    from omegaconf import OmegaConf

    from ..data.styles import style_of

    data = OmegaConf.select(cfg, "data")
    return style_of(OmegaConf.merge({"style": None}, data)) if data is not None and "task" in data else None


def template_label(cfg) -> str | None:
    """The prompt or chat template a run renders its rows with, cut to one short line (None: none set)."""
    from omegaconf import OmegaConf

    template = OmegaConf.select(cfg, "data.prompt_template") or OmegaConf.select(cfg, "data.chat_template")
    if template is None:
        return None
    text = " ".join(str(template).split())
    return text if len(text) <= TEMPLATE_WIDTH else text[: TEMPLATE_WIDTH - 1] + "…"


def _label_names(run: RunDir) -> str | None:
    """A string-labelled classifier's names, in id order (its adapter's labels.json)."""
    from ..lora.adapter_io import read_label_names

    names = read_label_names(run.adapter_dir)
    return ",".join(names) if names else None


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
        elif column in VARYING and len(values) > 1:
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
        **{name: metrics.get(name) for name in HEADLINE.values() if name != "eval/loss"},  # each task's own figure
        "labels": _label_names(run),
        "state": run.status(),
        "step": metrics.get("step"),
        "sweep": cfg.sweep,
    }
