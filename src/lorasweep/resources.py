"""Base models and tokenised data kept between runs of one process (a sweep worker).

Each run gets a fresh deep copy of the base model exactly as a new process would have built it: the model is
built right after seeding, and the RNG state after the build is stored with it and restored on every reuse, so
the LoRA init and data order that follow are bitwise the same as in a fresh process.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .checkpoint import capture_rng, restore_rng
from .data import tokenized_splits
from .models import build_model


class Resources:
    def __init__(self, keep: bool = True):
        self.keep = keep  # False: build everything anew (what a one-off `lorasweep train` does)
        self._models: dict[str, tuple] = {}
        self._data: dict[str, tuple] = {}

    def model(self, cfg: DictConfig):
        """(model, tokenizer) for cfg.model, seeded with cfg.seed; a private copy the caller may modify."""
        from accelerate.utils import set_seed

        key = json.dumps([OmegaConf.to_container(cfg.model), cfg.data.task, cfg.data.num_labels, cfg.seed])
        if key in self._models:
            model, tokenizer, rng = self._models[key]
            restore_rng(rng)
            return copy.deepcopy(model), tokenizer
        set_seed(cfg.seed)  # before the head (and later the LoRA A matrices) are drawn
        model, tokenizer = build_model(cfg.model, cfg.data.task, cfg.data.num_labels)
        if self.keep:
            rng = capture_rng()
            self._models[key] = (copy.deepcopy(model), tokenizer, rng)
        return model, tokenizer

    def datasets(self, cfg: DictConfig, tokenizer, cache_dir: Path):
        """Tokenised (train, eval) examples as lists of dicts (row access from Arrow is slow)."""
        key = json.dumps([OmegaConf.to_container(cfg.data), id(tokenizer), str(cache_dir)])
        if key not in self._data:
            train_set, eval_set = tokenized_splits(cfg.data, tokenizer, cache_dir)
            data = (train_set.to_list(), eval_set.to_list())
            if not self.keep:
                return data
            self._data[key] = data
        return self._data[key]
