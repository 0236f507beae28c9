"""Sweep specs (sweeps/*.yaml): what to search, the objective, sampler, pruner and budget — validated whole
before any trial starts.

    study: rank_alpha_targets
    n_trials: 12
    objectives: [{metric: eval/loss, direction: minimize}]
    sampler: {name: tpe, seed: 0}                   # tpe | random | qmc | nsga2 | grid (samplers.py)
    pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 1}
                    # median | successive_halving | hyperband | threshold | none (samplers.py)
    fixed: [trainer.max_steps=60]                   # overrides for every trial
    params:
      lora.rank: {type: categorical, choices: [2, 4, 8, 16]}
      lora.alpha: {type: float, low: 0.5, high: 4, log: true, per_rank: true}   # α = value × rank
      lora.targets: {type: categorical, choices: [qv, all]}
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}

`sampler: {name: grid}` runs every point of the product of the (categorical) params exactly once: the budget
is the grid's size, so n_trials may be left out and must equal it when given; every point is queued with its
values fixed, so any number of workers run each point once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError, one_line
from ..pack.size import parse_pack
from ..runs.metrics import objective_names
from .samplers import PRUNERS, SAMPLERS

PARAM_TYPES = ("int", "float", "categorical")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "per_rank"}
_SPEC_KEYS = {
    "study",
    "n_trials",
    "objectives",
    "sampler",
    "pruner",
    "fixed",
    "params",
    "storage",
    "description",
    "memory_cap",
    "pack",
}  # memory_cap: 80GiB: trials predicted over it are not trained (estimate/fit.py); pack: K | auto (pack/)


@dataclass
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None
    per_rank: bool = False  # lora.alpha only: the sampled value is α/r, so α = value × rank

    def config_value(self, sampled, values: dict) -> Any:
        """The config's value for a sampled one: α = sampled × rank for a per_rank lora.alpha."""
        return float(sampled) * float(values.get("lora.rank", 1)) if self.per_rank else sampled

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class Objective:
    metric: str
    direction: str = "minimize"


@dataclass
class SweepSpec:
    study: str
    n_trials: int
    objectives: list[Objective]
    params: list[Param]
    fixed: list[str] = field(default_factory=list)
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    storage: str | None = None
    source: str = ""
    pack: int | str | None = None  # trials a worker trains at once on one frozen base: K | auto; None: 1

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        return cls(
            **{
                **data,
                "objectives": [Objective(**o) for o in data["objectives"]],
                "params": [Param(**p) for p in data["params"]],
            }
        )

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Hydra overrides for one trial's sampled values (only those: the caller orders them after `fixed`
        and the command line, see sweep.worker.trial_overrides)."""
        return [f"{p.key}={_override_value(p.config_value(values[p.key], values))}" for p in self.params]


def trial_overrides(spec: SweepSpec, cli_overrides: list[str], values: dict) -> list[str]:
    """Precedence, lowest first: schema defaults < config groups < the spec's `fixed` < the command line <
    the trial's sampled values (Hydra applies overrides in order, so a later one wins)."""
    return [*spec.fixed, *cli_overrides, *spec.overrides(values), f"sweep={spec.study}"]


def _values_to_check(param: Param, params: list[Param]) -> list:
    """A categorical's every choice; a range's two ends."""
    return list(param.choices) if param.type == "categorical" else [param.low, param.high]


def _rank_hint(params: list[Param]) -> dict:
    """For a per-rank α alone: the smallest searched rank (the value checked is α/r × that rank)."""
    ranks = next((p.choices or [p.low] for p in params if p.key == "lora.rank"), [1])
    return {"lora.rank": min(ranks)}


def _override_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {one_line(exc)}") from None
    return parse_spec(data, default_study=path.stem, source=str(path))


def parse_spec(data: dict, default_study: str, source: str = "") -> SweepSpec:
    where = source or "sweep spec"
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: a sweep spec is a YAML mapping (study:, params:, ...), got a "
            f"{_yaml_kind(data)}; see sweeps/*.yaml for examples"
        )
    if not isinstance(data.get("params") or {}, dict):
        raise UserError(
            f"{where}: params is a mapping of config key -> {{type: ..., ...}}, got a {_yaml_kind(data['params'])}"
        )
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_SPEC_KEYS))}"
        )
    params = []
    for key, body in (data.get("params") or {}).items():
        params.append(_parse_param(key, body or {}, where))
    if not params:
        raise UserError(f"{where}: no params to search")
    objectives = data.get("objectives") or [{"metric": "eval/loss", "direction": "minimize"}]
    sampler = {"name": "tpe", "seed": 0, **(data.get("sampler") or {})}
    if sampler["name"] not in SAMPLERS:
        raise UserError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {sampler['name']!r}")
    default_budget = len(grid_points(params, where)) if sampler["name"] == "grid" else 10
    spec = SweepSpec(
        study=str(data.get("study") or default_study),
        n_trials=int(data.get("n_trials", default_budget)),
        objectives=[Objective(**o) for o in objectives],
        params=params,
        fixed=[*_memory_cap_override(data.get("memory_cap"), where), *(str(f) for f in data.get("fixed") or [])],
        sampler=sampler,
        pruner={"name": "median", **(data.get("pruner") or {})},
        storage=data.get("storage"),
        source=source,
        pack=None if data.get("pack") is None else parse_pack(data["pack"], f"{where}: pack"),
    )
    if spec.n_trials <= 0:
        raise UserError(f"{where}: n_trials must be > 0, got {spec.n_trials}")
    for o in spec.objectives:
        if o.direction not in ("minimize", "maximize"):
            raise UserError(f"{where}: objective direction must be minimize or maximize, got {o.direction!r}")
    check_grid_budget(spec, where)
    if spec.pruner["name"] not in PRUNERS:
        raise UserError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {spec.pruner['name']!r}")
    if len(spec.objectives) > 1 and spec.pruner["name"] != "none":
        raise UserError(f"{where}: pruning needs a single objective; set pruner: {{name: none}} for multi-objective")
    return spec


