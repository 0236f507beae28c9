"""Commands that train nothing start without torch, transformers or datasets (about a second, not 8-10 s:
docs/benchmarks.md); `--help` without Optuna too. Each command runs in a fresh interpreter, as a user runs it.
(`report`, and `runs` over real runs, still import torch through lora/'s label helpers: docs/benchmarks.md.)"""

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "datasets")


def _imported(tmp_path, *argv) -> set[str]:
    """The heavy libraries a fresh process holds after `lorasweep ARGV` returns."""
    script = textwrap.dedent(f"""
        import json, sys
        from lorasweep.cli import main
        code = main({list(argv)!r})
        print(json.dumps([code, [m for m in {HEAVY + ("optuna",)!r} if m in sys.modules]]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    code, modules = json.loads(out.strip().splitlines()[-1])
    assert code == 0, out
    return set(modules)


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    """A study with two finished trials and no runs (what `status` and `report` read first)."""
    from lorasweep.sweep.spec import load_spec
    from lorasweep.sweep.storage import default_storage_url
    from lorasweep.sweep.study import create_study

    root = tmp_path_factory.mktemp("startup") / "runs"
    spec = root.parent / "spec.yaml"
    spec.write_text(
        "study: startup\nn_trials: 2\nsampler: {name: tpe, seed: 0}\npruner: {name: median}\n"
        "params:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
    )
    root.mkdir()
    study = create_study(load_spec(str(spec)), default_storage_url(str(root)), [])
    for value in (0.5, 0.4):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1.0e-4, 1.0e-3, log=True)
        study.tell(trial, value)
    return root


def test_help_imports_no_library_it_does_not_show(tmp_path):
    assert _imported(tmp_path, "--help") == set()


def test_runs_imports_neither_torch_nor_transformers(tmp_path):
    assert not _imported(tmp_path, "runs", "--run-root", str(tmp_path / "none")) & set(HEAVY)


def test_status_needs_optuna_only(study_root, tmp_path):
    assert _imported(tmp_path, "status", "--study", "startup", "--run-root", str(study_root)) == {"optuna"}
