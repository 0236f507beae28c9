"""train(cfg) -> metrics: the run lifecycle around the loop.

    config hash -> lock the run directory -> reuse a completed run, or resume from its checkpoint, or start ->
    components (components.py) -> tracker -> loop (loop.py) -> export the adapter -> the run's record
    (metrics.json, whatever the ending)

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
from .components import build_components
from .config import config_hash
from .errors import one_line
from .internals import reset_accelerator_settings
from .loop import Callbacks, Loop
from .lora import save_adapter
from .memory import PeakMemory
from .metrics import is_final_metric
from .preflight import check_config
from .ranks import broadcast_from_main
from .resources import Resources
from .runlock import RunLock, RunLockStopped
from .runstore import RunDir, RunStore, environment_record
from .tracking import Tracker, make_tracker

__all__ = ["Callbacks", "train"]


def train(
    cfg: DictConfig,
    tracker: Tracker | None = None,
    callbacks: Callbacks | None = None,
    force: bool = False,
    resources: Resources | None = None,
    run_dir: Path | None = None,
) -> dict:
    """Train (or resume, or reuse) the run for `cfg`; `resources` lets a sweep worker reuse loaded models/data.
    `run_dir` puts the run somewhere other than <run_root>/<hash> (reproductions)."""
    from accelerate import PartialState

    check_config(cfg, run_root=run_dir is None)  # before any lock or file (preflight.py)
    digest = config_hash(cfg)
    if resources is not None and resources.pack is not None:
        resources.pack.claim(digest)  # this trial's name in the pack (and one run of a config at a time)
    run = RunDir(run_dir) if run_dir else RunStore(cfg.run_root).run(digest)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1 and run.is_complete() and not force:  # ranks decide together, below
        return _reused(run, digest)
    callbacks = callbacks or Callbacks()
    lock = (
        RunLock(run.path, cfg.trainer.lock_timeout_s, should_stop=callbacks.should_stop)
        if state.is_main_process
        else None
    )
    # Only the main rank locks; the others learn its verdict once it holds the lock (or gave up on a signal).
    try:
        with lock if lock else nullcontext():
            verdict = broadcast_from_main(state, "reuse" if run.is_complete() and not force else "train")
            if verdict == "reuse":
                if lock and lock.waited_for:
                    print(f"run {digest} was completed by {lock.waited_for} meanwhile: reusing its result", flush=True)
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
    resources = resources or Resources(keep=False)
    pack = resources.pack  # packed with other trials (lorasweep/pack/): the process's memory is the pack's
    memory = pack.memory if pack is not None else PeakMemory(accelerator.device).start()
    parts = build_components(cfg, accelerator, resources)
    if main:
        run.begin(cfg, environment_record(cfg.seed, str(accelerator.device), accelerator.num_processes))
    accelerator.wait_for_everyone()
    loop = Loop(parts.loop_cfg, accelerator, parts, run, callbacks=callbacks)
    position = _resume_or_start(run, loop, accelerator, digest, fresh)
    own_tracker = tracker is None and main
    if own_tracker:
        tracker = make_tracker(cfg, digest, run_id=digest, root=Path(cfg.run_root), concurrent=pack is not None)
    loop.tracker = tracker if main else None
    status = "failed"
    try:
        try:
            status = loop.run(position)
            final = _record(loop, parts.figures, memory, status, digest, pack=pack)
            if main:
                _publish(
                    cfg, run, loop, final, accelerator.unwrap_model(parts.model) if status == "completed" else None
                )
        except BaseException as exc:
            status = "failed"
            if main:  # a failed or killed run still leaves its record: how far it got and what it cost
                ending = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
                run.write_metrics(_record(loop, parts.figures, memory, ending, digest, exc, pack))
            raise
        accelerator.wait_for_everyone()
        return final
    finally:
        if own_tracker:
            tracker.finish(exit_code=0 if status != "failed" else 1)


def _publish(cfg, run: RunDir, loop: Loop, final: dict, model) -> None:
    """The main rank's ending: W&B's summary (the registry's final metrics, the hash and step), the adapter of
    a completed run (`model` given), and the record last (what marks a run complete)."""
    loop.tracker.summary({k: v for k, v in final.items() if is_final_metric(k) or k in ("config_hash", "step")})
    if model is not None:
        save_adapter(model, run.adapter_dir, cfg.model.name_or_path)
    run.write_metrics(final)


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
    position, loop_state = ckpt.load_checkpoint(
        latest, accelerator.unwrap_model(loop.model), loop.optimizer, loop.scheduler, accelerator.process_index
    )
    loop.restore(loop_state)
    if accelerator.is_main_process:
        print(f"resuming {digest} from step {position.step}", flush=True)
        loop.history = run.history()[: loop_state["history_len"]] + [{"event": "resume", "step": position.step}]
        run.write_history(loop.history)
    return position


def _record(
    loop: Loop,
    figures: dict,
    memory: PeakMemory,
    status: str,
    digest: str,
    error: BaseException | None = None,
    pack=None,
) -> dict:
    """What a run leaves in metrics.json however it ended; only status "completed" marks it complete. A packed
    run's process held other trials too: its peak is the pack's (memory/pack_peak_bytes), and `packed_with` names
    the runs it shared base matmuls with."""
    record = {
        **figures,
        **loop.final_metrics(),
        ("memory/peak_bytes" if pack is None else "memory/pack_peak_bytes"): memory.peak_bytes(),
        "status": status,
        "step": loop.position.step,
        "config_hash": digest,
    }
    slot = pack.current() if pack is not None else None
    if slot is not None:
        record["packed_with"] = sorted({p.label for p in slot.partners})
    if error is not None:
        record["error"] = one_line(f"{type(error).__name__}: {error}", 500)
    return record
