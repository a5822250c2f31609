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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, a scheduler's time limit, ``kill``): handled as an interruption, at once.

    A KeyboardInterrupt, so every path that records Ctrl-C (status.json "interrupted", a tune trial re-queued,
    a study's finished cells kept) records this too; unlike a first Ctrl-C it does not wait for the epoch to
    end, since whoever sent it may send SIGKILL a few seconds later."""


_terminated = False


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise `Terminated` in the main thread."""
    global _terminated
    _terminated = True  # click may turn the exception into its own Abort: the CLI reads this flag instead
    raise Terminated()


def terminated() -> bool:
    """Whether this process received SIGTERM (through `handle_sigterm`)."""
    return _terminated


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` in this process (main thread only; elsewhere a no-op)."""
    import signal

    global _terminated
    _terminated = False  # a new command in this process (tests call the CLI many times in one)
    try:
        signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread
        pass
