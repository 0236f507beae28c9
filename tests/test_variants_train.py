"""DoRA, LoRA+ and PiSSA through train(): the run's record, resume from a checkpoint equal to an uninterrupted
run, and the run's adapter loading in peft on the untouched base with the trained model's logits."""

import json

import torch

from lorasweep.config.schema import compose
from lorasweep.runs.metrics import deterministic_metrics
from lorasweep.runs.store import RunStore
from lorasweep.training.lifecycle import Callbacks, train

SMALL = [
    "trainer=smoke",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    "data.max_length=32",
    "tracking=none",
    "model=tiny_llama",
    "data=synth_sft",
    "lora.rank=4",
]
VARIANTS = [
    "lora.dora=true",
    "lora.init=pissa_niter_2",
    "optim.lora_plus_ratio=16",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=2",
    "trainer.eval_every=3",
]


def _cfg(tmp_path, *overrides):
    return compose([*SMALL, f"run_root={tmp_path / 'runs'}", *overrides])


def test_dora_pissa_lora_plus_run_resumes_exactly_and_its_adapter_loads_in_peft(tmp_path):
    from peft import PeftModel

    from lorasweep.training.resources import Resources

    reference = train(_cfg(tmp_path / "ref", *VARIANTS))
    assert reference["status"] == "completed"
    # q and v of 2 layers: A (4x64), B (rows x 4) and one magnitude per row, all trained
    rows = 64 + 32  # q_proj and v_proj outputs of the tiny Llama (GQA: v is half of q)
    assert reference["params/lora"] == 2 * (2 * 4 * 64 + 4 * rows + rows)
    cfg = _cfg(tmp_path / "resumed", *VARIANTS)
    steps = iter(range(100))
    assert train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 2))["status"] == "interrupted"
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert deterministic_metrics(resumed) == deterministic_metrics(reference)

    adapter = RunStore(cfg.run_root).run(resumed["config_hash"]).adapter_dir
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 8  # PiSSA written as rank 2r on the untouched base
    base, tokenizer = Resources(keep=False).model(cfg)
    ids = torch.randint(3, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        untouched = base(ids).logits
        theirs = PeftModel.from_pretrained(base, adapter).eval()(ids).logits
    trained, _ = Resources(keep=False).model(cfg)
    from lorasweep.lora import load_adapter

    load_adapter(trained, adapter)
    with torch.no_grad():
        ours = trained.eval()(ids).logits
    assert (ours - untouched).abs().max() > 1e-4  # six steps moved the model
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
