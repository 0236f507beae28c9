"""The run's config: its typed schema and checks (schema.py), Hydra composition done once per set of group
choices (composition.py), and the config hash with the fingerprints of its inputs (fingerprints.py). Where config
files come from is lorasweep/sources.py; the values each choice key takes, lorasweep/choices.py.

May import: lora, data, model and step for their validators (each value is checked by the code that acts on it),
and the top-level helpers. Nothing that runs anything (estimate, runs, train, sweep, cli) is imported here.
"""


def __getattr__(name):
    # `from lorasweep.config import compose` (the module this package replaced) keeps working for one release.
    from .. import _moved

    return _moved.forwarded(__name__, name, "lorasweep.config.schema")
