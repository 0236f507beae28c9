"""bf16 autocast and activation checkpointing with LoRA, on a float and on a 4-bit base (CPU)."""

import copy

import pytest
import torch
from conftest import randomize_lora, tiny

from lorasweep.lora import apply_lora, save_adapter

BASES = [
    "none",
    pytest.param(
        "nf4",
        marks=pytest.mark.skipif(
            __import__("importlib").util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
        ),
    ),
]


def _model(quantization, **overrides):
    model = tiny("llama", attention_dropout=0.0, **overrides)
    if quantization != "none":
        from lorasweep.model.quantize import quantize_model

        quantize_model(model, quantization)
    torch.manual_seed(1)
    apply_lora(model, "all", rank=4, alpha=8)
    return model.train()


def _batch(seed=0, n=8, length=24):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 512, (n, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _losses(model, bf16, steps=25):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch, losses = _batch(), []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("quantization", BASES)
def test_bf16_trains_lora_close_to_fp32_and_keeps_fp32_weights(quantization, tmp_path):
    fp32 = _losses(_model(quantization), bf16=False)
    model = _model(quantization)
    bf16 = _losses(model, bf16=True)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16[-1] < bf16[0] - 0.5  # learns (one batch, memorised) ...
    assert sum(max(0.0, b - a) for a, b in zip(bf16, bf16[1:])) < 0.05  # ... steadily
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05  # and close to fp32 at every step
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32, name  # autocast computes in bf16, the weights stay fp32
    from safetensors.torch import load_file

    save_adapter(model, tmp_path / "adapter")
    assert {t.dtype for t in load_file(tmp_path / "adapter" / "adapter_model.safetensors").values()} == {torch.float32}


def _grads_and_saved_bytes(model, checkpointing):
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**_batch(length=64)).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, sum(saved)


@pytest.mark.parametrize("quantization", BASES)
def test_gradient_checkpointing_gives_the_same_fp32_gradients_with_less_held(quantization):
    """The same gradients (recomputation repeats the same float operations) while the forward keeps fewer
    activations: with checkpointing only each block's input is held, the rest is recomputed in backward."""
    model = _model(quantization, num_hidden_layers=4)
    randomize_lora(model)
    plain, plain_bytes = _grads_and_saved_bytes(copy.deepcopy(model), checkpointing=False)
    ckpt, ckpt_bytes = _grads_and_saved_bytes(model, checkpointing=True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
