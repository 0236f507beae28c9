"""The fixed set of values each such config key takes, one tuple per key, and the one message for a value
outside it. config.validate checks every key in CHOICES before anything runs; the code that acts on a value
(data/, runs/metrics.py, model/quantize.py, step/optim.py, ...) imports the same tuple, so no other module lists them.

The schema fields stay `str` rather than Enum: OmegaConf turns an Enum field's value into an Enum member, which
would change the config hash of every run filed with a default (config.HASH_OMITTED_DEFAULTS compares types) and
replace these one-line messages by OmegaConf's at compose time.
"""

from __future__ import annotations

from .errors import UserError

TASKS = ("classification", "regression", "causal_lm")  # causal_lm: SFT, the loss on the trained tokens only
SEQUENCE_TASKS = ("classification", "regression")  # a head over the whole sequence (regression: one output)
DATA_STYLES = ("prompt_response", "chat", "text")  # causal_lm rows: prompt + response, a conversation, plain text
TRAIN_ON = ("assistant", "last_assistant", "all")  # chat: which tokens are trained
MODEL_SOURCES = ("packaged", "pretrained", "tiny")
DATA_SOURCES = ("shipped", "hub", "local")
QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
FOUR_BIT = ("nf4", "fp4")  # bitsandbytes Linear4bit quant types (the others: none, int8)
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
EIGHT_BIT_OPTIMIZERS = ("adamw8bit", "paged_adamw8bit")  # bitsandbytes
SCHEDULES = ("linear", "cosine", "constant")  # after warmup
MIXED_PRECISIONS = ("no", "bf16", "fp16")
TRACKING_BACKENDS = ("wandb", "none")
TRACKING_MODES = ("offline", "online", "disabled")

CHOICES = {
    "trainer.mixed_precision": MIXED_PRECISIONS,
    "optim.schedule": SCHEDULES,
    "optim.name": OPTIMIZERS,
    "model.quantization": QUANTIZATIONS,
    "model.source": MODEL_SOURCES,
    "data.task": TASKS,
    "data.source": DATA_SOURCES,
    "data.train_on": TRAIN_ON,
    "tracking.backend": TRACKING_BACKENDS,
    "tracking.mode": TRACKING_MODES,
}


def require_choice(key: str, value) -> None:
    """A UserError naming the key, its allowed values and the value given, unless the value is one of them."""
    if value not in CHOICES[key]:
        raise UserError(f"{key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
