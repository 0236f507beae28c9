"""Where a sweep's trials run on one machine or on each node of a SLURM array: how many worker processes
(`--workers auto`), which GPU each one takes, and whether a worker packs trials instead (`--pack auto`).

The rule (docs/sweeps.md, "Workers: how many and where"). A worker's footprint is the sweep's largest trial's
predicted peak with its base (the memory estimate over the sweep's memory-relevant corners, sweep/pack_plan.py;
a worker packing P trials: the base once + P × each trial's own bytes) plus PROCESS_BYTES.
- GPUs: each GPU takes as many workers as footprints fit its memory (the memory cap, else its free memory less
  the margin: estimate/headroom.py), at most MOST_WORKERS_PER_GPU and at most the CPU cores per GPU (a worker
  process needs a core to launch its kernels), and at least one. A small model is dispatch-bound: K processes
  are K streams of small kernels at once.
- A CPU: its usable cores // CPU_THREADS_PER_WORKER workers (at least one), as many as fit its memory. Each
  process pays its start-up and they share the cores: two workers on two cores are slower than one.
- Never more workers than trials (or packs of trials) to run: the others would only wait.
- `--pack auto`: a device that holds several workers gets pack 1 (a pack batches only the frozen matmuls and runs
  everything else of its K trials on one thread: it saves memory, not dispatch); a device that holds one worker
  (a base that fits once but not K times) packs as many trials as fit beside one base (pack_plan.plan_pack).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

from ..config.schema import compose
from ..errors import UserError
from ..estimate.byte_sizes import format_bytes
from ..estimate.fit import memory_cap
from ..pack.size import parse_pack
from .pack_plan import PROCESS_WIDE_KEYS, plan_pack, sweep_memory_need

MOST_WORKERS_PER_GPU = 4  # past a few streams of small kernels one GPU is busy; more only adds contexts
CPU_THREADS_PER_WORKER = 4  # a small model's matmuls still use 4 threads; fewer processes pay less start-up
PROCESS_BYTES = 2**30  # what a worker holds beside its tensors: a CUDA context, or torch and its libraries (RSS)


@dataclass(frozen=True)
class Need:
    """The memory a sweep's trials need on one device (sweep/pack_plan.py's estimate over the corners)."""

    base: int  # the frozen base's bytes
    own: int  # the largest trial's own bytes (its peak less the base)
    limit: int | None  # what one device may give (the cap, else its free memory less the margin); None: not known
    budget: str  # that limit in words, its size included: "the memory cap 16.0 GiB"

    def footprint(self, pack: int) -> int:
        return self.base + pack * self.own + PROCESS_BYTES


@dataclass(frozen=True)
class Placement:
    workers: int
    per_device: int  # workers on each GPU (or on the CPU)
    pack: int | str | None  # what each worker packs: a size, auto (each worker sizes it), None (the spec's: 1)


def parse_workers(value) -> int | str:
    """`--workers`: a number >= 0 (0: queue only) or auto."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or number < 0:
        raise UserError(f"--workers must be >= 0 or auto, got {value!r}")
    return number


