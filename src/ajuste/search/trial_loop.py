"""The trial loop of one `ajuste tune` worker: claim a slot of the study's budget under the study lock, run one
trial, until the budget, the timeout or the grid is spent; the line each trial prints.

Before each claim, trials whose worker died are failed and re-queued with the same params: after the heartbeat's
grace period for any worker, at once for a dead process of this machine. A trial this worker leaves interrupted
(Ctrl-C) is re-queued too. ``MAX_CONSECUTIVE_FAILURES`` trials failing in a row stop the worker with the last
error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from ajuste.errors import AjusteError
from ajuste.search.objective import TrialFailed, worker_id
from ajuste.search.results import best_trial_or_none

MAX_CONSECUTIVE_FAILURES = 3
WAIT_POLL_SECONDS = 2.0


@dataclass
class TrialStats:
    """This worker's trials so far: how many ran, and how many failed in a row (with the last error)."""

    ran: int = 0
    failures: int = 0
    last_error: str = ""

    def record(self, rec: Any) -> None:
        self.ran += 1
        if rec.state == "FAIL" and rec.note != "interrupted":
            self.failures += 1
            self.last_error = rec.note
        elif rec.state != "FAIL":
            self.failures = 0


def on_trial_end(stats: TrialStats, study: Any, console: Any, metric: str) -> Callable[[Any], None]:
    """The objective's ``on_end``: count the trial, and print its line unless quiet."""
    def on_end(rec: Any) -> None:
        stats.record(rec)
        if console is not None:
            print_trial(console, study, rec, metric)

    return on_end


def counts_against_budget(t: Any) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return t.state == TrialState.FAIL and bool(t.user_attrs.get("counted"))


def run_trials(study: Any, objective: Any, lock: Any, *, budget: int | None, timeout_s: float | None,
               say: Any, stats: TrialStats, grid: bool) -> str:
    """Run trials until the study is done; returns why it stopped ("budget reached", "timeout", ...)."""
    start = time.monotonic()
    waiting_said = False
    while True:
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            return "timeout"
        lock.acquire()
        try:
            _fail_stale(study)
            _fail_dead_local_workers(study, locked=lock.kind in ("sqlite", "postgresql"))
            trials = study.get_trials(deepcopy=False)
            counted = [t for t in trials if counts_against_budget(t)]
            exhausted = grid and study.sampler.is_exhausted(study)
            waiting = any(t.state.name == "WAITING" for t in counted)
            if ((budget is not None and len(counted) >= budget) or exhausted) and not waiting:
                running = [t.number for t in counted if t.state.name == "RUNNING"]
                lock.release()
                if not running:
                    return "grid exhausted" if exhausted and (budget is None or len(counted) < budget) \
                        else "budget reached"
                # Other workers still run the last trials: wait for them (or for their heartbeat to
                # go stale, which re-queues the slot), so the report covers every trial.
                if not waiting_said:
                    say(f"budget reached; waiting for {len(running)} trial(s) still running elsewhere "
                        f"(#{', #'.join(map(str, running))})", highlight=False, soft_wrap=True)
                    waiting_said = True
                time.sleep(WAIT_POLL_SECONDS)
                continue
            # Keep the lock: the objective releases it once study.ask() has created our trial.
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        finally:
            lock.release()
        if stats.failures >= MAX_CONSECUTIVE_FAILURES:
            raise AjusteError(f"{stats.failures} trials in a row failed; last: {stats.last_error} "
                              f"(AJUSTE_DEBUG=1 shows the traceback)")


def _fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def _fail_dead_local_workers(study: Any, *, locked: bool) -> None:
    """A RUNNING trial whose worker was a process of this machine that no longer exists (killed, crashed)
    is failed and re-queued with the same parameters at once — a re-run after a kill need not wait for
    the heartbeat to go stale (that path remains for workers on other machines).

    ``locked``: the caller holds the study lock. Workers record themselves on a new trial before they
    release that lock, so a RUNNING trial with no worker recorded was left by a worker that died holding
    it — between ``study.ask()`` and its first heartbeat, where Optuna's stale-trial check never looks
    (such a trial stayed RUNNING forever and the re-run waited for it)."""
    from optuna.trial import TrialState, create_trial

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        if "worker" not in t.user_attrs:
            if not locked:
                continue
        else:
            w_host, _, pid = str(t.user_attrs["worker"]).rpartition(":")
            if w_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
        with contextlib.suppress(Exception):  # another worker may have failed it a moment ago
            study._storage.set_trial_user_attr(t._trial_id, "worker_died", True)
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
            if t.number not in retried:
                study.add_trial(create_trial(state=TrialState.WAITING, params=t.params,
                                             distributions=t.distributions,
                                             system_attrs={**t.system_attrs, "failed_trial": t.number}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_interrupted(study: Any) -> None:
    """Re-queue (WAITING, same params) the trial this process left interrupted, so a re-run redoes it.
    The same as Optuna's RetryHeartbeatStaleTrialCallback does for a worker that died."""
    if study is None:
        return
    from optuna.trial import TrialState, create_trial

    with contextlib.suppress(Exception):
        trials = study.get_trials(deepcopy=False)
        retried = {t.system_attrs.get("failed_trial") for t in trials}
        for t in trials:
            if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and \
                    t.user_attrs.get("worker") == worker_id() and t.number not in retried:
                system_attrs = {**t.system_attrs, "failed_trial": t.number}
                study.add_trial(create_trial(state=TrialState.WAITING, params=t.params,
                                             distributions=t.distributions, system_attrs=system_attrs))


def print_trial(console: Any, study: Any, rec: Any, metric: str) -> None:
    leaves = [k.split(".")[-1] for k in rec.params]
    # Short names (lr=) unless two params share one (model.dropout, peft.dropout).
    params = "  ".join(f"{leaf if leaves.count(leaf) == 1 else k}={_short(v)}"
                       for leaf, (k, v) in zip(leaves, rec.params.items()))
    best = best_trial_or_none(study)  # finished trials: this one is told to the study after this line
    best_txt = f" · best {best.value:.4f} (#{best.number})" if best is not None else ""
    if rec.state == "COMPLETE":
        maximize = study.direction.name == "MAXIMIZE"
        if best is None or (rec.value > best.value if maximize else rec.value < best.value):
            best_txt = " · new best"
        what = f"[green]{metric} {rec.value:.4f}[/]"
    elif rec.state == "PRUNED":
        what = f"[yellow]{rec.note or 'pruned'}[/]"
    else:
        what = f"[red]failed[/] ({rec.note})"
    console.print(f"trial {rec.number:>3} {what}{best_txt} · {rec.epochs} ep · {rec.seconds:.1f}s · {params}",
                  highlight=False, soft_wrap=True)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
