"""Memory before launch: the account of one training step predicted on fake tensors (predict.py), the
live-storage counter it uses (live.py), memory sizes (size.py), and what sweeps and runs do with it (fit.py)."""

from .predict import estimate_config, format_account
from .size import format_bytes, parse_memory_size

__all__ = ["estimate_config", "format_account", "format_bytes", "parse_memory_size"]
