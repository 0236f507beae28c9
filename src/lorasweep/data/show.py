"""`lorasweep data --show N`: the first N examples of a split exactly as the run trains on them.

For a person: each example's decoded text with the trained tokens between « and », then its label; for a
program (--json): one list of {input_ids, labels, ...}. Both end with what data.max_length dropped or truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cache import tokenized_data
from .styles import style_of
from .tokens import IGNORE

TRAINED = ("«", "»")  # around the tokens the loss is computed on


def shown_examples(cfg, tokenizer, split: str, n: int) -> tuple[list[dict], dict]:
    """The first n encoded rows of `split` (train | eval) in file order, and the data's info."""
    data = tokenized_data(cfg.data, tokenizer, Path(cfg.run_root) / ".cache" / "tokenized")
    rows = data.train if split == "train" else data.eval
    return rows.select(range(min(n, len(rows)))).to_list(), data.info


def as_json(rows: list[dict], info: dict) -> str:
    names = info.get("label_names")
    out = []
    for row in rows:
        item = {"input_ids": row["input_ids"], "labels": row["labels"]}
        if names is not None:
            item["label"] = names[row["labels"]]
        for key in ("token_type_ids", "prompt_ids", "reference"):
            if key in row:
                item[key] = row[key]
        out.append(item)
    return json.dumps(out)


def as_text(rows: list[dict], info: dict, tokenizer, split: str) -> str:
    names = info.get("label_names")
    blocks = []
    for k, row in enumerate(rows):
        head = f"--- {split} example {k} ({len(row['input_ids'])} tokens"
        if isinstance(row["labels"], list):
            trained = sum(label != IGNORE for label in row["labels"][1:])
            blocks.append(f"{head}, {trained} trained)\n{marked(row['input_ids'], row['labels'], tokenizer)}")
        else:
            label = names[row["labels"]] if names is not None else row["labels"]
            text = tokenizer.decode(row["input_ids"], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            blocks.append(f"{head})\n{text}\nlabel: {label}")
    return "\n".join(blocks)


def marked(ids: list[int], labels: list[int], tokenizer) -> str:
    """The decoded text, trained runs of tokens between TRAINED marks (the first token is never predicted)."""
    flags = [False] + [label != IGNORE for label in labels[1:]]
    pieces, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or flags[end] != flags[start]:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pieces.append(f"{TRAINED[0]}{text}{TRAINED[1]}" if flags[start] else text)
            start = end
    return "".join(pieces)


def counts_line(cfg, info: dict) -> str:
    """What max_length did to each split, and why rows were dropped."""
    parts = []
    for split in ("train", "eval"):
        c = info["counts"][split]
        parts.append(f"{split}: {c['rows'] - c['dropped']} of {c['rows']} rows kept, {c['truncated']} truncated")
    return (
        f"data {cfg.data.name} ({style_of(cfg.data)}): " + "; ".join(parts) + " (dropped: no trained token within "
        f"data.max_length={cfg.data.max_length}; truncated: cut to it)"
    )
