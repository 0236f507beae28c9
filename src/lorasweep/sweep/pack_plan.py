"""How many trials a worker packs: `--pack K`, a spec's `pack: K`, or `pack: auto` (as many as the memory allows).

A pack holds the frozen base once and each trial's own bytes (its adapter, head, gradients, optimizer state and
activations: its predicted peak less the base), so K trials need about base + K × own. The prediction is the
memory estimate's (estimate/), over the sweep's memory-relevant corners (the largest trial counts). The budget:
the memory cap as given, else the device's free memory less cluster.memory_margin (estimate/headroom.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config.schema import compose
from ..errors import UserError
from ..estimate.byte_sizes import format_bytes
from ..estimate.fit import cached_estimate, memory_cap, run_peak
from ..estimate.headroom import memory_budget, trials_that_fit
from ..estimate.peak import default_device
from ..pack.size import parse_pack
from .memory_estimate import sweep_points
from .spec import trial_overrides

# Settings a process holds once for all its runs: trials that differ in them cannot train in one pack.
PROCESS_WIDE_KEYS = ("trainer.mixed_precision",)
MOST_AUTO = 8  # auto never packs more: past a few trials a CPU is saturated and a GPU's gain flattens


def plan_pack(spec, overrides: list[str], requested, cap=None, device: str | None = None) -> int:
    """The pack size to run: `requested` (an int or auto) checked against the memory cap. auto: as many as fit
    the cap (or the device's free memory less cluster.memory_margin), at most MOST_AUTO, said in one line; an int
    that cannot fit the cap is refused in one line."""
    requested = parse_pack(requested)
    if requested == 1:
        return 1
    for key in PROCESS_WIDE_KEYS:
        if any(p.key == key for p in spec.params):
            raise UserError(
                f"--pack {requested}: the spec searches {key}, which one process holds one value of (accelerate's "
                f"state), so its trials cannot share a pack; fix it in `fixed`, or sweep it without --pack"
            )
    first = compose(trial_overrides(spec, overrides, _first_point(spec)))
    if requested != "auto" and memory_cap(first, cap) is None:
        return requested
    root = Path(first.run_root)
    root_existed = root.exists()
    base, own, budget = sweep_memory_need(spec, overrides, cap, device)
    limit, where = budget.limit, budget.describe()
    fits = trials_that_fit(limit, base, own)
    if requested == "auto":
        chosen = int(max(1, min(MOST_AUTO, fits)))
        print(
            f"--pack auto: {chosen} (the base {format_bytes(base)} once + {format_bytes(own)} per trial; "
            f"{fits} fit {where}; at most {MOST_AUTO})",
            flush=True,
        )
        return chosen
    if requested > fits and not root_existed:  # refused: leave no run root behind (the estimate caches data there)
        shutil.rmtree(root, ignore_errors=True)
    if requested > fits and fits == 0:
        raise UserError(
            f"--pack {requested}: not even one trial fits {where} (the largest needs about {format_bytes(base + own)})"
        )
    if requested > fits:
        raise UserError(
            f"--pack {requested} needs about {format_bytes(base + requested * own)} (the base {format_bytes(base)} "
            f"once + {requested} × {format_bytes(own)} per trial), over {where}; at most {fits} fit"
        )
    return requested


def _first_point(spec) -> dict:
    return {p.key: (p.choices[0] if p.type == "categorical" else p.low) for p in spec.params}


def sweep_memory_need(spec, overrides, cap, device):
    """(base bytes, the largest trial's own bytes, the budget) over the sweep's corners."""
    base = own = 0
    budget = None
    for point in sweep_points(spec):
        cfg = compose(trial_overrides(spec, overrides, point))
        if budget is None:  # before any estimate: a bad margin or cap is said first
            budget = memory_budget(cfg, device or default_device(cfg), cap)
        estimate = cached_estimate(cfg, device)
        weights = int(estimate.get("memory/base_weights_bytes", 0))
        base, own = max(base, weights), max(own, run_peak(estimate)[0] - weights)
    return base, own, budget
