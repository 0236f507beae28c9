"""QLoRA: a bitsandbytes-quantized base under lorasweep's LoRA, 8-bit optimizer state, the memory account."""

import copy

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from conftest import randomize_lora, tiny  # noqa: E402

from lorasweep.lora import apply_lora, load_adapter, lora_layers, merge_lora, save_adapter  # noqa: E402
from lorasweep.lora.accounting import count_parameters, memory_account, optimizer_state_breakdown  # noqa: E402
from lorasweep.model.quantize import quantize_model, quantized_summary  # noqa: E402
from lorasweep.step.optim import build_optimizer  # noqa: E402


class Optim:  # the fields of OptimConfig build_optimizer reads
    def __init__(self, name="adamw", lr=1e-3, min_8bit_size=4096):
        self.name, self.lr, self.min_8bit_size = name, lr, min_8bit_size
        self.beta1, self.beta2, self.eps, self.weight_decay = 0.9, 0.999, 1e-8, 0.0


def _labels():
    return torch.tensor([0, 1])


@pytest.mark.parametrize("quantization", ["nf4", "fp4", "int8"])
def test_quantized_base_keeps_head_and_trains_lora_in_every_layer(minilm, minilm_batch, quantization):
    total = count_parameters(minilm).total
    names = quantize_model(minilm, quantization, double_quant=quantization == "nf4")
    assert len(names) == 6 * 6 + 1  # six projections per layer and the pooler; the classifier stays float
    assert quantized_summary(minilm) == {quantization: 37, "none": 1}
    assert count_parameters(minilm).total == total  # 4-bit weights counted as weights, not packed bytes
    apply_lora(minilm, "all", rank=4, alpha=8, modules_to_save=["classifier"])
    randomize_lora(minilm)
    minilm.train()
    minilm(**minilm_batch, labels=_labels()).loss.backward()
    for name, parameter in minilm.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name  # layer 0's too


def test_quantized_lora_layer_matches_the_reference_and_its_gradients():
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Linear(96, 128))
    quantize_model(linear, "nf4", skip=())
    base = linear[0]
    apply_lora(linear, ["0"], rank=4, alpha=8)
    randomize_lora(linear)
    layer = linear[0]
    x = torch.randn(3, 5, 96, requires_grad=True)
    y = layer(x)
    # Reference: bitsandbytes' own layer plus the low-rank term in plain autograd.
    A = layer.lora_A.detach().clone().requires_grad_(True)
    B = layer.lora_B.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = base(x_ref) + layer.scale * (x_ref @ A.t()) @ B.t()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.lora_A.grad, A.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.lora_B.grad, B.grad, rtol=1e-5, atol=1e-5)


def test_gradient_still_flows_after_an_evaluation(minilm, minilm_batch):
    """bitsandbytes repacks a 4-bit weight for a gradient-free CPU kernel at the first no-grad eval forward;
    quantize_model turns that off, else every later training step would lose the base's input gradient."""
    from lorasweep.model.load import set_dropout

    set_dropout(minilm, 0.0)
    quantize_model(minilm, "nf4")
    apply_lora(minilm, "qv", rank=4, alpha=8, modules_to_save=["classifier"])
    randomize_lora(minilm)
    minilm.train()
    minilm(**minilm_batch, labels=_labels()).loss.backward()
    before = minilm.bert.encoder.layer[0].attention.self.query.lora_A.grad.clone()
    minilm.zero_grad()
    minilm.eval()
    with torch.no_grad():
        minilm(**minilm_batch)
    minilm.train()
    minilm(**minilm_batch, labels=_labels()).loss.backward()
    torch.testing.assert_close(minilm.bert.encoder.layer[0].attention.self.query.lora_A.grad, before)


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_merging_into_a_quantized_base_is_refused(quantization):
    model = tiny("llama")
    quantize_model(model, quantization)
    apply_lora(model, "qv", rank=2, alpha=4)
    with pytest.raises(ValueError, match="cannot merge LoRA into a quantized base"):
        merge_lora(model)
    assert not any(layer.merged for _, layer in lora_layers(model))


def test_quantized_modules_to_save_is_refused():
    model = tiny("llama")
    quantize_model(model, "nf4")
    with pytest.raises(ValueError, match="is quantized"):
        apply_lora(model, "qv", rank=2, alpha=4, modules_to_save=["o_proj"])


