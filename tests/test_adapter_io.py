"""Adapters we save load in peft itself and compute the same function; ours load back exactly."""

import json

import pytest
import torch
from conftest import randomize_lora, tiny
from peft import PeftModel
from safetensors import safe_open

from lorasweep.lora import apply_lora, load_adapter, save_adapter
from lorasweep.model.load import load_pretrained

IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))


def _peft_logits(base, path, inputs):
    peft_model = PeftModel.from_pretrained(base, str(path)).eval()
    with torch.no_grad():
        return peft_model(**inputs).logits


def test_minilm_adapter_loads_in_peft_with_same_logits(minilm_dir, minilm, minilm_batch, tmp_path):
    base_logits = minilm(**minilm_batch).logits
    apply_lora(minilm, "all", rank=8, alpha=16, modules_to_save=["classifier"])
    randomize_lora(minilm)
    with torch.no_grad():
        minilm.classifier.weight.add_(0.5)  # a trained head travels with the adapter
        ours = minilm(**minilm_batch).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter really changes the function
    save_adapter(minilm, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.classifier.weight" in keys

    torch.manual_seed(0)
    fresh = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    assert torch.allclose(_peft_logits(fresh, tmp_path, minilm_batch), ours, atol=1e-5)


@pytest.mark.parametrize(
    "arch, preset, scaling",
    [
        ("gpt2", "qv", "standard"),  # fused c_attn, q and v slices only
        ("gpt2", "all", "rslora"),  # fused q,k,v (rank 3r) next to plain modules: rank_pattern
        ("gpt_neox", "qv", "standard"),  # interleaved per-head slices
        ("llama", "all", "standard"),  # 7 matrices, GQA-sized k/v
        ("phi3", "all", "rslora"),  # fused qkv with GQA, fused gate|up
    ],
)
def test_tiny_models_load_in_peft_with_same_logits(arch, preset, scaling, tmp_path):
    model = tiny(arch)
    base_logits = model(IDS).logits
    apply_lora(model, preset, rank=4, alpha=8, scaling=scaling)
    randomize_lora(model)
    with torch.no_grad():
        ours = model(IDS).logits
    assert (ours - base_logits).abs().max() > 1e-3
    save_adapter(model, tmp_path)
    assert torch.allclose(_peft_logits(tiny(arch), tmp_path, {"input_ids": IDS}), ours, atol=1e-5)


def test_fused_qv_export_is_rank_2r_with_zero_k_rows(tmp_path):
    model = tiny("gpt2")
    apply_lora(model, "qv", rank=4, alpha=8)
    randomize_lora(model)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["target_modules"] == ["attn.c_attn"]
    assert config["lora_alpha"] / config["r"] == 8 / 4  # the scale is unchanged
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        b = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")
    assert b.shape == (192, 8)
    assert b[64:128].abs().max() == 0  # k rows
    assert b[:64, 4:].abs().max() == 0 and b[128:, :4].abs().max() == 0  # q uses A rows 0-3, v rows 4-7
    assert b[:64, :4].abs().max() > 0 and b[128:, 4:].abs().max() > 0


@pytest.mark.parametrize("arch, preset", [("gpt2", "qv"), ("phi3", "all")])
def test_roundtrip_restores_slices_exactly(arch, preset, tmp_path):
    model = tiny(arch)
    apply_lora(model, preset, rank=4, alpha=8, dropout=0.1)
    randomize_lora(model)
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny(arch), tmp_path)
    for (name, p), (name2, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert name == name2 and torch.equal(p, q) and p.requires_grad == q.requires_grad
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_peft_written_adapter_loads_into_lorasweep(minilm_dir, minilm_batch, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        load_pretrained(minilm_dir, "classification", num_labels=2),
        LoraConfig(r=4, lora_alpha=12, target_modules=["query", "value"], task_type="SEQ_CLS"),
    ).eval()
    randomize_lora(peft_model)
    with torch.no_grad():
        expected = peft_model(**minilm_batch).logits
    peft_model.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    ours = load_adapter(load_pretrained(minilm_dir, "classification", num_labels=2).eval(), tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(**minilm_batch).logits, expected, atol=1e-5)
