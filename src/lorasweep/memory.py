"""A run's own peak memory (memory/peak_bytes), not the process's lifetime maximum.

CUDA: the caching allocator's peak of allocated tensor bytes on the run's device, reset when the run starts.
CPU: the peak resident set size (VmHWM) of the process during the run. Linux resets that high-water mark to the
current RSS when "5" is written to /proc/self/clear_refs; before that, freed Python objects are collected and
glibc hands freed heap pages back (malloc_trim), so what an earlier run of the same process (a sweep worker)
freed does not count. What it includes: the interpreter and libraries, the base model kept between a worker's
trials, the tokenised data, and everything the run itself allocates (its model copy, activations, gradients,
optimizer state). Where clear_refs is not available the figure falls back to ru_maxrss (process lifetime).
"""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device
        self.per_run = False

    def start(self) -> "PeakMemory":
        """Forget the peaks of everything before this point."""
        _collect_garbage()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.per_run = True
        else:
            _release_free_heap()
            self.per_run = _reset_rss_high_water_mark()
        return self

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _status_kib("VmHWM") if self.per_run else None
        if hwm is not None:
            return hwm * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


_frozen = False


def _collect_garbage() -> None:
    """What earlier runs of this process left, collected. A full collection walks every object of the imported
    libraries (about 0.5 s on a 2-core machine, per trial); what is alive at the first run (modules, the kept base
    models and data) lives as long as the process, so it is moved out of the collector's sight then (gc.freeze) and
    later collections only walk what runs created since (milliseconds)."""
    global _frozen
    gc.collect()
    if not _frozen:
        gc.freeze()
        _frozen = True


def resident_bytes(device: torch.device) -> int:
    """What is held now: CUDA tensor bytes on `device`, or the process's resident set (VmRSS) on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return (_status_kib("VmRSS") or 0) * 1024


def _release_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_rss_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
