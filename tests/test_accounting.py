import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from lorasweep.lora import apply_lora
from lorasweep.lora.accounting import count_parameters, optimizer_state_breakdown, optimizer_state_bytes


def test_roberta_base_qv_r8_matches_lora_paper():
    """LoRA paper, Table 2: RoBERTa-base with LoRA on Wq, Wv at r=8 trains 0.3M parameters."""
    torch.manual_seed(0)
    config = RobertaConfig()  # roberta-base's architecture, random init
    model = RobertaForSequenceClassification(config)
    report = apply_lora(model, "qv", rank=8, alpha=16)
    expected = config.num_hidden_layers * 2 * 8 * (config.hidden_size + config.hidden_size)
    assert report.lora_parameters == expected == 294_912
    assert count_parameters(model).trainable == 294_912  # the head stays frozen unless listed


def test_adamw_state_is_two_fp32_moments_per_trainable_parameter(minilm, minilm_batch):
    report = apply_lora(minilm, "qv", rank=8, alpha=16, modules_to_save=["classifier"])
    trainable = [p for p in minilm.parameters() if p.requires_grad]
    counts = count_parameters(minilm)
    assert counts.trainable == report.trainable == sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    assert optimizer_state_bytes(optimizer) == 0
    minilm.train()
    minilm(**minilm_batch, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    breakdown = optimizer_state_breakdown(optimizer)
    assert breakdown["exp_avg"] + breakdown["exp_avg_sq"] == 2 * 4 * counts.trainable
    assert breakdown["step"] == 4 * len(trainable)  # one fp32 scalar step counter per parameter tensor
    assert optimizer_state_bytes(optimizer) == 2 * 4 * counts.trainable + 4 * len(trainable)
    assert counts.fraction < 0.01
