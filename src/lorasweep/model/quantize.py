"""A quantized frozen base (QLoRA): `model.quantization` nf4 | fp4 | int8 through bitsandbytes.

Why after loading and not through transformers' `BitsAndBytesConfig`: transformers 5.24 with
`from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cpu")` leaves the
Linear4bit layers unquantized on CPU (the first forward fails with "FP4 quantization state not initialized").
Replacing each nn.Linear by a bitsandbytes layer holding the loaded weight and quantizing it on the model's
device works the same on CPU and CUDA, so the tests run on CPU and a GPU run computes the same thing.

What is quantized: every nn.Linear of the base except the task head (`classifier`, `score`, ...) and the output
embedding (`lm_head`), which stay in full precision (peft/transformers skip them too; the head is trained).
nf4/fp4: `bnb.nn.Linear4bit` (blocks of 64 weights share one float32 absmax; `model.double_quant` quantizes
those absmax values to uint8 in blocks of 256, QLoRA's double quantization), computed in `model.compute_dtype`
(None: the input's dtype). int8: `bnb.nn.Linear8bitLt` (LLM.int8(), row-wise scales, outlier threshold 6.0).

CPU note: bitsandbytes 0.50 repacks a Linear4bit weight into an AVX512-BF16 layout the first time it runs in
eval mode without gradients, and from then on every forward (training too) takes a bf16 kernel with no
autograd, so the gradient through the base would silently vanish after the first evaluation. That repacking is
switched off here (`support_avx512bf16_for_cpu = False`): training and evaluation use the same dequantize-and-
matmul path, which is also what makes CPU runs bitwise reproducible.

Architectures whose projections are transformers' `Conv1D` (GPT-2) are refused: bitsandbytes quantizes nn.Linear.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..choices import FOUR_BIT, require_choice
from ..errors import UserError
from ..lora.layer import Conv1D, is_quantized
from ..lora.layer import is_quantized as is_quantized_linear  # noqa: F401  (estimate/fake_model.py's name)
from .bitsandbytes_check import require_bitsandbytes

# bitsandbytes' int8 matmul says so at every call; casting fp32 activations to fp16 is how LLM.int8() works.
warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Modules kept in full precision: task heads and the LM head (their subtrees too: RoBERTa's classifier.dense).
SKIP_NAMES = ("classifier", "score", "lm_head", "qa_outputs")
# model_type -> why it cannot be quantized.
UNSUPPORTED = {
    "gpt2": "GPT-2's projections are transformers Conv1D layers, which bitsandbytes cannot quantize (nn.Linear only)",
}


def validate_quantization(model_cfg, task: str | None = None) -> None:
    """Config-time checks (before anything runs or is written): one line each."""
    q = model_cfg.quantization
    require_choice("model.quantization", q)
    if model_cfg.compute_dtype is not None and model_cfg.compute_dtype not in COMPUTE_DTYPES:
        raise UserError(
            f"model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} or null; got {model_cfg.compute_dtype!r}"
        )
    if q not in FOUR_BIT:
        for key, value, default in (
            ("double_quant", model_cfg.double_quant, False),
            ("compute_dtype", model_cfg.compute_dtype, None),
        ):
            if value != default:
                raise UserError(f"model.{key} applies to model.quantization=nf4|fp4 only (got quantization={q})")
    if q == "none":
        return
    require_bitsandbytes(f"model.quantization={q}")
    model_type = _declared_model_type(model_cfg)
    if model_type in UNSUPPORTED:
        raise UserError(f"model.quantization={q} is not supported for {model_type}: {UNSUPPORTED[model_type]}")


def _declared_model_type(model_cfg) -> str | None:
    """The architecture a config names, where it can be known without loading: tiny arch, packaged, local dir."""
    if model_cfg.source == "tiny":
        return model_cfg.arch
    if model_cfg.source == "packaged":
        return "bert"
    path = Path(str(model_cfg.name_or_path or "")).expanduser() / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None  # a hub id: checked when the model is quantized


def quantization_of(module: nn.Module) -> str:
    """none | nf4 | fp4 | int8 for one linear layer."""
    if not is_quantized(module):
        return "none"
    weight = module.weight
    return getattr(weight, "quant_type", None) or "int8"


def quantize_model(
    model: nn.Module,
    quantization: str,
    double_quant: bool = False,
    compute_dtype: str | None = None,
    skip: tuple[str, ...] = SKIP_NAMES,
) -> list[str]:
    """Replace the base's nn.Linear layers by bitsandbytes layers, quantized on their current device.

    Returns the names of the quantized modules. Consumes no random numbers (a quantized run draws the same
    LoRA init as an unquantized one with the same seed). Call before apply_lora.
    """
    if quantization == "none":
        return []
    require_choice("model.quantization", quantization)
    require_bitsandbytes(f"model.quantization={quantization}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in UNSUPPORTED:
        raise UserError(
            f"model.quantization={quantization} is not supported for {model_type}: {UNSUPPORTED[model_type]}"
        )
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = []
    for name, module in model.named_modules():
        if any(part in skip for part in name.split(".")) or module is output:
            continue
        if Conv1D and isinstance(module, Conv1D):
            raise UserError(
                f"model.quantization={quantization} is not supported for {model_type or 'this model'}: "
                f"{name} is a transformers Conv1D layer (bitsandbytes quantizes nn.Linear only)"
            )
        if type(module) is nn.Linear:
            chosen.append(name)
    with torch.random.fork_rng(devices=[]):
        for name in chosen:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _quantized(getattr(parent, child), quantization, double_quant, compute_dtype))
    return chosen


def empty_quantized_layer(linear: nn.Linear, quantization: str, double_quant: bool, compute_dtype: str | None):
    """The bitsandbytes layer that replaces `linear`, on the meta device, its weight not yet set (the real
    quantization below and the memory estimate's fake one fill it)."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    if quantization == "int8":
        return bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0, device="meta"
        )
    return bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=has_bias,
        compute_dtype=COMPUTE_DTYPES[compute_dtype] if compute_dtype else None,
        compress_statistics=double_quant,
        quant_type=quantization,
        device="meta",
    )


def _quantized(linear: nn.Linear, quantization: str, double_quant: bool, compute_dtype: str | None) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    weight = linear.weight.detach()
    has_bias = linear.bias is not None
    layer = empty_quantized_layer(linear, quantization, double_quant, compute_dtype)
    if quantization == "int8":
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        layer.weight = bnb.nn.Params4bit(
            weight.clone(), requires_grad=False, compress_statistics=double_quant, quant_type=quantization, module=layer
        )
        layer.support_avx512bf16_for_cpu = False  # see the module docstring
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    layer = layer.to(device)  # bitsandbytes quantizes here
    layer.train(linear.training)
    return layer


def quantized_summary(model: nn.Module) -> dict[str, int]:
    """{quantization: number of layers} over the model's linear layers (for reports and tests)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            kind = quantization_of(module)
            counts[kind] = counts.get(kind, 0) + 1
    return counts
