"""Import paths that moved in 0.2 (the package split by concern; CHANGELOG.md lists each), kept working for one
release: `import lorasweep.runstore` gives lorasweep.runs.store itself, with a FutureWarning naming the new path.
Installed by lorasweep/__init__.py; costs nothing until an old path is imported (the finder is asked last)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old module -> new module. lorasweep.cli and lorasweep.config are packages now, under the same names.
MOVED = {
    "lorasweep.cli_options": "lorasweep.cli.options",
    "lorasweep.cli_sweep": "lorasweep.cli.sweep_commands",
    "lorasweep.console": "lorasweep.cli.console",
    "lorasweep.demo": "lorasweep.cli.demo",
    "lorasweep.compare": "lorasweep.cli.compare",
    "lorasweep.composition": "lorasweep.config.composition",
    "lorasweep.fingerprints": "lorasweep.config.fingerprints",
    "lorasweep.models": "lorasweep.model.load",
    "lorasweep.quantize": "lorasweep.model.quantize",
    "lorasweep.adapt": "lorasweep.model.adapt",
    "lorasweep.estimate.architectures": "lorasweep.model.hub_config",
    "lorasweep.pack.share": "lorasweep.model.shared_base",
    "lorasweep.accounting": "lorasweep.lora.accounting",
    "lorasweep.optim": "lorasweep.step.optim",
    "lorasweep.tasks": "lorasweep.step.tasks",
    "lorasweep.lm_loss": "lorasweep.step.lm_loss",
    "lorasweep.scoring": "lorasweep.step.scoring",
    "lorasweep.ranks": "lorasweep.step.ranks",
    "lorasweep.prediction_cache": "lorasweep.estimate.shape_cache",
    "lorasweep.estimate.predict": "lorasweep.estimate.peak",
    "lorasweep.estimate.size": "lorasweep.estimate.byte_sizes",
    "lorasweep.runstore": "lorasweep.runs.store",
    "lorasweep.runlock": "lorasweep.runs.lock",
    "lorasweep.runrow": "lorasweep.runs.rows",
    "lorasweep.metrics": "lorasweep.runs.metrics",
    "lorasweep.components": "lorasweep.training.components",
    "lorasweep.resources": "lorasweep.training.resources",
    "lorasweep.loop": "lorasweep.training.loop",
    "lorasweep.checkpoint": "lorasweep.training.checkpoint",
    "lorasweep.signals": "lorasweep.training.signals",
    "lorasweep.memory": "lorasweep.training.memory",
    "lorasweep.tracking": "lorasweep.training.tracking",
    "lorasweep.run": "lorasweep.training.lifecycle",
    "lorasweep.preflight": "lorasweep.training.preflight",
    "lorasweep.reproduce": "lorasweep.training.reproduce",
    "lorasweep.predict": "lorasweep.serve.predict",
    "lorasweep.predict_requests": "lorasweep.serve.requests",
    "lorasweep.sweep.report.data": "lorasweep.sweep.report.collect",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in lorasweep 0.3", FutureWarning, stacklevel=3)


class _Alias(importlib.abc.Loader):
    """Loads an old name as the new module itself (one module object, so patches and isinstance agree)."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        _warn(spec.name, self.new)
        module = importlib.import_module(self.new)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_spec  # importlib set the old name's spec on it


class MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new)) if new else None


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())  # last: only a name no real module has reaches it


def forwarded(package: str, name: str, new_module: str):
    """A package's `__getattr__` for the names of the module it replaced (lorasweep.config -> .schema)."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(new_module)
    if not hasattr(module, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    _warn(f"{package}.{name}", f"{new_module}.{name}")
    return getattr(module, name)
