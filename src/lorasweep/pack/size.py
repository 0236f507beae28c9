"""`--pack K` / a spec's `pack:`: a positive number of trials, or auto (sweep/pack_plan.py sizes it)."""

from __future__ import annotations

from ..errors import UserError


def parse_pack(value, where: str = "--pack") -> int | str:
    """A positive int or "auto"; anything else is bad input."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(str(value))
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or number < 1 or str(number) != str(value).strip():
        raise UserError(f"{where} must be a positive integer or auto, got {value!r}")
    return number
