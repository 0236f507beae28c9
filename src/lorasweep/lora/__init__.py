"""LoRA core: W = W0 + scale·B·A on chosen projections, with merge and peft-format adapters, mixed-adapter batches
(multi.py) and the parameter and byte accounting (accounting.py).

May import: choices, errors, fileio only. It knows nothing of runs: the bottom of the package.
"""

from .adapter_io import load_adapter, save_adapter
from .inject import LoraReport, LoraSettings, apply_lora, lora_layers, lora_settings, merge_lora, unmerge_lora
from .kernel import OutputSlice
from .layer import LoraLayer
from .multi import AdapterSet, load_adapters
from .scaling import SCALINGS, lora_scale
from .targets import ARCHITECTURES, PRESETS, resolve_targets

__all__ = [
    "AdapterSet",
    "load_adapters",
    "ARCHITECTURES",
    "PRESETS",
    "SCALINGS",
    "LoraLayer",
    "LoraReport",
    "LoraSettings",
    "OutputSlice",
    "apply_lora",
    "load_adapter",
    "lora_layers",
    "lora_scale",
    "lora_settings",
    "merge_lora",
    "resolve_targets",
    "save_adapter",
    "unmerge_lora",
]
