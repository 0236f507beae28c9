"""Sweep overhead: 8 short trials in ONE worker (model and data loaded once) vs a process per trial (what
Hydra's multirun does), in the same run. Reports wall time / time inside the training loops for each.

    python benchmarks/sweep_overhead.py [--trials 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    from lorasweep.cli import _quiet_libraries
    from lorasweep.runstore import RunStore
    from lorasweep.sweep.launch import run_sweep

    _quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    spec = work / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""
        study: overhead
        n_trials: {args.trials}
        pruner: {{name: none}}
        sampler: {{name: random, seed: 0}}
        params:
          lora.rank: {{type: int, low: 1, high: 64, log: true}}
          lora.targets: {{type: categorical, choices: [qv, all]}}
          optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-3, log: true}}
    """))
    common = [f"trainer.max_steps={args.steps}", "trainer.eval_every=0", "trainer.batch_size=16",
              "data.max_eval_examples=64", "tracking=none", "trainer.progress=false"]

    start = time.perf_counter()
    study, _ = run_sweep(str(spec), [*common, f"run_root={work / 'worker'}"])
    worker_wall = time.perf_counter() - start
    trials = study.get_trials()
    worker_loop = sum(t.user_attrs["metrics"]["perf/loop_time_s"] for t in trials)

    start = time.perf_counter()
    loops = 0.0
    for t in trials:  # the same configs, one fresh process each
        overrides = [o for o in t.user_attrs["overrides"] if not o.startswith(("run_root=", "sweep="))]
        subprocess.run([sys.executable, "-m", "lorasweep.cli", "train", *overrides, f"run_root={work / 'procs'}"],
                       check=True, capture_output=True)
        loops += RunStore(work / "procs").run(t.user_attrs["config_hash"]).metrics()["perf/loop_time_s"]
    procs_wall = time.perf_counter() - start

    print(f"{args.trials} trials × {args.steps} steps, MiniLM, batch 16")
    print(f"{'mode':<22} {'wall s':>8} {'in loops s':>11} {'wall/loops':>11}")
    print(f"{'one worker (reuse)':<22} {worker_wall:>8.1f} {worker_loop:>11.1f} {worker_wall / worker_loop:>11.3f}")
    print(f"{'process per trial':<22} {procs_wall:>8.1f} {loops:>11.1f} {procs_wall / loops:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
