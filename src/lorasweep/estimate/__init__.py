"""Memory before launch: the account of one training step predicted on fake tensors (peak.py, on the model
fake_model.py builds and the step step.py runs; measure.py checks it on real tensors), the live-storage counter
it uses (live.py), predictions cached per shape (shape_cache.py), memory sizes as people write them
(byte_sizes.py), and what sweeps and runs do with it (fit.py: caps, `micro_batch=auto`; headroom.py: the
budget a fit uses, the free memory less cluster.memory_margin, a packed trial's share).

May import: config, model, data, step, lora and the top-level helpers; never training/, runs/ or sweep/.
"""

from .byte_sizes import format_bytes, parse_memory_size
from .peak import estimate_config, format_account

__all__ = ["estimate_config", "format_account", "format_bytes", "parse_memory_size"]
