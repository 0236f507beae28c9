"""Sweep overhead, from the command line as a user runs it: startup (command to the first trial's first step)
apart from the per-trial cost (what each further trial adds beyond its own training loop).

`lorasweep sweep SPEC` runs in a fresh process twice per repeat, with a short and a long budget (`--few` and
`--trials` trials of `--steps` steps, one worker); every run records its own loop time (perf/loop_time_s). With
wall(N) = startup + N x per_trial + loops(N), two budgets give both unknowns:

    per_trial = ((wall_long - loops_long) - (wall_short - loops_short)) / (long - short)
    startup   = (wall_short - loops_short) - short x per_trial

Repeats are interleaved (short, long, short, long, ...); the table gives median and min-max over them.
`--shapes new` (the default) searches rank and targets, so nearly every trial has a shape of its own and its own
memory prediction; `--shapes one` searches only the learning rate and α, so every trial shares one prediction
(estimate/shape_cache.py). `--process-per-trial` also times the same configs as one `lorasweep train` process each
(Hydra multirun's way). `--startup` times commands that train nothing instead (a fresh process each, median of
--repeats): `--help`, `runs` on an empty and on a sweep's run root, `status` and `report` of that sweep.
`--in-process N` measures a warm worker's fixed cost per trial directly instead (run.train's wall time less its
loop time, one process, N rounds interleaved): trials of one shape with the memory prediction on and off, and a
new shape each time (prediction on); robust where the two-budget difference drowns in a loaded machine's noise.

    python benchmarks/sweep_overhead.py [--trials 8] [--few 2] [--steps 10] [--repeats 3] [--shapes new|one]
        [--process-per-trial] [--startup] [--in-process N] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
COMMON = [
    "trainer.eval_every=0",
    "trainer.batch_size=16",
    "data.max_eval_examples=64",
    "tracking=none",
    "trainer.progress=false",
]


SHAPES = {  # what the trials search: a new shape (and memory prediction) nearly every trial, or one for all
    "new": """
          lora.rank: {type: int, low: 1, high: 64, log: true}
          lora.targets: {type: categorical, choices: [qv, all]}
          optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}""",
    "one": """
          lora.alpha: {type: float, low: 4, high: 64, log: true}
          optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}""",
}


def _spec(work: Path, trials: int, shapes: str = "new") -> Path:
    path = work / f"spec{trials}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        study: overhead{trials}
        n_trials: {trials}
        pruner: {{name: none}}
        sampler: {{name: random, seed: 0}}
        params:""")
        + SHAPES[shapes]
        + "\n"
    )
    return path


