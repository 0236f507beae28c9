"""One validation path: everything about a config that can be judged without training, judged once, before any
file or lock is written, by `check_config` (train, train --cfg, sweep's spec validation, worker, estimate,
reproduce all call it).

    keys and values          config.check_keys / config.validate (compose runs them)
    model <-> task           an encoder (BERT) cannot be trained as a causal LM; a model without a
                             sequence-classification class cannot classify
    targets <-> architecture LoRA applied to the model's skeleton (meta tensors: no weights loaded, no memory),
                             so an unknown preset, a module list matching nothing, a rank above a matrix's
                             size or a modules_to_save entry matching nothing fail here, with apply_lora's message
    the run root             a directory this process can create and write (probed, then removed)
    the data                 the tokenizer files, the chat template, every row tokenised as the run will
                             (columns, labels, roles, templates, max_length): data/; in memory, nothing
                             written, kept for this process's run to save as its tokenised cache entry

Where the architecture cannot be known offline (a hub id not in the local cache), the model checks are left to
the load, which fails with its own one-line error.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError


def check_config(cfg: DictConfig, run_root: bool = True, data: bool = True) -> None:
    """Raise a one-line UserError for the first thing wrong with `cfg` (keys and values were checked at compose)."""
    check_model(cfg)
    if run_root:
        check_run_root(cfg.run_root)
    if data:
        check_data(cfg)


def check_data(cfg: DictConfig) -> None:
    """The rows as the run will tokenise them (a hub dataset or model not available offline: left to the load)."""
    from ..data import check_encoding
    from ..data.chat import require_template
    from ..data.styles import style_of

    tokenizer = _tokenizer(_json(cfg.model))
    if tokenizer is None:
        return
    if style_of(cfg.data) == "chat":
        require_template(tokenizer, cfg.data.chat_template, cfg.model.name)
    check_encoding(cfg.data, tokenizer, Path(cfg.run_root) / ".cache" / "tokenized")


@functools.lru_cache(maxsize=4)
def _tokenizer(model_json: str):
    from ..model.load import offline_tokenizer

    return offline_tokenizer(OmegaConf.create(json.loads(model_json)))


def check_model(cfg: DictConfig) -> None:
    """Model <-> task and LoRA targets <-> architecture, on the model's skeleton; cached per model/LoRA choice
    (a sweep worker checks every trial)."""
    lora_skeleton(cfg)


def lora_skeleton(cfg: DictConfig):
    """The model with LoRA applied, on the meta device (shapes, names, which parameters train; no weights), or
    None where the architecture cannot be known offline. Cached: treat it as read-only."""
    return _lora_skeleton(_json(cfg.model), cfg.data.task, int(cfg.data.num_labels), _json(cfg.lora))


def _json(node) -> str:
    return json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True)


@functools.lru_cache(maxsize=16)
def _lora_skeleton(model_json: str, task: str, num_labels: int, lora_json: str):
    base = _bare_skeleton(model_json, task, num_labels)
    if base is None:
        return None
    model = copy.deepcopy(base)  # on meta: a copy of names and shapes, milliseconds
    _apply_lora_to(model, OmegaConf.create(json.loads(lora_json)), task)
    return model


@functools.lru_cache(maxsize=8)
def _bare_skeleton(model_json: str, task: str, num_labels: int):
    """The base model's skeleton, once per model: a sweep checks many LoRA settings on one base."""
    from ..model.hub_config import architecture_config
    from ..model.load import skeleton

    model_cfg = OmegaConf.create(json.loads(model_json))
    config = architecture_config(model_cfg, missing_ok=True)
    if config is None:
        return None
    check_task(config, task, model_cfg.name)
    return skeleton(config, task, num_labels)


def check_task(config, task: str, label: str) -> None:
    """Whether transformers can build a trained-for-`task` model of this architecture."""
    from transformers.models.auto import modeling_auto as auto

    mtype = config.model_type
    if task == "causal_lm":
        # BERT-family encoders have a *ForCausalLM class, but it needs is_decoder=True (weights trained as a
        # decoder); built from an encoder checkpoint it is an encoder with a fresh LM head, not a language model.
        encoder = mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
        if mtype not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder:
            raise UserError(
                f"model {label} ({mtype}) is an encoder and cannot be trained as a causal LM "
                f"(data.task=causal_lm); choose a decoder model (model=tiny_gpt2, model=tiny_llama, ...) "
                f"or a classification dataset"
            )
    elif task != "causal_lm" and mtype not in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UserError(
            f"model {label} ({mtype}) has no sequence-classification class in transformers; "
            f"choose another model for data.task={task}"
        )


def _apply_lora_to(model, lora, task: str) -> None:
    from ..lora.inject import apply_lora_config
    from ..model.adapt import modules_to_save

    apply_lora_config(model, lora, modules_to_save(lora, task, model))


def check_run_root(path: str | os.PathLike) -> None:
    """The run root can be created and written: probed with a temporary directory inside the nearest existing
    ancestor (removed at once), so bad input writes nothing and good input is not yet created."""
    root = Path(path).expanduser()
    hint = "choose a writable directory with run_root=DIR (or --run-root DIR)"
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run root {root}: {existing} is a file, not a directory; {hint}")
    try:  # a directory made where the run root (or its first missing level) would go: as creating it would be
        os.rmdir(tempfile.mkdtemp(prefix=".lorasweep-probe-", dir=existing))
    except OSError as exc:
        raise UserError(f"run root {root} cannot be created or written ({exc.strerror or exc}); {hint}") from None
