"""`lorasweep estimate`: the memory account of a training step predicted on fake tensors, pinned against the exact
LoRA count of Llama-3-8B and against real steps on CPU (the allocator's own profile of the step)."""

import json
from pathlib import Path

import pytest
import tomllib
import torch

from lorasweep.config.schema import compose
from lorasweep.errors import UserError
from lorasweep.estimate import estimate_config, format_bytes, parse_memory_size
from lorasweep.estimate.live import LiveBytes
from lorasweep.estimate.measure import measure_config
from lorasweep.model.hub_config import SHIPPED_DIR, shipped_architectures

REPO = Path(__file__).resolve().parents[1]
KEYS = (
    "memory/base_weights_bytes",
    "memory/trainable_bytes",
    "memory/gradient_bytes",
    "memory/optimizer_state_bytes",
    "memory/activation_bytes",
    "memory/predicted_peak_bytes",
)


@pytest.mark.slow
def test_llama3_8b_every_projection_r16_offline_matches_the_exact_lora_count():
    cfg = compose(
        [
            "model=llama3_8b",
            "data=synth_sft",
            "lora=all",
            "lora.rank=16",
            "model.quantization=nf4",
            "trainer.gradient_checkpointing=true",
            "trainer.batch_size=1",
            "data.max_length=32",
        ]
    )
    account = estimate_config(cfg, device="cpu")
    # 32 layers x 16 x [(4096+4096)·2 (q, o) + (4096+1024)·2 (k, v) + (4096+14336)·3 (gate, up, down)]
    assert account["params/lora"] == 41_943_040
    assert account["memory/trainable_bytes"] == account["memory/gradient_bytes"] == 167_772_160  # float32 LoRA
    assert account["memory/optimizer_state_bytes"] >= 2 * 167_772_160  # AdamW's two moments
    # nf4 packs two weights a byte: the 7.0e9 quantized weights give ~3.5 GB plus absmax, embeddings and lm_head
    # in bf16 (2 x 128256 x 4096 x 2 bytes = 2.1 GB)
    assert 5.5e9 < account["memory/base_weights_bytes"] < 6.5e9
    assert account["sequence_length"] == 32 and "data.max_length" in account["sequence_length_source"]
    assert account["config_hash"] == __import__("lorasweep.config.schema", fromlist=["x"]).config_hash(cfg)


