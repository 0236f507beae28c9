"""Conversations: {role, content} turns rendered by the tokenizer's chat template, and which tokens are trained.

The input ids are exactly what `apply_chat_template` gives: the rendered text tokenised without added special
tokens (the template writes its own BOS). Most real templates (Llama-3, Qwen, ChatML) have no `{% generation %}`
markers, so each assistant turn is found by rendering prefixes, as axolotl does:

    start = len(render(turns[:i], add_generation_prompt=True))   # the assistant header ends here
    end   = len(render(turns[:i + 1]))                           # the turn, its end-of-turn token included

and the characters [start, end) are mapped to tokens through the fast tokenizer's offsets. Whitespace the
template writes after the end-of-turn token (ChatML's newline) is not trained: the model learns to stop, not to
print a newline. A template that renders a prefix differently from the start of the whole conversation (one
that rewrites earlier turns) cannot be masked this way, and says so.
"""

from __future__ import annotations

from ..errors import UserError, one_line
from .tokens import IGNORE

ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # beside a chat run's adapter (transformers' name): what serving renders


def check_messages(value, index: int, field: str) -> list[dict]:
    """The row's conversation as a list of {role, content}; one line naming the row otherwise."""
    where = f"row {index}: data.messages_field {field!r}"
    if not isinstance(value, list) or not value:
        raise UserError(f"{where} must be a non-empty list of {{role, content}} mappings, got {type(value).__name__}")
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise UserError(f"{where} must be a list of {{role, content}} mappings; got {one_line(turn, 80)}")
        if turn["role"] not in ROLES:
            raise UserError(f"{where}: unknown role {turn['role']!r} (roles: {', '.join(ROLES)})")
        if not isinstance(turn["content"], str):
            raise UserError(f"{where}: the content of a {turn['role']} turn must be a string")
    return [{"role": t["role"], "content": t["content"]} for t in value]


def require_template(tokenizer, template: str | None, label: str) -> None:
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer of {label} has no chat template: set data.chat_template to a Jinja string or a .jinja file"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"data.style=chat needs a fast tokenizer (character offsets); {label}'s is not")


def replaced_template_note(tokenizer, configured: str | None) -> str | None:
    """A line for the run's log where data.chat_template replaces a tokenizer's own, different template: a model
    tuned in another format than its users send is the mistake to make visible."""
    from .templates import chat_template_text

    own, given = getattr(tokenizer, "chat_template", None), chat_template_text(configured)
    if own and given and own != given:
        return "note: data.chat_template replaces the model's own chat template (data.chat_template=null keeps it)"
    return None


def render(tokenizer, turns: list[dict], template: str | None, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2's errors and the template's own raise_exception: the template's message
        which = "data.chat_template" if template is not None else "the tokenizer's chat template"
        raise UserError(f"{which} does not render a conversation: {one_line(exc, 300)}") from None


def encode_conversation(turns: list[dict], tokenizer, template: str | None, train_on: str) -> tuple[list, list]:
    """(input_ids, labels): labels are the ids on trained tokens, IGNORE elsewhere."""
    text = render(tokenizer, turns, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on == "all":
        return ids, list(ids)
    assistant = [i for i, t in enumerate(turns) if t["role"] == "assistant"]
    if train_on == "last_assistant":
        assistant = assistant[-1:]
    labels = [IGNORE] * len(ids)
    for i in assistant:
        start, end = assistant_span(tokenizer, turns, i, template, text)
        inside = [k for k, (s, e) in enumerate(offsets) if e > s and start <= s < end]
        while inside and text[offsets[inside[-1]][0] : offsets[inside[-1]][1]].isspace():
            inside.pop()  # the template's whitespace after the end-of-turn token
        for k in inside:
            labels[k] = ids[k]
    return ids, labels


def assistant_span(tokenizer, turns: list[dict], i: int, template: str | None, text: str) -> tuple[int, int]:
    """The characters of assistant turn i in the rendered conversation `text`: content and end-of-turn token."""
    before = render(tokenizer, turns[:i], template, generation_prompt=True)
    through = render(tokenizer, turns[: i + 1], template)
    if not text.startswith(before) or not text.startswith(through):
        raise UserError(
            "the chat template renders a conversation's first turns differently from the start of the whole "
            f"conversation (turn {i}), so the assistant tokens cannot be found by rendering prefixes; "
            "set data.chat_template to one that does not rewrite earlier turns, or data.train_on=all"
        )
    return len(before), len(through)


def save_chat_template(directory, data_cfg, tokenizer) -> None:
    """A chat run's template beside its adapter (chat_template.jinja, as transformers names it), for serving."""
    from pathlib import Path

    from ..fileio import atomic_write_text
    from .templates import chat_template_text

    if data_cfg.task == "causal_lm" and data_cfg.style == "chat":
        template = chat_template_text(data_cfg.chat_template) or tokenizer.chat_template
        atomic_write_text(Path(directory) / CHAT_TEMPLATE_NAME, template)


def stop_tokens(tokenizer, template: str | None) -> list[int]:
    """Where generation stops: EOS, and the token the template closes an assistant turn with where that is another
    (a ChatML template on a tokenizer whose EOS is </s>): the run trained it, so the model emits it."""
    from .tokens import end_token

    stops = [end_token(tokenizer)]
    if template is None and not getattr(tokenizer, "chat_template", None):
        return stops
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    try:
        ids, labels = encode_conversation(probe, tokenizer, template, "last_assistant")
    except UserError:
        return stops
    trained = [t for t, label in zip(ids, labels) if label != IGNORE]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if trained and trained[-1] in special and trained[-1] not in stops:
        stops.append(trained[-1])
    return stops


def generation_prompt(turns: list[dict], tokenizer, template: str | None) -> tuple[list[int], str] | None:
    """(prompt ids, reference): the history before the last assistant turn with the generation prompt, and that
    turn's content; None for a conversation without an assistant turn."""
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        return None
    prompt = render(tokenizer, turns[:last], template, generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"], turns[last]["content"]


def prompt_ids(turns: list[dict], tokenizer, template: str | None) -> list[int]:
    """A request's history with the generation prompt (serving): what the model continues."""
    return tokenizer(render(tokenizer, turns, template, generation_prompt=True), add_special_tokens=False)["input_ids"]
