"""Kill at any moment: SIGKILL or SIGTERM `ajuste train`, `ajuste compare` and `ajuste tune` at random points,
re-run the same command until it finishes, and check that nothing was lost, duplicated or half-read.

    python bench/chaos.py --kills 50            # the long run (tiny models; minutes); figures → docs/reliability.md
    python bench/chaos.py --kills 3 --quick     # a smoke run

Per command: one uninterrupted reference run, then the killed-and-resumed run. Checks:
- train: metrics.jsonl has epochs 0..n-1 exactly once, and every epoch's numbers equal the reference's
  (same seed → same metrics; resume restores optimizer, scheduler, RNG and the phase of two-stage);
  summary.json only appears complete (valid JSON with status complete) and the test accuracy equals the reference.
- compare: results.jsonl holds every cell exactly once with the reference's test accuracy.
- tune: the study holds exactly --trials finished trials, numbers unique (a resumed study draws other
  parameters than the reference: values are not compared, counts are).
Kill times: the reference run measures the start-up time (until the command's first file appears under --out:
imports, data loading) and its total time. A share of the kills (--startup-share, 0.2) is drawn uniformly within
start-up; the others uniformly within the work still left: the reference's working time scaled by the share of
its epochs/cells/trials not yet finished, plus its tail after the last of them (final evaluation, summary,
report), so kills land in training, checkpoint writing, evaluation and the final writes alike and keep landing as
the remaining work shrinks. A command that finishes before its share of kills is used (a
kill landed after the result was complete) starts again in a fresh directory. A file read mid-write would show
up as a JSON error or as a wrong metric. After the final run: no temp file (.*.tmp, .*.partial-*) and no
checkpoint/ directory may be left, and every run dir says complete. Half the kills (--term-share) are SIGTERM to
the main process alone, as `docker stop` sends it: the command must stop by itself within 30 s (exit 143), with
no traceback, and leave no run directory saying "running".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32",
        "--set", "train.threads=1", "--set", "data.batch_size=64"]


def commands(out: Path, quick: bool) -> dict[str, list[str]]:
    epochs = "3" if quick else "6"
    return {
        "train": ["train", "digits", *TINY, "--strategy", "two-stage", "--epochs", epochs, "--set",
                  "strategy.head_epochs=3", "--fraction", "0.3", "--quiet", "--out", str(out / "train")],
        "compare": ["compare", "digits", *TINY, "--set", "train.epochs=2", "--set", "strategy.head_epochs=2",
                    "--strategies", "linear-probe,two-stage,scratch", "--fractions", "0.1,0.3",
                    "--no-similarity", "--quiet", "--out", str(out / "compare")],
        "tune": ["tune", "digits", *TINY, "--strategy", "full", "--epochs", "2", "--fraction", "0.2",
                 "--trials", "4" if quick else "8", "--sampler", "random", "--pruner", "none", "--quiet",
                 "--out", str(out / "tune")],
    }


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


ALREADY_DONE = []  # runs that found the previous kill had landed after the result was complete
LAST_UNIT_AT = [0.0]  # seconds into the reference run when its last epoch/cell/trial was recorded


TERM_GRACE = 30.0  # seconds a SIGTERMed command may take to stop before it is SIGKILLed (docker stop: 10)
TERM_OUTCOMES: list[dict] = []  # per SIGTERM: exit code, seconds to stop, run directories left "running"


def _running_dirs(out: Path) -> list[str]:
    """Run directories under ``out`` whose status.json still says running (nobody is running them now)."""
    found = []
    for status in out.rglob("status.json"):
        try:
            if json.loads(status.read_text()).get("status") == "running":
                found.append(str(status.parent))
        except (OSError, ValueError):
            continue
    return found


def _terminate(proc: subprocess.Popen, out: Path | None) -> None:
    """SIGTERM to the command's main process only, as `docker stop` sends it; SIGKILL after TERM_GRACE."""
    t0 = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    TERM_OUTCOMES.append({"returncode": proc.returncode, "stop_seconds": round(time.perf_counter() - t0, 2),
                          "traceback": "Traceback" in err,
                          "left_running": _running_dirs(out) if out is not None and out.exists() else []})


