"""`ajuste compare | advise | report` (the study)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Study commands are added as the study module lands."""
