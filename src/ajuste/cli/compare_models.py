"""`ajuste compare --models a,b|topN`: one study per backbone, then the page that names backbone and strategy
together (`ajuste.report.backbones`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ajuste.errors import ConfigError


def chosen_models(spec: Any, models: str, con: Any) -> tuple[list[str], dict[str, Any] | None]:
    """The backbones named, or for ``topN`` the N best of the transferability ranking (with the ranking)."""
    top = re.fullmatch(r"top(\d+)", models.strip())
    if top is None:
        names = [m.strip() for m in models.split(",") if m.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"--models {models}: name two or more different backbones (a,b), or topN")
        return names, None
    n = int(top.group(1))
    if n < 2:
        raise ConfigError(f"--models {models}: top2 or more (one backbone is --model)")
    from ajuste.study.rank import rank_for_study

    ranking = rank_for_study(spec, con, seconds=None if spec.budget_seconds is None else 0.1 * spec.budget_seconds)
    order = ranking["order"]
    if len(order) < n:
        raise ConfigError(f"--models {models}: only {len(order)} candidate backbones could be ranked "
                          f"({', '.join(order) or 'none'}); name them with --models a,b")
    return order[:n], {**ranking, "order": order[:n]}


def compare_models(spec: Any, models: str, out: Path | None, con: Any, *, quiet: bool, similarity: bool,
                   workers: int, share_idle_cores: bool) -> None:
    from ajuste.api import default_study_dir, run_compare_models

    names, ranking = chosen_models(spec, models, con)
    if ranking is not None and spec.budget_seconds is not None:  # the ranking's time came out of the budget
        spec = dataclasses.replace(spec, budget_seconds=max(1.0, spec.budget_seconds - ranking.get("seconds", 0.0)))
    study_dir = out or default_study_dir(spec.source, "backbones")
    con.print(f"{len(names)} backbones ({', '.join(names)}) × {len(spec.cells())} cells each → {study_dir}")
    advice, seconds = run_compare_models(spec, names, Path(study_dir), console=con, progress=not quiet,
                                         similarity=similarity, workers=workers, ranking=ranking,
                                         share_idle_cores=share_idle_cores)
    con.print("")
    con.print(f"[bold green]{advice['text']}[/]", highlight=False)
    for r in advice["reasons"]:
        con.print(f"  • {r}", highlight=False)
    con.print(f"report: {Path(study_dir) / 'report.html'}   best model: {Path(study_dir) / 'best_model'}   "
              f"({seconds:.0f}s)")
