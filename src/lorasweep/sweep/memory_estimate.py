"""`lorasweep sweep SPEC --estimate`: the predicted peak of every point a sweep may train, before anything is
queued (the prediction itself: estimate/)."""

from __future__ import annotations

from ..config.schema import compose
from ..estimate.byte_sizes import format_bytes
from ..estimate.fit import memory_cap, over_cap, run_peak
from ..estimate.headroom import CAP_NOTE, memory_budget
from ..estimate.peak import default_device, estimate_config
from .spec import grid_points, trial_overrides


def estimate_sweep(spec, overrides: list[str], cap=None, device: str | None = None) -> list[dict]:
    """`lorasweep sweep SPEC --estimate`: the predicted peak of every grid point, or of the corners of the search
    space (each numeric range at its low and high, every categorical choice), and which exceed the cap.
    Params that cannot change memory (learning rate, alpha, ...) are held at one value, so each memory-relevant
    point is traced once."""
    rows, budget = [], None
    for point in sweep_points(spec):
        cfg = compose(trial_overrides(spec, overrides, point))
        limit = memory_cap(cfg, cap)  # the spec's memory_cap is in its fixed overrides (cluster.memory_cap)
        if budget is None:  # what micro_batch=auto and --pack auto would fit here (a bad margin: said first)
            budget = memory_budget(cfg, device or default_device(cfg), cap, fallback=False).describe()
        estimate = estimate_config(cfg, device)
        rows.append(
            {
                "params": point,
                "config_hash": estimate["config_hash"],
                "memory/predicted_peak_bytes": run_peak(estimate)[0],
                "cap_bytes": limit,
                "over_cap": over_cap(estimate, limit) if limit else None,
                "budget": budget,
            }
        )
    return rows


def sweep_points(spec) -> list[dict]:
    """Every grid point, or the search space's memory-relevant corners (one value of each neutral param)."""
    import itertools

    if spec.sampler["name"] == "grid":
        return grid_points(spec.params)
    axes = [_corner_values(p) for p in spec.params]
    return [dict(zip([p.key for p in spec.params], values)) for values in itertools.product(*axes)]


MEMORY_NEUTRAL_KEYS = (
    "optim.lr",
    "optim.weight_decay",
    "optim.beta1",
    "optim.beta2",
    "optim.eps",
    "optim.warmup_steps",
    "optim.schedule",
    "lora.alpha",
    "seed",
    "trainer.max_steps",
    "trainer.eval_every",
    "trainer.epochs",
)


def _corner_values(param) -> list:
    if param.type == "categorical":
        return list(param.choices) if param.key not in MEMORY_NEUTRAL_KEYS else list(param.choices[:1])
    low = int(param.low) if param.type == "int" else float(param.low)
    high = int(param.high) if param.type == "int" else float(param.high)
    return [low] if param.key in MEMORY_NEUTRAL_KEYS or low == high else [low, high]


def format_sweep_estimate(rows: list[dict]) -> str:
    """The table `sweep --estimate` prints: one line per point, the over-cap ones marked with the reason."""
    lines = []
    for row in rows:
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        verdict = f"OVER: {row['over_cap']}" if row["over_cap"] else ("fits" if row["cap_bytes"] else "")
        lines.append(
            f"{format_bytes(row['memory/predicted_peak_bytes']):>10}  {row['config_hash']}  {params}"
            + (f"  {verdict}" if verdict else "")
        )
    over = sum(1 for r in rows if r["over_cap"])
    budget = rows[0].get("budget") if rows else None
    lines.append(
        f"{len(rows)} points, {over} over the cap ({CAP_NOTE})"
        if any(r["cap_bytes"] for r in rows)
        else f"{len(rows)} points (no cap given: none is skipped"
        + (f"; trainer.micro_batch=auto and --pack auto fit {budget})" if budget else ")")
    )
    return "\n".join(lines)
