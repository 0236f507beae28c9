"""Packed trials: K runs at once on one frozen base (scheduler.py: the pack; share.py: the shared base; size.py:
`--pack K|auto`). docs/packing.md says what a user sees."""
