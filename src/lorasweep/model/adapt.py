"""What a run does to its base model: LoRA as the config says, and gradient checkpointing. One place, used by the
run (training/components.py), the memory estimate (estimate/) and the preflight check on the model's skeleton."""

from __future__ import annotations

from torch import nn


def adapt_model(model: nn.Module, cfg):
    """LoRA as the config says (every lora.* key) and gradient checkpointing: what a run does to its base."""
    from ..lora.inject import apply_lora_config

    report = apply_lora_config(model, cfg.lora, modules_to_save(cfg.lora, cfg.data.task, model))
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return report


def modules_to_save(lora_cfg, task: str, model: nn.Module) -> list[str]:
    """lora.modules_to_save, or by default the task head for classification / regression, nothing for a causal LM."""
    from ..choices import SEQUENCE_TASKS
    from .load import head_names

    if lora_cfg.modules_to_save is not None:
        return list(lora_cfg.modules_to_save)
    return head_names(model) if task in SEQUENCE_TASKS else []
