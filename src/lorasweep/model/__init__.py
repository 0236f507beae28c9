"""The frozen base model: loading it (load.py: the packaged MiniLM, hub ids, local folders, tiny models from a
config), its transformers config without weights (hub_config.py, offline first; shipped large-model configs in
known_configs/), quantizing it (quantize.py, bitsandbytes_check.py), adapting it as the config says (adapt.py:
LoRA and gradient checkpointing) and copies that share one base's frozen tensors (shared_base.py, for packs).

May import: lora, choices, errors, fileio.
"""
