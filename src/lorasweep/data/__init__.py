"""Data: the user's rows as they are -> the (input_ids, labels) the run trains on.

    raw.py        splits from the shipped sets, the hub or local files (json, jsonl, csv, parquet), sliced
    labels.py     string labels -> ids in a recorded order, ids checked, floats for regression
    templates.py  Jinja prompt templates and chat templates given as text or a file
    chat.py       conversations through the chat template; assistant masks by rendering prefixes
    styles.py     one encoder per row shape (sequence, prompt_response, chat, text) and what max_length did
    cache.py      tokenisation cached on disk by fingerprint (config, tokenizer, file content)
    collate.py    padding into batches
    show.py       `lorasweep data --show`: the examples as the run sees them

May import: choices, errors, fileio (below it); nothing above (runs, training, the CLI).
"""

from .cache import (
    TokenizedData,
    check_encoding,
    encode_splits,
    fingerprint,
    tokenized_data,
    tokenized_splits,
    tokenizer_identity,
)
from .collate import Collator, make_collator
from .raw import DATASETS_DIR, load_raw_splits
from .styles import SFT_SEPARATOR, check_data_config, sft_prompt_ids, style_of
from .tokens import IGNORE, end_token, start_tokens

__all__ = [
    "DATASETS_DIR",
    "IGNORE",
    "SFT_SEPARATOR",
    "Collator",
    "TokenizedData",
    "check_data_config",
    "check_encoding",
    "encode_splits",
    "end_token",
    "fingerprint",
    "load_raw_splits",
    "make_collator",
    "sft_prompt_ids",
    "start_tokens",
    "style_of",
    "tokenized_data",
    "tokenized_splits",
    "tokenizer_identity",
]
