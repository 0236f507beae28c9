import torch
from conftest import randomize_lora, tiny

from lorasweep.lora import apply_lora, lora_layers, merge_lora, unmerge_lora


def _check_merge_roundtrip(model, inputs, logits_of):
    originals = {n: l.base_layer.weight.detach().clone() for n, l in lora_layers(model)}
    before = logits_of(model, inputs)
    assert merge_lora(model) == len(originals)
    assert torch.allclose(logits_of(model, inputs), before, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(logits_of(model, inputs), before, atol=1e-5)
    for name, layer in lora_layers(model):
        assert torch.allclose(layer.base_layer.weight, originals[name], atol=1e-6)


def test_merge_unmerge_minilm_all(minilm, minilm_batch):
    apply_lora(minilm, "all", rank=8, alpha=16)
    randomize_lora(minilm)
    _check_merge_roundtrip(minilm, minilm_batch, lambda m, b: m(**b).logits)


def test_merge_unmerge_fused_gpt2_and_neox():
    for arch in ("gpt2", "gpt_neox", "phi3"):
        model = tiny(arch)
        apply_lora(model, "all", rank=4, alpha=8, scaling="rslora")
        randomize_lora(model)
        ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
        _check_merge_roundtrip(model, ids, lambda m, i: m(i).logits)
