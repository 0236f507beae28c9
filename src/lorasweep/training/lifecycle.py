"""train(cfg) -> metrics: the run lifecycle around the loop.

    inputs' fingerprint and config hash -> lock the run directory -> reuse a completed run, or resume from its
    checkpoint (either only when trained on the same inputs), or start ->
    components (training/components.py) -> tracker -> loop (training/loop.py) -> export the adapter -> the run's record
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

from ..config.fingerprints import changes, fingerprint, with_loaded_commit
from ..config.schema import config_hash
from ..data.chat import save_chat_template
from ..errors import UserError, one_line
from ..internals import reset_accelerator_settings
from ..lora import save_adapter
from ..runs.lock import RunLock, RunLockStopped
from ..runs.metrics import is_final_metric
from ..runs.store import RunDir, RunStore, environment_record
from ..step.ranks import broadcast_from_main
from . import checkpoint as ckpt
from .components import build_components
from .loop import Callbacks, Loop
from .memory import PeakMemory, TensorPeak
from .preflight import check_config
from .resources import Resources
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

    check_config(cfg, run_root=run_dir is None)  # before any lock or file (training/preflight.py)
    inputs = fingerprint(cfg)  # the data files' and a local model's content (cached), a hub model's commit
    digest = config_hash(cfg, inputs)
    if resources is not None and resources.pack is not None:
        resources.pack.claim(digest)  # this trial's name in the pack (and one run of a config at a time)
    run = RunDir(run_dir) if run_dir else RunStore(cfg.run_root).run(digest)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1 and run.is_complete() and not force:  # ranks decide together, below
        return _reused(run, digest, _verdict(run, inputs, force))
    callbacks = callbacks or Callbacks()
    lock = (
        RunLock(run.path, cfg.trainer.lock_timeout_s, should_stop=callbacks.should_stop)
        if state.is_main_process
        else None
    )
    # Only the main rank locks; the others learn its verdict once it holds the lock (or gave up on a signal).
    try:
        with lock if lock else nullcontext():
            verdict = broadcast_from_main(state, _verdict(run, inputs, force))
            if verdict == "train":
                return _train_locked(cfg, digest, run, inputs, tracker, callbacks, resources, fresh=force)
            if verdict != "stop":  # "stop": the main rank was stopped while waiting (below)
                if lock and lock.waited_for and verdict == "reuse":
                    print(f"run {digest} was completed by {lock.waited_for} meanwhile: reusing its result", flush=True)
                return _reused(run, digest, verdict)
    except RunLockStopped as stopped:  # the main rank, on a signal while waiting: the others get "stop"
        broadcast_from_main(state, "stop")
        print(f"{stopped}", flush=True)
    return {"status": "interrupted", "config_hash": digest, "step": 0}


def _verdict(run: RunDir, inputs: dict, force: bool) -> str:
    """ "reuse", "train", or why not (one line): a completed run or a checkpoint is taken up only when it was
    trained on these inputs (inputs.json; a run filed before it was recorded is trusted). Local files are in the
    hash, so this refuses what it cannot cover: a shipped dataset or a hub model's commit that moved."""
    if force:
        return "train"
    complete = run.is_complete()
    if complete or ckpt.latest_checkpoint(run.checkpoints_dir) is not None:
        changed = changes(run.inputs(), inputs)
        if changed:
            what = "result" if complete else "checkpoint"
            return f"run {run.hash} has a {what} trained on other inputs: {'; '.join(changed)} (--force retrains it)"
    return "reuse" if complete else "train"


def _reused(run: RunDir, digest: str, verdict: str) -> dict:
    if verdict != "reuse":
        raise UserError(verdict)
    return {**run.metrics(), "status": "reused", "config_hash": digest}


def _train_locked(
    cfg, digest: str, run: RunDir, inputs: dict, tracker, callbacks: Callbacks, resources, fresh: bool
) -> dict:
    from accelerate import Accelerator

    reset_accelerator_settings()  # a worker's earlier trial may have had other settings
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    resources = resources or Resources(keep=False)
    pack = resources.pack  # packed with other trials (lorasweep/pack/): the process's memory is the pack's
    memory = pack.memory if pack is not None else PeakMemory(accelerator.device).start()
    tensors = TensorPeak(accelerator.device, enabled=pack is None)  # a pack's trials share one process's tensors
    parts = build_components(cfg, accelerator, resources)
    if main:
        env = environment_record(cfg.seed, str(accelerator.device), accelerator.num_processes)
        run.begin(cfg, env, with_loaded_commit(inputs, cfg.model))  # a first run has just downloaded it
    accelerator.wait_for_everyone()
    loop = Loop(parts.loop_cfg, accelerator, parts, run, callbacks=callbacks)
    position = _resume_or_start(run, loop, accelerator, digest, fresh)
    own_tracker = tracker is None and main
    if own_tracker:
        tracker = make_tracker(
            cfg, digest, run_id=digest, root=Path(cfg.run_root), concurrent=pack is not None, resumed=position.step > 0
        )
    loop.tracker = tracker if main else None
    status = "failed"
    try:
        try:
            with tensors.counting(parts.model, parts.optimizer):
                status = loop.run(position)
            final = _record(loop, parts.figures, memory, status, digest, pack=pack, tensors=tensors)
            if main:
                _publish(
                    cfg, run, loop, final, accelerator.unwrap_model(parts.model) if status == "completed" else None
                )
        except BaseException as exc:
            status = "failed"
            if main:  # a failed or killed run still leaves its record: how far it got and what it cost
                ending = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
                run.write_metrics(_record(loop, parts.figures, memory, ending, digest, exc, pack, tensors))
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
        save_chat_template(run.adapter_dir, cfg.data, loop.tokenizer)  # what predict renders requests with
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
    tensors: TensorPeak | None = None,
) -> dict:
    """What a run leaves in metrics.json however it ended; only status "completed" marks it complete. A packed
    run's process held other trials too: its peak is the pack's (memory/pack_peak_bytes), and `packed_with` names
    the runs it shared base matmuls with."""
    record = {
        **figures,
        **loop.final_metrics(),
        ("memory/peak_bytes" if pack is None else "memory/pack_peak_bytes"): memory.peak_bytes(),
        **(tensors.figures(memory) if tensors is not None else {}),
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
