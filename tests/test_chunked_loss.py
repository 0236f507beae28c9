"""The causal-LM loss at the target positions, in chunks (step/lm_loss.py): the same loss, accuracy and gradients as
the full-vocabulary computation it replaced, on every causal architecture, and the logits never held whole."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_lora, tiny

from lorasweep.estimate.live import LiveBytes
from lorasweep.lora import apply_lora
from lorasweep.step.lm_loss import causal_lm_losses
from lorasweep.step.tasks import evaluate, forward_loss

ARCHS = ["gpt2", "llama", "gpt_neox", "phi3"]
VOCAB = 512  # models.TINY_CONFIGS
FIVE_ROWS = 5 * 4 * VOCAB  # chunk_bytes giving 5 rows per chunk: several chunks and a short last one


def _batch(seed=0, n=3, length=12):
    """Prompt positions ignored, one shorter (padded) row: the target positions differ per row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=generator)
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[:, :4] = -100
    labels[-1, length - 3 :], mask[-1, length - 3 :] = -100, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _reference(model, batch):
    """What step/tasks.py computed before: full logits in float32, shifted, cross-entropy over the trained tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    flat, target = logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    total = F.cross_entropy(flat, target, ignore_index=-100, reduction="sum")
    trained = target != -100
    return total / trained.sum(), total.detach(), trained.sum(), ((flat.argmax(-1) == target) & trained).sum()


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _compare(model, batch, chunk_bytes=FIVE_ROWS, autocast=False, grad_tolerance=(1e-5, 1e-6)):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(5)  # the same dropout masks for both
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        ours = causal_lm_losses(model, inputs, batch["labels"], chunk_bytes)
        ours[0].backward()
        mine = _grads(model)
        torch.manual_seed(5)
        ref = _reference(model, batch)
        ref[0].backward()
        theirs = _grads(model)
    assert abs(float(ours[1]) - float(ref[1])) <= 1e-6 * max(1.0, abs(float(ref[1])))
    assert abs(float(ours[0].detach()) - float(ref[0].detach())) <= 1e-6
    assert int(ours[2]) == int(ref[2]) == 8 + 8 + 5 and int(ours[3]) == int(ref[3])
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        rtol, atol = grad_tolerance
        torch.testing.assert_close(mine[name], theirs[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_loss_accuracy_and_gradients_as_full_logits(arch):
    model = tiny(arch).train()  # dropout on (GPT-2's residual dropout): both draw the same masks
    apply_lora(model, "all", rank=4, alpha=8, dropout=0.1)
    randomize_lora(model)
    _compare(model, _batch())


def test_one_chunk_and_bf16_autocast():
    model = tiny("llama").train()
    apply_lora(model, "all", rank=4, alpha=8)
    randomize_lora(model)
    _compare(model, _batch(), chunk_bytes=2**30)
    # The head under the forward's own autocast: the same loss; the gradients to bf16 rounding (the fused head
    # rounds d loss / d logits to bf16 before it is scaled by 1 / count, autograd after).
    _compare(model, _batch(1), autocast=True, grad_tolerance=(0.02, 1e-3))


def test_lora_on_the_lm_head_replays_its_dropout_in_backward():
    """The head's LoRA drops out at the target rows only (other draws than the full computation's), so the check
    is the gradient itself: in float64, under the same seed (the same masks), it is the loss's derivative along a
    random direction, as central differences measure it (the head only: Llama's RMSNorm rounds to float32)."""
    model = tiny("llama").double().train()
    apply_lora(model, ["lm_head"], rank=4, alpha=8, dropout=0.3)
    randomize_lora(model)
    batch, params = _batch(), [p for p in model.parameters() if p.requires_grad]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def loss():
        torch.manual_seed(5)
        return causal_lm_losses(model, inputs, batch["labels"], FIVE_ROWS * 2)[0]

    loss().backward()
    generator = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    along = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))
    eps, values = 1e-6, []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(d, alpha=sign * eps)
            values.append(float(loss()))
            for p, d in zip(params, direction):
                p.sub_(d, alpha=sign * eps)
    assert along == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-7)
    assert model.lm_head.lora_A.grad.abs().sum() > 0


def test_a_tied_head_trained_whole_gets_both_gradients():
    """GPT-2's lm_head is its token embedding: trained whole (modules_to_save), it gets the gradient of both
    uses, as in the full computation."""
    model = tiny("gpt2").train()
    apply_lora(model, "qv", rank=4, alpha=8, modules_to_save=["lm_head"])
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.requires_grad
    _compare(model, _batch())


def test_the_full_logits_are_never_held():
    """Over a forward (and backward) of 8 × 64 tokens, with 1 MiB chunks, the peak stays far below the (8, 64,
    vocabulary) float32 logits the full computation held (twice, with its float copy)."""
    model = tiny("llama", vocab_size=8192).eval()
    apply_lora(model, "qv", rank=4, alpha=8)
    ids = torch.randint(0, 8192, (8, 64))
    inputs, logits_bytes = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 8 * 64 * 8192 * 4
    for grad in (True, False):
        counter = LiveBytes()
        counter.track([*model.parameters(), *model.buffers(), ids])
        start = counter.current
        with counter, torch.set_grad_enabled(grad):
            loss, *_ = causal_lm_losses(model, inputs, ids, chunk_bytes=2**20)
            if grad:
                loss.backward()
        assert counter.peak - start < logits_bytes / 2, (grad, counter.peak - start, logits_bytes)


def test_evaluate_in_micro_batches_equals_whole_batches():
    model = tiny("gpt_neox").eval()
    apply_lora(model, "all", rank=4, alpha=8)
    randomize_lora(model)
    batches = [_batch(seed, n=6) for seed in range(2)]
    with torch.no_grad():  # half the targets are what the model predicts: the accuracy is not trivially 0
        for batch in batches:
            guess = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            batch["labels"][:, 1::2] = torch.where(batch["labels"][:, 1::2] == -100, -100, guess[:, 0:-1:2])
    whole = evaluate(model, iter(batches), "causal_lm", lambda t: t)
    pieces = evaluate(model, iter(batches), "causal_lm", lambda t: t, micro_batch=4)
    assert pieces == pytest.approx(whole, rel=1e-6) and whole["eval/token_accuracy"] > 0.3
    assert pieces["eval/token_accuracy"] == whole["eval/token_accuracy"]
    reference = [_reference(model, b) for b in batches]
    tokens = sum(int(r[2]) for r in reference)
    assert whole["eval/loss"] == pytest.approx(sum(float(r[1]) for r in reference) / tokens, abs=1e-6)
    assert whole["eval/token_accuracy"] == sum(int(r[3]) for r in reference) / tokens


def test_a_soft_capped_head_takes_the_full_computation():
    """Gemma-2 applies tanh soft-capping after its head: the chunked path would skip it, so it is not taken."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, head_dim=16)
    config = Gemma2Config(vocab_size=VOCAB, num_key_value_heads=1, final_logit_softcapping=2.0, **sizes)
    model = Gemma2ForCausalLM(config).eval()
    batch = _batch()
    with torch.no_grad():
        ours, ref = forward_loss(model, batch, "causal_lm"), _reference(model, batch)
    assert [float(t) for t in ours] == pytest.approx([float(t) for t in ref], rel=1e-6)
