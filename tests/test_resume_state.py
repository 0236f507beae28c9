"""What a resume carries beyond weights, optimizer, schedule, RNG and data position: fp16's loss scale
(checkpoint.scaler_state, kept in the loop's state) and the W&B run, which a resumed run continues."""

import pytest
import torch
from torch import nn

from lorasweep.config.schema import compose, config_hash
from lorasweep.runs.store import RunStore
from lorasweep.training import checkpoint as ckpt
from lorasweep.training.lifecycle import Callbacks, train

INIT_SCALE = 2.0**18


def _parts(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # Starts too high for these fp16 gradients (the first steps overflow and are skipped, halving it) and grows
    # every 2 steps: the scale after a few steps is not where a fresh scaler starts.
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=2)
    return model, optimizer, scheduler, scaler


def _steps(model, optimizer, scheduler, scaler, steps) -> None:
    for step in steps:
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
        optimizer.zero_grad()


@pytest.mark.parametrize("restored", [True, False])
def test_the_loss_scale_survives_a_checkpoint(tmp_path, restored):
    """Accelerate gives fp16 a GradScaler on CUDA only, so this runs torch's CPU GradScaler (fp16 autocast works
    on CPU) through the checkpoint functions the loop uses: 4 steps, a checkpoint, a resume into fresh objects, 4
    more steps equal 8 uninterrupted ones bitwise. Without the scale restored they do not."""
    reference = _parts(0)
    _steps(*reference, range(8))
    model, optimizer, scheduler, scaler = _parts(0)
    _steps(model, optimizer, scheduler, scaler, range(4))
    loop_state = {"scaler": ckpt.scaler_state(scaler)}
    ckpt.save_checkpoint(tmp_path, model, optimizer, scheduler, ckpt.Position(step=4), 0, True, loop_state)
    ckpt.publish_checkpoint(tmp_path, 4)
    model, optimizer, scheduler, scaler = resumed = _parts(1)
    position, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model, optimizer, scheduler, 0)
    assert position.step == 4 and state["scaler"]["scale"] != INIT_SCALE
    if restored:
        ckpt.restore_scaler(scaler, state["scaler"])
        assert scaler.state_dict() == loop_state["scaler"]
    _steps(*resumed, range(4, 8))
    same = all(torch.equal(a, b) for a, b in zip(model.parameters(), reference[0].parameters()))
    assert same == restored
    if restored:
        assert scaler.state_dict() == reference[3].state_dict()


def test_no_scaler_saves_nothing_and_restores_nothing():
    """bf16, fp32 and CPU runs have no scaler (accelerator.scaler is None); an older checkpoint has no entry."""
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert ckpt.scaler_state(None) is None
    ckpt.restore_scaler(None, {"scale": 2.0})
    ckpt.restore_scaler(scaler, None)
    assert scaler.state_dict()["scale"] == 8.0


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    """Interrupted after step 3 (should_stop, as a signal does), then resumed: the offline W&B files read back
    are one run id, the second marked resumed, and the history continues at step 4 without a gap or a repeat."""
    from wandb_reader import find_runs, read_run, records

    overrides = ["trainer=smoke", "model=tiny_llama", "data.max_train_examples=32", "data.max_eval_examples=8"]
    overrides += ["data.max_length=24", "tracking=wandb", "tracking.mode=offline", "trainer.log_every=1"]
    overrides += ["trainer.max_steps=6", "trainer.eval_every=2", "trainer.batch_size=8", f"run_root={tmp_path}"]
    cfg = compose(overrides)
    asked = []

    def stop_after_step_3() -> bool:  # asked once a step
        asked.append(True)
        return len(asked) >= 3

    assert train(cfg, callbacks=Callbacks(should_stop=stop_after_step_3))["step"] == 3
    assert train(cfg)["status"] == "completed"
    files = find_runs(tmp_path)
    assert len(files) == 2  # offline, each process writes its own file; `wandb sync` appends the second
    runs, resumed = zip(*sorted(((read_run(f), _resume_flag(records(f))) for f in files), key=_first_step))
    digest = config_hash(cfg)
    assert {r.run_id for r in runs} == {digest} and resumed == (False, True)
    assert [h["_step"] for r in runs for h in r.history] == [1, 2, 3, 4, 5, 6]
    stored = [h["train/loss"] for h in RunStore(tmp_path).run(digest).history() if "train/loss" in h]
    assert [h["train/loss"] for r in runs for h in r.history] == stored
    assert runs[1].exit_code == 0 and "eval/loss" in runs[1].summary


def _resume_flag(records) -> bool:
    """The run record's `resume`: set when wandb.init was told resume="allow" and continues a run id."""
    return next(r.run.resume for r in records if r.WhichOneof("record_type") == "run")


def _first_step(pair) -> int:
    return pair[0].history[0]["_step"]
