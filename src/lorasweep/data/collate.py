"""Batching: pad to the longest example of the batch (right side)."""

from __future__ import annotations

import torch

from ..choices import require_choice
from .tokens import IGNORE


def make_collator(task: str, tokenizer) -> "Collator":
    require_choice("data.task", task)
    candidates = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id)
    pad = next((t for t in candidates if t is not None), 0)  # no pad token (GPT-2): eos; padding is masked
    return Collator(task, pad)


class Collator:
    """input_ids, attention_mask (and a pair's token_type_ids), labels: per token for a causal LM (IGNORE where
    not trained or padded), one id per example for classification, one float for regression."""

    def __init__(self, task: str, pad_id: int):
        self.task, self.pad_id = task, pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        shape = (len(examples), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        pairs = "token_type_ids" in examples[0]
        token_type_ids = torch.zeros(shape, dtype=torch.long) if pairs else None
        labels = torch.full(shape, IGNORE, dtype=torch.long) if self.task == "causal_lm" else None
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = torch.as_tensor(e["attention_mask"], dtype=torch.long)
            if pairs:
                token_type_ids[i, :n] = torch.as_tensor(e["token_type_ids"], dtype=torch.long)
            if labels is not None:
                labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        if self.task == "classification":
            labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        elif self.task == "regression":
            labels = torch.tensor([float(e["labels"]) for e in examples], dtype=torch.float32)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if pairs:
            batch["token_type_ids"] = token_type_ids
        return batch
