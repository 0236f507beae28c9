"""Two CPU processes (torchrun, gloo) compute what one process computes at the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from lorasweep.config.schema import compose
from lorasweep.training.lifecycle import train

OVERRIDES = [
    "trainer=smoke",
    "trainer.max_steps=4",
    "trainer.batch_size=8",
    "data.max_train_examples=64",
    "data.max_eval_examples=48",
    "data.max_length=32",
    "tracking=none",
    "lora.dropout=0.0",
    "model.dropout=0.0",
]  # dropout masks are drawn per process: equal only without dropout


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = train(compose([*OVERRIDES, f"run_root={tmp_path / 'one'}"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "lorasweep.cli",
        "train",
        *OVERRIDES,
        f"run_root={tmp_path / 'two'}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "two" / single["config_hash"] / "metrics.json").read_text())
    assert json.loads((tmp_path / "two" / single["config_hash"] / "env.json").read_text())["num_processes"] == 2
    assert metrics["eval/loss"] == pytest.approx(single["eval/loss"], abs=1e-5)
    assert metrics["eval/accuracy"] == single["eval/accuracy"]
    assert metrics["params/trainable"] == single["params/trainable"]
