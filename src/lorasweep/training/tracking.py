"""Experiment tracking behind one small interface: W&B (offline by default) or nothing.

Only the main process creates a tracker. Names logged (dashboards and tests rely on them):
  each log step   train/loss, train/lr, perf/tokens_per_s, perf/step_time_s
  each eval       eval/loss (+ eval/accuracy for classification)
  summary         params/trainable, params/total, params/trainable_fraction,
                  memory/optimizer_state_bytes, memory/peak_bytes, and the final eval metrics
The W&B API key is read by wandb from its usual places; lorasweep never writes it anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from ..lora.targets import targets_label


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    def log(self, metrics, step):
        pass

    def summary(self, metrics):
        pass

    def finish(self, exit_code=0):
        pass


def flat_config(cfg: DictConfig, config_hash: str) -> dict[str, Any]:
    """Dotted keys (lora.rank, optim.lr, …) so W&B's grouping and parallel-coordinates panels work as is."""
    from ..config.schema import flatten

    flat: dict[str, Any] = {"config_hash": config_hash, **flatten(cfg)}
    flat["lora.targets"] = targets_label(cfg.lora.targets)  # one categorical value for W&B's panels
    flat["model"], flat["data"] = cfg.model.name, cfg.data.name
    return flat


class WandbTracker:
    def __init__(
        self, cfg: DictConfig, config_hash: str, run_id: str, root: Path, concurrent: bool = False, resumed=False
    ):
        import wandb

        tracking = cfg.tracking
        directory = Path(tracking.dir or root)
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            project=tracking.project,
            entity=tracking.entity,
            mode=tracking.mode,
            dir=str(directory),
            id=run_id,
            name=run_id,
            group=cfg.sweep,
            job_type="sweep-trial" if cfg.sweep else "train",
            tags=[*tracking.tags, cfg.model.name, cfg.data.name, f"targets={targets_label(cfg.lora.targets)}"],
            config=flat_config(cfg, config_hash),
            reinit="create_new" if concurrent else "finish_previous",
            # A run resumed from its checkpoint continues its W&B run (same id, history after the checkpoint's
            # step); a run started over (a first start, --force) must not append to an old run of that id.
            resume="allow" if resumed else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    # Tracking never ends a run: SLURM signals every process of a job, W&B's service among them, so on a
    # preemption the service can die before the trainer checkpoints. The run store keeps the full history anyway.
    def log(self, metrics, step):
        self._guarded(lambda: self.run.log(dict(metrics), step=step))

    def summary(self, metrics):
        def update():
            for key, value in metrics.items():
                self.run.summary[key] = value

        self._guarded(update)

    def finish(self, exit_code=0):
        self._guarded(lambda: self.run.finish(exit_code=exit_code))

    def _guarded(self, call) -> None:
        if self.run is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see above
            print(
                f"W&B tracking stopped ({type(exc).__name__}: {exc}); training goes on, the run store keeps "
                "its history",
                flush=True,
            )
            self.run = None


def make_tracker(
    cfg: DictConfig, config_hash: str, run_id: str, root: Path, concurrent: bool = False, resumed: bool = False
) -> Tracker:
    """concurrent: other runs of this process stay open meanwhile (a pack's trials), each its own W&B run.
    resumed: the run continues from a checkpoint, so it continues its W&B run too."""
    if cfg.tracking.backend == "none" or cfg.tracking.mode == "disabled":
        return NullTracker()
    return WandbTracker(cfg, config_hash, run_id, root, concurrent, resumed)