def run_once(args: list[str], kill_after: float | None, watch: Path | None = None,
             progress=None, term: bool = False) -> tuple[bool, float, float | None]:
    """Start ``ajuste ARGS``; after ``kill_after`` seconds SIGKILL its process group, or with ``term`` send
    SIGTERM to it (see `_terminate`). Returns (finished, seconds, the time at which ``watch`` first existed,
    when given and it appeared). ``progress()`` (polled twice a second) returns the finished units; the time
    of the last change goes to ``LAST_UNIT_AT``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ajuste", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    appeared = None
    deadline = None if kill_after is None else t0 + kill_after
    seen, next_poll = -1, t0
    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            now = time.perf_counter()
            if watch is not None and appeared is None and watch.exists():
                appeared = now - t0
            if progress is not None and now >= next_poll:
                next_poll = now + 0.5
                n = progress()
                if n != seen:
                    seen, LAST_UNIT_AT[0] = n, now - t0
            if deadline is not None and now >= deadline:
                if term:
                    _terminate(proc, Path(args[-1]))
                    if proc.returncode == 0:  # it finished before the signal landed
                        return True, time.perf_counter() - t0, appeared
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                return False, time.perf_counter() - t0, appeared
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode == 2 and "already holds a finished run" in err:
        # the previous kill landed after summary.json (process teardown): the run is complete, and `ajuste
        # train --out DIR` refuses to overwrite a finished run by design
        ALREADY_DONE.append(args[0])
        return True, time.perf_counter() - t0, appeared
    if proc.returncode != 0:
        raise RuntimeError(f"ajuste {' '.join(args[:2])} failed (rc {proc.returncode}): {err[-2000:]}")
    if "Traceback" in err:
        raise RuntimeError(f"raw traceback from ajuste {args[0]}: {err[-2000:]}")
    return True, time.perf_counter() - t0, appeared


# The first file each command writes under --out: start-up (imports, data loading) ends there.
FIRST_FILE = {"train": "status.json", "compare": "study.json", "tune": "tune.json"}


def units(name: str, out: Path) -> int:
    """Finished units (epochs / cells / trials) in a command's --out, from its files."""
    try:
        if name == "train":
            return len(_jsonl(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
        if name == "compare":
            return len(_jsonl(out / "results.jsonl")) if (out / "results.jsonl").exists() else 0
        db = out / "study.db"
        if not db.exists():
            return 0
        import sqlite3

        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0])
    except Exception:  # noqa: BLE001 - a torn or locked file mid-kill: no progress known
        return 0


def leftovers(out: Path) -> list[str]:
    """Temp files of interrupted writes and checkpoint dirs that a finished command should not leave behind."""
    bad = [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".partial-" in p.name]
    bad += [p for p in out.rglob("checkpoint") if p.is_dir()]
    return sorted(str(p.relative_to(out)) for p in bad)


