"""Row shapes -> (input_ids, labels): one function per shape, the same for training, evaluation, `data --show`
and serving prompts.

    sequence         classification / regression: text_field (+ text_pair_field, the tokenizer's pair
                     encoding) -> the label id or float
    prompt_response  causal_lm: BOS + prompt + SFT_SEPARATOR (not trained) + response + EOS (trained); the prompt
                     is prompt_field, or prompt_template rendered over the row
    chat             causal_lm: messages_field through the chat template, trained on train_on (chat.py)
    text             causal_lm: BOS + text + EOS, every token trained (continued pre-training, completion)

Each encoder counts what data.max_length did: rows truncated, and rows dropped because nothing trained was left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..choices import DATA_STYLES, SEQUENCE_TASKS, TRAIN_ON
from ..errors import UserError
from . import chat
from .labels import encode_labels
from .templates import chat_template_text, render_prompt
from .tokens import IGNORE, end_token, start_tokens

SFT_SEPARATOR = "\n### Response:\n"  # between prompt and response; counted as prompt (no loss)
SEQUENCE = "sequence"  # the style of classification and regression rows


def style_of(cfg) -> str:
    if cfg.task in SEQUENCE_TASKS:
        return SEQUENCE
    return cfg.style or "prompt_response"


def required_columns(cfg) -> dict[str, str]:
    """{config key: column} the rows must have (a prompt template names its own columns: checked on render)."""
    style = style_of(cfg)
    if style == SEQUENCE:
        keys = ("text_field", "text_pair_field", "label_field")
    elif style == "prompt_response":
        keys = ("response_field",) if cfg.prompt_template is not None else ("prompt_field", "response_field")
    elif style == "chat":
        keys = ("messages_field",)
    else:
        keys = ("text_field",)
    return {f"data.{k}": cfg[k] for k in keys if cfg[k] is not None}


def check_data_config(data, trainer) -> None:
    """Settings that contradict each other, before anything is loaded (config.validate calls this)."""
    if data.style is not None and data.style not in DATA_STYLES:
        raise UserError(f"data.style must be one of {', '.join(DATA_STYLES)}; got {data.style!r}")
    sequence = data.task in SEQUENCE_TASKS
    if sequence and data.style not in (None, "text"):
        raise UserError(f"data.style={data.style} is for data.task=causal_lm; {data.task} reads data.text_field")
    if not sequence and data.text_pair_field is not None:
        raise UserError("data.text_pair_field is for classification and regression (a sentence pair)")
    if data.prompt_template is not None and style_of(data) != "prompt_response":
        raise UserError(f"data.prompt_template is for data.style=prompt_response, not {style_of(data)}")
    if data.chat_template is not None and style_of(data) != "chat":
        raise UserError("data.chat_template is for data.style=chat")
    if data.train_on not in TRAIN_ON:
        raise UserError(f"data.train_on must be one of {', '.join(TRAIN_ON)}; got {data.train_on!r}")
    if data.label_names is not None and data.task != "classification":
        raise UserError("data.label_names is for data.task=classification")
    if trainer.eval_generate < 0:
        raise UserError(f"trainer.eval_generate must be >= 0, got {trainer.eval_generate}")
    if trainer.eval_generate and style_of(data) not in ("prompt_response", "chat"):
        raise UserError("trainer.eval_generate needs prompts to generate from: data.style=prompt_response or chat")


@dataclass
class Encoding:
    """What one split's rows encode with: the config, the tokenizer, label names, and the counts it keeps."""

    cfg: object
    tokenizer: object
    names: list[str] | None = None
    with_prompts: bool = False  # eval split of a causal LM: keep each row's prompt ids and reference response
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.template = chat_template_text(self.cfg.chat_template)

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        self.counts["rows"] += len(indices)
        return ENCODERS[style_of(self.cfg)](self, batch, indices)

    def columns(self) -> list[str]:
        """The encoded columns (every batch has all of them, even one whose rows were all dropped)."""
        out = ["input_ids", "attention_mask", "labels"]
        if self.cfg.task in SEQUENCE_TASKS and self.cfg.text_pair_field is not None:
            out += ["token_type_ids"] if "token_type_ids" in self.tokenizer.model_input_names else []
        return out + (["prompt_ids", "reference"] if self.with_prompts else [])

    def output(self) -> dict:
        return {c: [] for c in self.columns()}

    def keep(self, out: dict, ids: list[int], labels, truncated: bool, **extra) -> None:
        self.counts["truncated"] += truncated
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
        for key, value in extra.items():
            out[key].append(value)

    def drop(self) -> None:
        self.counts["dropped"] += 1


