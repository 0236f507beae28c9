"""Pruning: the headline sweep with its own pruner, with the median pruner, and without pruning; same sampler
seed, in one run. Reports optimizer steps trained and the best eval loss of each (steps, not seconds: the ratio
does not depend on how busy the machine is).

    python benchmarks/pruning.py [--trials 12] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "rank_alpha_targets.yaml"
# The median pruner the issue names, tuned to stop as early as it can: checks from step 10, two startup trials.
MEDIAN = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 10}


def steps_trained(trial, max_steps: int) -> int:
    if trial.state.name == "COMPLETE":
        return max_steps
    return max(trial.intermediate_values, default=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    from lorasweep.cli.main import _quiet_libraries
    from lorasweep.sweep.launch import run_sweep

    _quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="lorasweep-prune-"))
    headline = yaml.safe_load(SPEC.read_text())
    pruners = {"spec": headline["pruner"], "median": MEDIAN, "none": {"name": "none"}}
    if headline["pruner"] == MEDIAN:
        del pruners["median"]
    results = {}
    for label, pruner in pruners.items():
        spec = {
            **headline,
            "study": f"prune-{label}",
            "pruner": pruner,
            "fixed": [f for f in headline["fixed"] if not f.startswith("trainer.max_steps")],
        }
        path = work / f"{label}.yaml"
        path.write_text(yaml.safe_dump(spec))
        study, _ = run_sweep(
            str(path),
            [f"trainer.max_steps={args.steps}", "tracking=none", "trainer.progress=false", f"run_root={work / label}"],
            n_trials=args.trials,
        )
        trials = study.get_trials()
        best = min(t.values[0] for t in trials if t.state.name == "COMPLETE")
        results[label] = (
            sum(steps_trained(t, args.steps) for t in trials),
            best,
            sum(t.state.name == "PRUNED" for t in trials),
        )
    s_n, b_n, _ = results["none"]
    print(f"{args.trials} trials x {args.steps} steps, {SPEC.name}; unpruned: {s_n} steps, best eval/loss {b_n:.4f}")
    for label in (k for k in pruners if k != "none"):
        steps, best, pruned = results[label]
        print(
            f"{label:>6} {pruners[label]}: {steps} steps ({pruned} pruned), best eval/loss {best:.4f}; "
            f"steps ratio {steps / s_n:.3f} (target <= 0.5), best-loss ratio {best / b_n:.4f} (target <= 1.02)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
