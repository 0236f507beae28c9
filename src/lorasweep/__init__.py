"""lorasweep: run, track and compare LoRA fine-tuning sweeps."""

__version__ = "0.1.0"