def _encode_sequence(e: Encoding, batch: dict, indices: list[int]) -> dict:
    cfg, limit = e.cfg, e.cfg.max_length
    pairs = list(batch[cfg.text_pair_field]) if cfg.text_pair_field else None
    enc = e.tokenizer(list(batch[cfg.text_field]), pairs, truncation=True, max_length=limit)
    full = [len(ids) == limit for ids in enc["input_ids"]]  # only these can have been cut: measure them whole
    if any(full):
        rows = [k for k, f in enumerate(full) if f]
        whole = e.tokenizer(
            [batch[cfg.text_field][k] for k in rows], [pairs[k] for k in rows] if pairs else None, truncation=False
        )["input_ids"]
        for k, ids in zip(rows, whole):
            full[k] = len(ids) > limit
    labels = encode_labels(list(batch[cfg.label_field]), cfg, e.names)
    out = e.output()
    for k, ids in enumerate(enc["input_ids"]):
        extra = {"token_type_ids": enc["token_type_ids"][k]} if "token_type_ids" in out else {}
        e.keep(out, ids, labels[k], full[k], **extra)
    return out


def _prompts(e: Encoding, batch: dict, indices: list[int]) -> list[str]:
    cfg = e.cfg
    if cfg.prompt_template is None:
        return list(batch[cfg.prompt_field])
    rows = [{c: batch[c][k] for c in batch} for k in range(len(indices))]
    return [render_prompt(cfg.prompt_template, row, i) for row, i in zip(rows, indices)]


def sft_prompt_ids(prompts: list[str], tokenizer) -> list[list[int]]:
    """Each prompt's token ids as SFT trains on them and generation starts from: BOS where the model has its own,
    the prompt, then SFT_SEPARATOR."""
    prefix = start_tokens(tokenizer)
    encoded = tokenizer([p + SFT_SEPARATOR for p in prompts], add_special_tokens=False)["input_ids"]
    return [prefix + ids for ids in encoded]


def _encode_prompt_response(e: Encoding, batch: dict, indices: list[int]) -> dict:
    """Prompt and response tokenised apart, so the boundary is exact; a row whose response is cut off entirely is
    dropped (nothing to learn)."""
    cfg, end = e.cfg, end_token(e.tokenizer)
    prompts = sft_prompt_ids(_prompts(e, batch, indices), e.tokenizer)
    references = list(batch[cfg.response_field])
    responses = e.tokenizer(references, add_special_tokens=False)["input_ids"]
    out = e.output()
    for prompt, r, reference in zip(prompts, responses, references):
        response = r + [end]
        ids = (prompt + response)[: cfg.max_length]
        if len(ids) <= len(prompt):
            e.drop()
            continue
        labels = ([IGNORE] * len(prompt) + response)[: cfg.max_length]
        extra = {"prompt_ids": prompt, "reference": reference} if e.with_prompts else {}
        e.keep(out, ids, labels, len(prompt) + len(response) > cfg.max_length, **extra)
    return out


def _encode_chat(e: Encoding, batch: dict, indices: list[int]) -> dict:
    cfg, out = e.cfg, e.output()
    for value, index in zip(batch[cfg.messages_field], indices):
        turns = chat.check_messages(value, index, cfg.messages_field)
        ids, labels = chat.encode_conversation(turns, e.tokenizer, e.template, cfg.train_on)
        cut_ids, cut_labels = ids[: cfg.max_length], labels[: cfg.max_length]
        if all(label == IGNORE for label in cut_labels[1:]):  # the first label is never predicted
            e.drop()
            continue
        extra = {}
        if e.with_prompts:
            prompt = chat.generation_prompt(turns, e.tokenizer, e.template)
            extra = {"prompt_ids": prompt[0] if prompt else [], "reference": prompt[1] if prompt else ""}
        e.keep(out, cut_ids, cut_labels, len(ids) > cfg.max_length, **extra)
    return out


def _encode_text(e: Encoding, batch: dict, indices: list[int]) -> dict:
    cfg, tokenizer = e.cfg, e.tokenizer
    prefix, end = start_tokens(tokenizer), end_token(tokenizer)
    out = e.output()
    for text in tokenizer(list(batch[cfg.text_field]), add_special_tokens=False)["input_ids"]:
        ids = prefix + text + [end]
        if len(ids) < 2:
            e.drop()
            continue
        cut = ids[: cfg.max_length]
        e.keep(out, cut, list(cut), len(ids) > cfg.max_length)
    return out


ENCODERS = {
    SEQUENCE: _encode_sequence,
    "prompt_response": _encode_prompt_response,
    "chat": _encode_chat,
    "text": _encode_text,
}
