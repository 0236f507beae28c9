"""What a fit may use on one device: the budget `trainer.micro_batch=auto` and `--pack auto` fit a prediction into.

An explicit cap (`--memory-cap`, the spec's `memory_cap`, `cluster.memory_cap`) is the budget as given, as
accelerate's and transformers' `max_memory` is: the user has said what a run may use. Without one, the device is
measured (CUDA: the driver's free memory plus what torch's allocator holds unused; CPU: MemAvailable) and
`cluster.memory_margin` comes off it: what the prediction does not count (the CUDA context's kernels loaded
after the measurement, cuBLAS workspaces, NCCL's buffers, the caching allocator's rounding and fragmentation; on
a CPU the interpreter and libraries). docs/memory.md gives the default's reasons.

In a pack (lorasweep/pack/) each trial sizes itself against its share: the pack holds the frozen base once and
each trial's own bytes (sweep/pack_plan.py), so a trial of K gets base + (budget - base) / K.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.schema import ClusterConfig
from ..errors import UserError
from .byte_sizes import format_bytes, parse_memory_size

MEMINFO = Path("/proc/meminfo")  # MemAvailable: what a CPU machine can still give (tests point it at their own file)
MARGIN_KEY = "cluster.memory_margin"
CAP_NOTE = f"a cap is used as given: {MARGIN_KEY} is not taken off it"


@dataclass(frozen=True)
class Budget:
    """The bytes a fit may use (None: not measurable on this machine) and what they are, in words for messages:
    "the memory cap 20.0 GiB", "131.3 GiB (the cuda free memory 139.3 GiB less the margin 8.0 GiB, ...)"."""

    limit: int | None
    name: str  # "the memory cap", "the cuda free memory less the margin"
    words: str
    margin: int = 0  # bytes taken off the measured memory (0 under a cap)

    def describe(self) -> str:
        return self.words


def memory_cap(cfg, cap=None) -> int | None:
    """Bytes of the cap that applies to `cfg` (None: no cap): `cap` (the command line's), else cluster.memory_cap
    (where the spec's memory_cap goes too)."""
    if cap is not None:
        return parse_memory_size(cap, "--memory-cap")
    value = cfg.cluster.get("memory_cap")
    return parse_memory_size(value, "cluster.memory_cap") if value is not None else None


def margin_setting(cfg) -> str:
    return str(cfg.cluster.get("memory_margin", ClusterConfig.memory_margin))


def parse_margin(text) -> tuple[int, float]:
    """(bytes, fraction) of a margin: a size ("1GiB"), a percentage of the measured memory ("5%"), or both
    ("1GiB+5%"); "0" for none. A negative, unreadable or 100 %-or-more margin is one line."""
    fixed, fraction = 0, 0.0
    for term in str(text).split("+"):
        percent = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", term)
        size = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", term)
        unreadable = UserError(
            f"{MARGIN_KEY}: cannot read {text!r}; write a size, a percentage of the free memory or both, "
            f"e.g. 1GiB, 5% or 1GiB+5% (0 for none)"
        )
        if percent:
            fraction += float(percent.group(1)) / 100
            continue
        if size is None:
            raise unreadable
        try:
            unit_bytes = parse_memory_size(f"1{size.group(2)}", MARGIN_KEY)  # the unit checked; 0 is allowed here
        except UserError:
            raise unreadable from None
        fixed += int(float(size.group(1)) * unit_bytes)
    if fraction >= 1:
        raise UserError(f"{MARGIN_KEY}={text}: a margin of {fraction:.0%} of the memory leaves nothing to fit in")
    return fixed, fraction


def free_memory(device: str, fallback: bool = True) -> tuple[int | None, str]:
    """(bytes, what they are) a run could still take on `device` here. CUDA: the driver's free memory plus what
    torch's caching allocator holds unused (a sweep worker's earlier trial leaves its blocks cached: they are free
    to this process). Without CUDA, `fallback`: this machine's MemAvailable; else (None, ...)."""
    if device == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + cached), "the cuda free memory"
    if device == "cuda" and not fallback:
        return None, "the cuda free memory (no CUDA here to read it)"
    what = "the cpu memory available" if device == "cpu" else "this machine's available memory (no CUDA here)"
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024, what
    raise UserError("cannot tell this machine's memory: give a cap (cluster.memory_cap or --memory-cap)")


def memory_budget(cfg, device: str, cap=None, measured: tuple[int | None, str] | None = None, fallback=True) -> Budget:
    """What `cfg` may fit into on `device`: the cap as given, else the free memory (`measured`, or measured now)
    less cluster.memory_margin. A margin that leaves nothing, or a cap over the GPU here, is one line."""
    setting = margin_setting(cfg)
    fixed, fraction = parse_margin(setting)  # read even under a cap: a bad value is bad input wherever it is
    limit = memory_cap(cfg, cap)
    if limit is not None:
        _check_cap_fits_the_gpu(limit, device)
        return Budget(limit, "the memory cap", f"the memory cap {format_bytes(limit)}")  # as given: CAP_NOTE
    free, what = measured or free_memory(device, fallback)
    if free is None:
        return Budget(None, what, f"{what}; a fit there takes {MARGIN_KEY}={setting} off it")
    margin = int(fixed + fraction * free)
    if margin >= free:
        raise UserError(
            f"{MARGIN_KEY}={setting} ({format_bytes(margin)}) leaves nothing of {what} ({format_bytes(free)})"
        )
    words = (
        f"{format_bytes(free - margin)} ({what} {format_bytes(free)} less the margin {format_bytes(margin)}, "
        f"{MARGIN_KEY}={setting})"
    )
    return Budget(free - margin, f"{what} less the margin", words, margin)


def _check_cap_fits_the_gpu(cap: int, device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        if cap > total:
            raise UserError(
                f"the memory cap {format_bytes(cap)} is more than this GPU holds ({format_bytes(total)}): a cap is "
                f"what a run may use on one device (docs/memory.md)"
            )


def pack_share(limit: int, trials: int, base: int) -> int:
    """One trial's part of a pack's `limit`: the base is held once, the rest split among the trials."""
    return base + (limit - base) // max(trials, 1)


def trials_that_fit(limit: int, base: int, own: int) -> int:
    """How many trials of `own` bytes each fit `limit` beside one frozen base (pack_share's inverse)."""
    return max(0, (limit - base) // max(own, 1))


def same_on_every_rank(limit: int, trials: int) -> tuple[int, int]:
    """Under several processes every rank must choose the same micro batch (their gradient reductions pair up
    step by step): the smallest rank's limit, and the pack size of rank 0 (whose pack the others follow)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return limit, trials
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, (limit, trials))
    return min(each for each, _ in every), every[0][1]
