"""The training loop: step, evaluate, checkpoint — each a named method, and `run` reads top to bottom.

Knows nothing of W&B, Optuna or SLURM: a sweep sees each evaluation through `callbacks.on_eval` (return True to
stop: pruning) and asks for a clean stop through `callbacks.should_stop` (checkpoint and return: a signal); a
tracker (W&B or nothing) records what is logged. `trainer.batch_size` is the GLOBAL batch, split across the
processes, so a config means the same computation on any number of devices; a step's loss is the mean over all
of its items (`step`), so it is also the same however the batch is split into micro-batches.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from ..data import IGNORE
from ..lora.accounting import optimizer_state_bytes
from ..step.ranks import gather_in_order, main_decides, sum_across
from ..step.tasks import evaluate, exact_matches, forward_loss, generation_stops
from . import checkpoint as ckpt


@dataclass
class Callbacks:
    on_eval: Callable[[int, dict], bool] | None = None  # (step, eval metrics) -> stop? (pruning)
    should_stop: Callable[[], bool] | None = None  # checked every step: checkpoint and return (signals)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The examples of one epoch in order, a pure function of (seed, epoch): resumable and the same on every rank
    (and for every micro batch: a step takes the next trainer.batch_size of them, split as it likes)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def item_count(labels: torch.Tensor, task: str) -> int:
    """What a batch's loss averages over, counted on the host from the collated labels (no device sync): a causal
    LM's target tokens (labels after the first that are not IGNORE, as the shifted loss sees them), else its
    examples (classification, regression)."""
    if task == "causal_lm":
        return int((labels[:, 1:] != IGNORE).sum())
    return int(labels.shape[0])


class Loop:
    """One run's training over its Components (training/components.py); `history` holds what was recorded so far."""

    def __init__(self, cfg, accelerator, components, run_dir, *, callbacks: Callbacks | None = None, tracker=None):
        self.cfg, self.acc, self.run_dir = cfg, accelerator, run_dir
        self.model, self.optimizer, self.scheduler = components.model, components.optimizer, components.scheduler
        self.train_set, self.eval_set, self.collate = components.train_set, components.eval_set, components.collate
        self.micro, self.total_steps = components.micro, components.total_steps
        self.global_batch = self.micro * cfg.trainer.grad_accum  # trainer.batch_size: examples per step
        self.backward = components.backward or accelerator.backward
        self.packed = components.packed  # K trials' progress bars would overwrite each other: none in a pack
        self.tokenizer = components.tokenizer  # trainer.eval_generate decodes with it
        self.callbacks, self.tracker = callbacks or Callbacks(), tracker
        self.history: list = []
        self.position = ckpt.Position()
        self.last_eval: dict = {}
        self.initial_eval: dict = {}  # eval/initial_loss, eval/initial_accuracy: the untrained baseline
        self.window = _Window()
        self.last_train_loss = float("nan")
        self.optimizer_bytes = 0
        self.loop_time = 0.0

    def run(self, position: ckpt.Position) -> str:
        """completed | pruned (on_eval said stop) | interrupted (should_stop: checkpointed). perf/loop_time_s
        is the time in here: what a sweep's overhead is measured against."""
        position = ckpt.in_examples(position, len(self.train_set), self.global_batch)  # older: micro-batches
        t, self.position, start = self.cfg.trainer, position, time.perf_counter()
        progress = _progress(
            t.progress and self.acc.is_main_process and not self.packed, self.total_steps, position.step
        )
        self.model.train()
        try:
            if t.eval_at_start and position.step == 0:
                self.evaluate(0)
                self.initial_eval = {k.replace("eval/", "eval/initial_"): v for k, v in self.last_eval.items()}
            for micro_batches in self._optimizer_steps(position):
                self.step(micro_batches)
                step = position.step
                progress.update(1)
                with self.window.paused():  # evaluation and checkpoints are not training time
                    if _due(t.eval_every, step) or step == self.total_steps:
                        if self.evaluate(step) and step < self.total_steps:
                            return "pruned"
                    if _due(t.checkpoint_every, step):
                        self.checkpoint()
                if (
                    main_decides(self.acc, self.callbacks.should_stop is not None and self.callbacks.should_stop())
                    and step < self.total_steps
                ):
                    self.checkpoint()
                    return "interrupted"
            return "completed"
        finally:
            progress.close()
            self.loop_time = time.perf_counter() - start

    def _optimizer_steps(self, position: ckpt.Position):
        """Yields each optimizer step's micro-batches (this process's share); `step` advances `position` by the
        global batch: it counts examples, so a resume with another micro batch continues at the same example."""
        micro, size = self.micro, self.global_batch
        while position.step < self.total_steps:
            order = epoch_order(len(self.train_set), self.cfg.seed, position.epoch)
            while position.batch + size <= len(order) and position.step < self.total_steps:
                start = position.batch
                yield [self._local(order[i : i + micro]) for i in range(start, start + size, micro)]
            if position.step < self.total_steps:
                position.epoch, position.batch = position.epoch + 1, 0

    def step(self, micro_batches: list[list[int]]) -> None:
        """One optimizer step over grad_accum micro-batches (gradients synchronised on the last one); moves
        `self.position` past them.

        The step's loss is the sum of its items' losses (target tokens, or examples) over their count on every
        micro-batch and process, the same however the batch is split. Micro-batch k's mean loss is weighted by
        count_k * world / count: it is its sum over the step's count, and DDP averages gradients over the world
        (at one micro-batch on one process the weight is exactly 1: the plain mean). The counts come from the
        labels on the host; the loss is summed on the device and read once, after the last backward."""
        task, world = self.cfg.data.task, self.acc.num_processes
        batches = [self.collate([self.train_set[i] for i in indices]) for indices in micro_batches]
        counts = [item_count(batch["labels"], task) for batch in batches]
        total = self._step_count(sum(counts))
        step_loss, tokens = torch.zeros((), device=self.acc.device), 0
        for k, (batch, count) in enumerate(zip(batches, counts)):
            tokens += int(batch["attention_mask"].sum())
            last = k == len(batches) - 1
            with self.acc.no_sync(self.model) if not last else nullcontext():
                loss, *_ = forward_loss(self.model, self._on_device(batch), task)
                weighted = loss * (count * world / total)
                self.backward(weighted)
            step_loss += weighted.detach()
        # Summed over ranks: every rank holds the same step loss, so a non-finite one raises on all together.
        mean_loss = (step_loss if world == 1 else self.acc.reduce(step_loss, reduction="sum")).item() / world
        step = self.position.step + 1
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"non-finite training loss ({mean_loss}) at step {step}")
        if self.cfg.optim.max_grad_norm:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.position.batch += self.global_batch
        self.position.step = step
        if not self.optimizer_bytes:  # measured once the first step has created the state
            self.optimizer_bytes = optimizer_state_bytes(self.optimizer)
        self.window.add(mean_loss, tokens * world)
        if step % self.cfg.trainer.log_every == 0 or step == self.total_steps:
            self.log_training(step)

    def _step_count(self, local: int):
        """The step's item count over every process (at least 1: a step with no target token weighs 0): an int
        on one process; else summed once, on the device, and left there (dividing by it does not wait)."""
        if self.acc.num_processes == 1:
            return max(local, 1)
        count = torch.tensor(local, dtype=torch.long, device=self.acc.device)
        return self.acc.reduce(count, reduction="sum").clamp(min=1)

    def log_training(self, step: int) -> None:
        mean_loss, step_time, tokens_per_s = self.window.flush()
        self.last_train_loss = mean_loss
        self._record(
            {
                "step": step,
                "train/loss": mean_loss,
                "train/lr": self.scheduler.get_last_lr()[0],
                "perf/step_time_s": step_time,
                "perf/tokens_per_s": tokens_per_s,
            }
        )

    def evaluate(self, step: int) -> bool:
        """Evaluate on every rank's share, record it, and return whether the caller's on_eval says stop."""
        self.last_eval = self._eval_metrics()
        if not math.isfinite(self.last_eval["eval/loss"]):
            raise FloatingPointError(f"non-finite eval loss ({self.last_eval['eval/loss']}) at step {step}")
        self._record({"step": step, **self.last_eval})
        stop = (
            bool(self.callbacks.on_eval(step, dict(self.last_eval)))
            if (self.callbacks.on_eval and self.acc.is_main_process)
            else False
        )
        return main_decides(self.acc, stop)

    def _eval_metrics(self) -> dict:
        """The task's figures over the whole eval split (step/tasks.py); with trainer.eval_generate, exact match too."""
        acc, data, n = self.acc, self.cfg.data, len(self.eval_set)
        gather = lambda local: gather_in_order(acc, local, n)  # noqa: E731
        reduce = lambda t: sum_across(acc, t)  # noqa: E731
        pieces = self.micro // acc.num_processes  # an eval batch runs a training micro-batch at a time: it fits
        metrics = evaluate(
            self.model, self._eval_batches(), data.task, reduce, gather, data.num_labels, micro_batch=pieces
        )
        generate = min(self.cfg.trainer.eval_generate, n)
        if generate:
            mine = [self.eval_set[i] for i in range(acc.process_index, generate, acc.num_processes)]
            stops = generation_stops(data, self.tokenizer)
            matches, _ = exact_matches(acc.unwrap_model(self.model), mine, self.tokenizer, data.max_length, stops)
            metrics["eval/exact_match"] = float(reduce(torch.tensor([float(matches)], dtype=torch.float64))) / generate
        return metrics

    def checkpoint(self) -> None:
        directory = self.run_dir.checkpoints_dir
        self.acc.wait_for_everyone()
        ckpt.save_checkpoint(
            directory,
            self.acc.unwrap_model(self.model),
            self.optimizer,
            self.scheduler,
            self.position,
            self.acc.process_index,
            self.acc.is_main_process,
            self.loop_state(),
        )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.publish_checkpoint(directory, self.position.step)
        self.acc.wait_for_everyone()

    def loop_state(self) -> dict:
        """What a resumed run needs besides weights and optimizer to log exactly what it would have."""
        return {
            "history_len": len(self.history),
            "window": self.window.pending_losses(),
            "last_eval": dict(self.last_eval),
            "initial_eval": dict(self.initial_eval),
            "last_train_loss": self.last_train_loss,
            "optimizer_bytes": self.optimizer_bytes,
            "scaler": ckpt.scaler_state(self.acc.scaler),
        }

    def restore(self, state: dict) -> None:
        self.window.restore(state["window"])
        self.last_eval, self.initial_eval = dict(state["last_eval"]), dict(state["initial_eval"])
        self.last_train_loss, self.optimizer_bytes = state["last_train_loss"], state["optimizer_bytes"]
        ckpt.restore_scaler(self.acc.scaler, state.get("scaler"))

    def final_metrics(self) -> dict:
        return {
            **self.initial_eval,
            **self.last_eval,
            "train/loss": self.last_train_loss,
            "memory/optimizer_state_bytes": self.optimizer_bytes,
            "perf/loop_time_s": self.loop_time,
        }

    # Helpers: this process's share of a batch, tensors on the device, records.

    def _local(self, indices: list[int]) -> list[int]:
        share = len(indices) // self.acc.num_processes
        return indices[self.acc.process_index * share : (self.acc.process_index + 1) * share]

    def _on_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _eval_batches(self):
        rank, world, size = self.acc.process_index, self.acc.num_processes, self.cfg.trainer.eval_batch_size
        mine = list(range(rank, len(self.eval_set), world))
        for i in range(0, len(mine), size):
            yield self._on_device(self.collate([self.eval_set[j] for j in mine[i : i + size]]))

    def _record(self, record: dict) -> None:
        if self.acc.is_main_process:
            self.history.append(record)
            self.run_dir.append_history(record)
            self.tracker.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


class _Window:
    """Training losses (one per step: its item mean) and tokens since the last log line, and the training time
    they took (pauses excluded)."""

    def __init__(self):
        self.losses: list[float] = []
        self.tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def flush(self) -> tuple[float, float, float]:
        elapsed = time.perf_counter() - self.start
        result = (sum(self.losses) / len(self.losses), elapsed / len(self.losses), self.tokens / elapsed)
        self.losses, self.tokens, self.start = [], 0, time.perf_counter()
        return result

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began

    def pending_losses(self) -> list[float]:
        """The losses since the last log line (a resumed run logs the same mean)."""
        return list(self.losses)

    def restore(self, losses: list[float]) -> None:
        self.losses, self.tokens, self.start = list(losses), 0, time.perf_counter()


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", leave=False)