def _sweep(work: Path, trials: int, steps: int, extra: list[str], shapes: str = "new", root=None):
    """(wall seconds of the command, seconds inside its training loops, the trials' overrides)."""
    root = root or Path(tempfile.mkdtemp(prefix="runs-", dir=work))
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lorasweep.cli",
            "sweep",
            str(_spec(work, trials, shapes)),
            *COMMON,
            *extra,
            f"trainer.max_steps={steps}",
            f"run_root={root}",
        ],
        check=True,
        capture_output=True,
        env=ENV,
    )
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in root.glob("*/metrics.json")]
    assert len(records) == trials, f"{len(records)} runs for {trials} trials"
    return wall, sum(r["perf/loop_time_s"] for r in records), [r["config_hash"] for r in records]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--few", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="new")
    parser.add_argument("--process-per-trial", action="store_true")
    parser.add_argument("--startup", action="store_true", help="time commands that train nothing, then stop")
    parser.add_argument("--in-process", type=int, default=0, metavar="N", help="fixed cost per trial, N rounds")
    parser.add_argument(
        "overrides", nargs="*", help="more overrides for every trial (e.g. trainer.predict_memory=false)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    if args.startup:
        _startup(work, args.repeats)
        return 0
    if args.in_process:
        _in_process(work, args.in_process, args.steps, args.overrides)
        return 0
    startups, per_trials, ratios = [], [], []
    for _ in range(args.repeats):
        short = _sweep(work, args.few, args.steps, args.overrides, args.shapes)
        long = _sweep(work, args.trials, args.steps, args.overrides, args.shapes)
        per_trial = ((long[0] - long[1]) - (short[0] - short[1])) / (args.trials - args.few)
        per_trials.append(per_trial)
        startups.append((short[0] - short[1]) - args.few * per_trial)
        ratios.append(long[0] / long[1])
    print(
        f"one worker, MiniLM, batch 16, {args.steps} steps a trial; {args.few} and {args.trials} trials, "
        f"{args.repeats} interleaved repeats, shapes: {args.shapes} {' '.join(args.overrides)}"
    )
    print(f"{'figure':<34} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in (
        ("startup s (command -> first step)", startups),
        ("per-trial cost s", per_trials),
        (f"wall / loops ({args.trials} trials)", ratios),
    ):
        print(f"{name:<34} {statistics.median(values):>8.2f} {min(values):>8.2f} {max(values):>8.2f}")
    if args.process_per_trial:
        _process_per_trial(work, args)
    return 0


def _startup(work: Path, repeats: int) -> None:
    """Median wall seconds (min-max) of commands that train nothing, each in a fresh process; the study and runs
    they read come from a 2-trial sweep of 3 steps run first."""
    root = work / "startup-runs"
    _sweep(work, 2, 3, [], "new", root=root)
    empty = work / "empty"
    empty.mkdir()
    commands = {
        "lorasweep --help": ["--help"],
        "lorasweep runs (no runs)": ["runs", "--run-root", str(empty)],
        "lorasweep runs (2 runs)": ["runs", "--run-root", str(root)],
        "lorasweep status": ["status", "--study", "overhead2", "--run-root", str(root)],
        "lorasweep report": ["report", "--study", "overhead2", "--run-root", str(root), "--wandb", "none"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):  # interleaved, as the sweeps above
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lorasweep.cli", *argv], check=True, capture_output=True, env=ENV)
            times[name].append(time.perf_counter() - start)
    print(f"command startup, a fresh process each, median (min-max) of {repeats}")
    for name, values in times.items():
        print(f"{name:<34} {statistics.median(values):>6.2f} s ({min(values):.2f}-{max(values):.2f})")


def _in_process(work: Path, rounds: int, steps: int, extra: list[str]) -> None:
    """A warm worker's fixed cost per trial (run.train's wall less its loop), interleaved; each round's trials
    get a new learning rate, α and seed (one shape) or also a new rank (a new shape: a new prediction)."""
    os.environ.update({k: ENV[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")})
    from lorasweep.config.schema import compose
    from lorasweep.training.lifecycle import train
    from lorasweep.training.resources import Resources

    base = [*COMMON, f"trainer.max_steps={steps}", f"run_root={work / 'in-process'}", *extra]
    kinds = {
        "one shape, prediction on": [],
        "one shape, predict_memory=false": ["trainer.predict_memory=false"],
        "a new shape each trial": ["lora.rank={rank}"],
    }
    costs: dict[str, list[float]] = {kind: [] for kind in kinds}
    resources = Resources(keep=True)  # what a worker keeps between trials
    for i in range(rounds + 1):  # round 0: the process's first trial of each kind (imports, first trace)
        for kind, more in kinds.items():
            point = [f"optim.lr={1e-4 * (1 + i)}", f"lora.alpha={4 + i}", f"seed={i}"]
            cfg = compose([*base, *point, *(m.format(rank=20 + i) for m in more)])
            start = time.perf_counter()
            metrics = train(cfg, resources=resources, force=True)
            if i:
                costs[kind].append(time.perf_counter() - start - metrics["perf/loop_time_s"])
    print(f"a warm worker's fixed cost per trial (wall less loop), {rounds} interleaved rounds, {steps} steps")
    for kind, values in costs.items():
        print(f"{kind:<34} {statistics.median(values):>6.2f} s ({min(values):.2f}-{max(values):.2f})")


def _process_per_trial(work: Path, args) -> None:
    """The same kind of trials, a fresh `lorasweep train` process each: wall / loops."""
    root = work / "procs"
    start, loops = time.perf_counter(), 0.0
    for rank in range(1, args.trials + 1):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lorasweep.cli",
                "train",
                *COMMON,
                *args.overrides,
                f"trainer.max_steps={args.steps}",
                f"lora.rank={rank}",
                f"run_root={root}",
            ],
            check=True,
            capture_output=True,
            env=ENV,
        )
    for path in root.glob("*/metrics.json"):
        loops += json.loads(path.read_text())["perf/loop_time_s"]
    print(f"{'process per trial: wall / loops':<34} {(time.perf_counter() - start) / loops:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
