"""lora.init: gaussian, pissa (full and svd_lowrank), olora. The model starts at the base; PiSSA/OLoRA factors are
peft's; the saved adapter is the rank-2r LoRA on the UNTOUCHED base, which peft and lorasweep load with the
trained model's logits."""

import json

import pytest
import torch
from conftest import tiny
from peft import LoraConfig, PeftModel, get_peft_model

from lorasweep.errors import UserError
from lorasweep.lora import apply_lora, load_adapter, lora_layers, save_adapter
from lorasweep.lora.targets import resolve_targets

IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))


def _train_a_little(model, seed=1):
    """Move A and B off their start (as training would), keeping DoRA's magnitude where it is."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("lora_A", "lora_B")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("init", ["gaussian", "pissa", "pissa_niter_4", "olora"])
def test_every_init_starts_at_the_base_model(init):
    model = tiny("llama")
    base_logits = model(IDS).logits
    apply_lora(model, "all", rank=4, alpha=8, init=init)
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, base_logits, atol=1e-5)
    layer = next(layer for _, layer in lora_layers(model))
    if init == "gaussian":
        assert layer.lora_B.abs().max() == 0 and abs(layer.lora_A.std().item() - 1 / 4) < 0.05
    else:
        assert layer.lora_B.abs().max() > 0  # the update starts from the base's own directions


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_factors_are_peft_factors(init):
    model = tiny("llama")
    names = [t.name for t in resolve_targets(model, "qv")]
    peft_model = get_peft_model(
        tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights=init)
    )
    apply_lora(model, "qv", rank=4, alpha=8, init=init)
    for name, layer in lora_layers(model):
        theirs = peft_model.get_submodule(f"base_model.model.{name}")
        assert torch.allclose(layer.lora_A, theirs.lora_A["default"].weight, atol=1e-5)
        assert torch.allclose(layer.lora_B, theirs.lora_B["default"].weight, atol=1e-5)
        assert torch.allclose(layer.base_layer.weight, theirs.base_layer.weight, atol=1e-5)  # the residual


@pytest.mark.parametrize(
    "arch, preset, init, dora, scaling",
    [
        ("llama", "all", "pissa", False, "standard"),
        ("llama", "qv", "olora", False, "rslora"),
        ("llama", "qv", "pissa_niter_2", True, "standard"),  # DoRA on a PiSSA start
        ("gpt2", "qv", "pissa", False, "standard"),  # fused c_attn: q and v slices, each rank 2r in the export
    ],
)
def test_saved_adapter_loads_on_the_untouched_base(arch, preset, init, dora, scaling, tmp_path):
    model = tiny(arch)
    apply_lora(model, preset, rank=4, alpha=8, scaling=scaling, init=init, dora=dora)
    _train_a_little(model)
    with torch.no_grad():
        trained = model(IDS).logits
        assert (trained - tiny(arch)(IDS).logits).abs().max() > 1e-3
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    first = next(layer for _, layer in lora_layers(model))
    assert config["r"] == 2 * first.lora_A.shape[0]  # [A; A0]: rank 2r per slice
    assert config["init_lora_weights"] is True and config["use_dora"] is dora

    peft_model = PeftModel.from_pretrained(tiny(arch), str(tmp_path)).eval()
    ours = tiny(arch)
    load_adapter(ours, tmp_path)
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, trained, atol=1e-5)
        assert torch.allclose(ours(IDS).logits, trained, atol=1e-5)


def test_peft_pissa_adapter_saved_without_conversion_is_refused(tmp_path):
    model = tiny("llama")
    names = [t.name for t in resolve_targets(model, "qv")]
    get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights="pissa")
    ).save_pretrained(str(tmp_path))
    fresh = tiny("llama")
    with pytest.raises(UserError, match="saved without peft's conversion"):
        load_adapter(fresh, tmp_path)
    assert not list(lora_layers(fresh))


def test_bad_init_and_pissa_on_a_quantized_base_are_refused_and_change_nothing():
    model = tiny("llama")
    with pytest.raises(UserError, match="lora.init must be one of"):
        apply_lora(model, "qv", rank=4, alpha=8, init="svd")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(UserError, match="exceeds"):  # q_proj (64 rows) passes, k_proj (32) fails: no base touched
        apply_lora(model, "all", rank=48, alpha=8, init="pissa")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    pytest.importorskip("bitsandbytes")
    from lorasweep.model.quantize import quantize_model

    quantize_model(model, "nf4")
    with pytest.raises(UserError, match="lora.init=pissa needs the float base weights"):
        apply_lora(model, "qv", rank=4, alpha=8, init="pissa")


def test_seeded_inits_are_reproducible():
    runs = []
    for _ in range(2):
        model = tiny("llama")
        torch.manual_seed(3)
        apply_lora(model, "qv", rank=4, alpha=8, init="pissa_niter_2")
        runs.append([p.clone() for n, p in model.named_parameters() if "lora_" in n])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
