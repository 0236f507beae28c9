"""One training step (forward, backward, AdamW) on MiniLM, batch 32×128, r=8: lorasweep vs peft vs the bound,
for plain LoRA and for DoRA (`--kinds lora dora`; peft's use_dora recomputes B·A through an identity matrix and
the full weight's norm every forward, lorasweep gets the norm from W0·Aᵀ and cached row norms, see lora/layer.py).

The bound is the frozen base with gradients flowing back through every layer's activations and no LoRA at all:
what any LoRA implementation must pay at least. The classifier head is trained in every variant.
Variants are interleaved (one step of each per round) and each figure is the median over the rounds, so the
machine's drift hits all variants alike; the ratios are what to read.

    python benchmarks/lora_step.py [--repeats 7] [--batch 32] [--seq 128] [--kinds lora dora] [--profile]
                                   [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from interleaved import time_interleaved

from lorasweep.lora import apply_lora, resolve_targets
from lorasweep.model.load import load_pretrained, packaged_minilm_dir

RANK, ALPHA = 8, 16


def _base():
    torch.manual_seed(0)
    return load_pretrained(packaged_minilm_dir(), "classification", num_labels=2).train()


def make_bound():
    model = _base()
    for p in model.parameters():
        p.requires_grad_(False)
    model.classifier.requires_grad_(True)
    # Make the embedding output require grad so backward runs through every layer's activations.
    model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    return model


def make_lorasweep(preset, dora=False):
    model = _base()
    apply_lora(model, preset, rank=RANK, alpha=ALPHA, modules_to_save=["classifier"], dora=dora)
    return model


def make_peft(preset, dora=False):
    from peft import LoraConfig, get_peft_model

    model = _base()
    names = [t.name for t in resolve_targets(model, preset)]  # exactly the same modules as lorasweep
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names, modules_to_save=["classifier"], use_dora=dora)
    return get_peft_model(model, config).train()


class Stepper:
    def __init__(self, model, batch):
        device = next(iter(batch.values())).device
        self.model, self.batch = model.to(device), batch
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # kernels are async
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self) -> float:
        self.sync()
        start = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--presets", nargs="+", default=["qv", "all"])
    parser.add_argument("--kinds", nargs="+", default=["lora", "dora"], choices=["lora", "dora"])
    parser.add_argument("--profile", action="store_true", help="print the top ops of one step per variant")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.seq), generator=generator),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=generator),
    }
    batch = {k: v.to(args.device) for k, v in batch.items()}
    variants = {"bound": Stepper(make_bound(), batch)}
    for kind in args.kinds:
        for preset in args.presets:
            tag = preset if kind == "lora" else f"{preset}+dora"
            variants[f"peft {tag}"] = Stepper(make_peft(preset, kind == "dora"), batch)
            variants[f"lorasweep {tag}"] = Stepper(make_lorasweep(preset, kind == "dora"), batch)

    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}×{args.seq}, r={RANK}"
    )
    times, median = time_interleaved(variants, args.repeats)

    print(f"\n{'variant':<21} {'median s':>9} {'min s':>7} {'max s':>7} {'/ bound':>8} {'/ peft':>7}")
    for name, t in times.items():
        preset = name.split()[-1]
        vs_peft = f"{median[name] / median[f'peft {preset}']:.3f}" if name.startswith("lorasweep") else ""
        print(
            f"{name:<21} {median[name]:>9.3f} {min(t):>7.3f} {max(t):>7.3f} "
            f"{median[name] / median['bound']:>8.3f} {vs_peft:>7}"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, step in variants.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            print(f"\n== {name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
