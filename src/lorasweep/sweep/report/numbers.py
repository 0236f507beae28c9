"""Numbers as the report shows them: parameters to the digits that matter, and axis ticks a reader can read
without counting decades (log axes) or meeting half a trial (integer axes)."""

from __future__ import annotations

import math

SIGNIFICANT = 3  # 0.00031841839274374237 -> 0.000318: sampled floats carry noise, not meaning, past this


def short(value) -> str:
    """A parameter value at a glance: a float to SIGNIFICANT digits, anything else as it is."""
    if value is None:
        return "-"
    if isinstance(value, float):  # rounded, then printed plainly: 1234.5 -> 1230 (not 1.23e+03), 2e-05 as is
        return f"{float(f'{value:.{SIGNIFICANT}g}'):g}"
    return str(value)


def full(value) -> str:
    """The exact value, for a hover title beside short()."""
    return repr(value) if isinstance(value, float) else str(value)


def log_ticks(low: float, high: float, most: int = 8, ends: tuple | None = None) -> list[float]:
    """Tick values for a log axis over [low, high], every one a full number: the coarsest of 1-per-decade,
    1-2-5, 1-2-3-5 and 1..9 that puts at least three ticks in the range (at most `most`), so each decade is
    labelled whole ("1000", not a bare mantissa "1"). A range too narrow for that gets `ends` (default: low and
    high), rounded."""
    low, high = min(low, high), max(low, high)
    if not (low > 0 and math.isfinite(high)):
        return []
    found: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [
            m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1) for m in mantissas
        ]
        ticks = [float(f"{t:.12g}") for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(ticks) > most:
            if mantissas == (1,):  # many decades: every k-th one
                found = ticks[:: math.ceil(len(ticks) / most)]
            break
        found = ticks
        if len(ticks) >= 3:
            break
    if len(found) < 2:
        found = sorted({float(short(v)) for v in (ends or (low, high))})
    return found


def log_axis(values: list[float], pad: float = 0.08) -> dict:
    """A plotly log axis over the values, a little padded, labelled by log_ticks (axis settings)."""
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return {"type": "log"}
    low, high = min(values), max(values)
    span = [math.log10(low) - pad, math.log10(high) + pad]
    ticks = log_ticks(10 ** span[0], 10 ** span[1], ends=(low, high))  # the data's own values when narrow
    return {"type": "log", "range": span, "tickmode": "array", "tickvals": ticks, "ticktext": [short(t) for t in ticks]}


def integer_axis(largest: float, most: int = 10) -> dict:
    """A linear axis of whole numbers (trial numbers, steps) from 0 to `largest`: a 1-2-5 step with at most
    `most` ticks, never below 1, so no tick falls between two trials."""
    step = 1
    while largest / step > most:
        step = _next_step(step)
    return {"tickmode": "linear", "tick0": 0, "dtick": step}


def _next_step(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ..."""
    digits = str(step)
    return step * 2 if digits[0] in "15" else step * 5 // 2
