"""Pruning: the headline sweep with the median pruner vs without, same sampler seed, in one run.
Reports optimizer steps trained and the best eval loss of each.

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


def steps_trained(trial, max_steps: int) -> int:
    if trial.state.name == "COMPLETE":
        return max_steps
    return max(trial.intermediate_values, default=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    from lorasweep.cli import _quiet_libraries
    from lorasweep.sweep.launch import run_sweep

    _quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="lorasweep-prune-"))
    results = {}
    for pruner in ("median", "none"):
        spec = yaml.safe_load(SPEC.read_text())
        spec["study"] = f"prune-{pruner}"
        spec["pruner"] = {**spec["pruner"], "name": pruner} if pruner != "none" else {"name": "none"}
        spec["fixed"] = [f for f in spec["fixed"] if not f.startswith("trainer.max_steps")]
        path = work / f"{pruner}.yaml"
        path.write_text(yaml.safe_dump(spec))
        study, _ = run_sweep(str(path), [f"trainer.max_steps={args.steps}", "tracking=none",
                                         "trainer.progress=false", f"run_root={work / pruner}"],
                             n_trials=args.trials)
        trials = study.get_trials()
        best = min(t.values[0] for t in trials if t.state.name == "COMPLETE")
        results[pruner] = (sum(steps_trained(t, args.steps) for t in trials), best,
                           sum(t.state.name == "PRUNED" for t in trials))
    (s_p, b_p, n_p), (s_n, b_n, _) = results["median"], results["none"]
    print(f"{args.trials} trials × {args.steps} steps, {SPEC.name}")
    print(f"median pruner: {s_p} steps ({n_p} pruned), best eval/loss {b_p:.4f}")
    print(f"no pruner:     {s_n} steps, best eval/loss {b_n:.4f}")
    print(f"steps ratio {s_p / s_n:.3f} (target <= 0.5), best-loss ratio {b_p / b_n:.4f} (target <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
