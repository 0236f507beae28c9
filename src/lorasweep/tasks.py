"""Per-task loss and evaluation: sequence classification and causal-LM SFT (response tokens only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE  # the label the loss skips (the collator writes it)


def forward_loss(model, batch: dict, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, summed loss, count, correct): count is examples (classification) or target tokens (causal_lm)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"]
    if task == "classification":
        losses = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(-1) == labels).sum()
        count = torch.tensor(labels.numel(), device=logits.device)
    else:
        shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        losses = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="none")
        mask = shift_labels != IGNORE
        correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum()
        count = mask.sum()
    total = losses.sum()
    return total / count.clamp(min=1), total.detach(), count, correct


@torch.no_grad()
def evaluate(model, batches, task: str, reduce) -> dict[str, float]:
    """Loss (and accuracy) over all processes' shards: sums are reduced, then divided once."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        _, total, count, correct = forward_loss(model, batch, task)
        sums += torch.stack([total.double().cpu(), count.double().cpu(), correct.double().cpu()])
    loss_sum, count, correct = reduce(sums).tolist()
    model.train(was_training)
    metrics = {"eval/loss": loss_sum / max(count, 1)}
    metrics["eval/accuracy" if task == "classification" else "eval/token_accuracy"] = correct / max(count, 1)
    return metrics
