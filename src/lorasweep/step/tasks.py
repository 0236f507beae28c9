"""Per-task loss and evaluation: classification, regression (one output, MSE) and causal-LM SFT (the trained
tokens only), and the figures each task is judged by (step/scoring.py), over the whole eval split on any number of
processes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .lm_loss import causal_lm_losses, full_logits_losses
from .scoring import classification_scores, regression_scores

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # token_type_ids: a sentence pair's segments


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def forward_loss(model, batch: dict, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, summed loss, count, correct): count is examples (classification, regression) or target
    tokens (causal_lm); correct is 0 for regression. A causal LM's loss is taken at its target tokens only, in
    chunks, without the full-vocabulary logits (step/lm_loss.py)."""
    if task == "causal_lm":
        return causal_lm_losses(model, model_inputs(batch), batch["labels"])
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
        return full_logits_losses(logits, labels)
    total = losses.sum()
    return total / count.clamp(min=1), total.detach(), count, correct


@torch.no_grad()
def evaluate(
    model, batches, task: str, reduce, gather=None, num_labels: int = 2, *, micro_batch: int | None = None
) -> dict[str, float]:
    """Loss and the task's figures over all processes' shards. Sums and the confusion matrix are reduced
    (`reduce`: summed over ranks); regression's predictions are gathered in eval order (`gather(local)`), so
    Pearson and Spearman are exactly what one process computes. `micro_batch`: each batch is run
    that many examples at a time (as training splits its batch into micro-batches), so an evaluation fits where
    a training step does."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    predictions, targets = [], []
    for batch in eval_pieces(batches, micro_batch):
        if task == "causal_lm":  # no logits kept: the loss is taken in chunks (step/lm_loss.py)
            _, total, count, correct = forward_loss(model, batch, task)
        else:
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


def eval_pieces(batches, micro_batch: int | None):
    """Each batch as consecutive pieces of at most `micro_batch` examples (views of its rows), in order."""
    for batch in batches:
        n = len(batch["labels"])
        step = micro_batch or n
        for start in range(0, n, max(1, step)):
            yield batch if step >= n else {k: v[start : start + step] for k, v in batch.items()}


@torch.no_grad()
def exact_matches(model, examples: list[dict], tokenizer, max_length: int, stops=None) -> tuple[int, int]:
    """(matches, count): greedy generation from each example's prompt ids, one example at a time (no padding, so
    the result does not depend on how examples are batched or spread over processes), compared with the reference
    after stripping whitespace. Generation ends at any of `stops` (default: EOS; a chat template's end-of-turn)."""
    from ..data import end_token

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
    from ..data import end_token, style_of
    from ..data.chat import stop_tokens
    from ..data.templates import chat_template_text

    if style_of(data_cfg) != "chat":
        return [end_token(tokenizer)]
    return stop_tokens(tokenizer, chat_template_text(data_cfg.chat_template))
