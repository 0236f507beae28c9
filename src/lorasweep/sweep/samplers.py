"""The samplers and pruners a sweep spec may name: one table each, name -> how Optuna's object is built.

The spec's validation (spec.py) accepts exactly these names, and study.py builds from the same entries, so a
name is declared once. Each builder takes the spec and the spec's options for it (`sampler: {name: tpe,
n_startup_trials: 8}`); an option Optuna does not take is a one-line UserError.
"""

from __future__ import annotations

import optuna

from ..errors import UserError


# Trials predicted over the memory cap are infeasible (estimate.fit.constraint). Imported when a sampler is built:
# the estimate imports torch, which `status` and `report` (they validate specs here) never need.
def _tpe(spec, **options):
    from ..estimate.fit import constraint

    return optuna.samplers.TPESampler(
        **{"n_startup_trials": 4, "constraints_func": constraint, "multivariate": len(spec.params) > 1, **options}
    )


def _nsga2(spec, **options):
    from ..estimate.fit import constraint

    return optuna.samplers.NSGAIISampler(**{"constraints_func": constraint, **options})


def _grid(spec, **options):
    # Grid points are queued with fixed values (study.create_study), so the sampler only names the space.
    return optuna.samplers.GridSampler({p.key: list(p.choices) for p in spec.params}, **options)


SAMPLERS = {
    "tpe": _tpe,
    "random": lambda spec, **o: optuna.samplers.RandomSampler(**o),
    "qmc": lambda spec, **o: optuna.samplers.QMCSampler(**{"scramble": True, "warn_independent_sampling": False, **o}),
    # multi-objective (a genetic algorithm; fine for one too)
    "nsga2": _nsga2,
    "grid": _grid,
}
PRUNERS = {
    "median": lambda **o: optuna.pruners.MedianPruner(**{"n_startup_trials": 3, "n_warmup_steps": 0, **o}),
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,  # at each rung only the best 1/factor go on
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,  # stop any trial whose value leaves [lower, upper]
    "none": optuna.pruners.NopPruner,
}


def make_sampler(spec):
    name = spec.sampler["name"]
    options = {k: v for k, v in spec.sampler.items() if k not in ("name", "seed")}
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    try:
        return SAMPLERS[name](spec, seed=spec.sampler.get("seed"), **options)
    except TypeError as exc:  # an option the sampler does not take
        raise UserError(f"sampler {name}: {exc}") from None


def make_pruner(spec):
    name = spec.pruner["name"]
    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    try:
        return PRUNERS[name](**options)
    except TypeError as exc:  # an option the pruner does not take
        raise UserError(f"pruner {name}: {exc}") from None
