"""Packed trials: K runs at once on one frozen base (scheduler.py: the pack; state.py: what a trial takes with
it at each switch; size.py: `--pack K|auto`; the shared base itself is model/shared_base.py).
docs/packing.md says what a user sees.

May import: training (each trial is a run), model, lora and the top-level helpers.
"""
