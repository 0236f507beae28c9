"""The layer computes W0x + b + scale·B·A·x and nothing else."""

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorasweep.lora import LoraLayer, OutputSlice, lora_scale


def _layer(base, **kwargs):
    layer = LoraLayer(base, **{"rank": 3, "alpha": 6.0, **kwargs})
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_linear_matches_formula_float64():
    torch.manual_seed(0)
    base = nn.Linear(7, 5).double()
    layer = _layer(base).double()
    x = torch.randn(4, 2, 7, dtype=torch.float64)
    expected = x @ base.weight.T + base.bias + (6.0 / 3) * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-10, rtol=0)


def test_conv1d_matches_formula_float64():
    torch.manual_seed(0)
    base = Conv1D(5, 7).double()  # weight stored (d_in, d_out)
    nn.init.normal_(base.bias)
    layer = _layer(base).double()
    x = torch.randn(3, 7, dtype=torch.float64)
    expected = x @ base.weight + base.bias + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-10, rtol=0)


def test_b_starts_at_zero_so_output_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoraLayer(base, rank=2, alpha=4)
    x = torch.randn(5, 8)
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
    assert torch.equal(layer(x), base(x))
    # A is kaiming-uniform(a=√5): bound = 1/√d_in
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(8) and layer.lora_A.std() > 0


def test_rslora_scale_is_alpha_over_sqrt_rank():
    assert lora_scale(16, 4, "rslora") == 8.0
    assert lora_scale(16, 4) == 4.0
    layer = LoraLayer(nn.Linear(8, 8), rank=4, alpha=16, scaling="rslora")
    assert layer.scale == 8.0


def test_slices_only_touch_their_rows_float64():
    """Fused q|k|v with LoRA on q and v: the k rows equal the base output exactly."""
    torch.manual_seed(0)
    base = nn.Linear(6, 12).double()
    slices = (OutputSlice(0, 4), OutputSlice(8, 4))
    layer = _layer(base, rank=2, slices=slices).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    y, y0 = layer(x), base(x)
    assert torch.equal(y[:, 4:8], y0[:, 4:8])
    a_q, a_v = layer.lora_A[:2], layer.lora_A[2:]
    b_q, b_v = layer.lora_B[:4], layer.lora_B[4:]
    assert torch.allclose(y[:, :4], y0[:, :4] + 3.0 * x @ a_q.T @ b_q.T, atol=1e-10)
    assert torch.allclose(y[:, 8:], y0[:, 8:] + 3.0 * x @ a_v.T @ b_v.T, atol=1e-10)


def test_interleaved_slices_follow_their_rows():
    """GPT-NeoX layout: per head [q k v]; the q slice owns rows [0,2) of each 6-row head block."""
    sl = OutputSlice(0, 2, groups=3)
    assert sl.row_index(18).tolist() == [0, 1, 6, 7, 12, 13]
    torch.manual_seed(0)
    base = nn.Linear(5, 18).double()
    layer = _layer(base, rank=2, slices=(sl,)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    delta = torch.zeros(4, 18, dtype=torch.float64)
    delta[:, sl.row_index(18)] = 3.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer(x), base(x) + delta, atol=1e-10)


@pytest.mark.parametrize(
    "slices", [None, (OutputSlice(0, 4), OutputSlice(8, 4)), (OutputSlice(1, 2, groups=3), OutputSlice(0, 1, groups=3))]
)
def test_gradients_match_autograd_reference(slices):
    """The hand-written backward equals autograd through the plain formula (float64 gradcheck)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 12).double()
    base.weight.requires_grad_(True)  # also check the (unused in LoRA) weight gradient path
    layer = _layer(base, rank=2, slices=slices).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))
    params = [layer.lora_A, layer.lora_B, base.weight, base.bias]
    grads = torch.autograd.grad(layer(x).square().sum(), params)
    delta = layer.delta_weight()  # reference: dense W0 + ΔW
    reference = (x @ (base.weight + delta).T + base.bias).square().sum()
    ref_grads = torch.autograd.grad(reference, params)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-10)


def test_dropout_applies_to_lora_input_only_in_training():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = _layer(base, dropout=0.5)
    x = torch.randn(64, 8)
    layer.eval()
    expected = base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.train()
    assert not torch.allclose(layer(x), expected, atol=1e-3)
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.lora_A.grad is not None


def test_autocast_bfloat16_runs_and_stays_close():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(16, 16))
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(x), atol=0.1)
