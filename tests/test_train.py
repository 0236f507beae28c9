"""train(cfg): run directory, tracking, determinism, resume, reuse, pruning hook."""

import json

import pytest
import torch
from wandb_reader import find_runs, read_run

from lorasweep.config.schema import compose
from lorasweep.lora import load_adapter
from lorasweep.model.load import build_model
from lorasweep.runs.metrics import deterministic_metrics
from lorasweep.runs.store import RunStore
from lorasweep.training.lifecycle import Callbacks, train

SMALL = ["trainer=smoke", "data.max_train_examples=64", "data.max_eval_examples=32", "data.max_length=32"]


def _cfg(tmp_path, *overrides, tracking="none"):
    return compose([*SMALL, f"tracking={tracking}", f"run_root={tmp_path / 'runs'}", *overrides])


def test_run_is_filed_under_its_hash_and_tracked_in_wandb(tmp_path, monkeypatch):
    secret = "local-0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = _cfg(tmp_path, tracking="wandb")
    metrics = train(cfg)
    assert metrics["status"] == "completed"
    run = RunStore(cfg.run_root).run(metrics["config_hash"])
    for name in ("config.yaml", "metrics.json", "history.jsonl", "env.json", "adapter/adapter_config.json"):
        assert (run.path / name).is_file(), name
    env = json.loads(run.env_file.read_text())
    assert {"python", "torch", "transformers", "lorasweep", "git_commit", "device", "seed"} <= set(env)
    stored = run.metrics()
    for key in (
        "eval/loss",
        "eval/accuracy",
        "params/trainable",
        "params/total",
        "params/trainable_fraction",
        "memory/optimizer_state_bytes",
        "memory/peak_bytes",
        "train/loss",
    ):
        assert key in stored, key
    # AdamW: two fp32 moments per trainable parameter, plus one fp32 step counter per tensor
    tensors = 2 * 12 + 2  # q and v in 6 layers, A and B each; classifier weight and bias
    assert stored["memory/optimizer_state_bytes"] == 8 * stored["params/trainable"] + 4 * tensors
    history = run.history()
    assert [h["step"] for h in history if "train/loss" in h] == [1, 2, 3, 4]
    assert [h["step"] for h in history if "eval/loss" in h] == [2, 4]

    (wandb_file,) = find_runs(cfg.run_root)
    logged = read_run(wandb_file)
    assert logged.run_id == metrics["config_hash"] and logged.exit_code == 0
    assert logged.config["config_hash"] == metrics["config_hash"]
    assert logged.config["lora.rank"] == 8 and logged.config["lora.targets"] == "qv"
    assert [h["train/loss"] for h in logged.history if "train/loss" in h] == [
        h["train/loss"] for h in history if "train/loss" in h
    ]
    assert {"train/lr", "perf/tokens_per_s", "perf/step_time_s"} <= set(logged.history[0])
    for key in ("params/trainable_fraction", "memory/optimizer_state_bytes", "memory/peak_bytes", "eval/accuracy"):
        assert logged.summary[key] == stored[key]
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

    model, _ = build_model(cfg.model, "classification", 2)
    load_adapter(model, run.adapter_dir)  # the saved adapter is a loadable peft adapter


def test_same_config_and_seed_give_bitwise_equal_results(tmp_path):
    first = train(_cfg(tmp_path / "a", "lora.dropout=0.1"))
    second = train(_cfg(tmp_path / "b", "lora.dropout=0.1"))
    assert first["config_hash"] == second["config_hash"]
    assert deterministic_metrics(first) == deterministic_metrics(second)
    other_seed = train(_cfg(tmp_path / "c", "lora.dropout=0.1", "seed=1"))
    assert deterministic_metrics(other_seed) != deterministic_metrics(first)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    overrides = (
        "trainer.max_steps=6",
        "trainer.checkpoint_every=2",
        "trainer.eval_every=3",
        "lora.dropout=0.1",
        "trainer.grad_accum=2",
    )
    reference = train(_cfg(tmp_path / "ref", *overrides))
    cfg = _cfg(tmp_path / "resumed", *overrides)
    steps = iter(range(100))
    interrupted = train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 2))  # stop after step 3
    assert interrupted["status"] == "interrupted"
    run = RunStore(cfg.run_root).run(interrupted["config_hash"])
    assert not run.is_complete()
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert deterministic_metrics(resumed) == deterministic_metrics(reference)
    events = [h for h in run.history() if h.get("event") == "resume"]
    assert events == [{"event": "resume", "step": 3}]


def test_complete_run_is_reused_unless_forced(tmp_path):
    cfg = _cfg(tmp_path)
    first = train(cfg)
    again = train(cfg)
    assert again["status"] == "reused" and again["eval/loss"] == first["eval/loss"]
    assert train(cfg, force=True)["status"] == "completed"


def test_eval_callback_can_stop_a_run(tmp_path):
    seen = []
    cfg = _cfg(tmp_path, "trainer.max_steps=8")
    result = train(cfg, callbacks=Callbacks(on_eval=lambda step, m: seen.append((step, m)) or step >= 4))
    assert result["status"] == "pruned" and [s for s, _ in seen] == [2, 4]
    assert "eval/loss" in seen[0][1]
    assert not RunStore(cfg.run_root).run(result["config_hash"]).is_complete()


