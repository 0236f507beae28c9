"""A step's loss is the mean over all of its items (a causal LM's target tokens, or examples), however the global
batch is split: into micro-batches (trainer.micro_batch, grad_accum), over processes, or across a resume with
another micro batch. The SFT examples differ in length, so a mean of micro-batch means would differ (by ~3e-4 of
the eval loss here, before this was fixed)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lorasweep.config.schema import compose
from lorasweep.errors import UserError
from lorasweep.runs.metrics import deterministic_metrics
from lorasweep.runs.store import RunStore
from lorasweep.training.checkpoint import MICRO_BATCHES, Position, in_examples, latest_checkpoint
from lorasweep.training.lifecycle import Callbacks, train
from lorasweep.training.loop import item_count

REL = 1e-5
SFT = [
    "model=tiny_llama",
    "data=synth_sft",
    "trainer.batch_size=8",
    "trainer.max_steps=20",
    "optim.lr=5e-3",
    "data.max_train_examples=96",  # 12 steps an epoch: 20 steps cross into the second
    "data.max_eval_examples=48",
    "tracking=none",
    "trainer.progress=false",
    "trainer.predict_memory=false",
    "trainer.eval_at_start=true",
]  # no dropout (tiny_llama's and lora's are 0): its masks would depend on the split


def _sft(root, *overrides):
    return compose([*SFT, *overrides, f"run_root={root}"])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The reference: one micro-batch of 8 on one process."""
    return train(_sft(tmp_path_factory.mktemp("whole"), "trainer.micro_batch=8"))


def test_item_count_is_target_tokens_or_examples():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100], [8, -100, -100, -100]])
    assert item_count(labels, "causal_lm") == 3  # the first label is never a target (the loss shifts by one)
    assert item_count(torch.tensor([0, 1, 1]), "classification") == 3


def test_micro_batch_changes_neither_the_hash_nor_the_result(whole, tmp_path):
    for micro in (2, 1):
        split = train(_sft(tmp_path / str(micro), f"trainer.micro_batch={micro}"))
        assert split["config_hash"] == whole["config_hash"]
        assert split["eval/loss"] == pytest.approx(whole["eval/loss"], rel=REL)
        assert split["train/loss"] == pytest.approx(whole["train/loss"], rel=REL)  # the logged loss: the same mean
    assert whole["eval/loss"] < whole["eval/initial_loss"] - 0.2  # it learnt: a split changes a real update


def test_classification_with_grad_accum_equals_one_pass(tmp_path):
    common = [
        "model=tiny_llama",
        "data=synth_sentiment",
        "trainer.batch_size=8",
        "trainer.max_steps=20",
        "optim.lr=5e-3",
        "data.max_train_examples=96",
        "data.max_eval_examples=48",
        "data.max_length=32",
        "tracking=none",
        "trainer.progress=false",
        "trainer.predict_memory=false",
    ]
    one = train(compose([*common, f"run_root={tmp_path / 'one'}"]))
    accumulated = train(compose([*common, "trainer.grad_accum=4", f"run_root={tmp_path / 'four'}"]))
    assert accumulated["eval/loss"] == pytest.approx(one["eval/loss"], rel=REL)
    assert accumulated["eval/accuracy"] == one["eval/accuracy"]
    assert accumulated["train/loss"] == pytest.approx(one["train/loss"], rel=REL)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two copies of a run stopped (and checkpointed) after 14 steps at micro batch 4: 2 steps into the second
    epoch, one for each test. Returns a function: copy i -> (its run_root, its RunDir)."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    cfg = _sft(tmp_path / "0", "trainer.micro_batch=4")
    steps = iter(range(10_000))
    stopped = train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 13))
    assert stopped["status"] == "interrupted" and stopped["step"] == 14
    shutil.copytree(tmp_path / "0", tmp_path / "1")
    return lambda i: (tmp_path / str(i), RunStore(tmp_path / str(i)).run(stopped["config_hash"]))


def _assert_continues(resumed, whole, run):
    assert resumed["status"] == "completed" and resumed["config_hash"] == whole["config_hash"]
    expected = {k: v for k, v in deterministic_metrics(whole).items() if k != "trainer/micro_batch"}
    assert {k: resumed[k] for k in expected} == pytest.approx(expected, rel=REL)
    assert [h for h in run.history() if h.get("event") == "resume"] == [{"event": "resume", "step": 14}]


def test_resume_with_another_micro_batch_continues_exactly(whole, interrupted):
    root, run = interrupted(0)
    state = torch.load(latest_checkpoint(run.checkpoints_dir) / "state.pt", weights_only=False)
    assert state["position"] == {"step": 14, "epoch": 1, "batch": 16, "unit": "examples"}
    _assert_continues(train(_sft(root, "trainer.micro_batch=1")), whole, run)


def test_a_checkpoint_counting_micro_batches_resumes_at_the_same_example(whole, interrupted):
    """Checkpoints before the position counted examples held the micro-batches consumed in the epoch (no unit)."""
    root, run = interrupted(1)
    state_file = latest_checkpoint(run.checkpoints_dir) / "state.pt"
    state = torch.load(state_file, weights_only=False)
    state["position"] = {"step": 14, "epoch": 1, "batch": 4}  # 2 steps of 2 micro-batches of 4, as saved before
    torch.save(state, state_file)
    _assert_continues(train(_sft(root, "trainer.micro_batch=2")), whole, run)


def test_an_old_position_that_does_not_fit_the_data_is_refused():
    legacy = Position(step=14, epoch=1, batch=4, unit=MICRO_BATCHES)
    assert in_examples(legacy, 96, 8) == Position(14, 1, 16)
    assert in_examples(Position(5, 0, 40), 96, 8) == Position(5, 0, 40)  # already examples: as it is
    with pytest.raises(UserError, match="does not fit 40 examples in batches of 8"):
        in_examples(legacy, 40, 8)  # 5 steps an epoch: step 14 cannot be in the second


@pytest.mark.slow
def test_two_processes_with_accumulation_match_one_pass(whole, tmp_path):
    """2 processes x 2 micro-batches of 2 examples each (trainer.micro_batch=4 over both) vs 1 x 8."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    command += ["-m", "lorasweep.cli", "train", *SFT, "trainer.micro_batch=4", f"run_root={tmp_path}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / whole["config_hash"]
    assert json.loads((run / "env.json").read_text())["num_processes"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval/loss"] == pytest.approx(whole["eval/loss"], rel=REL)
    assert metrics["train/loss"] == pytest.approx(whole["train/loss"], rel=REL)


def test_the_measured_defect_through_the_command_line(tmp_path, capsys):
    """Issue 25's measurement as a user makes it: micro batch 8, 2 and 1 print one hash and one eval loss."""
    from lorasweep.cli.main import main

    printed = []
    for micro in (8, 2, 1):
        command = ["train", "model=tiny_llama", "data=synth_sft", "trainer.batch_size=8", "trainer.max_steps=20",
                   "optim.lr=5e-3", f"trainer.micro_batch={micro}", "tracking=none", "trainer.progress=false",
                   "data.max_eval_examples=48", f"run_root={tmp_path / str(micro)}"]  # fmt: skip
        assert main(command) == 0
        lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
        digest = lines["config hash"].strip()
        record = json.loads((tmp_path / str(micro) / digest / "metrics.json").read_text())  # the printed one, exact
        printed.append((digest, record["eval/loss"]))
    assert len({h for h, _ in printed}) == 1
    losses = [loss for _, loss in printed]
    assert max(losses) - min(losses) <= REL * losses[0]
