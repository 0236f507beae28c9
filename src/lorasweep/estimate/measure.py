"""What a real training step holds, to judge the prediction by (benchmarks/memory_estimate.py, the tests and
scripts/gpu_check.py): the same setup and two steps as the prediction (step.py), on the real model.

CPU: `live_peak_bytes` is the LiveBytes peak of the real step (tensors as ops return them); `allocator_peak_bytes`
adds what the CPU allocator itself handed out during the step (torch.profiler's memory events: every
allocation, kernel scratch and bitsandbytes' dequantized weights included) to what was live when it began.
CUDA: `allocator_peak_bytes` is torch.cuda.max_memory_allocated over the second step.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

import torch

from .live import LiveBytes
from .step import batch_of, measure_eval, measure_steps, prepare, with_mixed_precision


def measure_config(cfg, micro: int, length: int, device: str = "cpu") -> dict:
    """Build the real model (models.build_model, seeded like a run) and measure its second training step on
    batches of `micro` x `length`."""
    from accelerate.utils import set_seed

    from ..model.load import build_model

    set_seed(cfg.seed)
    model, _ = build_model(cfg.model, cfg.data.task, cfg.data.num_labels)
    model = model.to(device)
    _, optimizer = prepare(model, cfg)
    model = with_mixed_precision(model, cfg.trainer.mixed_precision, device)
    accum = cfg.trainer.batch_size // micro
    batches = [batch_of(micro, length, cfg.data.task, device) for _ in range(min(accum, 2))]
    profile = _CudaPeak(device) if device == "cuda" else _AllocatorPeak()
    counter = LiveBytes()
    steps = measure_steps(model, optimizer, batches, cfg, counter, on_second_step=profile)
    del batches
    eval_rows = min(cfg.trainer.eval_batch_size, micro)  # an eval batch a micro-batch at a time, as predicted
    evaluation = measure_eval(model, batch_of(eval_rows, length, cfg.data.task, device), cfg.data.task, counter)
    return {
        "live_peak_bytes": steps.peak_bytes,
        "allocator_peak_bytes": profile.peak(steps.start_bytes),
        "optimizer_state_bytes": steps.optimizer_state_bytes,
        "activation_bytes": steps.activation_bytes,
        "eval_live_peak_bytes": evaluation,
    }


class _AllocatorPeak:
    """The CPU allocator's highest total during the block, relative to its start (profiler memory events)."""

    def __init__(self):
        self.delta = 0

    @contextmanager
    def __call__(self):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
        events = [e for e in events if e.get("Device Type", 0) == 0]  # CPU
        if events:
            start = events[0]["Total Allocated"] - events[0]["Bytes"]
            self.delta = max(e["Total Allocated"] for e in events) - start

    def peak(self, start_bytes: int) -> int:
        return start_bytes + self.delta


class _CudaPeak:
    def __init__(self, device):
        self.device = torch.device(device)
        self.value = 0

    @contextmanager
    def __call__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        torch.cuda.synchronize(self.device)
        self.value = int(torch.cuda.max_memory_allocated(self.device))

    def peak(self, start_bytes: int) -> int:
        return self.value
