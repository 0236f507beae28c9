"""Interleaved timing: one call of each variant per round, after one warm-up call each; medians over rounds.
Interleaving spreads the machine's noise over every variant alike, so their ratios are what to read."""

from __future__ import annotations

import statistics
from typing import Callable


def time_interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> tuple[dict, dict]:
    """({name: [seconds per round]}, {name: median}); each variant's call returns the seconds it took."""
    for step in variants.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, step in variants.items():
            times[name].append(step())
    return times, {name: statistics.median(t) for name, t in times.items()}
