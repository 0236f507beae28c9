"""Bad input: a ValueError whose message names the problem; the model is left as it was."""

import json

import pytest
from conftest import randomize_lora, tiny
from torch import nn

from lorasweep.lora import LoraLayer, apply_lora, load_adapter, lora_layers, save_adapter


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank must be > 0"),
        (dict(rank=-4), "rank must be > 0"),
        (dict(rank=2.5), "rank must be an integer"),
        (dict(rank=500), "exceeds min"),
        (dict(alpha=0), "alpha must be a finite number > 0"),
        (dict(alpha=-1.0), "alpha must be a finite number > 0"),
        (dict(alpha=float("nan")), "alpha must be a finite number > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(scaling="sqrt"), "unknown LoRA scaling 'sqrt'"),
        (dict(targets="qkv"), "unknown target preset 'qkv'"),
        (dict(targets=["querry"]), "target module 'querry' matches no linear module"),
        (dict(targets=[]), "list of target modules is empty"),
        (dict(modules_to_save=["head"]), "modules_to_save entry 'head' matches no module"),
    ],
)
def test_apply_lora_rejects(minilm, kwargs, message):
    before = {n: p.requires_grad for n, p in minilm.named_parameters()}
    with pytest.raises(ValueError, match=message):
        apply_lora(minilm, **kwargs)
    assert not list(lora_layers(minilm))
    assert before == {n: p.requires_grad for n, p in minilm.named_parameters()}


def test_rank_larger_than_a_slice_names_the_module():
    with pytest.raises(ValueError, match=r"c_attn: LoRA rank 65 exceeds min\(d_in, d_out\) = 64"):
        apply_lora(tiny("gpt2"), "qv", rank=65)


def test_preset_matching_nothing_names_model_type():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "bert"})()
            self.layers = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(ValueError, match="preset 'qv' matched no module in model type 'bert'"):
        apply_lora(Tiny(), "qv")


def test_applying_twice_is_an_error(minilm):
    apply_lora(minilm, "qv", rank=2)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(minilm, "all", rank=2)


def test_wrapper_keeps_the_mode_of_the_layer_it_replaces():
    assert not LoraLayer(nn.Linear(4, 4).eval(), rank=2, alpha=2).training


@pytest.fixture
def gpt2_adapter(tmp_path):
    model = tiny("gpt2")
    apply_lora(model, "qv", rank=4, alpha=8)
    randomize_lora(model)
    return save_adapter(model, tmp_path / "adapter")


def _untouched(model):
    return not list(lora_layers(model)) and all(p.requires_grad for p in model.parameters())


def test_adapter_for_another_base_is_rejected(gpt2_adapter):
    other = tiny("gpt2", n_embd=32)
    with pytest.raises(ValueError, match=r"different base model \(.*n_embd: adapter 64 vs model 32"):
        load_adapter(other, gpt2_adapter)
    assert _untouched(other)


def test_shape_mismatch_names_the_module(gpt2_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = gpt2_adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"
    tensors[key] = tensors[key][:, :32].contiguous()
    save_file(tensors, str(weights))  # no lorasweep metadata now: loaded as a plain peft adapter
    config = json.loads((gpt2_adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]
    (gpt2_adapter / "adapter_config.json").write_text(json.dumps(config))
    model = tiny("gpt2")
    with pytest.raises(ValueError, match=r"module transformer.h.1.attn.c_attn expects lora_A \(8, 64\)"):
        load_adapter(model, gpt2_adapter)
    assert _untouched(model)


def test_corrupt_safetensors_is_rejected(gpt2_adapter):
    weights = gpt2_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(model, gpt2_adapter)
    assert _untouched(model)


def test_missing_or_broken_config_is_rejected(gpt2_adapter, tmp_path):
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        load_adapter(tiny("gpt2"), tmp_path)
    (gpt2_adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_adapter(tiny("gpt2"), gpt2_adapter)


def test_save_without_lora_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tiny("gpt2"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_failed_save_keeps_the_previous_adapter(gpt2_adapter, monkeypatch):
    """Writes are atomic: an error mid-write leaves the earlier files whole."""
    import lorasweep.fileio as fileio

    before = {p.name: p.read_bytes() for p in gpt2_adapter.iterdir()}
    model = tiny("gpt2")
    apply_lora(model, "qv", rank=4, alpha=8)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, gpt2_adapter)
    assert {p.name: p.read_bytes() for p in gpt2_adapter.iterdir()} == before
