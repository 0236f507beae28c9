"""lorasweep: run, track and compare LoRA fine-tuning sweeps.

The public Python API is the names below, imported lazily (`import lorasweep` loads no torch):

    from lorasweep import compose, train, estimate_config, apply_lora, load_adapters, RunStore

Everything else is internal and may move between releases (CHANGELOG.md says when). The parts, bottom to top
(docs/ARCHITECTURE.md draws them): lora/ (the adapter math), data/, model/, step/, config/, estimate/, runs/,
training/, pack/, sweep/ and slurm/, serve/, cli/; errors, fileio, choices, sources, tables and internals are the
shared helpers at the top level.
"""

from __future__ import annotations

import importlib

from . import _moved

__version__ = "0.1.0"

# name -> the module that defines it: the one list of what lorasweep offers to Python code.
API = {
    # configs and their hash
    "compose": "lorasweep.config.schema",
    "config_hash": "lorasweep.config.schema",
    # one run, a stored run, a sweep
    "train": "lorasweep.training.lifecycle",
    "Resources": "lorasweep.training.resources",
    "RunStore": "lorasweep.runs.store",
    "RunDir": "lorasweep.runs.store",
    "run_sweep": "lorasweep.sweep.launch",
    # the LoRA core
    "apply_lora": "lorasweep.lora.inject",
    "merge_lora": "lorasweep.lora.inject",
    "unmerge_lora": "lorasweep.lora.inject",
    "resolve_targets": "lorasweep.lora.targets",
    "save_adapter": "lorasweep.lora.adapter_io",
    "load_adapter": "lorasweep.lora.adapter_io",
    "count_parameters": "lorasweep.lora.accounting",
    "optimizer_state_bytes": "lorasweep.lora.accounting",
    "memory_account": "lorasweep.lora.accounting",
    # base models
    "load_pretrained": "lorasweep.model.load",
    "build_tiny": "lorasweep.model.load",
    "packaged_minilm_dir": "lorasweep.model.load",
    "quantize_model": "lorasweep.model.quantize",
    # memory before launch
    "estimate_config": "lorasweep.estimate.peak",
    # serving many adapters in one batch
    "load_adapters": "lorasweep.lora.multi",
    "AdapterSet": "lorasweep.lora.multi",
    "predict_file": "lorasweep.serve.predict",
    # the one error lorasweep raises for bad input
    "UserError": "lorasweep.errors",
}
__all__ = ["__version__", *API]

_moved.install()


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'lorasweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # once
    return value


def __dir__():
    return sorted(__all__)
