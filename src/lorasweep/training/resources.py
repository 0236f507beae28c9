"""Base models and tokenised data kept between runs of one process (a sweep worker).

Each run gets a fresh deep copy of the base model exactly as a new process would have built it: the model is
built right after seeding, and the RNG state after the build is stored with it and restored on every reuse, so
the LoRA init and data order that follow are bitwise the same as in a fresh process.

In a pack (`pack` set: lorasweep/pack/), the copies share the frozen tensors with the kept base instead: K trials
hold one base; the same pretrained weights kept for two seeds are held once too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..data import tokenized_data
from ..model.load import build_model
from ..model.shared_base import adopt_equal_tensors, private_modules, shared_copy, shares_base
from .checkpoint import capture_rng, restore_rng


class Resources:
    def __init__(self, keep: bool = True, pack=None):
        self.keep = keep  # False: build everything anew (what a one-off `lorasweep train` does)
        self.pack = pack  # a pack.Pack: this worker trains several trials at once on shared frozen tensors
        self._models: dict[str, tuple] = {}
        self._data: dict[str, tuple] = {}

    def model(self, cfg: DictConfig):
        """(model, tokenizer) for cfg.model, seeded with cfg.seed; a private copy the caller may modify."""
        from accelerate.utils import set_seed

        key = json.dumps([OmegaConf.to_container(cfg.model), cfg.data.task, cfg.data.num_labels, cfg.seed])
        if key in self._models:
            model, tokenizer, rng = self._models[key]
            restore_rng(rng)
            return self._copy(cfg, model), tokenizer
        set_seed(cfg.seed)  # before the head (and later the LoRA A matrices) are drawn
        model, tokenizer = build_model(cfg.model, cfg.data.task, cfg.data.num_labels)
        if self.keep or self.pack is not None:
            rng = capture_rng()
            if self.pack is not None:  # the same base kept for another seed: its equal tensors are held once
                for other_key, (other, *_) in self._models.items():
                    if json.loads(other_key)[:3] == json.loads(key)[:3]:
                        adopt_equal_tensors(model, other)
                        break
            self._models[key] = (model, tokenizer, rng)
            return self._copy(cfg, model), tokenizer
        return model, tokenizer

    def _copy(self, cfg: DictConfig, model):
        """A private copy; in a pack, one that shares the frozen tensors (unless the trial changes its base)."""
        if self.pack is not None and shares_base(cfg):
            return shared_copy(model, private_modules(cfg, model))
        return copy.deepcopy(model)

    def datasets(self, cfg: DictConfig, tokenizer, cache_dir: Path):
        """Tokenised (train, eval) examples as lists of dicts (row access from Arrow is slow), and the data's info
        (label names, what max_length dropped or truncated: data/cache.py)."""
        key = json.dumps([OmegaConf.to_container(cfg.data), id(tokenizer), str(cache_dir)])
        if key not in self._data:
            tokenized = tokenized_data(cfg.data, tokenizer, cache_dir)
            data = (tokenized.train.to_list(), tokenized.eval.to_list(), tokenized.info)
            if not self.keep:
                return data
            self._data[key] = data
        return self._data[key]
