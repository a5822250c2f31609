"""The `ajuste` command: parse → call the library → print. Known errors become one red line."""

from __future__ import annotations

import os
import sys

import typer

from ajuste.cli import commands_export, commands_study, commands_train, commands_tune

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
commands_tune.register(app)
commands_export.register(app)


def main(argv: list[str] | None = None) -> int:
    import click

    from ajuste.errors import AjusteError

    debug = os.environ.get("AJUSTE_DEBUG") == "1"
    try:
        rv = app(args=argv, standalone_mode=False)
        # Typer turns KeyboardInterrupt (and typer.Exit) into a returned exit code.
        code = rv if isinstance(rv, int) else 0
        if code == 130:
            _error("interrupted: finished epochs/cells are saved; re-run the same command to resume")
        return code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort:
        _error("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted: finished epochs/cells are saved; re-run the same command to resume")
        return 130
    except AjusteError as exc:
        if debug:
            raise
        _error(str(exc))
        return 2
    except MemoryError:
        if debug:
            raise
        _error("out of memory: lower data.batch_size (e.g. --set data.batch_size=8) or data.image_size")
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback for users
        if debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set AJUSTE_DEBUG=1 for the traceback and report it)")
        return 1


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
