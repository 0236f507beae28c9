"""Jinja templates: a prompt rendered from a row's columns, and a chat template given as a string or a file.

Rendering is sandboxed (data files come from anywhere) and strict: a column the template names that the row lacks
is an error, not an empty string.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import UserError, one_line


@functools.lru_cache(maxsize=32)
def compiled(source: str, key: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise UserError(f"{key} is not a valid Jinja template: {one_line(str(exc))}") from None


def render_prompt(source: str, row: dict, index: int) -> str:
    """data.prompt_template over one row (row `index` of its split, for the message)."""
    import jinja2

    try:
        return compiled(source, "data.prompt_template").render(**row)
    except jinja2.TemplateError as exc:
        columns = ", ".join(row)
        raise UserError(
            f"data.prompt_template does not render row {index}: {one_line(str(exc))} (columns: {columns})"
        ) from None


NAMED = Path(__file__).resolve().parent / "chat_templates"  # chatml.jinja, llama3.jinja: data.chat_template=NAME


def chat_template_text(value: str | None) -> str | None:
    """data.chat_template: a shipped template's name (chatml, llama3), a .jinja file's text, or the template itself."""
    if value is None:
        return None
    if (NAMED / f"{value}.jinja").is_file():
        return (NAMED / f"{value}.jinja").read_text(encoding="utf-8")
    path = Path(value).expanduser()
    if value.endswith((".jinja", ".j2")) or (len(value) < 4096 and "{" not in value):
        if not path.is_file():
            raise UserError(f"data.chat_template file not found: {path}")
        return path.read_text(encoding="utf-8")
    return value
