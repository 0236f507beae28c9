"""A live-storage counter: the bytes held by tensors at each moment, and their peak.

A `TorchDispatchMode` sees every op's outputs (forward, backward, optimizer, bitsandbytes' custom ops); each new
storage adds its bytes, and a `weakref.finalize` on the storage subtracts them when it is freed. Views share
their base's storage and in-place ops return it, so neither counts twice. It works on real tensors (what a
CPU step measurably holds) and under `FakeTensorMode` (where nothing is allocated, `data_ptr()` is 0, so
storages are keyed by the Python object, which torch keeps alive exactly as long as the storage).

Why not torch's `MemTracker`: in torch 2.13 it registers hooks on every parameter and fails on frozen ones
("cannot register a hook on a tensor that doesn't require gradient").
"""

from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes


class LiveBytes(TorchDispatchMode):
    """Live tensor bytes (`current`) and their maximum since the last `reset_peak` (`peak`)."""

    def __init__(self, block: int = 1):
        super().__init__()
        self.block = block  # allocation granularity: 1 (CPU), CUDA_BLOCK (what max_memory_allocated counts)
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def track(self, tensors: Iterable) -> None:
        """Count tensors that exist already (parameters, buffers, inputs built outside the mode)."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out

    def _add(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and some wrapper subclasses: no plain storage
            return
        key = id(storage)
        size = self._rounded(storage.nbytes())
        known = self.live.get(key)
        if known is None:
            weakref.finalize(storage, self._free, key)
        elif known == size:
            return
        self.live[key] = size
        self.current += size - (known or 0)  # a storage resized in place (an out= op) counts its new size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _rounded(self, nbytes: int) -> int:
        return -(-nbytes // self.block) * self.block if self.block > 1 else nbytes
