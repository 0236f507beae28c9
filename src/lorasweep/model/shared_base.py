"""One copy of the frozen base for every trial of a pack.

A packed trial's model is a copy of the worker's cached base whose frozen tensors ARE the cached ones (a deepcopy
with those tensors in its memo), so K trials hold the base once; only what the trial trains (its task head,
`modules_to_save`) is its own copy, and LoRA adds its own A and B. The frozen linear layers then route their
forward through the pack (`join`), which batches the trials waiting on the same weights into one matmul.
"""

from __future__ import annotations

import copy
import functools
from itertools import chain

import torch
from torch import nn

from ..lora.init import changes_base
from ..lora.inject import lora_layers
from ..lora.layer import is_adaptable, is_quantized


def shares_base(cfg) -> bool:
    """pissa/olora move B0·A0 out of the base weights: such a trial needs a base of its own."""
    return not changes_base(str(cfg.lora.init))


def private_modules(cfg, model: nn.Module) -> list[str]:
    """The modules a trial trains whole (its task head): copied, never shared."""
    from ..lora.inject import resolve_modules_to_save
    from .adapt import modules_to_save

    return resolve_modules_to_save(model, modules_to_save(cfg.lora, cfg.data.task, model))


def shared_copy(model: nn.Module, private: list[str]) -> nn.Module:
    """A copy of `model` that shares every parameter and buffer outside the `private` modules (and the int8
    layers' weights and scales, `_settle_int8`)."""
    memo = {}
    for name, tensor in chain(model.named_parameters(), model.named_buffers(), _settle_int8(model)):
        if not any(name.startswith(p + ".") for p in private):
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


def _settle_int8(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """bitsandbytes' Linear8bitLt moves its int8 weight and row scales (weight.CB, weight.SCB) into its own matmul
    state at its first forward, clearing them on the weight. Copies share the weight: the first trial's forward
    would take them from the others, whose state would then quantize the int8 values once more. So they are moved
    once, on the kept base, before any copy is made, and every copy shares them; the weight keeps SCB, where the
    memory account reads it. Returns the moved tensors by name."""
    moved = []
    for name, module in model.named_modules():
        if not rows_interact(module):
            continue
        if module.weight.CB is not None:
            module.init_8bit_state()
            module.weight.SCB = module.state.SCB  # unread by the forward once the state holds CB
        moved += [(f"{name}.state.{key}", getattr(module.state, key)) for key in ("CB", "SCB")]
    return [(n, t) for n, t in moved if torch.is_tensor(t)]


def adopt_equal_tensors(model: nn.Module, reference: nn.Module) -> int:
    """Replace model's parameters that equal reference's (same name, bitwise) by reference's own: the same
    pretrained base loaded for two seeds is then held once. Returns how many were adopted."""
    adopted = 0
    for name, module in model.named_modules():
        try:
            other = reference.get_submodule(name)
        except AttributeError:
            continue
        theirs = dict(other.named_parameters(recurse=False))
        for key, param in list(module.named_parameters(recurse=False)):
            ref = theirs.get(key)
            if (
                ref is not None
                and ref is not param
                and ref.shape == param.shape
                and ref.dtype == param.dtype
                and ref.device == param.device
                and torch.equal(ref, param)
            ):
                setattr(module, key, ref)  # nn.Module registers a Parameter set this way
                adopted += 1
    return adopted


def join(pack, model: nn.Module) -> int:
    """Route every frozen linear layer's forward through the pack (int8 ones excepted: `rows_interact`); LoRA
    layers add their low-rank term to the (batched) base output rather than fusing it into their own matmul.
    Returns the layers routed."""
    routed = 0
    for _, module in model.named_modules():
        if is_adaptable(module) and not module.weight.requires_grad and not rows_interact(module):
            module.forward = functools.partial(pack.linear, module)
            routed += 1
    for _, layer in lora_layers(model):
        layer.shared_base = not layer.dora  # DoRA's gain scales the base output: it keeps its fused matmul
    return routed


def rows_interact(module: nn.Module) -> bool:
    """A layer whose output for one row depends on the other rows it is given: bitsandbytes' Linear8bitLt
    (LLM.int8()) takes out as outliers the input columns where ANY row exceeds its threshold and computes them in
    float16, so batched with other trials its output would depend on their activations. Each trial calls it on
    its own rows (its weights are still held once)."""
    return is_quantized(module) and type(module).__name__ == "Linear8bitLt"
