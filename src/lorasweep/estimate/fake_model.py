"""The run's model built on fake tensors (FakeTensorMode): every module, shape and dtype the real build gives,
no weights read, no memory used.

It follows models.build_model step by step: the same transformers class from the architecture's config, the
dtype `from_pretrained` would load (the config's `dtype`, else the checkpoint's, else float32), the same
dropout override, and quantize.quantize_model's choice of layers. Only the quantized layers are made
differently: bitsandbytes' Params4bit/Int8Params cannot wrap a fake tensor, so each layer gets a plain frozen
parameter holding what bitsandbytes' own quantize functions return for the fake weight (packed integers and
their statistics, shaped by bitsandbytes), with the attributes its forward reads.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import torch
from torch import nn

from ..choices import SEQUENCE_TASKS
from ..model import quantize
from ..model.hub_config import architecture_config
from ..model.load import TASK_CLASSES, head_size, packaged_minilm_dir, set_dropout


def build_fake_model(model_cfg, task: str, num_labels: int, device: str = "cpu") -> nn.Module:
    """Call inside a FakeTensorMode: the model models.build_model would return, on fake tensors on `device`
    (moved there before quantizing: the packed layout is the same, and the quantization statistics then live on
    the device as they do after a real model's move)."""
    import transformers

    config = architecture_config(model_cfg)
    if model_cfg.source == "tiny":
        config.vocab_size = _packaged_vocab_size()  # build_model gives tiny models the MiniLM tokenizer
    if task in SEQUENCE_TASKS:
        config.num_labels = head_size(task, num_labels) or 2
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
    dtype = torch.float32 if model_cfg.source == "tiny" else loaded_dtype(config, model_cfg)
    model = getattr(transformers, TASK_CLASSES[task]).from_config(config, dtype=dtype)
    if model_cfg.dropout is not None:
        set_dropout(model, model_cfg.dropout)
    if device != "cpu":
        model = model.to(device)
    if model_cfg.get("quantization", "none") != "none":
        with _fake_quantized_layers():
            quantize.quantize_model(model, model_cfg.quantization, model_cfg.double_quant, model_cfg.compute_dtype)
    return model


def loaded_dtype(config, model_cfg) -> torch.dtype:
    """What transformers' from_pretrained(dtype="auto", its default) gives: the config's dtype, else the first
    floating dtype in the checkpoint (a local safetensors header), else float32."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    directory = packaged_minilm_dir() if model_cfg.source == "packaged" else Path(str(model_cfg.name_or_path))
    return _safetensors_dtype(directory) or torch.float32


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def _safetensors_dtype(directory: Path) -> torch.dtype | None:
    for path in sorted(Path(directory).expanduser().glob("*.safetensors"))[:1]:
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__" and entry["dtype"] in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[entry["dtype"]]
    return None


@functools.lru_cache(maxsize=1)
def _packaged_vocab_size() -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(packaged_minilm_dir())))


@contextlib.contextmanager
def bitsandbytes_constants(needed: bool = True):
    """bitsandbytes builds its 8-bit code book (create_dynamic_map: double quantization, 8-bit optimizers) with
    `.tolist()`, which fake tensors cannot answer: build that constant with real tensors (256 floats).
    `needed=False` (no quantized base, no 8-bit optimizer) leaves bitsandbytes unimported: importing it loads
    hub kernels and logs about them (bitsandbytes >= 0.49 with the `kernels` package transformers 5.25 brings)."""
    if not needed:
        yield
        return
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        yield
        return
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    real = bnbf.create_dynamic_map

    def create_dynamic_map(*args, **kwargs):
        with unset_fake_temporarily():
            return real(*args, **kwargs)

    bnbf.create_dynamic_map = create_dynamic_map
    try:
        yield
    finally:
        bnbf.create_dynamic_map = real


@contextlib.contextmanager
def _fake_quantized_layers():
    """quantize_model with each layer built by `_fake_quantized` (same choice of layers, same arguments)."""
    real = quantize._quantized
    quantize._quantized = _fake_quantized
    try:
        yield
    finally:
        quantize._quantized = real


def _fake_quantized(linear: nn.Linear, quantization: str, double_quant: bool, compute_dtype: str | None) -> nn.Module:
    """quantize._quantized on a fake weight: what Params4bit._quantize / Int8Params._quantize store."""
    import bitsandbytes as bnb
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    weight = linear.weight.detach()
    has_bias = linear.bias is not None
    with unset_fake_temporarily():  # its own empty Params on the meta device (replaced below)
        layer = quantize.empty_quantized_layer(linear, quantization, double_quant, compute_dtype)
    if quantization == "int8":
        rows, scales, _ = bnb.functional.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
        packed = nn.Parameter(rows, requires_grad=False)
        packed.CB, packed.SCB, packed.has_fp16_weights = rows, scales, False
    else:
        rows, state = bnb.functional.quantize_4bit(
            weight.contiguous(),
            blocksize=64,
            compress_statistics=double_quant,
            quant_type=quantization,
            quant_storage=torch.uint8,
        )
        packed = nn.Parameter(rows, requires_grad=False)
        packed.quant_state, packed.quant_type, packed.blocksize = state, quantization, 64
        packed.compress_statistics, packed.quant_storage, packed.bnb_quantized = double_quant, torch.uint8, True
        packed.module = layer
        layer.quant_state = state
        layer.support_avx512bf16_for_cpu = False  # as quantize._quantized
    layer.weight = packed
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    layer.train(linear.training)
    return layer


@contextlib.contextmanager
def int8_without_outliers(model: nn.Module):
    """bitsandbytes' int8 inference splits out the input columns above its outlier threshold, a data-dependent
    shape fake tensors cannot trace: trace evaluation with the split off (the outlier columns are a handful,
    their bytes negligible beside the batch's)."""
    states = [m.state for m in model.modules() if quantize.is_quantized_linear(m) and hasattr(m, "state")]
    thresholds = [s.threshold for s in states]
    for state in states:
        state.threshold = 0.0
    try:
        yield
    finally:
        for state, threshold in zip(states, thresholds):
            state.threshold = threshold
