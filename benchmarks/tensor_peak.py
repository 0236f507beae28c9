"""What the CPU tensor-peak counter (memory.TensorPeak) costs a run: the demo's config, 10 steps, three ways,
interleaved in one process: the counter off, on where a peak can be (the default: the first 2 steps, then only
larger batches), and on for every step. Each run's step times come from its history (perf/step_time_s, one
record a step, evaluation and setup excluded). Also each way's recorded tensor peak.

    python benchmarks/tensor_peak.py [--steps 10] [--repeats 3] [--threads N] [overrides ...]

--threads 1 makes a step's time its CPU time (robust on a shared machine); the default is torch's own.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    import torch

    from lorasweep.config.schema import compose
    from lorasweep.runs.store import RunDir
    from lorasweep.training import lifecycle as run
    from lorasweep.training import memory

    if args.threads:
        torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="tensor-peak-")

    class Off(memory.TensorPeak):  # run.train passes `enabled` itself: overridden here
        def __init__(self, device, enabled=True, **options):
            super().__init__(device, enabled=False, **options)

    ways = {
        "off": Off,
        "default (first steps, larger batches)": memory.TensorPeak,
        "every step": functools.partial(memory.TensorPeak, steps=10**9),
    }
    steps = {name: {"first 2": [], "later": []} for name in ways}
    peaks = {}
    cfg = compose(
        [
            f"trainer.max_steps={args.steps}",
            "trainer.eval_every=0",
            "trainer.log_every=1",
            "trainer.progress=false",
            "trainer.predict_memory=false",
            "tracking=none",
            f"run_root={root}",
            *args.overrides,
        ]
    )
    for _ in range(args.repeats):
        for name, make in ways.items():
            run.TensorPeak = make  # how run.train builds its counter, for this benchmark only
            metrics = run.train(cfg, force=True)
            history = RunDir(f"{root}/{metrics['config_hash']}").history()
            times = [h["perf/step_time_s"] for h in history if "perf/step_time_s" in h]
            steps[name]["first 2"] += times[:2]
            steps[name]["later"] += times[2:]
            peaks[name] = metrics.get("memory/tensor_peak_bytes")
    run.TensorPeak = memory.TensorPeak
    print(f"demo config, {args.steps} steps, {args.repeats} interleaved repeats, threads {torch.get_num_threads()}")
    print(f"{'counter':<40} {'steps 1-2 s':>12} {'steps 3+ s':>11} {'steps/s':>8} {'vs off':>7}  tensor peak")
    base = statistics.median(steps["off"]["first 2"] + steps["off"]["later"])
    for name, parts in steps.items():
        every = statistics.median(parts["first 2"] + parts["later"])
        peak = f"{peaks[name] / 2**20:.1f} MiB" if peaks[name] else "-"
        print(
            f"{name:<40} {statistics.median(parts['first 2']):>12.3f} {statistics.median(parts['later']):>11.3f} "
            f"{1 / every:>8.2f} {every / base:>7.2f}  {peak}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