def test_conv1d_architecture_is_refused():
    with pytest.raises(ValueError, match="not supported for gpt2: .*Conv1D"):
        quantize_model(tiny("gpt2"), "nf4")


def test_fused_slices_on_a_quantized_base():
    """GPT-NeoX's interleaved q|k|v module, quantized: the k rows get no update."""
    model = tiny("gpt_neox")
    quantize_model(model, "nf4")
    apply_lora(model, "qv", rank=2, alpha=4)
    randomize_lora(model)
    layer = model.gpt_neox.layers[0].attention.query_key_value
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
    k_rows = layer.slices[0].row_index(192) + 16  # the k slice sits between q and v in every head's block
    assert delta[..., k_rows].abs().max() == 0 and delta.abs().max() > 0


@pytest.mark.parametrize("quantization, double_quant", [("nf4", True), ("fp4", False), ("int8", False)])
def test_adapter_from_a_quantized_run_loads_in_peft_with_equal_logits(
    minilm_dir, minilm_batch, tmp_path, quantization, double_quant
):
    from peft import PeftModel

    from lorasweep.model.load import load_pretrained

    torch.manual_seed(0)
    base = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    ours = copy.deepcopy(base)
    quantize_model(ours, quantization, double_quant=double_quant)
    apply_lora(ours, "all", rank=4, alpha=8, modules_to_save=["classifier"])
    randomize_lora(ours)
    save_adapter(ours, tmp_path / "adapter")
    quantize_model(base, quantization, double_quant=double_quant)  # the same quantized base, built again
    theirs = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval()(**minilm_batch).logits, theirs(**minilm_batch).logits, rtol=1e-5, atol=1e-5
        )


