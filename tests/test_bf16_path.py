"""A bf16 base, as transformers 5 loads a bf16 checkpoint (issue 26): LoRA, DoRA's magnitude and the trained head
in float32 with float32 gradients and Adam state, through the CLI, resume and export (peft loads it); and
mixed-adapter serving on bf16, 4-bit computing in bf16, and int8 bases."""

import copy
import importlib.util
import json

import pytest
import torch
from chat_models import save_chat_model
from conftest import randomize_lora, tiny
from peft import PeftModel
from safetensors import safe_open

from lorasweep.cli.main import main
from lorasweep.config.schema import compose, config_hash
from lorasweep.lora import apply_lora, load_adapter, load_adapters, save_adapter
from lorasweep.model.load import load_pretrained
from lorasweep.runs.store import RunStore
from lorasweep.training.lifecycle import Callbacks, train

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
RUN = ["data=synth_sft", "trainer=smoke", "data.max_train_examples=32", "data.max_eval_examples=8"]
RUN += ["data.max_length=32", "lora=all", "lora.rank=4", "tracking=none", "trainer.checkpoint_every=2"]


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return save_chat_model(tmp_path_factory.mktemp("bf16") / "model", "chatml", dtype=torch.bfloat16)


def _overrides(model_dir, runs, *extra):
    return [
        "model.source=pretrained",
        f"model.name_or_path={model_dir}",
        "model.name=bf16_chat",
        *RUN,
        f"run_root={runs}",
        *extra,
    ]


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_a_bf16_checkpoint_trains_float32_adapters_through_the_cli(bf16_dir, tmp_path):
    """The measured failure: memory/trainable_bytes was 2 x params/trainable (bf16 A and B, bf16 Adam state)."""
    runs = tmp_path / "runs"
    assert main(["train", *_overrides(bf16_dir, runs)]) == 0
    run = RunStore(runs).run(config_hash(compose(_overrides(bf16_dir, runs))))
    metrics = run.metrics()
    assert metrics["status"] == "completed"
    trainable = metrics["params/trainable"]
    assert metrics["memory/trainable_bytes"] == metrics["memory/gradient_bytes"] == 4 * trainable
    # AdamW: two float32 moments per weight (and a step counter per tensor)
    assert 8 * trainable <= metrics["memory/optimizer_state_bytes"] < 8 * trainable + 4096
    frozen = metrics["params/total"] - trainable
    assert metrics["memory/base_weights_bytes"] < 2.1 * frozen  # the base stayed bf16
    with safe_open(str(run.adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    (checkpoint,) = sorted(run.checkpoints_dir.glob("step_*"))[-1:]
    state = torch.load(checkpoint / "state.pt", weights_only=False)
    assert {t.dtype for t in state["model"].values()} == {torch.float32}
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k.startswith("exp_avg")]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_resume_keeps_float32_and_equals_the_uninterrupted_run(bf16_dir, tmp_path):
    reference = train(compose(_overrides(bf16_dir, tmp_path / "ref")))
    cfg = compose(_overrides(bf16_dir, tmp_path / "resumed"))
    steps = iter(range(100))
    interrupted = train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 1))  # checkpointed at step 2
    assert interrupted["status"] == "interrupted"
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert resumed["memory/trainable_bytes"] == 4 * resumed["params/trainable"]
    for key in ("train/loss", "eval/loss", "memory/trainable_bytes", "memory/optimizer_state_bytes"):
        assert resumed[key] == reference[key], key


def test_the_export_loads_in_peft_with_the_same_outputs(bf16_dir, tmp_path):
    """peft keeps the loaded adapter in float32 (autocast_adapter_dtype) on the bf16 base and computes what
    lorasweep does: on the bf16 base within bf16 rounding, on a float32 copy of it to float32 rounding."""
    model = load_pretrained(bf16_dir, "causal_lm").eval()
    assert model.dtype == torch.bfloat16
    apply_lora(model, "all", rank=4, alpha=8)
    randomize_lora(model, std=0.1)
    assert {p.dtype for p in _trainable(model).values()} == {torch.float32}
    save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids).logits.float()
    peft_model = PeftModel.from_pretrained(load_pretrained(bf16_dir, "causal_lm"), str(tmp_path / "adapter")).eval()
    assert {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n} == {torch.float32}
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits.float()
    bare = load_pretrained(bf16_dir, "causal_lm").eval()
    with torch.no_grad():
        base = bare(input_ids=ids).logits.float()
    assert (ours - base).abs().max() > 0.1  # the adapter changes the outputs well beyond bf16 rounding
    torch.testing.assert_close(theirs, ours, rtol=0.02, atol=0.03)
    wide = [load_pretrained(bf16_dir, "causal_lm").float().eval() for _ in range(2)]
    load_adapter(wide[0], tmp_path / "adapter")
    peft_wide = PeftModel.from_pretrained(wide[1], str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(wide[0](input_ids=ids).logits, peft_wide(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_dora_magnitude_and_a_trained_head_are_float32_on_a_bf16_base():
    """A classifier head (modules_to_save) and DoRA's magnitude: float32 parameters, gradients and AdamW state; the
    head's output keeps the model's dtype (a Llama score layer gives bf16 logits, as before)."""
    model = tiny("llama", task="classification").to(torch.bfloat16).train()
    apply_lora(model, "qv", rank=4, alpha=8, modules_to_save=["score"], dora=True)
    trained = _trainable(model)
    assert any("lora_magnitude" in n for n in trained) and any(n.startswith("score") for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-3)
    ids = torch.randint(0, 512, (4, 10))
    for _ in range(2):
        logits = model(input_ids=ids).logits
        assert logits.dtype == torch.bfloat16
        torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 0, 1])).backward()
        assert {p.grad.dtype for p in trained.values()} == {torch.float32}
        optimizer.step()
        optimizer.zero_grad()
    assert {t.dtype for s in optimizer.state.values() for k, t in s.items() if k != "step"} == {torch.float32}


