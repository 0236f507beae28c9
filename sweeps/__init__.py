"""Packaged as lorasweep.sweeps: the sweep specs a user starts from (`lorasweep sweep NAME.yaml`)."""
