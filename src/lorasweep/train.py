"""train(cfg) -> metrics: one LoRA fine-tuning run, filed under its config hash.

Pure: no CLI, Optuna or SLURM in here. A caller sees each evaluation through `callbacks.on_eval` (return True
to stop: the sweep's pruning hook) and can ask for a clean stop through `callbacks.should_stop` (checkpoint
and return: preemption). The same code runs on CPU, one GPU, or many processes under `accelerate launch` /
`torchrun`: `trainer.batch_size` is the GLOBAL batch, split across processes, so a config (and its hash) means
the same computation on any number of devices.
"""

from __future__ import annotations

import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from .accounting import count_parameters, optimizer_state_bytes
from .config import config_hash
from .data import make_collator
from .lora import apply_lora, save_adapter
from .resources import Resources
from .runstore import RunDir, RunStore, environment_record
from .tasks import evaluate, forward_loss
from .tracking import Tracker, make_tracker


@dataclass
class Callbacks:
    on_eval: Callable[[int, dict], bool] | None = None  # (step, eval metrics) -> stop?
    should_stop: Callable[[], bool] | None = None  # checked every step: checkpoint and return


def train(cfg: DictConfig, tracker: Tracker | None = None, callbacks: Callbacks | None = None,
          force: bool = False, resources: Resources | None = None, run_dir: Path | None = None) -> dict:
    """Train (or resume, or reuse) the run for `cfg`; `resources` lets a sweep worker reuse loaded models/data.
    `run_dir` puts the run somewhere other than <run_root>/<hash> (reproductions)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    callbacks = callbacks or Callbacks()
    digest = config_hash(cfg)
    store = RunStore(cfg.run_root)
    run = RunDir(run_dir) if run_dir else store.run(digest)
    if run.is_complete() and not force:
        return {**run.metrics(), "status": "reused", "config_hash": digest}

    # Accelerate keeps its settings in a process-wide singleton; a worker that runs trials with different
    # settings must clear it (the process group, in PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=not torch.cuda.is_available())
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    micro = cfg.trainer.batch_size // cfg.trainer.grad_accum
    if micro % world:
        raise ValueError(f"trainer.batch_size/grad_accum = {micro} must be divisible by the {world} processes")

    resources = resources or Resources(keep=False)
    model, tokenizer = resources.model(cfg)  # seeded: the head and then the LoRA A matrices are drawn from it
    head = cfg.lora.modules_to_save
    if head is None:
        head = _head_names(model) if cfg.data.task == "classification" else []
    report = apply_lora(model, _targets(cfg.lora.targets), cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout,
                        cfg.lora.scaling, list(head))
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with accelerator.main_process_first():
        train_set, eval_set = resources.datasets(cfg, tokenizer, store.root / ".cache" / "tokenized")
    collate = make_collator(cfg.data.task, tokenizer)

    batches_per_epoch = len(train_set) // micro
    if batches_per_epoch < cfg.trainer.grad_accum:
        raise ValueError(f"{len(train_set)} training examples are fewer than one batch of {cfg.trainer.batch_size}")
    total_steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else (
        cfg.trainer.epochs * (batches_per_epoch // cfg.trainer.grad_accum))

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
    )
    scheduler = _scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    if main:
        run.begin(cfg, environment_record(cfg.seed, str(accelerator.device), world))
    accelerator.wait_for_everyone()
    position, history, loop_state = ckpt.Position(), [], None
    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    if latest is not None:
        position, loop_state = ckpt.load_checkpoint(latest, accelerator.unwrap_model(model), optimizer, scheduler, rank)
        if main:
            history = run.history()[: loop_state["history_len"]] + [{"event": "resume", "step": position.step}]
            run.write_history(history)
    elif main:
        run.write_history([])

    own_tracker = tracker is None and main
    if own_tracker:
        tracker = make_tracker(cfg, digest, run_id=digest, root=store.root)
    tracker = tracker if main else None
    counts = count_parameters(accelerator.unwrap_model(model))
    summary = {
        "params/trainable": counts.trainable,
        "params/total": counts.total,
        "params/trainable_fraction": counts.fraction,
        "params/lora": report.lora_parameters,
    }
    loop = _Loop(cfg, accelerator, model, optimizer, scheduler, train_set, eval_set, collate, micro, total_steps,
                 run, tracker, callbacks, history)
    if loop_state is not None:
        loop.restore(loop_state)
    status = "failed"
    try:
        status = loop.run(position)
        final = {**summary, **loop.final_metrics(), "status": status, "config_hash": digest}
        if main:
            tracker.summary({k: v for k, v in final.items() if k != "status"})
            if status == "completed":
                save_adapter(accelerator.unwrap_model(model), run.adapter_dir, cfg.model.name_or_path)
                run.write_metrics(final)
        accelerator.wait_for_everyone()
        return final
    finally:
        if own_tracker:
            tracker.finish(exit_code=0 if status != "failed" else 1)


def _targets(targets):
    return targets if isinstance(targets, str) else list(targets)


def _head_names(model) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    heads = [h for h in ("classifier", "score") if h in names]
    if not heads:
        raise ValueError(f"no classification head (classifier/score) found in {type(model).__name__}; "
                         "set lora.modules_to_save")
    return heads[:1]


def _scheduler(optimizer, optim_cfg, total_steps):
    warmup = optim_cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if optim_cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if optim_cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_order(n: int, micro: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch, a pure function of (seed, epoch): resumable and the same on every rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + micro] for i in range(0, n - micro + 1, micro)]


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _Loop:
    def __init__(self, cfg, accelerator, model, optimizer, scheduler, train_set, eval_set, collate, micro,
                 total_steps, run: RunDir, tracker, callbacks: Callbacks, history: list):
        self.cfg, self.acc, self.model, self.optimizer, self.scheduler = cfg, accelerator, model, optimizer, scheduler
        self.train_set, self.eval_set, self.collate, self.micro = train_set, eval_set, collate, micro
        self.total_steps, self.run_dir, self.tracker, self.callbacks = total_steps, run, tracker, callbacks
        self.task, self.history = cfg.data.task, history
        self.last_eval: dict = {}
        self.initial_eval: dict = {}  # eval/initial_loss, eval/initial_accuracy: the untrained baseline
        self.window: list[float] = []
        self.last_train_loss = float("nan")
        self.optimizer_bytes = 0
        self.loop_time = 0.0

    def _local(self, indices: list[int]) -> list[int]:
        share = len(indices) // self.acc.num_processes
        return indices[self.acc.process_index * share : (self.acc.process_index + 1) * share]

    def _batch(self, indices, examples=None):
        examples = self.train_set if examples is None else examples
        batch = self.collate([examples[i] for i in indices])
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _eval_batches(self):
        rank, world, size = self.acc.process_index, self.acc.num_processes, self.cfg.trainer.eval_batch_size
        mine = list(range(rank, len(self.eval_set), world))
        for i in range(0, len(mine), size):
            yield self._batch(mine[i : i + size], self.eval_set)

    def _agree(self, flag: bool) -> bool:
        """Every rank takes the main rank's decision."""
        value = torch.tensor([1.0 if flag and self.acc.is_main_process else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(value, reduction="sum").item() > 0)

    def _record(self, record: dict) -> None:
        if self.acc.is_main_process:
            self.history.append(record)
            self.run_dir.append_history(record)
            self.tracker.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def evaluate(self, step: int) -> bool:
        reduce = lambda t: self.acc.reduce(t.to(self.acc.device), reduction="sum").cpu()  # noqa: E731
        self.last_eval = evaluate(self.model, self._eval_batches(), self.task, reduce)
        if not math.isfinite(self.last_eval["eval/loss"]):
            raise FloatingPointError(f"non-finite eval loss ({self.last_eval['eval/loss']}) at step {step}")
        self._record({"step": step, **self.last_eval})
        stop = bool(self.callbacks.on_eval(step, dict(self.last_eval))) if (
            self.callbacks.on_eval and self.acc.is_main_process) else False
        return self._agree(stop)

    def run(self, position: ckpt.Position) -> str:
        """The loop, timed: perf/loop_time_s is what a sweep's overhead is measured against."""
        start = time.perf_counter()
        try:
            return self._run(position)
        finally:
            self.loop_time = time.perf_counter() - start

    def _run(self, position: ckpt.Position) -> str:
        t = self.cfg.trainer
        accum = t.grad_accum
        self.model.train()
        if t.eval_at_start and position.step == 0:
            self.evaluate(0)
            self.initial_eval = {k.replace("eval/", "eval/initial_"): v for k, v in self.last_eval.items()}
        progress = _progress(t.progress and self.acc.is_main_process, self.total_steps, position.step)
        step_start, tokens = time.perf_counter(), 0
        while position.step < self.total_steps:
            order = _epoch_order(len(self.train_set), self.micro, self.cfg.seed, position.epoch)
            while position.batch + accum <= len(order) and position.step < self.total_steps:
                loss_sum = 0.0
                for k in range(accum):
                    batch = self._batch(self._local(order[position.batch + k]))
                    tokens += int(batch["attention_mask"].sum())
                    sync = k == accum - 1
                    with self.acc.no_sync(self.model) if not sync else nullcontext():
                        loss, *_ = forward_loss(self.model, batch, self.task)
                        self.acc.backward(loss / accum)
                    loss_sum += loss.item() / accum
                if not math.isfinite(loss_sum):
                    raise FloatingPointError(f"non-finite training loss ({loss_sum}) at step {position.step + 1}")
                if self.cfg.optim.max_grad_norm:
                    self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                position.batch += accum
                position.step += 1
                step = position.step
                if not self.optimizer_bytes:  # measured once the first step has created the state
                    self.optimizer_bytes = optimizer_state_bytes(self.optimizer)
                self.window.append(loss_sum)
                progress.update(1)
                if step % t.log_every == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - step_start
                    n_steps = len(self.window)
                    self.last_train_loss = sum(self.window) / n_steps
                    self._record({
                        "step": step,
                        "train/loss": self.last_train_loss,
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "perf/step_time_s": elapsed / n_steps,
                        "perf/tokens_per_s": tokens * self.acc.num_processes / elapsed,
                    })
                    self.window, tokens, step_start = [], 0, time.perf_counter()
                paused = time.perf_counter()  # evaluation and checkpoints are not training time
                if (t.eval_every and step % t.eval_every == 0) or step == self.total_steps:
                    if self.evaluate(step) and step < self.total_steps:
                        progress.close()
                        return "stopped"
                if t.checkpoint_every and step % t.checkpoint_every == 0:
                    self._checkpoint(position)
                step_start += time.perf_counter() - paused
                stop = self.callbacks.should_stop() if self.callbacks.should_stop else False
                if self._agree(stop) and step < self.total_steps:
                    self._checkpoint(position)
                    progress.close()
                    return "interrupted"
            if position.step < self.total_steps:
                position.epoch, position.batch = position.epoch + 1, 0
        progress.close()
        return "completed"

    def _checkpoint(self, position: ckpt.Position) -> None:
        directory = self.run_dir.checkpoints_dir
        self.acc.wait_for_everyone()
        ckpt.save_checkpoint(directory, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler, position,
                             self.acc.process_index, self.acc.is_main_process, self.loop_state())
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.publish_checkpoint(directory, position.step)
        self.acc.wait_for_everyone()

    def loop_state(self) -> dict:
        """What a resumed run needs besides weights and optimizer to log exactly what it would have."""
        return {"history_len": len(self.history), "window": list(self.window), "last_eval": dict(self.last_eval),
                "initial_eval": dict(self.initial_eval), "last_train_loss": self.last_train_loss,
                "optimizer_bytes": self.optimizer_bytes}

    def restore(self, state: dict) -> None:
        self.window, self.last_eval = list(state["window"]), dict(state["last_eval"])
        self.initial_eval = dict(state["initial_eval"])
        self.last_train_loss, self.optimizer_bytes = state["last_train_loss"], state["optimizer_bytes"]

    def final_metrics(self) -> dict:
        return {
            **self.initial_eval,
            **self.last_eval,
            "train/loss": self.last_train_loss,
            "memory/optimizer_state_bytes": self.optimizer_bytes,
            "memory/peak_bytes": peak_memory_bytes(self.acc.device),
            "perf/loop_time_s": self.loop_time,
        }


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", leave=False)
