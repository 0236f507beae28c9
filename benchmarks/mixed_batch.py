"""Serving a batch that mixes LoRA adapters: inference forward, batch 64×128, on MiniLM and a small Llama.

For r ∈ {8, 16} and 1, 8 or 32 distinct adapters in the batch (32 adapters loaded), per forward:
  ours    lorasweep mixed batch (load_adapters + use(ids): gathered per-example A, B and batched matmuls)
  peft    peft's mixed-batch path: PeftModel with the 32 adapters loaded, forward(adapter_names=[...])
  split   the batch split per adapter, each group through lorasweep's single-adapter path (one forward per group)
  merged  one adapter merged into the base weights, on the whole batch (the cost of the bare base model)
MiniLM adapters carry their own classifier head (modules_to_save), served per example by ours and by peft.
Variants are interleaved (one forward of each per round); figures are medians over the rounds and printed as
throughput ratios (>1: ours is faster). The Llama forward keeps only the last position's logits, as a generation
prefill does. Targets (issue 7): ours ≥ 2× peft at 32 adapters, ours ≥ 0.7× merged.

    python benchmarks/mixed_batch.py [--repeats 5] [--models minilm llama] [--ranks 8 16] [--distinct 1 8 32]
                                     [--device cuda]   # the 2x-peft target is meant for a GPU (see README)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from lorasweep.lora import apply_lora, load_adapter, merge_lora, save_adapter
from lorasweep.lora.multi import load_adapters
from lorasweep.model.load import build_tiny, load_pretrained, packaged_minilm_dir

LOADED = 32
SMALL_LLAMA = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=8192,
    max_position_embeddings=256,
)


DEVICE = torch.device("cpu")  # --device


def base_model(name: str):
    torch.manual_seed(0)
    if name == "minilm":
        return load_pretrained(packaged_minilm_dir(), "classification", num_labels=2).eval().to(DEVICE)
    return build_tiny("llama", "causal_lm", **SMALL_LLAMA).eval().to(DEVICE)


def write_adapters(name: str, preset: str, rank: int, root: Path) -> list[Path]:
    model = base_model(name)
    head = ["classifier"] if name == "minilm" else None  # a classification adapter brings its own head
    apply_lora(model, preset, rank=rank, alpha=2 * rank, modules_to_save=head)
    lora = [p for n, p in model.named_parameters() if "lora_" in n or "classifier" in n]
    paths = []
    for i in range(LOADED):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in lora:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        paths.append(save_adapter(model, root / f"{name}-r{rank}-{i}"))
    return paths


def make_peft(name: str, paths: list[Path]):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model(name), str(paths[0]), adapter_name="a0")
    for i, path in enumerate(paths[1:], 1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    return model.eval()


def make_merged(name: str, path: Path):
    model = load_adapter(base_model(name), path)
    merge_lora(model)
    return model


def timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()  # kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter() - start


def bench_model(name: str, args) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 8000, (args.batch, args.seq), generator=gen),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
    }
    batch = {k: v.to(DEVICE) for k, v in batch.items()}
    if name == "llama":
        batch["logits_to_keep"] = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rank in args.ranks:
            paths = write_adapters(name, args.preset, rank, Path(tmp))
            ours = base_model(name)
            loaded = load_adapters(ours, {f"a{i}": p for i, p in enumerate(paths)})
            peft, merged = make_peft(name, paths), make_merged(name, paths[0])
            per_adapter = statistics.mean(loaded.bytes_per_adapter().values())
            file_bytes = sum((p / "adapter_model.safetensors").stat().st_size for p in paths) / len(paths)
            print(
                f"{name} r={rank}: {per_adapter / 2**20:.2f} MiB stacked A,B per loaded adapter "
                f"({file_bytes / 2**20:.2f} MiB adapter file)",
                flush=True,
            )
            for distinct in args.distinct:
                ids = (torch.arange(args.batch) % distinct).to(DEVICE)
                names = [f"a{i}" for i in ids.tolist()]
                groups = [(ids == k).nonzero().squeeze(1) for k in range(distinct)]

                def run_ours():
                    with loaded.use(ids):
                        ours(**batch)

                def run_split():
                    for k, rows_k in enumerate(groups):
                        with loaded.use(torch.full((len(rows_k),), k, device=DEVICE)):
                            ours(**{key: v[rows_k] if torch.is_tensor(v) else v for key, v in batch.items()})

                variants = {
                    "ours": run_ours,
                    "peft": lambda: peft(**batch, adapter_names=names),
                    "split": run_split,
                    "merged": lambda: merged(**batch),
                }
                for fn in variants.values():  # warm-up
                    timed(fn)
                times = {v: [] for v in variants}
                for _ in range(args.repeats):
                    for v, fn in variants.items():
                        times[v].append(timed(fn))
                med = {v: statistics.median(t) for v, t in times.items()}
                rows.append((name, rank, distinct, med))
                print(
                    f"  {distinct:>2} distinct: ours {med['ours']:.3f}s  peft {med['peft']:.3f}s  "
                    f"split {med['split']:.3f}s  merged {med['merged']:.3f}s",
                    flush=True,
                )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["minilm", "llama"], choices=["minilm", "llama"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--distinct", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--preset", default="all", help="LoRA targets of every adapter (qv, qkvo, all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if max(args.distinct) > LOADED or max(args.distinct) > args.batch:
        parser.error(f"--distinct must be at most {min(LOADED, args.batch)}")
    print(
        f"torch {torch.__version__}, {DEVICE}, {torch.get_num_threads()} threads, batch {args.batch}×{args.seq}, "
        f"preset {args.preset}, {LOADED} adapters loaded, {args.repeats} interleaved rounds",
        flush=True,
    )
    rows = [row for name in args.models for row in bench_model(name, args)]

    print(
        f"\nthroughput ratios (>1: ours faster)\n{'model':<7} {'r':>3} {'distinct':>8} {'ours s':>7} "
        f"{'vs peft':>8} {'vs split':>9} {'vs merged':>10}"
    )
    for name, rank, distinct, med in rows:
        print(
            f"{name:<7} {rank:>3} {distinct:>8} {med['ours']:>7.3f} {med['peft'] / med['ours']:>8.2f} "
            f"{med['split'] / med['ours']:>9.2f} {med['merged'] / med['ours']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
