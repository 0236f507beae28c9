"""Optuna sweeps over LoRA rank, α and target sets on top of train(cfg)."""
