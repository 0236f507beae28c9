"""Training checkpoints: trainable weights, optimizer, scheduler, every RNG, the data position, and (fp16) the
loss scaler's state (carried in the loop's state: `scaler_state`, `restore_scaler`).

Only trainable tensors are saved (LoRA A/B and the head), not the frozen base: a checkpoint of a Llama-8B run
is megabytes, not 16 GB. A checkpoint directory appears only once complete (written to a temp dir, renamed),
so resume never reads half a checkpoint; the newest two are kept.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..fileio import publish_directory

KEEP = 2
EXAMPLES, MICRO_BATCHES = "examples", "micro_batches"  # what Position.batch counts; checkpoints before the unit
# was saved counted micro-batches


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # examples (of the global batch, all processes) consumed in this epoch: any micro batch resumes
    unit: str = EXAMPLES


def in_examples(position: Position, n_examples: int, global_batch: int) -> Position:
    """`position` counting examples. An older checkpoint counted micro-batches of a micro batch it did not save;
    its examples follow from its step, since every epoch before the current one ran all n // global_batch steps.
    """
    if position.unit == EXAMPLES:
        return position
    per_epoch = n_examples // global_batch
    done = position.step - position.epoch * per_epoch  # steps taken in the current epoch
    if position.unit != MICRO_BATCHES or not 0 <= done <= per_epoch or (position.batch == 0) != (done == 0):
        raise UserError(
            f"checkpoint position {position} does not fit {n_examples} examples in batches of {global_batch}: "
            "start over with --force"
        )
    return Position(position.step, position.epoch, done * global_batch)


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def scaler_state(scaler) -> dict | None:
    """fp16's GradScaler (accelerator.scaler): its scale and growth tracker, or None without one (bf16, fp32, CPU).
    A resumed fp16 run that started over at the initial scale would skip steps an uninterrupted run takes."""
    return scaler.state_dict() if scaler is not None else None


def restore_scaler(scaler, state: dict | None) -> None:
    """What `scaler_state` saved; nothing from a checkpoint without it (older, or saved where fp16 had no scaler)."""
    if scaler is not None and state:
        scaler.load_state_dict(state)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: Path,
    model,
    optimizer,
    scheduler,
    position: Position,
    process_index: int,
    is_main: bool,
    loop_state: dict,
) -> None:
    """Every process writes its own RNG state; the main process writes the rest and publishes the dir."""
    tmp = directory / f".step_{position.step:08d}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(capture_rng(), tmp / f"rng_{process_index}.pt")
    if is_main:
        torch.save(
            {
                "model": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "position": asdict(position),
                "loop": loop_state,
            },
            tmp / "state.pt",
        )


def publish_checkpoint(directory: Path, step: int) -> None:
    """Main process, after every process has written: make the checkpoint visible, drop old ones."""
    publish_directory(directory / f".step_{step:08d}.tmp", directory / f"step_{step:08d}")
    for old in sorted(directory.glob("step_*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob("step_*") if (p / "state.pt").is_file()) if directory.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler, process_index: int) -> tuple[Position, dict]:
    state = torch.load(path / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_{process_index}.pt"
    if rng_file.is_file():
        restore_rng(torch.load(rng_file, weights_only=False))
    return Position(**{"unit": MICRO_BATCHES, **state["position"]}), state["loop"]
