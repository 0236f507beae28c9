"""train(cfg) -> metrics: the run lifecycle around the loop.

    config hash -> lock the run directory -> reuse a completed run, or resume from its checkpoint, or start ->
    tracker -> loop (loop.py) -> export the adapter -> the run's record (metrics.json, whatever the ending)

No CLI, Optuna or SLURM in here: a caller passes callbacks (pruning, signals) and may pass a tracker and the
Resources a sweep worker keeps between trials.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from .accounting import count_parameters, memory_account
from .config import config_hash
from .data import make_collator
from .errors import UserError
from .estimate.fit import plan_run, with_micro_batch
from .internals import reset_accelerator_settings
from .loop import Callbacks, Loop
from .lora import save_adapter
from .lora.inject import apply_lora_config
from .memory import PeakMemory
from .metrics import is_final_metric
from .models import head_names
from .optim import build_optimizer
from .preflight import check_config
from .resources import Resources
from .runlock import RunLock, RunLockStopped
from .runstore import RunDir, RunStore, environment_record
from .tracking import Tracker, make_tracker

__all__ = ["Callbacks", "train"]


def train(cfg: DictConfig, tracker: Tracker | None = None, callbacks: Callbacks | None = None,
          force: bool = False, resources: Resources | None = None, run_dir: Path | None = None) -> dict:
    """Train (or resume, or reuse) the run for `cfg`; `resources` lets a sweep worker reuse loaded models/data.
    `run_dir` puts the run somewhere other than <run_root>/<hash> (reproductions)."""
    from accelerate import PartialState

    check_config(cfg, run_root=run_dir is None)  # before any lock or file (preflight.py)
    digest = config_hash(cfg)
    run = RunDir(run_dir) if run_dir else RunStore(cfg.run_root).run(digest)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1 and run.is_complete() and not force:  # ranks decide together, below
        return _reused(run, digest)
    callbacks = callbacks or Callbacks()
    lock = RunLock(run.path, cfg.trainer.lock_timeout_s, should_stop=callbacks.should_stop) \
        if state.is_main_process else None
    # Only the main rank locks; the others learn its verdict once it holds the lock (or gave up on a signal).
    try:
        with lock if lock else nullcontext():
            verdict = broadcast_from_main(state, "reuse" if run.is_complete() and not force else "train")
            if verdict == "reuse":
                if lock and lock.waited_for:
                    print(f"run {digest} was completed by {lock.waited_for} meanwhile: reusing its result",
                          flush=True)
                return _reused(run, digest)
            if verdict == "train":
                return _train_locked(cfg, digest, run, tracker, callbacks, resources, fresh=force)
    except RunLockStopped as stopped:  # the main rank, on a signal while waiting: the others get "stop"
        broadcast_from_main(state, "stop")
        print(f"{stopped}", flush=True)
    return {"status": "interrupted", "config_hash": digest, "step": 0}


def _reused(run: RunDir, digest: str) -> dict:
    return {**run.metrics(), "status": "reused", "config_hash": digest}


def _train_locked(cfg, digest: str, run: RunDir, tracker, callbacks: Callbacks, resources, fresh: bool) -> dict:
    from accelerate import Accelerator

    reset_accelerator_settings()  # a worker's earlier trial may have had other settings
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    memory = PeakMemory(accelerator.device).start()
    # trainer.micro_batch (auto: the largest that fits) and the predicted peak, recorded beside the measured one
    micro, planned = plan_run(cfg, accelerator.device.type, accelerator.num_processes)  # estimate/fit.py
    loop_cfg = with_micro_batch(cfg, micro)  # the global batch (and the hash) unchanged
    if micro % accelerator.num_processes:
        raise UserError(f"trainer.batch_size/grad_accum = {micro} must be divisible by the "
                        f"{accelerator.num_processes} processes")

    resources = resources or Resources(keep=False)
    model, tokenizer = resources.model(cfg)  # seeded: the head and then the LoRA A matrices are drawn from it
    report = apply_lora_config(model, cfg.lora, _modules_to_save(cfg, model))  # every lora.* key (dora, init)
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with accelerator.main_process_first():
        train_set, eval_set = resources.datasets(cfg, tokenizer, Path(cfg.run_root) / ".cache" / "tokenized")
    total_steps = _total_steps(loop_cfg, len(train_set), micro)
    optimizer = build_optimizer(cfg.optim, model)  # optim.py: its trainable parameters, LoRA+ groups
    scheduler = _scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    counts = count_parameters(accelerator.unwrap_model(model))
    figures = {"params/trainable": counts.trainable, "params/total": counts.total,
               "params/trainable_fraction": counts.fraction, "params/lora": report.lora_parameters,
               **memory_account(accelerator.unwrap_model(model)), **planned}  # base, trainable, gradient bytes

    if main:
        run.begin(cfg, environment_record(cfg.seed, str(accelerator.device), accelerator.num_processes))
    accelerator.wait_for_everyone()
    loop = Loop(loop_cfg, accelerator, model, optimizer, scheduler, train_set, eval_set, make_collator(cfg.data.task,
                tokenizer), micro, total_steps, run, None, callbacks, [])
    position = _resume_or_start(run, loop, accelerator, digest, fresh)

    own_tracker = tracker is None and main
    if own_tracker:
        tracker = make_tracker(cfg, digest, run_id=digest, root=Path(cfg.run_root))
    loop.tracker = tracker if main else None
    status = "failed"
    try:
        try:
            status = loop.run(position)
            final = _record(loop, figures, memory, status, digest)
            if main:
                # W&B's summary: the registry's final metrics (metrics.py), and the run's hash and step.
                loop.tracker.summary({k: v for k, v in final.items()
                                      if is_final_metric(k) or k in ("config_hash", "step")})
                if status == "completed":
                    save_adapter(accelerator.unwrap_model(model), run.adapter_dir, cfg.model.name_or_path)
                run.write_metrics(final)
        except BaseException as exc:
            status = "failed"
            if main:  # a failed or killed run still leaves its record: how far it got and what it cost
                ending = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
                run.write_metrics(_record(loop, figures, memory, ending, digest, exc))
            raise
        accelerator.wait_for_everyone()
        return final
    finally:
        if own_tracker:
            tracker.finish(exit_code=0 if status != "failed" else 1)


def _resume_or_start(run: RunDir, loop: Loop, accelerator, digest: str, fresh: bool) -> ckpt.Position:
    """The latest checkpoint's position (restoring weights, optimizer, scheduler, RNG and loop state), or the
    start: when there is none, or `fresh` (--force: a rerun from step 0, its old checkpoints dropped)."""
    if fresh and accelerator.is_main_process:
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    if latest is None:
        if accelerator.is_main_process:
            run.write_history([])
        return ckpt.Position()
    position, loop_state = ckpt.load_checkpoint(latest, accelerator.unwrap_model(loop.model), loop.optimizer,
                                                loop.scheduler, accelerator.process_index)
    loop.restore(loop_state)
    if accelerator.is_main_process:
        print(f"resuming {digest} from step {position.step}", flush=True)
        loop.history = run.history()[: loop_state["history_len"]] + [{"event": "resume", "step": position.step}]
        run.write_history(loop.history)
    return position


def _record(loop: Loop, figures: dict, memory: PeakMemory, status: str, digest: str,
            error: BaseException | None = None) -> dict:
    """What a run leaves in metrics.json however it ended; only status "completed" marks it complete."""
    record = {**figures, **loop.final_metrics(), "memory/peak_bytes": memory.peak_bytes(), "status": status,
              "step": loop.position.step, "config_hash": digest}
    if error is not None:
        record["error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]
    return record


def _total_steps(cfg, n_examples: int, micro: int) -> int:
    batches_per_epoch = n_examples // micro
    if batches_per_epoch < cfg.trainer.grad_accum:
        raise UserError(f"{n_examples} training examples are fewer than one batch of {cfg.trainer.batch_size}")
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return cfg.trainer.epochs * (batches_per_epoch // cfg.trainer.grad_accum)


def _scheduler(optimizer, optim_cfg, total_steps):
    """transformers' schedules: warmup from 0 over warmup_steps, then linear/cosine decay to 0 or constant."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim_cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=optim_cfg.warmup_steps, num_training_steps=total_steps)


def _modules_to_save(cfg, model) -> list[str]:
    if cfg.lora.modules_to_save is not None:
        return list(cfg.lora.modules_to_save)
    return head_names(model) if cfg.data.task == "classification" else []


def broadcast_from_main(state, value):
    """The main rank's value on every rank (any picklable value; a no-op on one process)."""
    if state.num_processes == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
