"""Exceptions the CLI turns into one clear line (what, where, how to fix)."""

from __future__ import annotations


def one_line(message: str) -> str:
    """``message`` with every non-printable character written as its escape (``\\n``, ``\\r``, ``\\x00``,
    ``\\u2028``...): a label, column or file name taken from the user's data can hold any of them, and the
    message must stay one line that shows what is really there."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)


class AjusteError(Exception):
    """A known, user-facing failure. The message is the whole story: no traceback needed.

    The message is always one line (see `one_line`), whatever user data it quotes."""

    def __init__(self, *args: object) -> None:
        if args:
            args = (one_line(str(args[0])), *args[1:])
        super().__init__(*args)


class DataError(AjusteError):
    """The data source is missing, malformed or unusable as given."""


class ConfigError(AjusteError, ValueError):
    """A configuration value is invalid; the message names the field."""


class TrainingDiverged(AjusteError):
    """The loss became NaN/inf; the last good checkpoint was kept."""
