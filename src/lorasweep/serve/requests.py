"""`lorasweep predict`'s input: JSON lines, each checked before the model is loaded.

    {"text": ..., "text_pair": ...?, "adapter": NAME}   classification, regression (a pair: text_pair), or a
                                                        causal LM's prompt (formatted as SFT trained it)
    {"messages": [{role, content}, ...], "adapter": NAME}  a chat model: the history, continued after the
                                                        template's generation prompt

NAME is one of the loaded adapters, or "base" for none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.chat import check_messages
from ..errors import UserError
from ..lora.multi import BASE


@dataclass(frozen=True)
class Request:
    adapter: str
    text: str | None = None
    text_pair: str | None = None
    messages: tuple | None = None  # the history ({role, content} dicts), for a chat model


def read_requests(input_file: str | Path, known: set[str]) -> list[Request]:
    """Every line checked, and unknown adapters named, before any is used."""
    requests, unknown = [], {}
    for n, line in enumerate(Path(input_file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{input_file}:{n}: not valid JSON: {exc}") from None
        request = _request(row, f"{input_file}:{n}")
        if request.adapter != BASE and request.adapter not in known:
            unknown.setdefault(request.adapter, n)
        requests.append(request)
    if unknown:
        listed = ", ".join(f"{a!r} (line {n})" for a, n in unknown.items())
        raise UserError(
            f"{input_file}: unknown adapter {listed}; loaded: {', '.join(sorted(known)) or 'none'} (or {BASE!r})"
        )
    return requests


def _request(row, where: str) -> Request:
    if not isinstance(row, dict) or not (isinstance(row.get("text"), str) or "messages" in row):
        raise UserError(f'{where}: expected an object with a string "text" or a "messages" list')
    adapter = row.get("adapter", BASE)
    if not isinstance(adapter, str):
        raise UserError(f'{where}: "adapter" must be a name, got {adapter!r}')
    if "messages" in row:
        try:
            turns = check_messages(row["messages"], 0, "messages")
        except UserError as exc:
            raise UserError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        return Request(adapter, messages=tuple(turns))
    pair = row.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise UserError(f'{where}: "text_pair" must be a string')
    return Request(adapter, text=row["text"], text_pair=pair)
