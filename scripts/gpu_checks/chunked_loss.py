"""The chunked causal-LM loss (step/lm_loss.py) on the device equals the full-vocabulary loss (issue 26): four
tiny architectures (Llama, GPT-2, GPT-NeoX, Phi-3) with LoRA on every projection (dropout on), in training (the
fused frozen-head path, and a trained lm_head: the recomputing path) and in evaluation (no gradients). Passes
when every summed loss is within 1e-6 relative of the full computation's, the target and correct counts are equal,
and the LoRA gradients are within 1e-4 relative (norm of the difference over the norm).

    python scripts/gpu_checks/chunked_loss.py [--device cpu|cuda] [--work DIR]

CUDA: a 32,000-token vocabulary, batch 8 x 256 and the real chunk size (CHUNK_BYTES: two chunks, one short);
CPU: the tiny 512-token vocabulary, batch 3 x 12, five rows per chunk (tests/test_chunked_loss.py's shapes).
"""

from __future__ import annotations

import sys

from common import parse, randomize_lora, rel_diff, verdict

ARCHS = ["llama", "gpt2", "gpt_neox", "phi3"]
LOSS_TOLERANCE, GRAD_TOLERANCE = 1e-6, 1e-4
SIZE = {"cuda": dict(vocab=32000, n=8, length=256, chunk_bytes=None), "cpu": dict(vocab=512, n=3, length=12)}
SIZE["cpu"]["chunk_bytes"] = 5 * 4 * SIZE["cpu"]["vocab"]  # five float32 rows per chunk


def _batch(vocab: int, n: int, length: int, device: str) -> dict:
    """Prompt positions ignored, the last row shorter (padded): the target positions differ per row."""
    import torch

    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[:, : length // 3] = -100
    labels[-1, -length // 4 :], mask[-1, -length // 4 :] = -100, 0
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


def _grads(model) -> dict:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def compare(arch: str, device: str, head: bool) -> tuple[float, float, bool]:
    """(summed-loss rel diff in training, in evaluation, LoRA-gradient rel diff, counts equal) for one model."""
    import torch

    from lorasweep.lora import apply_lora
    from lorasweep.model.load import build_tiny
    from lorasweep.step.lm_loss import CHUNK_BYTES, causal_lm_losses, full_logits_losses

    size = SIZE[device]
    torch.manual_seed(0)
    positions = {"gpt2": {"n_positions": 512}, "gpt_neox": {}}.get(arch, {"max_position_embeddings": 512})
    model = build_tiny(arch, vocab_size=size["vocab"], **positions).to(device).train()
    apply_lora(model, "all", rank=4, alpha=8, dropout=0.1, modules_to_save=["lm_head"] if head else None)
    randomize_lora(model)
    batch = _batch(size["vocab"], size["n"], size["length"], device)
    inputs, labels = {k: batch[k] for k in ("input_ids", "attention_mask")}, batch["labels"]
    chunk = size["chunk_bytes"] or CHUNK_BYTES
    figures = []
    for training in (True, False):
        model.train(training)
        with torch.set_grad_enabled(training):
            torch.manual_seed(5)  # the same dropout masks for both
            ours = causal_lm_losses(model, inputs, labels, chunk)
            if training:
                ours[0].backward()
                mine = _grads(model)
            torch.manual_seed(5)
            ref = full_logits_losses(model(**inputs).logits.float(), labels)
            if training:
                ref[0].backward()
                theirs = _grads(model)
        same_counts = int(ours[2]) == int(ref[2]) and int(ours[3]) == int(ref[3])
        figures.append((rel_diff(float(ours[1]), float(ref[1])), same_counts))
    num = sum(float((mine[k] - theirs[k]).float().norm()) ** 2 for k in mine) ** 0.5
    den = sum(float(theirs[k].float().norm()) ** 2 for k in theirs) ** 0.5
    return figures[0][0], figures[1][0], num / max(den, 1e-30), figures[0][1] and figures[1][1] and bool(mine)


def main(argv=None) -> int:
    device, _ = parse(__doc__, argv)
    rows = []
    for arch in ARCHS:
        for head in (False, True) if arch == "llama" else (False,):
            try:
                rows.append((f"{arch}{'+head' if head else ''}", *compare(arch, device, head)))
            except Exception as exc:
                rows.append((arch, float("inf"), float("inf"), float("inf"), False))
                print(f"{arch}: {type(exc).__name__}: {exc}", file=sys.stderr)
    loss = max(max(r[1], r[2]) for r in rows)
    grad = max(r[3] for r in rows)
    ok = loss <= LOSS_TOLERANCE and grad <= GRAD_TOLERANCE and all(r[4] for r in rows)
    failed = [r[0] for r in rows if not (max(r[1], r[2]) <= LOSS_TOLERANCE and r[3] <= GRAD_TOLERANCE and r[4])]
    return verdict(
        ok,
        f"{len(rows)} models (train and eval): max loss rel diff {loss:.1e} (tolerance {LOSS_TOLERANCE:g}), "
        f"gradients {grad:.1e} ({GRAD_TOLERANCE:g}), counts {'equal' if all(r[4] for r in rows) else 'DIFFER'}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
