"""What the check scripts of scripts/gpu_checks share: their command line (`--device cpu|cuda`, `--work DIR`), the
one verdict line scripts/gpu_check.py judges, and the tests' tiny-model helpers (tests/conftest.py's, here so a
script needs no pytest)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERDICT = "gpu-check verdict: "  # the line scripts/gpu_check.py reads: VERDICT + {"ok": bool, "figures": str}


def parse(description: str, argv=None) -> tuple[str, Path]:
    """(device, work folder). `--device cpu` hides any GPU before torch is imported, so the check really runs on
    the CPU; `--device cuda` without one exits 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--work", default=None, help="model, adapters and runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        sys.exit(2)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    return args.device, work


def verdict(ok: bool, figures: str) -> int:
    """Print the verdict line; the exit status (1: the check failed, as opposed to crashed)."""
    print(VERDICT + json.dumps({"ok": bool(ok), "figures": figures}), flush=True)
    return 0 if ok else 1


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def saved_bf16_llama(directory: Path) -> Path:
    """tests/chat_models.py's tiny Llama with its tokenizer and ChatML template, saved in bf16 (a user's bf16
    checkpoint, as tests/test_bf16_path.py builds it)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from chat_models import save_chat_model

    return save_chat_model(directory, "chatml", dtype=torch.bfloat16)


def randomize_lora(model, seed: int = 1, std: float = 0.05) -> None:
    """Non-zero A and B (drawn on the CPU, so every device gets the same numbers): a real update, not the zero start."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
