import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_MODE", "offline")
# Under pytest-xdist (make test: a worker per core) each worker gets one torch thread: two workers of two threads
# each on 2 cores ran slower than one process (docs/benchmarks.md). Set before torch is imported; subprocesses
# that tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from lorasweep.model.load import build_tiny, load_pretrained, packaged_minilm_dir


@pytest.fixture(scope="session")
def minilm_dir():
    return packaged_minilm_dir()


@pytest.fixture
def minilm(minilm_dir):
    torch.manual_seed(0)
    return load_pretrained(minilm_dir, "classification", num_labels=2).eval()


@pytest.fixture(scope="session")
def minilm_batch(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    return dict(tokenizer(["a fine film", "a long, dull evening at the cinema"], padding=True, return_tensors="pt"))


def tiny(arch, task="causal_lm", seed=0, **overrides):
    """The same random tiny model every call for a given seed."""
    torch.manual_seed(seed)
    return build_tiny(arch, task=task, **overrides).eval()


def randomize_lora(model, seed=1, std=0.05):
    """Non-zero A and B, so a test compares a real update and not the zero start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