def test_lorasweep_loads_its_adapter_onto_a_quantized_base(minilm_dir, minilm_batch, tmp_path):
    from lorasweep.model.load import load_pretrained

    torch.manual_seed(0)
    base = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    ours = copy.deepcopy(base)
    quantize_model(ours, "nf4")
    apply_lora(ours, "qv", rank=4, alpha=8, modules_to_save=["classifier"])
    randomize_lora(ours)
    save_adapter(ours, tmp_path / "adapter")
    quantize_model(base, "nf4")
    load_adapter(base, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(ours.eval()(**minilm_batch).logits, base.eval()(**minilm_batch).logits)


def _stepped(model, batch, optimizer):
    model.train()
    model(**batch, labels=_labels()).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def test_adamw8bit_holds_about_a_quarter_of_adamw_state(minilm_dir, minilm_batch):
    """r=16 on every projection of MiniLM: A is 16×384 and B 384×16 or 1536×16, all ≥ 4096 elements, so
    bitsandbytes keeps them 8-bit (tensors under min_8bit_size, 4096, keep 32-bit state: here the biases of the
    head). The count is of what is held: uint8 moments, float32 absmax per 256 elements, the shared code books."""
    from lorasweep.model.load import load_pretrained

    sizes = {}
    for name in ("adamw", "adamw8bit", "paged_adamw8bit"):
        torch.manual_seed(0)
        model = load_pretrained(minilm_dir, "classification", num_labels=2)
        apply_lora(model, "all", rank=16, alpha=16, modules_to_save=["classifier"])
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = _stepped(model, minilm_batch, build_optimizer(Optim(name), trainable))
        sizes[name] = memory_account(model, optimizer)["memory/optimizer_state_bytes"]
        if name == "adamw8bit":
            breakdown = optimizer_state_breakdown(optimizer)
            eight_bit = [p for p in trainable if p.numel() >= 4096]
            small = [p for p in trainable if p.numel() < 4096]
            n8, n32 = sum(p.numel() for p in eight_bit), sum(p.numel() for p in small)
            assert breakdown["state1"] == breakdown["state2"] == n8 + 4 * n32
            blocks = sum((p.numel() + 255) // 256 for p in eight_bit)
            assert breakdown["absmax1"] == breakdown["absmax2"] == 4 * blocks
            assert breakdown["qmap1"] == breakdown["qmap2"] == 256 * 4  # shared by every tensor: counted once
    assert sizes["paged_adamw8bit"] == sizes["adamw8bit"]  # on CPU paged runs as plain 8-bit
    ratio = sizes["adamw"] / sizes["adamw8bit"]
    assert 3.5 < ratio < 4.1, sizes


def test_min_8bit_size_decides_which_tensors_are_8bit(minilm_dir, minilm_batch):
    """MiniLM r=8 on q,v: A, B have 3072 elements, under bitsandbytes' 4096: no saving unless it is lowered."""
    from lorasweep.model.load import load_pretrained

    sizes = {}
    for name, threshold in (("adamw", 4096), ("adamw8bit", 4096), ("adamw8bit", 0)):
        torch.manual_seed(0)
        model = load_pretrained(minilm_dir, "classification", num_labels=2)
        apply_lora(model, "qv", rank=8, alpha=16)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = _stepped(model, minilm_batch, build_optimizer(Optim(name, min_8bit_size=threshold), trainable))
        sizes[name, threshold] = memory_account(model, optimizer)["memory/optimizer_state_bytes"]
    lora = 6 * 2 * 2 * 8 * 384
    assert sizes["adamw", 4096] == 8 * lora + 4 * 24  # two fp32 moments and a step counter per tensor
    assert sizes["adamw8bit", 4096] == 8 * lora  # 32-bit state, no step tensor
    assert sizes["adamw", 4096] / sizes["adamw8bit", 0] > 3.5


def test_memory_account_of_a_quantized_base(minilm_dir):
    from lorasweep.model.load import load_pretrained

    accounts = {}
    for quantization in ("none", "nf4", "int8"):
        torch.manual_seed(0)
        model = load_pretrained(minilm_dir, "classification", num_labels=2)
        quantize_model(model, quantization, double_quant=True) if quantization == "nf4" else quantize_model(
            model, quantization
        )
        apply_lora(model, "qv", rank=8, alpha=16, modules_to_save=["classifier"])
        accounts[quantization] = memory_account(model)
    none, nf4, int8 = accounts["none"], accounts["nf4"], accounts["int8"]
    assert none["memory/trainable_bytes"] == nf4["memory/trainable_bytes"] == int8["memory/trainable_bytes"]
    assert none["memory/gradient_bytes"] == none["memory/trainable_bytes"] == 4 * (73_728 + 384 * 2 + 2)
    linear = 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384  # quantized weights (biases stay float32)
    # fp32 -> nf4: 4 bytes -> half a byte plus uint8 absmax per 64 weights (double quant); embeddings stay float.
    saved_nf4 = none["memory/base_weights_bytes"] - nf4["memory/base_weights_bytes"]
    assert saved_nf4 == pytest.approx(linear * (4 - 0.5 - 1 / 64), rel=0.01)
    saved_int8 = none["memory/base_weights_bytes"] - int8["memory/base_weights_bytes"]
    assert saved_int8 == pytest.approx(linear * 3, rel=0.01)  # int8 plus a float32 scale per row


def test_mixed_adapter_batch_on_a_quantized_base(minilm_dir, minilm_batch, tmp_path):
    """Serving (lorasweep predict): adapters of QLoRA runs stacked on the same 4-bit base; each row equals that
    adapter alone through its LoraLayer (the on-the-fly merge is skipped on a quantized base)."""
    from lorasweep.lora import load_adapters
    from lorasweep.model.load import load_pretrained

    torch.manual_seed(0)
    base = load_pretrained(minilm_dir, "classification", num_labels=2).eval()
    quantize_model(base, "nf4")
    alone = {}
    for k, preset in enumerate(["qv", "all"]):
        model = copy.deepcopy(base)
        apply_lora(model, preset, rank=2 + 2 * k, alpha=8, modules_to_save=["classifier"])
        randomize_lora(model, seed=k + 1)
        with torch.no_grad():
            model.classifier.weight.normal_(0, 0.2)
        save_adapter(model, tmp_path / preset)
        with torch.no_grad():
            alone[preset] = model.eval()(**minilm_batch).logits
    loaded = load_adapters(copy.deepcopy(base), {p: tmp_path / p for p in alone})
    with torch.no_grad(), loaded.use(["qv", "all"]):
        mixed = loaded.model(**minilm_batch).logits
    torch.testing.assert_close(mixed[0], alone["qv"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], alone["all"][1], rtol=1e-5, atol=1e-5)
    for preset in alone:  # one adapter for the whole batch: the single-adapter path
        with torch.no_grad(), loaded.use([preset, preset]):
            torch.testing.assert_close(loaded.model(**minilm_batch).logits, alone[preset], rtol=1e-5, atol=1e-5)
