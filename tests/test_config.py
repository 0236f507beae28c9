"""Composition, schema validation and the config hash."""

import json

import pytest
from omegaconf import OmegaConf

from lorasweep.config.schema import canonical_json, compose, config_hash
from lorasweep.sources import CONF_DIR

CONF_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml") if p.name != "train.yaml" and "local" not in p.parts)


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_config_file_composes(path):
    group = path.parent.relative_to(CONF_DIR).as_posix()
    cfg = compose([f"{group}={path.stem}"])
    assert cfg.model.name and cfg.data.name


def test_every_group_has_files():
    groups = {p.parent.name for p in CONF_FILES}
    assert {"model", "data", "lora", "optim", "trainer", "tracking", "cluster"} <= groups


def test_defaults_are_the_embedded_default():
    cfg = compose()
    assert (cfg.model.name, cfg.data.name, cfg.lora.targets, cfg.tracking.mode) == (
        "minilm",
        "synth_sentiment",
        "qv",
        "offline",
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rnk=3", "Key 'rnk' not in 'LoraConfig'"),
        ("lora.rank=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("model=nope", "Could not find 'model/nope'"),
        ("trainer.max_steps=0", "trainer.max_steps must be > 0"),
        ("trainer.batch_size=-2", "trainer.batch_size must be > 0"),
        ("lora.rank=0", "rank must be > 0"),
        ("lora.alpha=-1", "alpha must be a finite number > 0"),
        ("trainer.mixed_precision=fp8", "trainer.mixed_precision must be one of no, bf16, fp16"),
    ],
)
def test_bad_overrides_fail_at_compose(override, message):
    with pytest.raises(ValueError, match=message):
        compose([override])


def test_hash_ignores_key_order_and_override_order():
    a = compose(["lora.rank=16", "optim.lr=1e-3"])
    b = compose(["optim.lr=0.001", "lora.rank=16"])
    assert config_hash(a) == config_hash(b)
    shuffled = OmegaConf.create(dict(reversed(list(OmegaConf.to_container(a).items()))))
    assert config_hash(shuffled) == config_hash(a)


@pytest.mark.parametrize(
    "override",
    [
        "run_root=/elsewhere",
        "tracking=none",
        "tracking.mode=online",
        "tracking.project=other",
        "trainer.lock_timeout_s=5",
        "trainer.log_every=3",
        "trainer.progress=false",
        "trainer.checkpoint_every=5",
        "cluster.partition=gpu",
        "sweep=my_study",
    ],
)
def test_non_semantic_keys_keep_the_hash(override):
    assert config_hash(compose([override])) == config_hash(compose())


@pytest.mark.parametrize(
    "override",
    [
        "lora.rank=16",
        "lora.alpha=32",
        "lora=all",
        "lora.scaling=rslora",
        "optim.lr=1e-3",
        "seed=1",
        "model=tiny_gpt2",
        "data=synth_sft",
        "trainer.max_steps=10",
        "data.max_length=96",
        "lora.dropout=0.1",
    ],
)
def test_semantic_keys_change_the_hash(override):
    assert config_hash(compose([override])) != config_hash(compose())


def test_canonical_form_is_sorted_compact_json():
    text = canonical_json(compose())
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '"tracking"' not in text and '"run_root"' not in text and '"cluster"' not in text
    assert len(config_hash(compose())) == 12
