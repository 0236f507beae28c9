"""Memory sizes as people write them ("80GiB", "24 GB", "512M") and as tables show them."""

from __future__ import annotations

import re

from ..errors import UserError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_memory_size(text, key: str = "memory cap") -> int:
    """Bytes in `text`: a number with an optional unit (B, KB/KiB, MB/MiB, GB/GiB, TB/TiB; K, M, G, T as SLURM
    means them: binary). One-line UserError naming `key` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return int(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UserError(
            f"{key}: cannot read {text!r} as a memory size; write a positive number and a unit, "
            f"e.g. 80GiB, 24GB or 512MiB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """1.5 GiB, 320.0 MiB, 12.0 KiB: binary units, one decimal."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
