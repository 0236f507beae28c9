"""QLoRA and 8-bit optimizer state through train(): the memory account in every run, reproducibility, resume,
peft loading of the exported adapter, and one-line errors that leave nothing in the run store."""

import json

import pytest
import torch

pytest.importorskip("bitsandbytes")

from lorasweep.cli.main import main  # noqa: E402
from lorasweep.config.schema import compose, config_hash, semantic_config  # noqa: E402
from lorasweep.runs.metrics import deterministic_metrics  # noqa: E402
from lorasweep.runs.store import RunStore  # noqa: E402
from lorasweep.training.lifecycle import Callbacks, train  # noqa: E402

SMALL = [
    "trainer=smoke",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    "data.max_length=32",
    "tracking=none",
]
QLORA = [
    "model=tiny_llama",
    "data=synth_sft",
    "lora=all",
    "model.quantization=nf4",
    "model.double_quant=true",
    "optim.name=adamw8bit",
    "optim.min_8bit_size=0",
]
MEMORY_KEYS = (
    "memory/base_weights_bytes",
    "memory/trainable_bytes",
    "memory/gradient_bytes",
    "memory/optimizer_state_bytes",
    "memory/peak_bytes",
)


def _cfg(tmp_path, *overrides):
    return compose([*SMALL, f"run_root={tmp_path / 'runs'}", *overrides])


def test_qlora_run_records_its_memory_account_and_reproduces_bitwise(tmp_path, capsys):
    cfg = _cfg(tmp_path / "a", *QLORA)
    first = train(cfg)
    assert first["status"] == "completed" and torch.isfinite(torch.tensor(first["eval/loss"]))
    stored = RunStore(cfg.run_root).run(first["config_hash"]).metrics()
    for key in MEMORY_KEYS:
        assert stored[key] > 0 and first[key] == stored[key], key
    assert stored["memory/gradient_bytes"] == stored["memory/trainable_bytes"] == 4 * stored["params/trainable"]
    # 8-bit state: two uint8 moments per trainable parameter plus absmax every 256 and the two code books
    assert stored["memory/optimizer_state_bytes"] < 2.2 * stored["params/trainable"] + 2 * 1024 + 64 * 28
    capsys.readouterr()
    assert main(["reproduce", first["config_hash"][:7], "--run-root", str(cfg.run_root)]) == 0
    assert "all metrics bitwise equal" in capsys.readouterr().out
    rerun = json.loads(
        (tmp_path / "a" / "runs" / first["config_hash"] / "reproductions" / "1" / "metrics.json").read_text()
    )
    assert deterministic_metrics(rerun) == deterministic_metrics(first) and rerun["eval/loss"] == first["eval/loss"]


def test_quantization_and_optimizer_are_in_the_hash_and_defaults_keep_old_hashes():
    base = compose(["tracking=none"])
    assert "quantization" not in json.dumps(semantic_config(base))  # so every run filed before keeps its hash
    hashes = {
        config_hash(compose(["tracking=none", *o]))
        for o in (
            [],
            ["model.quantization=nf4"],
            ["model.quantization=int8"],
            ["optim.name=adamw8bit"],
            ["model.quantization=nf4", "model.double_quant=true"],
        )
    }
    assert len(hashes) == 5


def test_every_run_has_the_memory_account(tmp_path):
    metrics = train(_cfg(tmp_path))  # the default: MiniLM, no quantization, torch AdamW
    for key in MEMORY_KEYS:
        assert metrics[key] > 0, key
    # two fp32 moments per trainable parameter and a step scalar per tensor (q, v A and B in 6 layers; the head)
    assert metrics["memory/optimizer_state_bytes"] == 2 * 4 * metrics["params/trainable"] + 4 * (6 * 2 * 2 + 2)


def test_resume_with_8bit_state_equals_uninterrupted_run(tmp_path):
    overrides = (*QLORA, "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.eval_every=3")
    reference = train(_cfg(tmp_path / "ref", *overrides))
    cfg = _cfg(tmp_path / "resumed", *overrides)
    steps = iter(range(100))
    assert train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 2))["status"] == "interrupted"
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert deterministic_metrics(resumed) == deterministic_metrics(reference)


def test_adapter_of_a_qlora_run_loads_in_peft_onto_the_same_quantized_base(tmp_path):
    from peft import PeftModel

    from lorasweep.lora import load_adapter
    from lorasweep.training.resources import Resources

    cfg = _cfg(tmp_path, "model.quantization=nf4", "lora=all")
    metrics = train(cfg)
    adapter = RunStore(cfg.run_root).run(metrics["config_hash"]).adapter_dir
    theirs_base, tokenizer = Resources(keep=False).model(cfg)  # the same quantized base, built again
    ours, _ = Resources(keep=False).model(cfg)
    load_adapter(ours, adapter)
    theirs = PeftModel.from_pretrained(theirs_base, adapter).eval()
    batch = dict(tokenizer(["a fine film", "a dull evening"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(**batch).logits, theirs(**batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.quantization=nf4"], "model.quantization=nf4 needs bitsandbytes, which is not installed"),
        (["optim.name=adamw8bit"], "optim.name=adamw8bit needs bitsandbytes, which is not installed"),
        (["model=tiny_gpt2", "model.quantization=nf4"], "not supported for gpt2"),
        (["model.quantization=fp8"], "model.quantization must be one of none, nf4, fp4, int8"),
        (["model.double_quant=true"], "model.double_quant applies to model.quantization=nf4|fp4 only"),
        (["model.quantization=int8", "model.compute_dtype=bfloat16"], "model.compute_dtype applies to"),
        (["optim.name=sgd"], "optim.name must be one of adamw, adamw8bit, paged_adamw8bit"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, overrides, message):
    if "needs bitsandbytes" in message:
        import lorasweep.model.bitsandbytes_check

        monkeypatch.setattr(lorasweep.model.bitsandbytes_check, "bitsandbytes_available", lambda: False)
    runs = tmp_path / "runs"
    code = main(["train", *SMALL, f"run_root={runs}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lorasweep: error: ") and message in err, err
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


def test_bf16_and_gradient_checkpointing_on_a_4bit_base_through_train(tmp_path):
    from safetensors.torch import load_file

    fp32 = train(_cfg(tmp_path / "fp32", *QLORA, "trainer.max_steps=6", "trainer.eval_every=3"))
    cfg = _cfg(
        tmp_path,
        *QLORA,
        "model.compute_dtype=bfloat16",
        "trainer.mixed_precision=bf16",
        "trainer.gradient_checkpointing=true",
        "trainer.max_steps=6",
        "trainer.eval_every=3",
    )
    metrics = train(cfg)
    assert metrics["status"] == "completed" and abs(metrics["eval/loss"] - fp32["eval/loss"]) < 0.05
    run = RunStore(cfg.run_root).run(metrics["config_hash"])
    losses = [h["train/loss"] for h in run.history() if "train/loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))  # (decreasing: test_precision_memory)
    tensors = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}


def test_memory_pareto_spec_validates():
    from pathlib import Path

    from lorasweep.sweep.spec import load_spec, validate_against_config

    spec = load_spec(Path(__file__).resolve().parents[1] / "sweeps" / "memory_pareto.yaml")
    validate_against_config(spec, [])  # every searched key exists, both objectives are reported metrics
    assert [o.metric for o in spec.objectives] == ["eval/loss", "memory/peak_bytes"]
    assert {p.key for p in spec.params} == {"lora.rank", "lora.targets", "model.quantization", "optim.name"}
