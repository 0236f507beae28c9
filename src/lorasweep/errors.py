"""The one exception type for bad input (a config value, a file, a spec, an adapter that does not fit).

The CLI prints a UserError as one line and exits 2; any other exception keeps its traceback, since it is a bug.
It is a ValueError, so code that catches ValueError around lorasweep's API keeps working.
"""


class UserError(ValueError):
    pass


def one_line(what: object, limit: int | None = None) -> str:
    """An exception's message (or any text) on one line, whitespace runs collapsed, cut to `limit` characters:
    how bad input, failed trials and tool errors are printed and recorded."""
    text = " ".join(str(what).split())
    return text if limit is None else text[:limit]
