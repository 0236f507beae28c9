"""A one-minute look at what LoRA saves on the packaged MiniLM: trainable fraction and optimizer memory,
each measured after one real AdamW step (full fine-tuning measured the same way, for comparison)."""

from __future__ import annotations

import torch

from ..lora import apply_lora
from ..lora.accounting import count_parameters, optimizer_state_bytes
from ..model.load import load_pretrained, packaged_minilm_dir

SENTENCES = ["a gentle, funny film", "dull and far too long", "I loved every minute", "a waste of an evening"]


def _one_step(model, batch) -> int:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model(**batch).loss.backward()
    optimizer.step()
    return optimizer_state_bytes(optimizer)


def run_demo(rank: int = 8, alpha: float = 16) -> list[dict]:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    path = packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"), labels=torch.tensor([1, 0, 1, 0]))
    rows = []
    for targets in (None, "qv", "all"):
        model = load_pretrained(path, "classification", num_labels=2)
        if targets:
            apply_lora(model, targets, rank=rank, alpha=alpha, modules_to_save=["classifier"])
        counts = count_parameters(model)
        rows.append(
            dict(
                setup=f"LoRA {targets} r={rank}" if targets else "full fine-tune",
                trainable=counts.trainable,
                fraction=counts.fraction,
                optimizer_bytes=_one_step(model, batch),
            )
        )
    return rows


def print_demo(rows: list[dict]) -> None:
    from ..tables import format_rows

    full = rows[0]["optimizer_bytes"]
    table = [
        {
            "setup": r["setup"],
            "trainable": f"{r['trainable']:,}",
            "fraction": f"{100 * r['fraction']:.3f}%",
            "AdamW state": f"{r['optimizer_bytes'] / 2**20:.2f} MiB",
            "vs full": f"{r['optimizer_bytes'] / full:.2%}",
        }
        for r in rows
    ]
    print(format_rows(table, ["setup", "trainable", "fraction", "AdamW state", "vs full"]))
