"""Predicted vs measured memory of a training step: `lorasweep estimate`'s peak against a real step on CPU.

    python benchmarks/memory_estimate.py [--device cpu|cuda] [--only N ...] [--quick]

Each row is one config: the prediction (fake tensors, lorasweep.estimate.estimate_config) for batches of
micro x seq, then the same config built for real (models.build_model, real weights) and two real steps on
those batch shapes (lorasweep.estimate.measure). Measured on CPU: what the CPU allocator handed out during the
second step (torch.profiler memory events) on top of what was live when it began, and beside it the
live-tensor peak; on CUDA: torch.cuda.max_memory_allocated over the second step. error = predicted / measured
- 1. The rows span rank 1-64, targets qv/all, batch, sequence length, gradient checkpointing, nf4 and int8
bases, adamw8bit, bf16, DoRA and PiSSA, and two architectures (MiniLM classification, tiny Llama causal LM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MINILM = ["model=minilm"]
LLAMA = ["model=tiny_llama", "data=synth_sft"]
# (label, overrides, micro batch, sequence length)
CONFIGS = [
    ("minilm qv r1", [*MINILM, "lora.rank=1"], 16, 64),
    ("minilm qv r8", [*MINILM], 16, 64),
    ("minilm qv r64", [*MINILM, "lora.rank=64"], 16, 64),
    ("minilm all r8", [*MINILM, "lora=all"], 16, 64),
    ("minilm all r64", [*MINILM, "lora=all", "lora.rank=64"], 16, 64),
    ("minilm qv b4 s128", [*MINILM], 4, 128),
    ("minilm qv b32 s32", [*MINILM], 32, 32),
    ("minilm all b8 s256", [*MINILM, "lora=all", "data.max_length=256"], 8, 256),
    ("minilm all ckpt", [*MINILM, "lora=all", "trainer.gradient_checkpointing=true"], 16, 64),
    ("minilm qv bf16", [*MINILM, "trainer.mixed_precision=bf16"], 16, 64),
    (
        "minilm all bf16 ckpt",
        [*MINILM, "lora=all", "trainer.mixed_precision=bf16", "trainer.gradient_checkpointing=true"],
        16,
        64,
    ),
    ("minilm qv nf4", [*MINILM, "model.quantization=nf4"], 16, 64),
    (
        "minilm all nf4 dq bf16c",
        [*MINILM, "lora=all", "model.quantization=nf4", "model.double_quant=true", "model.compute_dtype=bfloat16"],
        16,
        64,
    ),
    ("minilm qv int8", [*MINILM, "model.quantization=int8"], 16, 64),
    (
        "minilm all adamw8bit",
        [*MINILM, "lora=all", "lora.rank=32", "optim.name=adamw8bit", "optim.min_8bit_size=1024"],
        16,
        64,
    ),
    ("minilm qv accum2", [*MINILM, "trainer.batch_size=32", "trainer.grad_accum=2"], 16, 64),
    ("minilm all dora", [*MINILM, "lora=all", "lora.dora=true"], 16, 64),
    ("minilm qv pissa r16", [*MINILM, "lora.init=pissa", "lora.rank=16"], 16, 64),
    ("llama qv r8", [*LLAMA], 8, 64),
    ("llama all r1", [*LLAMA, "lora=all", "lora.rank=1"], 8, 64),
    ("llama all r32", [*LLAMA, "lora=all", "lora.rank=32"], 8, 64),  # tiny Llama: k, v are 64 -> 32
    ("llama all b16 s128", [*LLAMA, "lora=all", "data.max_length=128"], 16, 128),
    ("llama all ckpt", [*LLAMA, "lora=all", "trainer.gradient_checkpointing=true"], 8, 64),
    ("llama all bf16", [*LLAMA, "lora=all", "trainer.mixed_precision=bf16"], 8, 64),
    (
        "llama all nf4 adamw8bit",
        [*LLAMA, "lora=all", "model.quantization=nf4", "optim.name=adamw8bit", "optim.min_8bit_size=256"],
        8,
        64,
    ),
    (
        "llama qv nf4 dq ckpt",
        [*LLAMA, "model.quantization=nf4", "model.double_quant=true", "trainer.gradient_checkpointing=true"],
        8,
        64,
    ),
    ("llama all int8", [*LLAMA, "lora=all", "model.quantization=int8"], 8, 64),
    (
        "llama all r16 b4 s128 dropout",
        [*LLAMA, "lora=all", "lora.rank=16", "lora.dropout=0.1", "data.max_length=128"],
        4,
        128,
    ),
]


def row(label, overrides, micro, length, device):
    from lorasweep.config.schema import compose
    from lorasweep.estimate import estimate_config
    from lorasweep.estimate.measure import measure_config

    batch = micro * (2 if "trainer.grad_accum=2" in overrides else 1)
    cfg = compose(["tracking=none", f"trainer.batch_size={batch}", *overrides])
    start = time.perf_counter()
    predicted = estimate_config(cfg, device=device, micro_batch=micro, sequence=(length, "fixed"))
    seconds = time.perf_counter() - start
    measured = measure_config(cfg, micro, length, device)
    peak = predicted["memory/predicted_peak_bytes"]
    return {
        "config": label,
        "micro x seq": f"{micro}x{length}",
        "predicted_mib": peak / 2**20,
        "measured_mib": measured["allocator_peak_bytes"] / 2**20,
        "live_mib": measured["live_peak_bytes"] / 2**20,
        "error": peak / measured["allocator_peak_bytes"] - 1,
        "estimate_s": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", nargs="*", type=int, default=None, help="row numbers (0-based)")
    parser.add_argument("--quick", action="store_true", help="three rows (CI: gpu-check-cpu)")
    args = parser.parse_args(argv)
    chosen = [CONFIGS[i] for i in (args.only or ([0, 19, 24] if args.quick else range(len(CONFIGS))))]
    print(
        f"{'config':32} {'micro x seq':>11} {'predicted MiB':>13} {'measured MiB':>12} {'live MiB':>9} "
        f"{'error':>7} {'estimate s':>10}",
        flush=True,
    )
    errors = []
    for label, overrides, micro, length in chosen:
        r = row(label, overrides, micro, length, args.device)
        errors.append(abs(r["error"]))
        print(
            f"{r['config']:32} {r['micro x seq']:>11} {r['predicted_mib']:13.2f} {r['measured_mib']:12.2f} "
            f"{r['live_mib']:9.2f} {100 * r['error']:+6.2f}% {r['estimate_s']:10.1f}",
            flush=True,
        )
    print(
        f"\n{len(errors)} configs on {args.device}: median |error| {100 * statistics.median(errors):.2f}%, "
        f"worst {100 * max(errors):.2f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
