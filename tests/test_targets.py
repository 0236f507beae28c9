"""Presets resolve to the right modules (and slices) on every covered architecture."""

import pytest
import torch
from conftest import tiny

from lorasweep.lora import apply_lora, lora_layers, resolve_targets


@pytest.mark.parametrize(
    "preset, per_layer",
    [
        ("qv", ["query", "value"]),
        ("qkvo", ["attention.output.dense", "key", "query", "value"]),
        ("all", ["attention.output.dense", "intermediate.dense", "key", "output.dense", "query", "value"]),
    ],
)
def test_bert_presets(minilm, preset, per_layer):
    targets = resolve_targets(minilm, preset)
    layer0 = sorted(t.name.split("layer.0.")[1].replace("attention.self.", "") for t in targets if "layer.0." in t.name)
    assert layer0 == per_layer
    assert len(targets) == 6 * len(per_layer)  # MiniLM has 6 layers


def test_all_means_seven_matrices_on_llama():
    targets = resolve_targets(tiny("llama"), "all")
    layer0 = sorted(t.name.rsplit(".", 1)[1] for t in targets if ".layers.0." in t.name)
    assert layer0 == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_gpt2_qv_is_two_slices_of_c_attn():
    targets = resolve_targets(tiny("gpt2"), "qv")
    assert [t.name for t in targets] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    d = 64
    assert targets[0].slice_names == ("q", "v")
    assert [(s.start, s.size) for s in targets[0].slices] == [(0, d), (2 * d, d)]


def test_gpt2_all_covers_attention_and_mlp():
    targets = resolve_targets(tiny("gpt2"), "all")
    layer0 = {t.name.split("h.0.")[1]: t.slice_names for t in targets if ".h.0." in t.name}
    assert layer0 == {"attn.c_attn": ("q", "k", "v"), "attn.c_proj": None, "mlp.c_fc": None, "mlp.c_proj": None}


def test_gpt_neox_slices_are_interleaved_per_head():
    model = tiny("gpt_neox")
    (first, *_) = resolve_targets(model, "qv")
    assert first.name.endswith("attention.query_key_value")
    head = 64 // 4
    q, v = first.slices
    assert q.groups == 4 and q.size == head and q.start == 0 and v.start == 2 * head


def test_phi3_gqa_slices_and_gate_up():
    model = tiny("phi3")
    targets = {t.name.split("layers.0.")[1]: t for t in resolve_targets(model, "all") if "layers.0." in t.name}
    qkv = targets["self_attn.qkv_proj"]
    assert [(s.start, s.size) for s in qkv.slices] == [(0, 64), (64, 32), (96, 32)]  # 4 q heads, 2 kv heads
    assert targets["mlp.gate_up_proj"].slice_names == ("mlp.gate", "mlp.up")


def test_qv_on_fused_model_leaves_k_rows_untouched():
    model = tiny("gpt2")
    apply_lora(model, "qv", rank=4, alpha=8)
    for _, layer in lora_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_()
        delta = layer.delta_weight()
        assert delta[64:128].abs().max() == 0 and delta[:64].abs().max() > 0 and delta[128:].abs().max() > 0


def test_explicit_list_uses_peft_suffix_rule(minilm):
    targets = resolve_targets(minilm, ["query", "intermediate.dense"])
    assert len(targets) == 12 and all(t.slices is None for t in targets)


def test_explicit_fused_module_is_adapted_whole():
    (target, _) = resolve_targets(tiny("gpt2"), ["c_attn"])
    assert target.slices is None


def test_unsupported_architecture_names_type_and_lists_modules():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in, self.proj_out = nn.Linear(4, 4), nn.Linear(4, 4)

    model = nn.Sequential(Block(), Block())
    with pytest.raises(ValueError, match=r"model type 'Sequential'.*proj_in, proj_out"):
        resolve_targets(model, "qv")
    assert len(resolve_targets(model, ["proj_in"])) == 2
