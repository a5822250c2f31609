"""Replay the learning curves of an unpruned `ajuste tune` study through a pruner: how many epochs would it
have let run, and would the search still have found its best trial?

    python bench/prune_replay.py runs/tune/clothing-lp-tpe-none/study.db [--replays 20]
        [--pruner hyperband|sha|median] [--eta 3] [--min-resource 1] [--max-resource N] [--bootstrap 0]

The study must have run with ``--pruner none``: each trial then reported its objective after every epoch
(step = epoch index) until its own early stop. Each replay feeds those curves, in trial order, to a fresh
in-memory Optuna study with the pruner; Optuna's Hyperband assigns a trial to a bracket by a hash of the study
name and trial number, so the replays differ only in their study names (``replay-0``, ``replay-1``, ...), and
their spread is the bracket draw. No training runs: it takes seconds.

Printed per pruner setting: the share of the unpruned study's epochs the pruner let run (mean, min-max over
the replays) and in how many replays the best completed trial was within ``--tolerance`` of the full best.
Without ``--pruner`` it replays ajuste's own defaults (``ajuste.search.samplers.make_pruner``) for
hyperband, sha and median, plus Hyperband at η = 2 and 4.
The sampler's trial sequence is held fixed: a live pruned search also changes which trials TPE proposes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any


def load_curves(db: Path, study_name: str | None) -> tuple[list[list[float]], str, str]:
    """The recorded curves (one list of per-epoch values per complete trial, in trial order), the
    direction and the study name."""
    import optuna

    if not db.exists():
        raise SystemExit(f"{db} not found: give the study.db of an `ajuste tune ... --pruner none` run")
    url = f"sqlite:///{db.resolve()}"
    names = optuna.get_all_study_names(url)
    if study_name is None:
        if len(names) != 1:
            raise SystemExit(f"{db} holds {len(names)} studies ({', '.join(names)}): pick one with --study-name")
        study_name = names[0]
    study = optuna.load_study(study_name=study_name, storage=url)
    curves = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.PRUNED:
            raise SystemExit(f"trial {t.number} of {study_name} was pruned: replay an unpruned study "
                             f"(ajuste tune ... --pruner none)")
        if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values:
            curves.append([t.intermediate_values[s] for s in sorted(t.intermediate_values)])
    if not curves:
        raise SystemExit(f"{study_name} in {db} has no complete trial with per-epoch values")
    return curves, study.direction.name.lower(), study_name


def replay(curves: list[list[float]], direction: str, make: Any, name: str) -> tuple[int, float]:
    """Epochs the pruner let run and the best value among the trials it let finish."""
    import optuna

    study = optuna.create_study(direction=direction, pruner=make(), study_name=name,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    epochs = 0
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
    return epochs, study.best_value


def pruner_settings(args: argparse.Namespace, max_epochs: int) -> dict[str, Any]:
    import optuna

    from ajuste.search.samplers import make_pruner

    P = optuna.pruners
    if args.pruner is None:
        return {
            "hyperband (ajuste default)": lambda: make_pruner("hyperband", max_epochs=max_epochs),
            "hyperband eta=2": lambda: P.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=2),
            "hyperband eta=4": lambda: P.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=4),
            "sha (ajuste default)": lambda: make_pruner("sha"),
            "median (ajuste default)": lambda: make_pruner("median"),
        }
    max_r = args.max_resource or max_epochs
    label = f"{args.pruner} eta={args.eta} min={args.min_resource} bootstrap={args.bootstrap}"
    if args.pruner == "hyperband":
        return {f"{label} max={max_r}": lambda: P.HyperbandPruner(
            min_resource=args.min_resource, max_resource=max_r, reduction_factor=args.eta,
            bootstrap_count=args.bootstrap)}
    if args.pruner == "sha":
        return {label: lambda: P.SuccessiveHalvingPruner(min_resource=args.min_resource, reduction_factor=args.eta,
                                                         bootstrap_count=args.bootstrap)}
    return {"median (ajuste default)": lambda: make_pruner("median")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", type=Path, help="study.db of an unpruned `ajuste tune` run")
    ap.add_argument("--study-name")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--pruner", choices=("hyperband", "sha", "median"))
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-resource", type=int, default=1)
    ap.add_argument("--max-resource", type=int, help="Hyperband's max resource (default: the longest curve)")
    ap.add_argument("--bootstrap", type=int, default=0)
    ap.add_argument("--max-epochs", type=int,
                    help="the most epochs a trial could run (ajuste passes it to Hyperband); default: the longest curve")
    ap.add_argument("--tolerance", type=float, default=0.005, help="'best kept' if within this of the full best")
    args = ap.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    curves, direction, name = load_curves(args.db, args.study_name)
    total = sum(len(c) for c in curves)
    finals = [c[-1] for c in curves]
    full_best = max(finals) if direction == "maximize" else min(finals)
    max_epochs = args.max_epochs or max(len(c) for c in curves)
    print(f"{name}: {len(curves)} trials, {total} epochs, best {full_best:.4f} ({direction}); "
          f"max epochs per trial {max_epochs}; {args.replays} replays", file=sys.stderr)
    print("| pruner | epochs let run: mean (min–max) | best kept (± %.3g) | best value: mean (min) |" % args.tolerance)
    print("|---|---|---|---|")
    for label, make in pruner_settings(args, max_epochs).items():
        runs = [replay(curves, direction, make, f"replay-{r}") for r in range(args.replays)]
        shares = [e / total for e, _ in runs]
        bests = [b for _, b in runs]
        kept = sum(abs(b - full_best) <= args.tolerance + 1e-12 for b in bests)
        worst = min(bests) if direction == "maximize" else max(bests)
        print(f"| {label} | {statistics.mean(shares):.0%} ({min(shares):.0%}–{max(shares):.0%}) | "
              f"{kept}/{len(runs)} | {statistics.mean(bests):.4f} ({worst:.4f}) |")


if __name__ == "__main__":
    main()
