"""QLoRA: step time of lorasweep vs peft on the same nf4-quantized MiniLM, and the memory table.

    python benchmarks/qlora.py step   [--repeats 7] [--batch 16] [--seq 128] [--presets qv all] [--device cpu]
    python benchmarks/qlora.py memory [--steps 2] [--batch 16] [--seq 128] [--device cpu]

step: one training step (forward, backward, AdamW) of LoRA r=8 on the nf4 base (bitsandbytes Linear4bit, built by
lorasweep.model.quantize once and deep-copied, so both libraries wrap the very same quantized layers). Interleaved, one
step of each variant per round, median over the rounds: the ratio lorasweep / peft is what to read.

memory: MiniLM (classification, LoRA r=16 on all six projections) and a tiny Llama (causal LM, hidden 256,
4 layers, r=16 on all seven) for quantization none|nf4 × optimizer adamw|adamw8bit: the memory account of
lorasweep.lora.accounting (base weights, trainable, gradients, optimizer state) and the peak. Each configuration runs
in its own process; its peak is that of the `--steps` training steps (the model built and quantized before, its
loading spike left out): on CPU the peak RSS (VmHWM reset after the build) minus the RSS after the imports, so
the interpreter and libraries do not count; on CUDA the allocator's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from interleaved import time_interleaved

RANK, ALPHA = 8, 16


def _quantized_minilm(device):
    from lorasweep.model.load import load_pretrained, packaged_minilm_dir
    from lorasweep.model.quantize import quantize_model

    torch.manual_seed(0)
    model = load_pretrained(packaged_minilm_dir(), "classification", num_labels=2).to(device)
    quantize_model(model, "nf4")
    return model.train()


def make_lorasweep(base, preset):
    import copy

    from lorasweep.lora import apply_lora

    model = copy.deepcopy(base)
    apply_lora(model, preset, rank=RANK, alpha=ALPHA, modules_to_save=["classifier"])
    return model


def make_peft(base, preset):
    import copy

    from peft import LoraConfig, get_peft_model

    from lorasweep.lora import resolve_targets

    model = copy.deepcopy(base)
    names = [t.name for t in resolve_targets(model, preset)]  # exactly the same modules as lorasweep
    return get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names, modules_to_save=["classifier"])
    ).train()


class Stepper:
    def __init__(self, model, batch, device):
        self.model, self.batch, self.device = model, batch, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def step_main(args) -> int:
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.seq), generator=generator),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=generator),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    base = _quantized_minilm(device)
    variants = {}
    for preset in args.presets:
        variants[f"peft {preset}"] = Stepper(make_peft(base, preset), batch, device)
        variants[f"lorasweep {preset}"] = Stepper(make_lorasweep(base, preset), batch, device)
    print(
        f"QLoRA nf4 MiniLM, torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}×{args.seq}, r={RANK}"
    )
    times, median = time_interleaved(variants, args.repeats)
    print(f"\n{'variant':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'/ peft':>7}")
    ratios = {}
    for name, t in times.items():
        preset = name.split()[-1]
        vs_peft = ""
        if name.startswith("lorasweep"):
            ratios[preset] = median[name] / median[f"peft {preset}"]
            vs_peft = f"{ratios[preset]:.3f}"
        print(f"{name:<16} {median[name]:>9.3f} {min(t):>7.3f} {max(t):>7.3f} {vs_peft:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_s": median, "ratio_vs_peft": ratios}, indent=1))
    return 0


# ---- memory table --------------------------------------------------------------------------------------------


def one_config(model_name, quantization, optimizer_name, steps, batch_size, seq, device) -> dict:
    """Runs in a child process: the memory account and the peak of one configuration."""
    from lorasweep.lora import apply_lora
    from lorasweep.lora.accounting import memory_account
    from lorasweep.model.load import build_tiny, load_pretrained, packaged_minilm_dir
    from lorasweep.model.quantize import quantize_model
    from lorasweep.step.optim import build_optimizer
    from lorasweep.training.memory import PeakMemory, resident_bytes

    class Optim:
        name, lr, beta1, beta2, eps, weight_decay, min_8bit_size = optimizer_name, 1e-4, 0.9, 0.999, 1e-8, 0.0, 4096

    import bitsandbytes  # noqa: F401  (its libraries load before the baseline in every configuration)

    device = torch.device(device)
    torch.manual_seed(0)
    start = resident_bytes(device)
    if model_name == "minilm":
        model = load_pretrained(packaged_minilm_dir(), "classification", num_labels=2).to(device)
        head = ["classifier"]
        ids = torch.randint(1000, 20000, (batch_size, seq))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (batch_size,))}
    else:
        model = build_tiny(
            "llama",
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=32000,
        ).to(device)
        head = []
        ids = torch.randint(4, 32000, (batch_size, seq))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    quantize_model(model, quantization)
    apply_lora(model, "all", rank=16, alpha=16, modules_to_save=head)
    optimizer = build_optimizer(Optim, [p for p in model.parameters() if p.requires_grad])
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    peak = PeakMemory(device).start()  # lorasweep's own per-run peak (training/memory.py)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    account = memory_account(model, optimizer)
    account["memory/peak_bytes"] = peak.peak_bytes() - start
    return account


def memory_main(args) -> int:
    rows = []
    for model_name in ("minilm", "tiny_llama"):
        for quantization in ("none", "nf4"):
            for optimizer_name in ("adamw", "adamw8bit"):
                code = (
                    "import json, sys; sys.path.insert(0, %r); import qlora; print('RESULT ' + json.dumps("
                    "qlora.one_config(%r, %r, %r, %d, %d, %d, %r)))"
                    % (
                        str(Path(__file__).parent),
                        model_name,
                        quantization,
                        optimizer_name,
                        args.steps,
                        args.batch,
                        args.seq,
                        args.device,
                    )
                )
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
                rows.append((model_name, quantization, optimizer_name, json.loads(line[7:])))
    mib = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
    print(f"LoRA r=16 on all projections, batch {args.batch}×{args.seq}, {args.steps} steps, {args.device}; MiB")
    print("| model | base | optimizer | base weights | trainable | gradients | optimizer state | peak |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, quantization, optimizer_name, a in rows:
        print(
            f"| {model_name} | {quantization} | {optimizer_name} | {mib(a['memory/base_weights_bytes'])} | "
            f"{mib(a['memory/trainable_bytes'])} | {mib(a['memory/gradient_bytes'])} | "
            f"{mib(a['memory/optimizer_state_bytes'])} | {mib(a['memory/peak_bytes'])} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step", "memory"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--presets", nargs="+", default=["qv", "all"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    return step_main(args) if args.what == "step" else memory_main(args)


if __name__ == "__main__":
    sys.exit(main())
