"""How A and B start (`lora.init`), as peft's `init_lora_weights` does it:

    kaiming        A kaiming-uniform(a=√5) like nn.Linear, B = 0: the model starts exactly at the base (default)
    gaussian       A ~ N(0, 1/r²) (std 1/r), B = 0
    pissa          PiSSA (Meng et al. 2024): B·A from the top-r singular triplets of W0, √(S/scale) on each side;
                   the base keeps the residual W0 − scale·B·A, so the model still starts at W0
    pissa_niter_N  the same from torch.svd_lowrank with N subspace iterations (fast, approximate; draws from
                   torch's global RNG, so it is seeded like A)
    olora          OLoRA (Büyükakyüz 2024): B = Q[:, :r], A = R[:r] of W0 = QR; the base keeps W0 − scale·B·A

pissa and olora change the frozen base. The layer keeps the initial (A0, B0), so that save_adapter can write what
peft's own conversion (`path_initial_model_for_weight_conversion`) writes: a rank-2r LoRA [A; A0], [B, −B0] on the
untouched base, W0 − s·B0·A0 + s·B·A = W0 + s·[B, −B0]·[A; A0].
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..errors import UserError

INITS = ("kaiming", "gaussian", "pissa", "pissa_niter_N", "olora")
_PISSA_NITER = re.compile(r"pissa_niter_(\d+)$")


def validate_init(init: str) -> None:
    if init in ("kaiming", "gaussian", "pissa", "olora") or (isinstance(init, str) and _PISSA_NITER.match(init)):
        return
    raise UserError(
        f"lora.init must be one of {', '.join(INITS)} (N: svd_lowrank iterations, e.g. pissa_niter_4); got {init!r}"
    )


def changes_base(init: str) -> bool:
    """pissa and olora subtract their initial product from the frozen base weight."""
    return init.startswith("pissa") or init == "olora"


def init_low_rank(init: str, a: torch.Tensor, b: torch.Tensor, w0: torch.Tensor | None, scale: float) -> None:
    """Fill one slice's A (r, d_in) and B (rows, r) in place; w0 (rows, d_in) float32 for pissa/olora."""
    rank = a.shape[0]
    if init == "kaiming":
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b.zero_()
    elif init == "gaussian":
        nn.init.normal_(a, std=1 / rank)
        b.zero_()
    elif init == "olora":
        q, r = torch.linalg.qr(w0)
        a.copy_(r[:rank])
        b.copy_(q[:, :rank])
    else:
        niter = _PISSA_NITER.match(init)
        if niter:
            v, s, u = torch.svd_lowrank(w0, rank, niter=int(niter.group(1)))
            uh = u.t()
        else:
            v, s, uh = torch.linalg.svd(w0, full_matrices=False)
            v, s, uh = v[:, :rank], s[:rank], uh[:rank]
        root = torch.sqrt(s / scale)
        a.copy_(root.unsqueeze(1) * uh)
        b.copy_(v * root)


def validate_variant(lora_cfg, model_cfg) -> None:
    """lora.init's value, and the variants a quantized base cannot take (config.validate calls this)."""
    init = lora_cfg.get("init", "kaiming")
    validate_init(init)
    quantization = model_cfg.get("quantization", "none")
    if quantization == "none":
        return
    if lora_cfg.get("dora", False):
        raise UserError(
            f"lora.dora=true is not supported with model.quantization={quantization}: DoRA needs the "
            "float weight's row norms; use model.quantization=none or lora.dora=false"
        )
    if changes_base(init):
        raise UserError(
            f"lora.init={init} needs the float base weights (it subtracts B·A from them), not "
            f"model.quantization={quantization}; use model.quantization=none or lora.init=kaiming"
        )
