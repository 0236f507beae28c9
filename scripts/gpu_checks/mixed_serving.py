"""Mixed-adapter serving on bf16, nf4 computing in bf16, and int8 bases (issue 26): a tiny Llama saved in bf16,
on the device, with two adapters (qv r2, all r4) saved and loaded back with lorasweep.lora.multi.load_adapters,
and a batch whose rows mix them and the bare base. Passes, for every base, when the logits are finite, each row
equals what its adapter (or the base) gives alone through the single-adapter path within bf16 rounding
(rtol 0.02, atol 0.05, as tests/test_bf16_path.py), the two adapters differ by far more than that, and the
quantized layers hold packed integers on the device.

    python scripts/gpu_checks/mixed_serving.py [--device cpu|cuda] [--work DIR]

The base is built as training builds it, quantized on the CPU and then moved: `lorasweep predict` itself
serves on the CPU (serve/predict.py moves nothing to a GPU), so this check serves in-process.
"""

from __future__ import annotations

import copy
import sys

from common import parse, randomize_lora, saved_bf16_llama, verdict

ROWS = ["qv", "all", "base", "all", "qv", "base"]  # adapters per row: groups not contiguous
RTOL, ATOL, DIFFER = 0.02, 0.05, 0.5


def _base(model_dir, quantization: str, device: str):
    import torch

    from lorasweep.model.load import load_pretrained
    from lorasweep.model.quantize import quantize_model

    base = load_pretrained(model_dir, "causal_lm").eval()
    assert base.dtype == torch.bfloat16, base.dtype
    if quantization == "nf4":
        quantize_model(base, "nf4", compute_dtype="bfloat16")
    elif quantization == "int8":
        quantize_model(base, "int8")
    return base.to(device)


def _packed_on_device(model, device: str) -> bool:
    """Every quantized layer's weight is packed integers (uint8 4-bit pairs, int8) on the device."""
    import torch

    from lorasweep.lora.layer import is_quantized

    layers = [m for m in model.modules() if is_quantized(m)]
    return all(m.weight.dtype in (torch.uint8, torch.int8) and m.weight.device.type == device for m in layers)


def serve(model_dir, quantization: str, device: str, work) -> tuple[bool, str, float]:
    import torch

    from lorasweep.lora import apply_lora, load_adapters, save_adapter

    base = _base(model_dir, quantization, device)
    ids = torch.randint(5, 300, (len(ROWS), 12), generator=torch.Generator().manual_seed(1)).to(device)
    alone, paths = {}, {}
    for k, preset in enumerate(["qv", "all"]):
        model = copy.deepcopy(base)
        apply_lora(model, preset, rank=2 + 2 * k, alpha=8)
        randomize_lora(model, seed=k + 1, std=0.2)
        paths[preset] = save_adapter(model, work / f"{quantization}-{preset}")
        with torch.no_grad():
            alone[preset] = model(input_ids=ids).logits.float()
    with torch.no_grad():
        alone["base"] = base(input_ids=ids).logits.float()
    loaded = load_adapters(copy.deepcopy(base), paths)
    with torch.no_grad(), loaded.use(ROWS):
        mixed = loaded.model(input_ids=ids).logits
    dtype, mixed = mixed.dtype, mixed.float()
    worst = max(float((mixed[i] - alone[a][i]).abs().max()) for i, a in enumerate(ROWS))
    close = all(torch.isclose(mixed[i], alone[a][i], rtol=RTOL, atol=ATOL).all() for i, a in enumerate(ROWS))
    spread = float((alone["qv"] - alone["all"]).abs().max())
    packed = quantization == "none" or _packed_on_device(loaded.model, device)
    ok = bool(torch.isfinite(mixed).all()) and close and spread > DIFFER and packed and dtype == torch.bfloat16
    name = {"none": "bf16", "nf4": "nf4+bf16", "int8": "int8"}[quantization]
    return ok, f"{name} {worst:.3f}{'' if packed else ' (UNPACKED)'}", spread


def main(argv=None) -> int:
    device, work = parse(__doc__, argv)
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), 4))  # tiny forwards: a few threads are fastest
    model_dir = saved_bf16_llama(work / "model")
    results = []
    for quantization in ("none", "nf4", "int8"):
        try:
            results.append(serve(model_dir, quantization, device, work))
        except Exception as exc:  # one base's failure is reported beside the others'
            results.append((False, f"{quantization} {type(exc).__name__}: {str(exc)[:120]}", float("nan")))
    figures = f"{len(ROWS)} rows mixing 2 adapters and the base; max |mixed - alone| " + ", ".join(
        f for _, f, _ in results
    )
    figures += f" (tolerance {ATOL} + {RTOL:.0%}); the adapters differ by >= {min(s for *_, s in results):.2f}"
    return verdict(all(ok for ok, *_ in results), figures)


if __name__ == "__main__":
    sys.exit(main())
