"""The public Python API is named in one place (lorasweep.API) and imported lazily; the 0.1 import paths keep
working for one release, as the same module objects, with a FutureWarning naming the new path (CHANGELOG.md)."""

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import lorasweep
from lorasweep._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_what_its_module_defines():
    for name, module in lorasweep.API.items():
        assert getattr(lorasweep, name) is getattr(importlib.import_module(module), name), name
    assert set(lorasweep.__all__) == {"__version__", *lorasweep.API}
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        lorasweep.trian  # noqa: B018


def test_import_lorasweep_loads_no_heavy_library():
    code = "import sys, lorasweep; print(sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_old_import_paths_give_the_new_modules_with_a_warning():
    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert module.__name__ == new and module.__spec__.name == new  # the real module, not a renamed copy
        assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught), old
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lorasweep.no_such_module")


def test_the_replaced_config_module_still_answers_for_its_names():
    from lorasweep.config import schema

    with pytest.warns(FutureWarning, match="lorasweep.config.schema.compose"):
        from lorasweep.config import compose
    assert compose is schema.compose
    with pytest.raises(ImportError):
        from lorasweep.config import no_such_name  # noqa: F401


def test_the_changelog_lists_every_moved_path():
    listed = dict(
        re.findall(r"^\| `(lorasweep[\w.]*)` \| `(lorasweep[\w.]*)` \|$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    )
    assert listed == MOVED