def _yaml_kind(value) -> str:
    return {list: "list", str: "plain string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _memory_cap_override(cap, where: str) -> list[str]:
    """The spec's memory_cap as the first fixed override (cluster.memory_cap): the command line's --memory-cap
    comes later and wins."""
    if cap is None:
        return []
    from ..estimate.byte_sizes import parse_memory_size

    parse_memory_size(cap, f"{where}: memory_cap")
    return [f"cluster.memory_cap={str(cap).replace(' ', '')}"]


def grid_points(params: list[Param], where: str = "sweep spec") -> list[dict]:
    """Every point of a grid sampler's space, in spec order (the first param varies slowest)."""
    import itertools

    for param in params:
        if param.type != "categorical":
            raise UserError(
                f"{where}: sampler grid needs categorical params; {param.key} is a {param.type} range "
                f"(list its values: {{type: categorical, choices: [...]}})"
            )
    return [dict(zip([p.key for p in params], values)) for values in itertools.product(*(p.choices for p in params))]


def check_grid_budget(spec: SweepSpec, where: str = "sweep spec") -> None:
    """A grid's budget is its size: a different n_trials (spec or --n-trials) is an error, not a partial grid."""
    if spec.sampler["name"] != "grid":
        return
    size = len(grid_points(spec.params, where))
    if spec.n_trials != size:
        raise UserError(
            f"{where}: sampler grid runs each of its {size} points once; n_trials {spec.n_trials} "
            f"differs (leave n_trials out)"
        )


def _parse_param(key: str, body: dict, where: str) -> Param:
    unknown = set(body) - _PARAM_KEYS
    if unknown:
        raise UserError(f"{where}: param {key}: unknown field(s) {', '.join(sorted(unknown))}")
    kind = body.get("type")
    if kind not in PARAM_TYPES:
        raise UserError(f"{where}: param {key}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    param = Param(key=key, **{k: v for k, v in body.items()})
    if kind == "categorical":
        if not param.choices:
            raise UserError(f"{where}: param {key}: categorical needs a non-empty choices list")
        if any(not isinstance(c, (str, int, float, bool)) for c in param.choices):
            raise UserError(f"{where}: param {key}: choices must be strings or numbers")
    else:
        if param.low is None or param.high is None:
            raise UserError(f"{where}: param {key}: {kind} needs low and high")
        if param.low > param.high:
            raise UserError(f"{where}: param {key}: low ({param.low}) > high ({param.high})")
        if param.log and param.low <= 0:
            raise UserError(f"{where}: param {key}: log scale needs low > 0")
    if param.per_rank and key != "lora.alpha":
        raise UserError(f"{where}: param {key}: per_rank applies to lora.alpha only")
    return param


def validate_against_config(spec: SweepSpec, overrides: list[str]) -> DictConfig:
    """Every searched key exists in the composed config, every choice (and each end of a range) passes the checks
    train() makes first (training/preflight.py), and every objective is a metric train() reports. Returns the
    base config."""
    from ..config.schema import compose
    from ..training.preflight import check_config

    cfg = compose([*spec.fixed, *overrides])
    check_config(cfg)
    for param in spec.params:
        if OmegaConf.select(cfg, param.key, default="__missing__") == "__missing__":
            raise UserError(f"sweep param {param.key!r} is not a key of the training config")
    for param in spec.params:
        for value in _values_to_check(param, spec.params):
            override = f"{param.key}={_override_value(param.config_value(value, _rank_hint(spec.params)))}"
            try:
                check_config(compose([*spec.fixed, *overrides, override]), run_root=False)
            except UserError as exc:
                raise UserError(f"sweep param {param.key}, value {value!r}: {exc}") from None
    if any(p.per_rank for p in spec.params) and not any(p.key == "lora.rank" for p in spec.params):
        raise UserError("lora.alpha with per_rank needs lora.rank among the searched params")
    known = objective_names(cfg.data.task)
    for o in spec.objectives:
        if o.metric not in known:
            raise UserError(
                f"objective metric {o.metric!r} is never reported for task {cfg.data.task}; "
                f"choose from {', '.join(sorted(known))}"
            )
    if spec.pruner["name"] != "none" and not spec.objectives[0].metric.startswith("eval/"):
        raise UserError(f"pruning reports eval metrics during training; {spec.objectives[0].metric} is not one")
    return cfg