def incomplete_runs(out: Path) -> list[str]:
    """Run dirs (those with a config.yaml) whose status.json does not say complete."""
    bad = []
    for cfg in out.rglob("config.yaml"):
        try:
            status = json.loads((cfg.parent / "status.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            status = "unreadable"
        if status != "complete":
            bad.append(f"{cfg.parent.relative_to(out)}: {status}")
    return bad


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check(name: str, ref: Path, got: Path, args: list[str]) -> dict[str, int]:
    """Lost and duplicated units (epochs, cells, trials) and mismatches against the reference."""
    if name == "train":
        a, b = _jsonl(ref / "metrics.jsonl"), _jsonl(got / "metrics.jsonl")
        epochs = [r["epoch"] for r in b]
        lost = len(set(range(len(a))) - set(epochs))
        dup = len(epochs) - len(set(epochs))
        mismatch = sum(abs(x["val_loss"] - y["val_loss"]) > 1e-5 or abs(x["train_loss"] - y["train_loss"]) > 1e-5
                       for x, y in zip(a, b))
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
        mismatch += abs(sa["test_accuracy"] - sb["test_accuracy"]) > 1e-9
        return {"lost": lost, "duplicated": dup, "mismatched": mismatch}
    if name == "compare":
        a = {r["cell"]: r for r in _jsonl(ref / "results.jsonl")}
        b_rows = _jsonl(got / "results.jsonl")
        b = {r["cell"]: r for r in b_rows}
        mismatch = sum(abs(a[c]["test_accuracy"] - b[c]["test_accuracy"]) > 1e-9 for c in a if c in b)
        return {"lost": len(set(a) - set(b)), "duplicated": len(b_rows) - len(b), "mismatched": mismatch}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    want = int(args[args.index("--trials") + 1])
    storage = f"sqlite:///{got / 'study.db'}"
    names = optuna.get_all_study_names(storage)
    if len(names) != 1:
        raise RuntimeError(f"expected one study in {got / 'study.db'}, found {names}")
    study = optuna.load_study(study_name=names[0], storage=storage)
    states = [t.state for t in study.trials]
    done = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"lost": max(0, want - len(done)), "duplicated": max(0, len(done) - want) + len(done) - len(set(done)),
            "mismatched": 0, "unfinished_records": sum(s == optuna.trial.TrialState.RUNNING for s in states)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="total kills, spread over the three commands")
    ap.add_argument("--term-share", type=float, default=0.5,
                    help="share of the kills that are SIGTERM to the main process (docker stop) instead of SIGKILL "
                         "to the whole process group")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["train", "compare", "tune"], action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-delay", type=float, default=1.5, help="earliest kill, seconds after start")
    ap.add_argument("--startup-share", type=float, default=0.2,
                    help="share of kills aimed at start-up (imports, data loading); the rest at the work left")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ns = ap.parse_args()
    rng = random.Random(ns.seed)
    names = ns.only or ["train", "compare", "tune"]
    totals = {"kills": 0, "kills_in_startup": 0, "kills_after_last_unit": 0, "resumes": 0, "lost": 0, "duplicated": 0, "mismatched": 0,
              "leftovers": 0, "incomplete": 0}
    per_command: dict[str, dict] = {}
    terms: dict[str, int] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ajuste-chaos-") as tmp:
        tmp = Path(tmp)
        for i, name in enumerate(names):
            kills = ns.kills // len(names) + (1 if i < ns.kills % len(names) else 0)
            ref_args = commands(tmp / "ref", ns.quick)[name]
            LAST_UNIT_AT[0] = 0.0
            _, ref_seconds, startup = run_once(ref_args, None, watch=Path(ref_args[-1]) / FIRST_FILE[name],
                                               progress=lambda: units(name, Path(ref_args[-1])))
            startup = startup if startup is not None else ns.min_delay
            total_units = max(1, units(name, Path(ref_args[-1])))
            # after the last unit: the final evaluation, summary, report and plots (compare), best.json (tune)
            tail = max(0.5, ref_seconds - max(LAST_UNIT_AT[0], startup))
            work = max(0.5, ref_seconds - startup - tail)
            # Rounds: a command that finishes before its share of kills is used (the last kill landed after the
            # result was written) starts again in a fresh directory, until the share is used.
            k, runs, in_startup, in_tail, delays, rounds = 0, 0, 0, 0, [], 0
            res: dict[str, int] = {}
            left_over: list[str] = []
            incomplete: list[str] = []
            t_cmd = time.perf_counter()
            while rounds == 0 or (k < kills and rounds < 10):
                rounds += 1
                args = commands(tmp / f"chaos-{rounds}", ns.quick)[name]
                out_got = Path(args[-1])
                done = False
                while not done:
                    delay = None
                    if k < kills:
                        left = work * max(0.0, 1.0 - units(name, out_got) / total_units) + tail
                        if rng.random() < ns.startup_share:
                            delay = rng.uniform(ns.min_delay, max(ns.min_delay + 0.5, startup))
                        else:
                            delay = rng.uniform(startup, startup + left)
                    term = delay is not None and rng.random() < ns.term_share
                    done, _, _ = run_once(args, delay, term=term)
                    runs += 1
                    if not done:
                        k += 1
                        terms[name] = terms.get(name, 0) + term
                        delays.append(round(delay, 2))
                        if delay < startup:
                            in_startup += 1
                        elif units(name, out_got) >= total_units:
                            in_tail += 1
                got = check(name, Path(ref_args[-1]), out_got, args)
                for key, v in got.items():
                    res[key] = res.get(key, 0) + v
                left_over += leftovers(out_got)
                incomplete += incomplete_runs(out_got)
            chaos_seconds = time.perf_counter() - t_cmd
            res["leftovers"], res["incomplete"] = len(left_over), len(incomplete)
            res["kills_after_completion"] = ALREADY_DONE.count(name)
            print(f"{name:8s} reference {ref_seconds:6.1f}s (start-up {startup:4.1f}s, tail {tail:4.1f}s)  killed+resumed "
                  f"{chaos_seconds:6.1f}s  rounds {rounds}  kills {k:3d} ({in_startup} in start-up, {in_tail} after the last "
                  f"unit)  runs {runs:3d}  "
                  + "  ".join(f"{key} {v}" for key, v in res.items()), flush=True)
            for item in left_over + incomplete:
                print(f"  left behind: {item}", flush=True)
            per_command[name] = {"reference_seconds": round(ref_seconds, 1), "startup_seconds": round(startup, 1),
                                 "tail_seconds": round(tail, 1),
                                 "chaos_seconds": round(chaos_seconds, 1), "kills": k, "kills_in_startup": in_startup,
                                 "kills_after_last_unit": in_tail,
                                 "runs": runs, "rounds": rounds, "kill_delays": delays, **res}
            totals["kills"] += k
            totals["kills_in_startup"] += in_startup
            totals["kills_after_last_unit"] += in_tail
            totals["resumes"] += runs - rounds
            for key in ("lost", "duplicated", "mismatched", "leftovers", "incomplete"):
                totals[key] += res[key]
    # SIGTERM: the command must stop by itself (exit 143, or -15 when it landed before the handler was set, in
    # start-up), within the grace, without a traceback, and leave no run directory saying "running".
    totals["kills_sigterm"] = sum(terms.values())
    stopped = [t for t in TERM_OUTCOMES if t["returncode"] != 0]
    totals["sigterm_not_stopped_in_time"] = sum(t["returncode"] not in (143, -15) for t in stopped)
    totals["sigterm_tracebacks"] = sum(t["traceback"] for t in stopped)
    totals["sigterm_left_running"] = sum(len(t["left_running"]) for t in stopped)
    totals["sigterm_slowest_stop_seconds"] = max((t["stop_seconds"] for t in stopped), default=0.0)
    for name in per_command:
        per_command[name]["kills_sigterm"] = terms.get(name, 0)
    totals["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    print("total  " + "  ".join(f"{k} {v}" for k, v in totals.items()))
    if ns.json:
        ns.json.write_text(json.dumps({"command": " ".join(sys.argv), "totals": totals, "commands": per_command},
                                      indent=2) + "\n")
    bad = sum(totals[k] for k in ("lost", "duplicated", "mismatched", "leftovers", "incomplete",
                                   "sigterm_not_stopped_in_time", "sigterm_tracebacks", "sigterm_left_running"))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
