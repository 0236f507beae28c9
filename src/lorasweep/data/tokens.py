"""Token conventions shared by every row shape: the label the loss skips, and the tokens that start and end a text."""

from __future__ import annotations

from ..errors import UserError

IGNORE = -100  # label that the loss skips (the collator pads labels with it)


def end_token(tokenizer) -> int:
    """The token that ends a response or text (trained on; where generation stops)."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token to end responses")
    return end


def start_tokens(tokenizer) -> list[int]:
    """BOS where the model has its own (Llama-style); none where BOS is EOS (GPT-2)."""
    end, bos = end_token(tokenizer), tokenizer.bos_token_id
    return [bos] if bos is not None and bos != end else []
