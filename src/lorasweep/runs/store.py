"""runs/<config hash>/: everything needed to find, compare and rerun a run.

    config.yaml     the resolved config (what `reproduce` recomposes)
    env.json        python/torch/transformers/lorasweep versions, git commit, device, seed
    inputs.json     what it was trained on: its data files' and local model files' sha256, a hub model's commit
                    (config/fingerprints.py); reuse and resume check it
    history.jsonl   one JSON object per logged step (and {"event": "resume", ...} markers)
    metrics.json    the run's record however it ended: "status" (completed | pruned | interrupted | failed), the
                    step it reached, its last evaluation, params and memory figures; complete = "completed"
    adapter/        the LoRA adapter in peft's format
    checkpoints/    step_<N>/ when trainer.checkpoint_every > 0 or a run is interrupted (resume); the newest two
runs/.locks/<hash>.lock is held (flock) by the one process training the run; .locks/<hash>.holder says who
(runs/lock.py).
Every file but history.jsonl is written atomically, so an interrupted write never leaves half a file;
history.jsonl is appended a line at a time and rewritten atomically on resume.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..fileio import atomic_write_json, atomic_write_text


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def hash(self) -> str:
        return self.path.name

    config_file = property(lambda self: self.path / "config.yaml")
    metrics_file = property(lambda self: self.path / "metrics.json")
    history_file = property(lambda self: self.path / "history.jsonl")
    env_file = property(lambda self: self.path / "env.json")
    inputs_file = property(lambda self: self.path / "inputs.json")
    adapter_dir = property(lambda self: self.path / "adapter")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")

    def is_complete(self) -> bool:
        return self.status() == "completed"

    def status(self) -> str:
        """The recorded ending, or "incomplete" for a run with no record (running, or killed outright)."""
        record = self.record()
        return record.get("status", "completed") if record else "incomplete"

    def record(self) -> dict:
        """metrics.json whatever the run's ending; {} when there is none (or it cannot be read: no proof of
        anything)."""
        try:
            record = self.metrics() if self.metrics_file.is_file() else {}
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def metrics(self) -> dict:
        return json.loads(self.metrics_file.read_text())

    def config(self) -> DictConfig:
        if not self.config_file.is_file():
            raise UserError(f"run directory {self.path} has no config.yaml")
        return OmegaConf.load(self.config_file)

    def history(self) -> list[dict]:
        """The logged records in order; a line that is not a JSON object (torn by a kill mid-append) is skipped."""
        try:
            lines = self.history_file.read_text().splitlines()
        except OSError:
            return []
        return [r for r in map(_json_object, lines) if r is not None]

    def write_history(self, records: list[dict]) -> None:
        atomic_write_text(self.history_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def append_history(self, record: dict) -> None:
        # Appending one line is atomic enough for a log; the file is rewritten atomically on resume.
        with open(self.history_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def begin(self, cfg: DictConfig, env: dict, inputs: dict | None = None) -> "RunDir":
        """Create (or reopen, for a resume) the directory and record the config, environment and inputs."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(self.env_file, env)
        if inputs is not None:
            atomic_write_json(self.inputs_file, inputs)
        return self

    def env(self) -> dict:
        return json.loads(self.env_file.read_text()) if self.env_file.is_file() else {}

    def inputs(self) -> dict:
        """The recorded input fingerprints; {} for a run filed before they were recorded."""
        return json.loads(self.inputs_file.read_text()) if self.inputs_file.is_file() else {}

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics_file, metrics)


def _json_object(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run(self, config_hash: str) -> RunDir:
        return RunDir(self.root / config_hash)

    def find(self, prefix: str) -> RunDir:
        """The run whose hash starts with `prefix`; ValueError naming the candidates if none or several."""
        if not prefix or not all(c in "0123456789abcdef" for c in prefix.lower()):
            raise UserError(f"{prefix!r} is not a config hash (hex digits)")
        candidates = [RunDir(p) for p in sorted(self.root.iterdir()) if p.is_dir()] if self.root.is_dir() else []
        matches = [r for r in candidates if r.hash.startswith(prefix.lower())]
        if not matches:
            raise UserError(f"no run with hash {prefix!r} in {self.root}")
        if len(matches) > 1:
            raise UserError(f"hash prefix {prefix!r} is ambiguous: {', '.join(r.hash for r in matches)}")
        if not matches[0].config_file.is_file():
            raise UserError(f"run directory {matches[0].path} has no config.yaml")
        return matches[0]

    def runs(self) -> list[RunDir]:
        if not self.root.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.root.iterdir()) if (p / "config.yaml").is_file()]


def environment_record(seed: int, device: str, num_processes: int) -> dict:
    import torch
    import transformers

    from .. import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lorasweep": __version__,
        "git_commit": _git_commit(),
        "device": device,
        "num_processes": num_processes,
        "platform": platform.platform(),
        "seed": seed,
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
