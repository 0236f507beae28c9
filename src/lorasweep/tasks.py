"""Per-task loss and evaluation: classification, regression (one output, MSE) and causal-LM SFT (the trained
tokens only), and the figures each task is judged by (scoring.py), over the whole eval split on any number of
processes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import IGNORE  # the label the loss skips (the collator writes it)
from .scoring import classification_scores, regression_scores

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # token_type_ids: a sentence pair's segments


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def forward_loss(model, batch: dict, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, summed loss, count, correct): count is examples (classification, regression) or target
    tokens (causal_lm); correct is 0 for regression."""
    logits = model(**model_inputs(batch)).logits.float()
    return _losses(logits, batch["labels"], task)


def _losses(logits: torch.Tensor, labels: torch.Tensor, task: str):
    if task == "classification":
        losses = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(-1) == labels).sum()
        count = torch.tensor(labels.numel(), device=logits.device)
    elif task == "regression":
        losses = (logits.squeeze(-1) - labels.float()) ** 2
        correct = torch.zeros((), dtype=torch.long, device=logits.device)
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
def evaluate(model, batches, task: str, reduce, gather=None, num_labels: int = 2) -> dict[str, float]:
    """Loss and the task's figures over all processes' shards. Sums and the confusion matrix are reduced
    (`reduce`: summed over ranks); regression's predictions are gathered in eval order (`gather(local)`), so
    Pearson and Spearman are exactly what one process computes."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    predictions, targets = [], []
    for batch in batches:
        logits = model(**model_inputs(batch)).logits.float()
        _, total, count, correct = _losses(logits, batch["labels"], task)
        sums += torch.stack([total.double().cpu(), count.double().cpu(), correct.double().cpu()])
        if task == "classification":
            index = batch["labels"].cpu() * num_labels + logits.argmax(-1).cpu()
            confusion += torch.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels).double()
        elif task == "regression":
            predictions.append(logits.squeeze(-1).double().cpu())
            targets.append(batch["labels"].double().cpu())
    loss_sum, count, correct = reduce(sums).tolist()
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    metrics = {"eval/loss": loss}
    if task == "classification":
        metrics.update(classification_scores(reduce(confusion).numpy()))
    elif task == "regression":
        local = torch.stack([torch.cat(predictions), torch.cat(targets)], dim=1) if predictions else torch.zeros(0, 2)
        rows = gather(local) if gather is not None else local
        metrics.update(regression_scores(rows[:, 0].numpy(), rows[:, 1].numpy()))
    else:
        metrics["eval/perplexity"] = math.exp(loss) if loss < 700 else float("inf")
        metrics["eval/token_accuracy"] = correct / max(count, 1)
    return metrics


@torch.no_grad()
def exact_matches(model, examples: list[dict], tokenizer, max_length: int, stops=None) -> tuple[int, int]:
    """(matches, count): greedy generation from each example's prompt ids, one example at a time (no padding, so
    the result does not depend on how examples are batched or spread over processes), compared with the reference
    after stripping whitespace. Generation ends at any of `stops` (default: EOS; a chat template's end-of-turn)."""
    from .data import end_token

    was_training = model.training
    model.eval()
    stops, matches = list(stops or [end_token(tokenizer)]), 0
    for example in examples:
        prompt = example["prompt_ids"][-max_length:]
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        new = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max(1, max_length - len(prompt)),
            do_sample=False,
            num_beams=1,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
        )[0, len(prompt) :].tolist()
        new = new[: min((new.index(t) for t in stops if t in new), default=len(new))]
        matches += tokenizer.decode(new, skip_special_tokens=True).strip() == example["reference"].strip()
    model.train(was_training)
    return matches, len(examples)


def generation_stops(data_cfg, tokenizer) -> list[int]:
    """The tokens a causal LM's generation ends at: EOS, and for a chat run its template's end-of-turn token."""
    from .data import end_token, style_of
    from .data.chat import stop_tokens
    from .data.templates import chat_template_text

    if style_of(data_cfg) != "chat":
        return [end_token(tokenizer)]
    return stop_tokens(tokenizer, chat_template_text(data_cfg.chat_template))
