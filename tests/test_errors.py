"""errors.one_line: every one-line message (bad input, a failed trial's reason, a tool's stderr) goes through it."""

from lorasweep.errors import UserError, one_line


def test_one_line_collapses_whitespace_and_cuts():
    exc = UserError("cannot open\n  study storage\tx.db:\n\n(sqlite3.OperationalError) locked ")
    assert one_line(exc) == "cannot open study storage x.db: (sqlite3.OperationalError) locked"
    assert one_line(exc, 11) == "cannot open"
    assert one_line("  plain\ntext ") == "plain text"
