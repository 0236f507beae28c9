"""DoRA (lora.dora): the fused kernel against the formula, peft loads ours and we load peft's with equal logits,
one training step equals peft's, merge/unmerge, the accounts, and the refusals."""

import json

import pytest
import torch
from conftest import tiny
from peft import LoraConfig, PeftModel, get_peft_model

from lorasweep.errors import UserError
from lorasweep.lora import apply_lora, load_adapter, lora_layers, merge_lora, save_adapter, unmerge_lora
from lorasweep.lora.accounting import count_parameters
from lorasweep.lora.targets import resolve_targets
from lorasweep.model.load import load_pretrained

IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))


def randomize_dora(model, seed=1, std=0.05):
    """Non-zero A and B, and a magnitude moved off the row norms (but near them, as training leaves it)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("lora_A", "lora_B")) or name.endswith(("lora_A.default.weight", "lora_B.default.weight")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif "magnitude" in name:
                parameter.mul_(1 + 0.2 * torch.randn(parameter.shape, generator=generator))


def _dense_reference(layer, x):
    """y = g ⊙ (W0 + s·B·A)x + b, g = m / ‖W0 + s·B·A‖ (norm detached), all in float64, from dense matrices."""
    w = layer.weight_t().t().double() + layer.delta_weight().double()
    rows = layer.dora_rows if layer.dora_rows is not None else torch.arange(layer.d_out)
    gain = torch.ones(layer.d_out, dtype=torch.float64).index_put(
        (rows,), layer.lora_magnitude.double() / w.norm(dim=1).detach()[rows]
    )
    bias = layer.base_layer.bias
    return (x.double() @ w.t()) * gain + (0 if bias is None else bias.double())


@pytest.mark.parametrize("arch, preset", [("llama", "all"), ("gpt2", "qv"), ("gpt_neox", "qv")])
def test_kernel_matches_the_formula_forward_and_backward(arch, preset):
    model = tiny(arch)
    apply_lora(model, preset, rank=4, alpha=8, dora=True)
    randomize_dora(model)
    for name, layer in lora_layers(model):
        x = torch.randn(3, 5, layer.d_in, generator=torch.Generator().manual_seed(2))
        y = layer(x)
        ref = _dense_reference(layer, x)
        assert torch.allclose(y.double(), ref, atol=1e-5), name
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        params = [layer.lora_A, layer.lora_B, layer.lora_magnitude]
        ours = torch.autograd.grad(y, params, g)
        theirs = torch.autograd.grad(ref, params, g.double())
        for p, a, b in zip(("A", "B", "m"), ours, theirs):
            assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5), (name, p)


@pytest.mark.parametrize("arch, preset", [("llama", "all"), ("gpt2", "qv")])
def test_dora_starts_at_the_base_model_and_merges(arch, preset):
    model = tiny(arch)
    base_logits = model(IDS).logits
    apply_lora(model, preset, rank=4, alpha=8, dora=True)
    assert torch.equal(model(IDS).logits, base_logits)  # B = 0 and m = ‖W0‖: a gain of exactly 1
    randomize_dora(model)
    with torch.no_grad():
        ours = model(IDS).logits
        assert (ours - base_logits).abs().max() > 1e-3
        weights = {n: l.base_layer.weight.clone() for n, l in lora_layers(model)}
        merge_lora(model)
        assert torch.allclose(model(IDS).logits, ours, atol=1e-5)
        unmerge_lora(model)
        assert torch.allclose(model(IDS).logits, ours, atol=1e-5)
        for n, l in lora_layers(model):
            assert torch.allclose(l.base_layer.weight, weights[n], atol=1e-6)


def test_accounts_count_the_magnitude():
    model = tiny("llama")
    total_before = count_parameters(model).total
    report = apply_lora(model, "qv", rank=4, alpha=8, dora=True)
    a_b_m = sum(l.lora_A.numel() + l.lora_B.numel() + l.d_out for _, l in lora_layers(model))
    assert report.lora_parameters == a_b_m
    assert report.trainable == a_b_m and report.total == total_before + a_b_m


@pytest.mark.parametrize(
    "arch, preset, scaling",
    [
        ("llama", "all", "standard"),
        ("gpt2", "qv", "rslora"),  # fused c_attn: the k rows keep a gain of 1 in peft too
        ("gpt_neox", "qv", "standard"),
    ],
)
def test_peft_loads_our_dora_adapter_with_equal_logits(arch, preset, scaling, tmp_path):
    model = tiny(arch)
    apply_lora(model, preset, rank=4, alpha=8, scaling=scaling, dora=True)
    randomize_dora(model)
    with torch.no_grad():
        ours = model(IDS).logits
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    peft_model = PeftModel.from_pretrained(tiny(arch), str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, ours, atol=1e-5)
    back = tiny(arch)
    load_adapter(back, tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(IDS).logits, ours, atol=1e-6)


def _peft_dora_minilm(minilm_dir, targets):
    torch.manual_seed(0)
    base = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    names = [t.name for t in resolve_targets(base, targets)]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=names, use_dora=True, modules_to_save=["classifier"])
    return get_peft_model(base, config)


def test_lorasweep_loads_peft_dora_adapter_with_equal_logits(minilm_dir, minilm_batch, tmp_path):
    peft_model = _peft_dora_minilm(minilm_dir, "all").eval()
    randomize_dora(peft_model)
    with torch.no_grad():
        theirs = peft_model(**minilm_batch).logits
    peft_model.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    ours = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    load_adapter(ours, tmp_path)
    assert all(layer.dora for _, layer in lora_layers(ours))
    with torch.no_grad():
        assert torch.allclose(ours(**minilm_batch).logits, theirs, atol=1e-5)


def test_gradients_equal_peft(minilm_dir, minilm_batch):
    """Same start, same batch: the same loss and the same gradients of A, B and m as peft's (through the detached
    norm, as the paper and peft have them)."""
    labels = torch.tensor([1, 0])
    peft_model = _peft_dora_minilm(minilm_dir, "qv").train()
    randomize_dora(peft_model)
    torch.manual_seed(0)
    ours = load_pretrained(minilm_dir, "classification", num_labels=2).train()
    apply_lora(ours, "qv", rank=4, alpha=8, dora=True, modules_to_save=["classifier"])
    with torch.no_grad():  # take peft's (randomised) start
        for name, layer in lora_layers(ours):
            peft_layer = peft_model.get_submodule(f"base_model.model.{name}")
            layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
            layer.lora_B.copy_(peft_layer.lora_B["default"].weight)
            layer.lora_magnitude.copy_(peft_layer.lora_magnitude_vector["default"].weight)
    for model in (peft_model, ours):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    losses = [model(**minilm_batch, labels=labels).loss for model in (peft_model, ours)]
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for loss in losses:
        loss.backward()
    for name, layer in lora_layers(ours):
        peft_layer = peft_model.get_submodule(f"base_model.model.{name}")
        for mine, theirs in (
            (layer.lora_A, peft_layer.lora_A["default"].weight),
            (layer.lora_B, peft_layer.lora_B["default"].weight),
            (layer.lora_magnitude, peft_layer.lora_magnitude_vector["default"].weight),
        ):
            assert mine.grad.abs().max() > 0
            assert torch.allclose(mine.grad, theirs.grad, rtol=1e-4, atol=1e-7), name


def test_dora_refused_on_a_quantized_base():
    pytest.importorskip("bitsandbytes")
    from lorasweep.model.quantize import quantize_model

    model = tiny("llama")
    quantize_model(model, "nf4")
    before = {n: p.clone() for n, p in model.state_dict().items() if torch.is_tensor(p)}
    with pytest.raises(UserError, match="lora.dora=true is not supported on a quantized base"):
        apply_lora(model, "qv", rank=4, alpha=8, dora=True)
    assert not list(lora_layers(model))
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items() if n in before)


@pytest.mark.slow
@pytest.mark.parametrize("arch, preset", [("gpt2", "qv"), ("llama", "all")])  # Conv1D with bias; Linear without
def test_dora_adapters_mix_with_plain_ones_in_one_batch(arch, preset, tmp_path):
    from lorasweep.lora.multi import load_adapters

    paths = {}
    for name, dora, seed in (("dora", True, 1), ("plain", False, 2), ("dora2", True, 3)):
        model = tiny(arch)
        apply_lora(model, preset, rank=4, alpha=8, dora=dora)
        randomize_dora(model, seed=seed, std=0.1)
        paths[name] = save_adapter(model, tmp_path / name)
    ids = torch.randint(0, 512, (5, 9), generator=torch.Generator().manual_seed(4))
    order = ["dora", "plain", "base", "dora2", "dora"]
    expected = []
    for i, name in enumerate(order):
        alone = tiny(arch)
        if name != "base":
            load_adapter(alone, paths[name])
        with torch.no_grad():
            expected.append(alone(ids[i : i + 1]).logits)
    model = tiny(arch)
    adapters = load_adapters(model, paths)
    with torch.no_grad(), adapters.use(order):
        mixed = model(ids).logits
        assert torch.allclose(mixed, torch.cat(expected), atol=1e-5)
        for name in ("dora", "plain"):  # one adapter for the whole batch: the merged and the low-rank path
            alone = tiny(arch)
            load_adapter(alone, paths[name])
            for rows in (ids.repeat(8, 1), ids[:1, :2]):  # 360 tokens: merged on the fly; 2: low-rank
                with adapters.use([name] * len(rows)):
                    assert torch.allclose(model(rows).logits, alone(rows).logits, atol=1e-5)


def test_dora_adapter_on_a_quantized_base_is_refused_for_mixed_batches(tmp_path):
    pytest.importorskip("bitsandbytes")
    from lorasweep.lora.multi import load_adapters
    from lorasweep.model.quantize import quantize_model

    model = tiny("llama")
    apply_lora(model, "qv", rank=4, alpha=8, dora=True)
    randomize_dora(model)
    path = save_adapter(model, tmp_path / "dora")
    base = tiny("llama")
    quantize_model(base, "nf4")
    with pytest.raises(UserError, match="DoRA on module .* needs the float base weight"):
        load_adapters(base, {"dora": path})
    assert not list(lora_layers(base)) and not hasattr(base, "lorasweep_multi")
