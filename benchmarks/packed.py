"""Packed trials: the headline sweep (sweeps/rank_alpha_targets.yaml: TPE, successive halving) with `--pack K`
for each K of `--packs`, beside the same trials on `--workers K` processes (pack 1) for each K of `--workers`,
for each model of `--models` (MiniLM: compute-bound; tiny_llama, hidden 64: dispatch-bound), from the command line
as a user runs it, and how far each packed trial is from the same config trained alone.

Wall time: `python -m lorasweep.cli sweep SPEC --pack K --storage sqlite:///... tracking=none ...` in a fresh
process, a fresh study in its own temporary run root per sweep; repeats are interleaved (1, 2, 4, 8, workers,
then again; model by model within a repeat) so the machine's noise falls on every K alike, and the table gives the
median per K (and each repeat's wall time), trials per hour and the speedup over pack 1 of the same model measured
in the same run, with the load average (1 min, at each sweep's start and end) and the CPU seconds the sweep's
processes used: on a shared machine the CPU time is the steadier figure of the work done. The outcome
(completed / pruned) is read back from the study. The sweeps do not train the same trials (TPE sees results in
another order at each K, so pruning differs): the steps trained and the wall time per step are the like-for-like
figures beside trials per hour.

Solo check (on by default, `--no-solo-check` skips it): every trial of a packed sweep (K > 1, first repeat) is
retrained ALONE in this process from its run directory's stored config (`reproduce.recompose`, `run.train` into
another directory), and eval/loss is compared at every step the packed trial recorded in its history.jsonl. A
pruned trial stopped early, so its solo rerun is stopped at the same evaluation (the rerun has no pruner: an
`on_eval` callback ends it there, which is what the pruner did). Reported: the max relative difference per trial
and per K; the pack promises <= 1e-4 (only the base GEMM's row blocking differs).

What the numbers mean. On a CPU (2 cores here) the base matmuls are already saturated at a moderate batch, so
batching K trials' GEMMs saves little compute; the gain on CPU comes from sharing one model build, one data load
and one process (start-up, per-trial setup, Python overhead between small kernels). On a GPU a small trial leaves
the device mostly idle, so running K trials' base GEMMs as one should give more: that is the figure to measure
there (`--device cuda`, e.g. `scripts/gpu_check.py --only bench-packed`).

    python benchmarks/packed.py [--packs 1 2 4 8] [--workers K ...] [--models minilm tiny_llama] [--repeats 1]
                                [--trials 12] [--steps 60] [--eval-every N] [--device cpu|cuda] [--no-solo-check]
                                [--out FILE.md] [--json FILE] [overrides ...]

A `--workers K` sweep runs K `lorasweep worker` processes (pack 1), each given GPU i mod n on CUDA
(sweep/placement.py); its peak is the largest of one process, so the machine holds about K times it.

`--steps` below the spec's 60 scales the spec's evaluation interval and the pruner's first rung alike (both 10 at
60 steps; `--eval-every` sets them), keeping the reduction factor. Extra overrides (e.g. data.max_eval_examples=200)
go to every trial and to the solo reruns (they are in the stored configs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "rank_alpha_targets.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
COMMON = ["tracking=none", "trainer.progress=false"]
TOLERANCE = 1e-4  # what `lorasweep reproduce` allows a packed run (reproduce.PACKED_TOLERANCE)


def _fixed(spec: dict, key: str) -> int:
    return int(next(f.split("=", 1)[1] for f in spec["fixed"] if f.startswith(key + "=")))


def sweep_spec(work: Path, trials: int, steps: int | None, eval_every: int | None) -> tuple[Path, list[str]]:
    """The headline spec (its pruner's first rung moved with the evaluation interval) and the command-line
    overrides that shrink it; the command line wins over the spec's `fixed`."""
    spec = yaml.safe_load(SPEC.read_text())
    spec_steps, spec_every = _fixed(spec, "trainer.max_steps"), _fixed(spec, "trainer.eval_every")
    steps = steps or spec_steps
    if eval_every is None:  # scaled with the steps: 10 of 60 in the spec
        eval_every = max(1, round(spec_every * steps / spec_steps))
    if spec["pruner"].get("min_resource") == spec_every:
        spec["pruner"]["min_resource"] = eval_every  # the first rung at the first evaluation, as in the spec
    spec["n_trials"] = trials
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, [f"trainer.max_steps={steps}", f"trainer.eval_every={eval_every}"]


def arms(packs: list[int], workers: list[int]) -> list[tuple[str, int, int]]:
    """(label, pack, workers) of each sweep a repeat runs: every pack on one worker, then K workers unpacked."""
    return [(f"pack {k}", k, 1) for k in packs] + [(f"workers {k}", 1, k) for k in workers]


def run_sweep(
    spec: Path, pack: int, root: Path, overrides: list[str], env: dict, workers: int = 1, model: str | None = None
) -> dict:
    """One sweep in a fresh process; its wall time and its trials as the study recorded them."""
    import optuna

    storage = f"sqlite:///{root / 'study.db'}"
    command = [sys.executable, "-m", "lorasweep.cli", "sweep", str(spec), "--pack", str(pack)]
    command += ["--workers", str(workers), "--storage", storage, *COMMON, *overrides, f"run_root={root}"]
    command += [f"model={model}"] if model else []
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sweep and its workers (each waited for)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    load = (load + os.getloadavg()[0]) / 2  # the 1-minute load at the start and the end
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"pack {pack} × {workers} workers sweep failed (exit {done.returncode}):\n{tail}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=yaml.safe_load(spec.read_text())["study"], storage=storage)
    trials = [
        {"number": t.number, "state": t.state.name, "hash": t.user_attrs.get("config_hash")} for t in study.get_trials()
    ]
    return {
        "pack": pack,
        "workers": workers,
        "model": model or "minilm",
        "wall_s": wall,
        "load": load,
        "cpu_s": cpu,
        "root": str(root),
        "trials": trials,
    }


def peak_mib(root: Path) -> float | None:
    """The largest peak any run of the sweep recorded (a packed run records its pack's)."""
    peaks = []
    for path in root.glob("*/metrics.json"):
        record = json.loads(path.read_text())
        peak = record.get("memory/pack_peak_bytes", record.get("memory/peak_bytes"))
        if peak is not None:
            peaks.append(peak)
    return max(peaks) / 2**20 if peaks else None


def steps_trained(root: Path) -> int:
    """Optimizer steps the sweep's runs took (a pruned run stops early): the sweeps at different K do not train
    the same trials (TPE sees the results in another order, so pruning differs), so wall time per step is the
    like-for-like figure."""
    total = 0
    for path in root.glob("*/history.jsonl"):
        steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
        total += max(steps, default=0)
    return total


def eval_losses(history: list[dict]) -> dict[int, float]:
    return {r["step"]: r["eval/loss"] for r in history if "eval/loss" in r and "step" in r}


def solo_check(sweeps: list[dict], work: Path) -> list[dict]:
    """Each packed trial against its config trained alone (one solo run per config hash, stopped at the last
    evaluation any packed copy of it reached); one row per packed trial."""
    from omegaconf import OmegaConf

    from lorasweep.runs.store import RunDir
    from lorasweep.training.lifecycle import train
    from lorasweep.training.loop import Callbacks
    from lorasweep.training.reproduce import recompose
    from lorasweep.training.resources import Resources
    from lorasweep.training.tracking import NullTracker

    packed = []  # (K, trial number, state, run dir, model)
    for sweep in sweeps:
        for trial in sweep["trials"]:
            if trial["hash"] and trial["state"] in ("COMPLETE", "PRUNED"):
                run = RunDir(Path(sweep["root"]) / trial["hash"])
                packed.append((sweep["pack"], trial["number"], trial["state"], run, sweep.get("model", "minilm")))
    last_step: dict[str, int] = {}
    for _, _, _, run, _ in packed:
        last_step[run.hash] = max(last_step.get(run.hash, 0), max(eval_losses(run.history()), default=0))
    resources, solo = Resources(), {}  # one worker's resources: the model and data built once, as in a sweep
    for digest, stop_at in last_step.items():
        run = next(r for _, _, _, r, _ in packed if r.hash == digest)
        cfg = recompose(OmegaConf.to_container(run.config()), str(run.config_file))
        target = work / "solo" / digest
        callbacks = Callbacks(on_eval=lambda step, _metrics, stop_at=stop_at: step >= stop_at)
        train(cfg, tracker=NullTracker(), callbacks=callbacks, force=True, resources=resources, run_dir=target)
        solo[digest] = eval_losses(RunDir(target).history())
    rows = []
    for pack, number, state, run, model in packed:
        mine, alone = eval_losses(run.history()), solo[run.hash]
        diffs = [abs(loss - alone[step]) / abs(alone[step]) for step, loss in mine.items() if step in alone]
        missing = [step for step in mine if step not in alone]
        rows.append(
            {
                "model": model,
                "pack": pack,
                "trial": number,
                "hash": run.hash,
                "state": state,
                "steps_compared": len(diffs),
                "missing_steps": missing,
                "max_rel_diff": max(diffs, default=float("nan")) if not missing else float("inf"),
            }
        )
    return rows


def summarize(sweeps: list[dict], packs: list[int], trials: int, workers: list[int] | None = None) -> list[dict]:
    """One row per model and arm; the speedup against the first pack (on one worker) of the same model."""
    rows = []
    for model in dict.fromkeys(s["model"] for s in sweeps):
        rows += _summarize_model([s for s in sweeps if s["model"] == model], packs, trials, workers or [])
    return rows


def _summarize_model(sweeps: list[dict], packs: list[int], trials: int, workers: list[int]) -> list[dict]:
    rows = []
    base = statistics.median(s["wall_s"] for s in sweeps if s["pack"] == packs[0] and s["workers"] == 1)
    for label, pack, count in arms(packs, workers):
        mine = [s for s in sweeps if s["pack"] == pack and s["workers"] == count]
        wall = statistics.median(s["wall_s"] for s in mine)
        states = [t["state"] for t in mine[0]["trials"]]
        accounted = all(
            len(s["trials"]) == trials and all(t["state"] in ("COMPLETE", "PRUNED") for t in s["trials"]) for s in mine
        )
        rows.append(
            {
                "model": mine[0]["model"],
                "arm": label,
                "pack": pack,
                "workers": count,
                "wall_s": wall,
                "walls": [s["wall_s"] for s in mine],
                "cpu_s": statistics.median(s.get("cpu_s", float("nan")) for s in mine),
                "trials_per_hour": trials * 3600 / wall,
                "speedup": base / wall,
                "completed": states.count("COMPLETE"),
                "pruned": states.count("PRUNED"),
                "failed": states.count("FAIL"),
                "accounted": accounted,
                "peak_mib": peak_mib(Path(mine[0]["root"])),
                "steps": steps_trained(Path(mine[0]["root"])),
            }
        )
    return rows


def markdown(rows: list[dict], checks: list[dict] | None, header: str, base_pack: int) -> str:
    worst = {}
    for c in checks or []:
        key = (c.get("model", "minilm"), c["pack"])
        worst[key] = max(worst.get(key, 0.0), c["max_rel_diff"])
    lines = [
        header,
        "",
        f"| model | placement | wall s (median) | wall s (each) | CPU s (median) | trials/hour | speedup vs pack "
        f"{base_pack} | completed | pruned | failed | steps trained | wall ms / step | peak MiB (one process) "
        "| max rel diff eval/loss vs solo |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = (r["model"], r["pack"])
        diff = f"{worst[key]:.2e}" if r["workers"] == 1 and key in worst else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['arm']} | {r['wall_s']:.1f} | {' '.join(f'{w:.0f}' for w in r['walls'])} | "
            f"{r['cpu_s']:.0f} | {r['trials_per_hour']:.0f} | {r['speedup']:.2f}x | "
            f"{r['completed']} | {r['pruned']} | {r['failed']} | {r['steps']} | "
            f"{1000 * r['wall_s'] / max(r['steps'], 1):.0f} | {peak} | {diff} |"
        )
    if checks:
        lines += [
            "",
            "| model | pack K | trial | hash | state | evals compared | max rel diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c.get('model', 'minilm')} | {c['pack']} | {c['trial']} | {c['hash']} | {c['state']} | "
                f"{c['steps_compared']} | {c['max_rel_diff']:.2e} |"
            )
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict], checks: list[dict] | None) -> tuple[bool, str]:
    """The one line gpu_check.py judges: every sweep accounted for, every solo difference within tolerance."""
    accounted = all(r["accounted"] for r in rows)
    diffs = [c["max_rel_diff"] for c in checks or []]
    worst = None if not diffs else (float("nan") if any(d != d for d in diffs) else max(diffs))
    within = worst is None or worst <= TOLERANCE  # nan (a trial with nothing compared) fails: nan <= x is False
    largest = [r for r in rows if r["workers"] == 1 and r["model"] == rows[0]["model"]][-1]
    line = (
        f"packed: {'PASS' if accounted and within else 'FAIL'}; all trials accounted for: "
        f"{'yes' if accounted else 'NO'}; speedup at pack {largest['pack']}: {largest['speedup']:.2f}x; "
        f"max rel diff vs solo: {'not checked' if worst is None else f'{worst:.2e}'} (tolerance {TOLERANCE:g})"
    )
    others = [f"{r['model']} {r['arm']}: {r['speedup']:.2f}x" for r in rows if r is not largest and r["speedup"] != 1]
    return accounted and within, line + ("; " + ", ".join(others) if others else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="K worker processes (pack 1) per K")
    parser.add_argument(
        "--models", nargs="+", default=["minilm"], help="model= of each row (minilm: the spec's; tiny_llama)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the spec's 60)")
    parser.add_argument("--eval-every", type=int, default=None, help="default: the spec's 10, scaled with --steps")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-solo-check", dest="solo_check", action="store_false")
    parser.add_argument("--out", default=None, help="also write the tables here (markdown)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("overrides", nargs="*", help="more overrides for every trial (e.g. data.max_eval_examples=200)")
    args = parser.parse_args(argv)
    env = dict(ENV)
    if args.device == "cpu":  # set before torch is imported here, and passed to every sweep
        os.environ["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if args.device == "cuda":
        assert torch.cuda.is_available(), "--device cuda but torch sees no CUDA device"
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    work = Path(tempfile.mkdtemp(prefix="lorasweep-packed-"))
    spec, shrink = sweep_spec(work, args.trials, args.steps, args.eval_every)
    overrides = [*shrink, *args.overrides]
    sweeps = []
    for repeat in range(args.repeats):
        for model in args.models:
            for label, pack, workers in arms(args.packs, args.workers):
                root = work / f"r{repeat}-{model}-pack{pack}-workers{workers}"
                chosen = None if model == "minilm" else model  # minilm: the spec's own model
                sweeps.append(run_sweep(spec, pack, root, overrides, env, workers, chosen))
                last = sweeps[-1]
                print(f"repeat {repeat + 1}, {model}, {label}: {last['wall_s']:.1f} s (load {last['load']:.2f})")
    rows = summarize(sweeps, args.packs, args.trials, args.workers)
    checks = None
    if args.solo_check:
        from lorasweep.cli.main import _quiet_libraries

        _quiet_libraries()
        per_repeat = len(args.models) * len(arms(args.packs, args.workers))
        first = [s for s in sweeps[:per_repeat] if s["pack"] > 1]
        checks = solo_check(first, work)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    loads = [s["load"] for s in sweeps]
    header = (
        f"{SPEC.name}: {args.trials} trials, {' '.join(overrides)}; {device}; median of {args.repeats} "
        f"interleaved repeat(s), {time.strftime('%Y-%m-%d')}; load average (1 min, mean of a sweep's start and "
        f"end) {min(loads):.2f}-{max(loads):.2f} (median {statistics.median(loads):.2f})"
    )
    text = markdown(rows, checks, header, args.packs[0])
    ok, line = verdict(rows, checks)
    print("\n" + text + "\n" + line)
    if args.out:
        Path(args.out).write_text(text + "\n" + line + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": rows, "sweeps": sweeps, "solo": checks}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