@pytest.mark.parametrize(
    "model, data, lora",
    [("tiny_gpt2", "synth_sft", "qv"), ("tiny_llama", "synth_sft", "all"), ("tiny_gpt2", "synth_sentiment", "all")],
)
def test_other_architectures_and_sft(tmp_path, model, data, lora):
    cfg = _cfg(
        tmp_path,
        f"model={model}",
        f"data={data}",
        f"lora={lora}",
        "trainer.eval_at_start=true",
        "optim.lr=5e-3",
        "trainer.max_steps=8",
    )
    metrics = train(cfg)
    assert metrics["status"] == "completed" and metrics["eval/loss"] != metrics["eval/initial_loss"]
    if data == "synth_sft":  # next-token prediction on a tiny random model learns within 8 steps
        assert "eval/token_accuracy" in metrics and metrics["eval/loss"] < metrics["eval/initial_loss"]
    # The saved adapter holds trained (non-zero) B matrices for the preset's modules of this architecture.
    from safetensors.torch import load_file

    adapter = RunStore(cfg.run_root).run(metrics["config_hash"]).adapter_dir
    tensors = load_file(adapter / "adapter_model.safetensors")
    b_matrices = [t for k, t in tensors.items() if "lora_B" in k]
    assert b_matrices and all(t.abs().max() > 0 for t in b_matrices)


def test_hub_format_directory_loads_through_the_hub_code(tmp_path):
    """A local directory in hub layout goes through the same from_pretrained path a hub id does."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from lorasweep.model.load import packaged_minilm_dir

    hub_dir = tmp_path / "roberta-like"
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        pad_token_id=0,
    )
    RobertaForSequenceClassification(config).save_pretrained(hub_dir)
    tokenizer.save_pretrained(hub_dir)
    cfg = _cfg(
        tmp_path,
        "model=roberta_base",
        f"model.name_or_path={hub_dir}",
        "lora=all",
        "trainer.eval_at_start=true",
        "model.dropout=0.0",
    )
    metrics = train(cfg)
    assert metrics["status"] == "completed"
    run = RunStore(cfg.run_root).run(metrics["config_hash"])
    assert json.loads((run.adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(hub_dir)
    # The weights came from the directory: the untrained eval loss is the saved model's own loss on that data.
    from lorasweep.data import make_collator, tokenized_splits
    from lorasweep.step.tasks import evaluate

    saved = RobertaForSequenceClassification.from_pretrained(hub_dir).eval()
    _, eval_set = tokenized_splits(cfg.data, tokenizer, tmp_path / "tok")
    collate = make_collator("classification", tokenizer)
    batches = [collate(eval_set.to_list()[i : i + 8]) for i in range(0, len(eval_set), 8)]
    with torch.no_grad():
        expected = evaluate(saved, iter(batches), "classification", lambda t: t)
    assert metrics["eval/initial_loss"] == pytest.approx(expected["eval/loss"], abs=1e-5)


@pytest.mark.slow
def test_bf16_gradient_checkpointing_and_epochs_run_on_cpu(tmp_path):
    plain = train(_cfg(tmp_path / "plain", "model.dropout=0.0"))
    checkpointed = train(_cfg(tmp_path / "ckpt", "model.dropout=0.0", "trainer.gradient_checkpointing=true"))
    assert checkpointed["eval/loss"] == pytest.approx(plain["eval/loss"], abs=1e-6)  # same math, recomputed
    bf16 = train(_cfg(tmp_path / "bf16", "trainer.mixed_precision=bf16"))
    assert bf16["status"] == "completed" and abs(bf16["eval/loss"] - plain["eval/loss"]) < 0.05
    epochs = train(_cfg(tmp_path / "epochs", "trainer.max_steps=-1", "trainer.epochs=2", "trainer.eval_every=0"))
    run = RunStore(tmp_path / "epochs" / "runs").run(epochs["config_hash"])
    assert [h["step"] for h in run.history() if "eval/loss" in h] == [2 * 64 // 8]


def test_eval_at_start_records_the_untrained_baseline(tmp_path):
    metrics = train(_cfg(tmp_path, "trainer.eval_at_start=true"))
    run = RunStore(tmp_path / "runs").run(metrics["config_hash"])
    assert run.history()[0]["step"] == 0 and "eval/loss" in run.history()[0]
    assert metrics["eval/initial_loss"] == run.history()[0]["eval/loss"]


def test_local_config_group_is_optional_and_applied(tmp_path):
    import shutil

    from lorasweep.sources import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf, ignore=shutil.ignore_patterns("local"))
    assert compose(config_dir=conf).trainer.log_every == 10  # no local/ folder: fine
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text("# @package _global_\ntrainer:\n  log_every: 7\nrun_root: /scratch\n")
    cfg = compose(config_dir=conf)
    assert cfg.trainer.log_every == 7 and cfg.run_root == "/scratch"


@pytest.mark.slow
def test_reused_model_and_data_give_the_same_result_as_a_fresh_process(tmp_path):
    from lorasweep.training.resources import Resources

    shared = Resources()
    train(_cfg(tmp_path / "shared", "lora.rank=4"), resources=shared)  # fills the cache
    reused = train(_cfg(tmp_path / "shared", "lora=all", "lora.dropout=0.1"), resources=shared)
    fresh = train(_cfg(tmp_path / "fresh", "lora=all", "lora.dropout=0.1"))
    assert deterministic_metrics(reused) == deterministic_metrics(fresh)


def test_wandb_run_is_finished_when_training_fails(tmp_path):
    cfg = _cfg(tmp_path, tracking="wandb")

    def boom(step, metrics):
        raise RuntimeError("evaluation hook failed")

    with pytest.raises(RuntimeError, match="evaluation hook failed"):
        train(cfg, callbacks=Callbacks(on_eval=boom))
    (wandb_file,) = find_runs(cfg.run_root)
    assert read_run(wandb_file).exit_code == 1
    from lorasweep.config.schema import config_hash

    assert not RunStore(cfg.run_root).run(config_hash(cfg)).is_complete()
