"""scripts/gpu_check.py's parts: catalog.py (the checks, their groups and time limits), runner.py (running one,
the merged table), and the check scripts, each runnable alone with `--device cpu|cuda` (common.py: what they
share): bf16_adapters.py, pack_checkpointing.py, mixed_serving.py, chunked_loss.py."""
