"""The `ajuste` command: parse → call the library → print. Known errors become one red line."""

from __future__ import annotations

import os
import sys

import typer

from ajuste.cli import commands_export, commands_rank, commands_study, commands_train, commands_tune

app = typer.Typer(
    name="ajuste",
    help="Fine-tune a pretrained model or train from scratch? ajuste answers with evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
commands_train.register(app)
commands_study.register(app)
commands_rank.register(app)
commands_tune.register(app)
commands_export.register(app)


def _click_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception types of click and of the click copy newer typer releases vendor
    (``typer._click``): a usage error from either must print as usage, not as an unexpected failure."""
    import click

    exits: list[type] = [click.exceptions.Exit, typer.Exit]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    usage: list[type] = [click.ClickException]
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # typer that uses click itself
        pass
    else:
        usage.append(vendored.ClickException)
    return tuple(exits), tuple(aborts), tuple(usage)


SIGTERM_EXIT = 128 + 15  # what a shell reports for a process ended by SIGTERM


def main(argv: list[str] | None = None) -> int:
    from ajuste.errors import handle_sigterm, terminated

    handle_sigterm()  # `docker stop`, a scheduler's limit: record "interrupted", keep what finished, exit 143
    code = _main(argv)
    if terminated():
        _error("stopped by SIGTERM: finished epochs/cells/trials are saved; re-run the same command to resume")
        return SIGTERM_EXIT
    return code


def _main(argv: list[str] | None) -> int:
    from ajuste.errors import AjusteError, terminated

    exits, aborts, usage = _click_types()
    debug = os.environ.get("AJUSTE_DEBUG") == "1"
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="ajuste")
        # Typer turns KeyboardInterrupt (and typer.Exit) into a returned exit code.
        code = rv if isinstance(rv, int) else 0
        if code == 130 and not terminated():
            _error("interrupted: finished epochs/cells are saved; re-run the same command to resume")
        return code
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except aborts:
        if not terminated():
            _error("aborted")
        return 130
    except usage as exc:
        # One line, like every other refusal (click prints usage, a hint and the error on four).
        ctx = getattr(exc, "ctx", None)
        command = getattr(ctx, "command_path", None) or "ajuste"
        message = exc.format_message()
        _error(f"{message[:1].lower()}{message[1:]} (see `{command} --help`)")
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        if debug:
            raise
        if terminated():
            return SIGTERM_EXIT
        _error("interrupted: finished epochs/cells are saved; re-run the same command to resume")
        return 130
    except AjusteError as exc:
        if debug:
            raise
        _error(str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback for users
        if debug:
            raise
        known = describe_resource_error(exc)  # MemoryError too: it is an Exception
        if known is not None:
            _error(known)
            return 2
        _error(f"unexpected {type(exc).__name__}: {exc} (set AJUSTE_DEBUG=1 for the traceback and report it)")
        return 1


def describe_resource_error(exc: BaseException) -> str | None:
    """One line for the machine's limits, whoever hit them (a write under --out, sqlite, an allocation):
    out of memory, disk full, read-only file system, permission denied. None for anything else."""
    from ajuste.training.memory import memory_error_message  # no torch: any error, even a broken install, gets here

    mem = memory_error_message(exc, batch_size=None)
    if mem is not None:
        return mem
    import errno

    for e in _chain(exc):
        text = str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return f"the disk is full{where} ({e.strerror}); free some space or pick another --out"
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = f" {e.filename}" if e.filename else ""
            return f"cannot write{where} ({e.strerror}); pick a writable --out"
        if isinstance(e, OSError) and e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename:
            return f"cannot create {e.filename}: a part of that path is a file, not a folder; pick another --out"
        if "database or disk is full" in text:
            return "the disk holding the study database is full (sqlite: database or disk is full); free some " \
                   "space or pick another --out/--storage"
        if "attempt to write a readonly database" in text or "unable to open database file" in text:
            return "cannot write the study database (sqlite: " + ("read-only" if "readonly" in text else
                                                               "cannot open the file") + \
                   "); pick a writable --out or --storage"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (sqlalchemy wraps sqlite's error)."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return seen


def _error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escape: paths and messages may hold "[...]" that rich would swallow as a style or reject as a bad tag
    first = escape(" ".join(str(message).split()))
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {first}", soft_wrap=True)


def run() -> None:  # pragma: no cover - console entry point wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
