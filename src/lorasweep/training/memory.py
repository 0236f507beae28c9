"""A run's own peak memory, not the process's lifetime maximum: two figures, one meaning each.

memory/tensor_peak_bytes (`TensorPeak`): the most bytes the run's tensors held at once (weights, gradients,
optimizer state, activations, batches), what memory/predicted_peak_bytes predicts. CUDA: the caching allocator's
peak of allocated bytes (as memory/peak_bytes). CPU: the estimate's live-storage counter (estimate/live.py) on the
real tensors, where the peak can be (see TensorPeak). It sees what passes through torch's dispatcher; under
gradient checkpointing it misses part of the recomputation's storages, as the prediction does (design notes).

memory/peak_bytes (`PeakMemory`): CUDA: as above, reset when the run starts. CPU: the peak resident set size
(VmHWM) of the process during the run: the interpreter and libraries, the base model kept between a worker's
trials, the tokenised data, the allocator's slack, and everything the run allocates. Linux resets that
high-water mark to the current RSS when "5" is written to /proc/self/clear_refs; before that, freed Python objects
are collected and glibc hands freed heap pages back (malloc_trim), so what an earlier run of the same process (a
sweep worker) freed does not count. Where clear_refs is not available it falls back to ru_maxrss (the process's
lifetime).
"""

from __future__ import annotations

import ctypes
import gc
import resource
from contextlib import contextmanager
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


# The first step creates the optimizer state and the second holds it throughout: a step after them holds more
# only with a larger batch (the collator pads to the longest example), and evaluation only with a larger one too.
TENSOR_PEAK_STEPS = 2


class TensorPeak:
    """memory/tensor_peak_bytes of one run on CPU (not in a pack: its trials' tensors interleave in one process).

    Counting every op costs a Python call each (10-20 % of a MiniLM step on 2 cores), so the counter is on only
    where the peak can be: the first TENSOR_PEAK_STEPS optimizer steps (and an evaluation before them), then any
    step or evaluation batch whose inputs are larger than every one counted so far, until that optimizer step or
    that forward pass ends. A forward pre-hook on the model and a step post-hook on the optimizer (torch's own)
    switch it; what is alive when it switches on (weights, gradients, optimizer state, the inputs) is counted."""

    def __init__(self, device: torch.device, enabled: bool = True, steps: int = TENSOR_PEAK_STEPS):
        self.device, self.enabled, self.steps = device, enabled, steps
        self.counter = None
        self.counted_steps = 0  # optimizer steps taken, and how many of them the counter saw
        self._steps_done, self._largest = 0, {True: 0, False: 0}  # the largest inputs counted, train and eval

    @contextmanager
    def counting(self, model, optimizer):
        """Count this run's tensors inside the block (the loop), on CPU; CUDA's allocator counts them itself."""
        if not self.enabled or self.device.type != "cpu":
            yield self
            return
        from ..estimate.live import LiveBytes

        self.counter = LiveBytes()
        self._model, self._optimizer, self._on = model, optimizer, False
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer; its step calls this
        hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward),
            inner.register_step_post_hook(self._after_step),
        ]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            self._switch(False)

    def figures(self, memory: PeakMemory) -> dict:
        """{"memory/tensor_peak_bytes": ...} for the run's record (nothing in a pack or before counting)."""
        if not self.enabled:
            return {}
        if self.device.type == "cuda":
            return {"memory/tensor_peak_bytes": memory.peak_bytes()}  # max allocated: tensors, and nothing else
        return {"memory/tensor_peak_bytes": self.counter.peak} if self.counter is not None else {}

    def _before_forward(self, module, args, kwargs):
        size = sum(t.numel() for t in (*args, *kwargs.values()) if torch.is_tensor(t))
        training = module.training
        if self._on or self._steps_done < self.steps or size > self._largest[training]:
            self._largest[training] = max(self._largest[training], size)
            self._switch(True, [t for t in (*args, *kwargs.values()) if torch.is_tensor(t)])

    def _after_forward(self, module, args, output):
        if self._on and not module.training and self._steps_done >= self.steps:
            self._switch(False)  # an evaluation batch: nothing follows it that it holds for

    def _after_step(self, optimizer, args, kwargs):
        self._steps_done += 1
        self.counted_steps += self._on
        if self._on and self._steps_done >= self.steps:
            self._switch(False)

    def _switch(self, on: bool, inputs=()) -> None:
        if on == self._on:
            return
        if on:
            from ..estimate.step import model_tensors

            params = model_tensors(self._model)
            grads = [p.grad for p in self._model.parameters() if p.grad is not None]
            state = [t for s in self._optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            self.counter.track([*params, *grads, *state, *inputs])  # what is alive already (known once)
            self.counter.__enter__()
        else:
            self.counter.__exit__(None, None, None)
        self._on = on


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
