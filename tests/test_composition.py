"""compose() merges the YAML files once per set of group choices and applies value overrides to a copy: the
result must be what a full Hydra compose of the same overrides gives — config, hash and errors."""

import os
import random

import pytest
from omegaconf import OmegaConf

from lorasweep import internals
from lorasweep.config.composition import compose_overrides, describe
from lorasweep.config.schema import compose, config_hash, register_configs
from lorasweep.errors import UserError
from lorasweep.sources import user_config_dirs

GROUPS = {
    "model": ["minilm", "tiny_gpt2", "tiny_llama", "roberta_base"],
    "data": ["synth_sentiment", "synth_sft", "glue_sst2"],
    "lora": ["qv", "qkvo", "all"],
    "trainer": ["default", "smoke"],
    "tracking": ["wandb", "none"],
    "experiment": ["gpt2_fused_qv", "llama_all_rslora"],
}
VALUES = {
    "lora.rank": lambda r: str(r.choice([1, 2, 4, 8, 16, 64])),
    "lora.alpha": lambda r: repr(r.choice([0.5, 1.0, 16.0, 32.0, 7.25])),
    "lora.targets": lambda r: r.choice(["qv", "all", "[query,value]"]),
    "lora.scaling": lambda r: r.choice(["standard", "rslora"]),
    "optim.lr": lambda r: repr(r.choice([1e-4, 3e-4, 0.0012345])),
    "trainer.max_steps": lambda r: str(r.randint(1, 500)),
    "trainer.batch_size": lambda r: str(r.choice([8, 16, 32])),
    "seed": lambda r: str(r.randint(0, 9)),
    "model.dropout": lambda r: r.choice(["null", "0.0", "0.1"]),
    "run_root": lambda r: r.choice(["runs", "/tmp/elsewhere"]),
    "data.max_length": lambda r: str(r.choice([16, 64, 128])),
}


register_configs()  # compose_overrides and hydra_compose compose against the schema config.compose registers


def compose_uncached(overrides: list[str]):
    """The reference the cache is checked against: a full Hydra compose of every override."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return internals.hydra_compose(list(overrides), internals.hydra_search_path(user_config_dirs()))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(describe(exc)) from exc


def _random_overrides(rng: random.Random) -> list[str]:
    chosen = [f"{g}={rng.choice(v)}" for g, v in GROUPS.items() if rng.random() < 0.4]
    chosen += [f"{k}={make(rng)}" for k, make in VALUES.items() if rng.random() < 0.4]
    rng.shuffle(chosen)  # groups and values interleaved, as users type them
    return chosen


@pytest.mark.slow
def test_cached_compose_equals_a_full_compose_over_random_override_sets():
    rng = random.Random(0)
    for _ in range(60):
        overrides = _random_overrides(rng)
        cached, full = compose_overrides(overrides), compose_uncached(overrides)
        assert OmegaConf.to_yaml(cached) == OmegaConf.to_yaml(full), overrides
        assert config_hash(cached) == config_hash(full), overrides
        assert OmegaConf.is_struct(cached.lora) == OmegaConf.is_struct(full.lora)


@pytest.mark.parametrize(
    "overrides",
    [
        ["lora.rank=abc"],
        ["lora.rnk=4"],
        ["+lora.rnk=4", "lora=all"],
        ["lora=nope"],
        ["trainer.max_steps=[1,2]"],
        ["seed=x", "model=tiny_gpt2"],
    ],
)
def test_cached_compose_fails_like_a_full_compose(overrides):
    with pytest.raises(ValueError) as cached:
        compose(overrides)
    try:
        compose_uncached(overrides)
        from lorasweep.config.schema import check_keys

        check_keys(compose_uncached(overrides))
    except ValueError as full:
        assert str(cached.value) == str(full)
    else:
        pytest.fail(f"a full compose accepted {overrides}")


def test_a_cached_copy_is_never_shared():
    first = compose(["lora.rank=4"])
    first.lora.rank = 99
    assert compose([]).lora.rank == 8 and compose(["lora.rank=4"]).lora.rank == 4


def test_a_changed_user_config_file_is_read_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "lora").mkdir(parents=True)
    mine = tmp_path / "conf" / "lora" / "mine.yaml"
    mine.write_text("targets: qv\nrank: 4\n")
    assert compose(["lora=mine"]).lora.rank == 4
    mine.write_text("targets: qv\nrank: 12\n")
    os.utime(mine, ns=(mine.stat().st_atime_ns, mine.stat().st_mtime_ns + 1_000_000))  # coarse mtimes
    assert compose(["lora=mine"]).lora.rank == 12
