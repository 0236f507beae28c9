"""Packaged as lorasweep.conf: Hydra finds these config groups as pkg://lorasweep.conf (see README)."""