@pytest.mark.parametrize(
    "overrides, micro, length",
    [
        (["tracking=none"], 16, 32),  # the packaged default: MiniLM, q,v
        pytest.param(
            [
                "model=tiny_llama",
                "data=synth_sft",
                "lora=all",
                "model.quantization=nf4",
                "model.double_quant=true",
                "optim.name=adamw8bit",
                "optim.min_8bit_size=256",
                "trainer.gradient_checkpointing=true",
                "trainer.mixed_precision=bf16",
            ],
            8,
            48,
            marks=pytest.mark.slow,
        ),
        pytest.param(
            [
                "model=tiny_llama",
                "data=synth_sft",
                "lora=qv",
                "model.quantization=int8",
                "trainer.batch_size=16",
                "trainer.grad_accum=2",
                "lora.dropout=0.1",
            ],
            8,
            32,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_prediction_matches_a_real_cpu_step(overrides, micro, length):
    cfg = compose([*overrides, "tracking=none"])
    predicted = estimate_config(cfg, device="cpu", micro_batch=micro, sequence=(length, "test"))
    measured = measure_config(cfg, micro, length, "cpu")
    peak = predicted["memory/predicted_peak_bytes"]
    assert abs(peak / measured["allocator_peak_bytes"] - 1) <= 0.05, (peak, measured)
    assert predicted["memory/optimizer_state_bytes"] == measured["optimizer_state_bytes"]
    assert abs(predicted["memory/activation_bytes"] / measured["activation_bytes"] - 1) <= 0.05
    assert peak > predicted["memory/base_weights_bytes"] + predicted["memory/trainable_bytes"]
    evaluation = predicted["memory/predicted_eval_peak_bytes"]
    assert abs(evaluation / measured["eval_live_peak_bytes"] - 1) <= 0.05, (evaluation, measured)


def test_default_estimate_reads_the_longest_training_example(tmp_path):
    cfg = compose(["tracking=none", f"run_root={tmp_path}"])  # synth_sentiment: 7-24 MiniLM tokens, max_length 64
    account = estimate_config(cfg)
    assert set(KEYS) <= set(account) and account["device"] in ("cpu", "cuda")
    assert account["sequence_length"] == 24 and "longest training example" in account["sequence_length_source"]
    assert account["micro_batch"] == cfg.trainer.batch_size
    json.dumps(account)  # --json prints it as is


def test_a_longer_sequence_or_batch_predicts_more():
    cfg = compose(["model=tiny_llama", "data=synth_sft", "tracking=none"])
    small = estimate_config(cfg, "cpu", micro_batch=4, sequence=(32, "test"))["memory/predicted_peak_bytes"]
    longer = estimate_config(cfg, "cpu", micro_batch=4, sequence=(64, "test"))["memory/predicted_peak_bytes"]
    wider = estimate_config(cfg, "cpu", micro_batch=8, sequence=(32, "test"))["memory/predicted_peak_bytes"]
    assert small < longer and small < wider


def test_cuda_estimate_on_a_cpu_machine_uses_cuda_allocation_granularity():
    cfg = compose(["model=tiny_llama", "data=synth_sft", "tracking=none"])
    cpu = estimate_config(cfg, "cpu", micro_batch=2, sequence=(16, "test"))
    cuda = estimate_config(cfg, "cuda", micro_batch=2, sequence=(16, "test"))
    assert cuda["device"] == "cuda" and cuda["memory/predicted_peak_bytes"] >= cpu["memory/predicted_peak_bytes"]
    if not torch.cuda.is_available():
        assert "CPU kernels" in cuda["traced_with"]


@pytest.mark.parametrize("name", ["llama3_8b", "llama3_70b", "mistral_7b", "qwen2_5_7b"])
def test_shipped_architectures_are_the_models_configs_name(name):
    from lorasweep.model.hub_config import architecture_config

    cfg = compose([f"model={name}", "data=synth_sft"])
    config = architecture_config(cfg.model)
    assert shipped_architectures()[cfg.model.name_or_path].stem == name
    assert config.model_type in ("llama", "mistral", "qwen2") and config.hidden_size >= 3584


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama3_70b", "mistral_7b", "qwen2_5_7b"])
def test_big_shipped_models_estimate_offline(name):
    cfg = compose(
        [
            f"model={name}",
            "data=synth_sft",
            "lora=all",
            "model.quantization=nf4",
            "trainer.gradient_checkpointing=true",
            "trainer.batch_size=1",
            "data.max_length=64",
        ]
    )
    account = estimate_config(cfg, device="cuda")
    assert account["memory/predicted_peak_bytes"] > account["memory/base_weights_bytes"] > 3e9


def test_architecture_configs_are_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lorasweep"]
    assert "model/known_configs/*.json" in data and len(list(SHIPPED_DIR.glob("*.json"))) == 4


def test_unknown_architecture_is_one_line_naming_what_to_provide():
    cfg = compose(["model=llama3_8b", "model.name_or_path=someone/not-a-model-xyz", "data=synth_sft"])
    with pytest.raises(UserError, match="config.json") as info:
        estimate_config(cfg, "cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80GiB", 80 * 2**30),
        ("24 GB", 24 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5G", int(1.5 * 2**30)),
        ("1000", 1000),
        (2048, 2048),
    ],
)
def test_memory_sizes_parse(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["80 GiBs", "lots", "-1GB", "0", "", "GB"])
def test_bad_memory_sizes_are_one_line(text):
    with pytest.raises(UserError, match="memory cap: cannot read"):
        parse_memory_size(text)


def test_format_bytes():
    assert format_bytes(93.4 * 2**30) == "93.4 GiB" and format_bytes(512) == "512 B"


def test_live_counter_follows_storages_not_views():
    counter = LiveBytes()
    with counter:
        a = torch.zeros(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new storage
        c = a * 2  # 4000 more
        del c
    assert counter.peak == 8000 and counter.current == 4000
    del a, b
    assert counter.current == 0