def _serving_base(bf16_dir, quantization):
    from lorasweep.model.quantize import quantize_model

    base = load_pretrained(bf16_dir, "causal_lm").eval()
    if quantization == "nf4":
        quantize_model(base, "nf4", compute_dtype="bfloat16")
    elif quantization == "int8":
        quantize_model(base, "int8")
    return base


@pytest.mark.parametrize("quantization", ["none", *(pytest.param(q, marks=needs_bnb) for q in ("nf4", "int8"))])
def test_mixed_adapter_batches_on_low_precision_bases(bf16_dir, tmp_path, quantization):
    """The measured failure: a 4-bit base computing in bf16 crashed in multi.py's bmm ("expected scalar type Float
    but found BFloat16"). Each row of a mixed batch equals its adapter alone through LoraLayer, to bf16 rounding,
    in the base's own dtype."""
    base = _serving_base(bf16_dir, quantization)
    ids = torch.randint(5, 300, (3, 10), generator=torch.Generator().manual_seed(1))
    alone = {}
    for k, preset in enumerate(["qv", "all"]):
        model = copy.deepcopy(base)
        apply_lora(model, preset, rank=2 + 2 * k, alpha=8)
        randomize_lora(model, seed=k + 1, std=0.2)
        save_adapter(model, tmp_path / preset)
        with torch.no_grad():
            alone[preset] = model(input_ids=ids).logits
    loaded = load_adapters(copy.deepcopy(base), {p: tmp_path / p for p in alone})
    with torch.no_grad(), loaded.use(["qv", "all", "base"]):
        mixed = loaded.model(input_ids=ids).logits
    with torch.no_grad():
        bare = base(input_ids=ids).logits
    assert mixed.dtype == bare.dtype == torch.bfloat16
    assert (alone["qv"] - alone["all"]).float().abs().max() > 0.5  # the adapters differ well beyond rounding
    tolerance = dict(rtol=0.02, atol=0.05)
    torch.testing.assert_close(mixed[0], alone["qv"][0], **tolerance)
    torch.testing.assert_close(mixed[1], alone["all"][1], **tolerance)
    torch.testing.assert_close(mixed[2], bare[2], **tolerance)
    with torch.no_grad(), loaded.use(["all"] * 3):  # one adapter for the whole batch: the single-adapter path
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, alone["all"], **tolerance)


@needs_bnb
def test_predict_serves_runs_of_a_bf16_checkpoint_on_nf4_computing_in_bf16(bf16_dir, tmp_path, capsys):
    """Through the CLI: two runs of the bf16 checkpoint on a 4-bit base computing in bf16, served mixed."""
    runs = tmp_path / "runs"
    quant = ["model.quantization=nf4", "model.compute_dtype=bfloat16", "trainer.checkpoint_every=0"]
    hashes = []
    for rank in (2, 4):
        overrides = _overrides(bf16_dir, runs, *quant, f"lora.rank={rank}", "trainer.max_steps=2")
        assert main(["train", *overrides]) == 0
        hashes.append(config_hash(compose(overrides)))
    requests = tmp_path / "requests.jsonl"
    lines = [{"messages": [{"role": "user", "content": "say cat twice"}], "adapter": a} for a in ("r2", "r4", "base")]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capsys.readouterr()
    argv = ["predict", "--adapter", f"r2={hashes[0]}", "--adapter", f"r4={hashes[1]}", "--input", str(requests)]
    assert main([*argv, "--run-root", str(runs), "--max-new-tokens", "3"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [o["adapter"] for o in out] == ["r2", "r4", "base"] and all("generation" in o for o in out)


def test_the_8b_estimate_holds_float32_lora_on_its_bf16_base():
    """`lorasweep estimate model=llama3_8b data=synth_sft lora=all lora.rank=16` reported 80.0 MiB (bf16 LoRA);
    the run's own setup on the fake bf16 model (no step traced here: the weights decide it) holds 160 MiB."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lorasweep.estimate.byte_sizes import format_bytes
    from lorasweep.estimate.fake_model import build_fake_model
    from lorasweep.estimate.step import prepare, weight_account

    cfg = compose(["model=llama3_8b", "data=synth_sft", "lora=all", "lora.rank=16"])
    with torch.random.fork_rng(devices=[]), FakeTensorMode(allow_non_fake_inputs=True):
        model = build_fake_model(cfg.model, cfg.data.task, cfg.data.num_labels)
        assert model.dtype == torch.bfloat16
        report, _ = prepare(model, cfg)
        account = weight_account(model)
    assert report.lora_parameters == 41_943_040
    assert account["memory/trainable_bytes"] == 167_772_160 and format_bytes(167_772_160) == "160.0 MiB"
