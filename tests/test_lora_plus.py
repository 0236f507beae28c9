"""LoRA+ (optim.lora_plus_ratio): B matrices in their own group at ratio × lr, one schedule, AdamW and 8-bit AdamW;
the new keys are hashed only when set; bad values are one-line errors."""

import math

import pytest
import torch
from conftest import randomize_lora, tiny
from omegaconf import OmegaConf

from lorasweep.config.schema import OptimConfig, canonical_json, compose, config_hash
from lorasweep.errors import UserError
from lorasweep.lora import apply_lora, lora_layers
from lorasweep.step.optim import build_optimizer, parameter_groups


def _optim(**overrides):
    return OmegaConf.merge(OmegaConf.structured(OptimConfig), overrides)


def _model(dora=False):
    model = tiny("llama", task="classification")
    apply_lora(model, "qv", rank=4, alpha=8, modules_to_save=["score"], dora=dora)
    return model


def test_b_matrices_get_their_own_group_at_ratio_times_lr():
    model = _model(dora=True)
    groups = parameter_groups(_optim(lr=1e-3, lora_plus_ratio=16.0), model)
    b = {id(layer.lora_B) for _, layer in lora_layers(model)}
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == b
    assert groups[1]["lr"] == pytest.approx(16e-3)
    rest = {id(p) for p in groups[0]["params"]}  # A, DoRA's magnitude and the head stay at lr
    assert rest == {id(p) for p in model.parameters() if p.requires_grad} - b and "lr" not in groups[0]
    assert len(parameter_groups(_optim(lr=1e-3), model)) == 1  # ratio 1: plain LoRA, one group


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_one_step_moves_b_ratio_times_further_and_the_schedule_keeps_the_ratio(name):
    if name != "adamw":
        pytest.importorskip("bitsandbytes")
    from transformers import get_scheduler

    model = _model()
    randomize_lora(model)
    starts = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(_optim(name=name, lr=1e-4, lora_plus_ratio=16.0, min_8bit_size=0), model)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    ids = torch.randint(0, 512, (4, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs[1] == pytest.approx(16 * lrs[0])
    moved = {n: (p.detach() - starts[n]).abs().mean().item() for n, p in model.named_parameters() if p.requires_grad}
    a = sum(v for n, v in moved.items() if n.endswith("lora_A")) / 4
    b = sum(v for n, v in moved.items() if n.endswith("lora_B")) / 4
    assert 8 < b / a < 32  # Adam's steps are ~lr each: B's are ~16x A's


def test_new_keys_keep_old_hashes_and_are_hashed_when_set():
    default = compose([])
    text = canonical_json(default)
    for key in ("lora_plus_ratio", "dora", '"init"'):
        assert key not in text  # at their defaults: left out, so runs filed before them keep their hash
    digests = {
        config_hash(compose(o))
        for o in ([], ["optim.lora_plus_ratio=16"], ["lora.dora=true"], ["lora.init=pissa"], ["lora.init=gaussian"])
    }
    assert len(digests) == 5


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lora_plus_ratio=0", "optim.lora_plus_ratio must be a finite number > 0"),
        ("optim.lora_plus_ratio=-16", "optim.lora_plus_ratio must be a finite number > 0"),
        ("optim.lora_plus_ratio=inf", "optim.lora_plus_ratio must be a finite number > 0"),
        ("lora.init=svd", "lora.init must be one of"),
        ("lora.init=pissa_niter_", "lora.init must be one of"),
        ("lora.dora=true model.quantization=nf4", "lora.dora=true is not supported with model.quantization=nf4"),
        ("lora.init=pissa model.quantization=int8", "lora.init=pissa needs the float base weights"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    pytest.importorskip("bitsandbytes")
    with pytest.raises(UserError, match=message) as info:
        compose(override.split())
    assert "\n" not in str(info.value)


def test_a_parameter_list_cannot_take_lora_plus():
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(build_optimizer(_optim(), params).param_groups) == 1
    with pytest.raises(UserError, match="needs the model"):
        build_optimizer(_optim(lora_plus_ratio=16.0), params)
    assert math.isclose(build_optimizer(_optim(lora_plus_ratio=16.0), model).param_groups[1]["lr"], 16 * 5e-4)