def usable_cores() -> int:
    """The CPU cores this process may run on (a cgroup or taskset may give it fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs local workers may use, as CUDA_VISIBLE_DEVICES names them: where the user set it, its entries
    (as many as CUDA found: an unknown entry ends CUDA's list), else 0..n-1."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def worker_env(index: int, workers: int, gpus: list[str], cores: int | None = None) -> dict[str, str]:
    """What local worker `index` of `workers` gets in its environment: its index (its sampler's seed), its share
    of the cores, and where there are GPUs, GPU index mod their number (within the user's CUDA_VISIBLE_DEVICES)."""
    env = {
        "LORASWEEP_WORKER_INDEX": str(index),
        "OMP_NUM_THREADS": str(max(1, (cores or usable_cores()) // workers)),
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def place_local(
    spec, overrides: list[str], workers, gpus: list[str] | None = None, cores: int | None = None, say=print
):
    """How a local sweep runs on this machine's GPUs (else its CPU); `workers` an int or auto. Each choice made
    for auto is said in one line (`say`); a pack of K > 1 is checked against the memory as `prepare` does."""
    gpus = visible_gpus() if gpus is None else gpus
    device = "cuda" if gpus else "cpu"
    need = functools.cache(lambda: _estimated(spec, overrides, device))
    placement = decide(
        spec,
        workers,
        len(gpus),
        cores or usable_cores(),
        need,
        lambda: plan_pack(spec, overrides, "auto", device=device),  # says its own line
        say,
    )
    if isinstance(placement.pack, int) and placement.pack > 1 and spec.pack != "auto":
        plan_pack(spec, overrides, placement.pack, device=device)  # one that cannot fit is refused in one line
    return placement


def place_slurm(spec, overrides: list[str], workers, settings: dict, say=print):
    """How each array task runs (one node: cluster.gpus_per_node GPUs, cluster.cpus_per_task CPUs, which its
    workers split). The node's GPU memory is not known here: only a memory cap (--memory-cap, the spec's,
    cluster.memory_cap) lets several workers share a GPU or sizes a pack of auto here; without one each worker
    sizes it on its node."""
    workers = parse_workers(workers)
    if workers == 0:
        raise UserError("--workers 0 queues only, without --slurm; with --slurm give the workers per array task")
    whole = settings["nodes"] > 1 or settings["processes_per_node"] > 1  # a trial takes the whole allocation
    if workers == "auto" and whole:
        say("--workers auto: 1 (a trial runs on cluster.nodes × cluster.processes_per_node processes)")
        workers = 1
    if workers != 1 and whole:
        raise UserError(
            f"--workers {workers} runs several one-process workers per node; a trial on cluster.nodes="
            f"{settings['nodes']} × cluster.processes_per_node={settings['processes_per_node']} takes the whole "
            "allocation: drop --workers or set both to 1"
        )
    gpus = int(settings["gpus_per_node"])
    if isinstance(workers, int) and 1 < workers < gpus:
        raise UserError(
            f"--workers {workers} with cluster.gpus_per_node={gpus}: a worker uses one GPU, so {gpus - workers} "
            f"would idle; pass --workers {gpus} (or auto) or cluster.gpus_per_node={workers}"
        )
    device = "cuda" if gpus else "cpu"
    capped = memory_cap(compose([*spec.fixed, *overrides])) is not None
    if spec.pack == "auto" and any(p.key in PROCESS_WIDE_KEYS for p in spec.params):
        plan_pack(spec, overrides, "auto")  # refuses such a spec in one line, before any estimate
    if capped:  # a cap is used as given: what fits it here fits it on the node
        need = functools.cache(lambda: _estimated(spec, overrides, device))
        pack_auto = lambda: plan_pack(spec, overrides, "auto", device=device)  # noqa: E731 - says its own line
    else:
        unknown = "a node's GPU memory is not known here: a memory cap (--memory-cap, cluster.memory_cap) fits more"
        need = functools.cache(lambda: Need(0, 0, None, unknown))
        pack_auto = lambda: "auto"  # noqa: E731 - each worker sizes it against its own GPU
    placement = decide(spec, workers, gpus, int(settings["cpus_per_task"]), need, pack_auto, say)
    if isinstance(placement.pack, int) and placement.pack > 1 and spec.pack != "auto":
        plan_pack(spec, overrides, placement.pack, device=device)  # one that cannot fit the cap is refused
    return placement


def decide(spec, workers, gpus: int, cores: int | None, need: Callable[[], Need], pack_auto: Callable, say=print):
    """The rule of this module's docstring, on the figures: `gpus` on the device (0: a CPU), `cores` the CPU's,
    `need()` the estimate (called only where it can change the choice), `pack_auto()` the pack that fits one worker
    alone on its device (an int, or auto: each worker sizes it); each choice for auto said in one line."""
    workers = parse_workers(workers)
    requested = spec.pack if spec.pack is None else parse_pack(spec.pack)
    if workers == "auto":
        workers = _auto_workers(gpus, cores, need, requested if isinstance(requested, int) else 1, spec.n_trials, say)
    per_device = -(-workers // gpus) if gpus else workers
    pack = requested
    if requested == "auto" and workers:
        if per_device > 1:
            pack = 1
            say(
                f"--pack auto: 1 ({per_device} workers per {'GPU' if gpus else 'CPU'}: separate processes, not a "
                "pack, give a small model its throughput; a pack saves memory, not dispatch)"
            )
        else:
            pack = pack_auto()
            if pack == "auto":
                say("--pack auto: sized by each worker on its own device (the base once + K × each trial's own)")
    return Placement(workers, per_device, pack)


def _auto_workers(gpus: int, cores: int | None, need, pack: int, trials: int, say) -> int:
    """The workers, said with why: per GPU the tightest of its bounds (memory, MOST_WORKERS_PER_GPU, the cores), or
    on a CPU cores // CPU_THREADS_PER_WORKER within the memory; then no more than the trials to run."""
    if gpus:
        bounds = {f"at most {MOST_WORKERS_PER_GPU} per GPU": MOST_WORKERS_PER_GPU}
        if cores:
            bounds[f"{cores} CPU cores for {gpus} GPU{'s' if gpus > 1 else ''}"] = max(1, cores // gpus)
    else:
        bounds = {
            (
                f"{cores} CPU cores, {CPU_THREADS_PER_WORKER} threads per worker"
                if cores
                else "a CPU node: one worker on its cluster.cpus_per_task cores"
            ): max(1, (cores or 1) // CPU_THREADS_PER_WORKER)
        }
    memory = None
    if min(bounds.values()) > 1:  # only then can memory decide: estimate
        found = need()
        if found.limit is None:
            bounds = {found.budget: 1}
        else:
            footprint = found.footprint(pack)
            copies = found.limit // footprint
            memory = f"{copies} × {format_bytes(footprint)} fit {found.budget}"
            if copies < 1:
                memory = f"not even one worker's {format_bytes(footprint)} fits {found.budget}"
            bounds = {memory: max(1, copies), **bounds}  # first: a tie is told as memory's
    why, per = min(bounds.items(), key=lambda item: item[1])
    if memory and why != memory:
        why += f"; {memory}"
    if gpus:
        workers = gpus * per
        why = f"{gpus} GPU{'s' if gpus > 1 else ''}, {'one worker' if per == 1 else f'{per} workers'} each: {why}"
    else:
        workers = per
    runs = -(-trials // pack)  # packs of trials: more workers would only wait
    if workers > runs:
        workers, why = runs, f"{why}; only {trials} trials" + (f" in packs of {pack}" if pack > 1 else "")
    say(f"--workers auto: {workers} ({why})")
    return workers


def _estimated(spec, overrides: list[str], device: str) -> Need:
    base, own, budget = sweep_memory_need(spec, overrides, None, device)
    return Need(int(base), int(own), budget.limit, budget.describe())
