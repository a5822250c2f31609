"""Kill at any moment: SIGKILL `ajuste train`, `ajuste compare` and `ajuste tune` at random points, re-run the
same command until it finishes, and check that nothing was lost, duplicated or half-read.

    python bench/chaos.py --kills 20            # the long run (tiny models; minutes); figures → docs/reliability.md
    python bench/chaos.py --kills 3 --quick     # a smoke run

Per command: one uninterrupted reference run, then the killed-and-resumed run. Checks:
- train: metrics.jsonl has epochs 0..n-1 exactly once, and every epoch's numbers equal the reference's
  (same seed → same metrics; resume restores optimizer, scheduler, RNG and the phase of two-stage);
  summary.json only appears complete (valid JSON with status complete) and the test accuracy equals the reference.
- compare: results.jsonl holds every cell exactly once with the reference's test accuracy.
- tune: the study holds exactly --trials finished trials, numbers unique (a resumed study draws other
  parameters than the reference: values are not compared, counts are).
Kill times are drawn uniformly between --min-delay and a command's reference wall time, so kills land in
start-up, training, checkpoint writing and evaluation alike. A file read mid-write would show up as a JSON
error or as a wrong metric.
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


def run_once(args: list[str], kill_after: float | None) -> tuple[bool, float]:
    """Start ``ajuste ARGS``; SIGKILL it after ``kill_after`` seconds. Returns (finished, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ajuste", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False, time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"ajuste {' '.join(args[:2])} failed (rc {proc.returncode}): {err[-2000:]}")
    if "Traceback" in err:
        raise RuntimeError(f"raw traceback from ajuste {args[0]}: {err[-2000:]}")
    return True, time.perf_counter() - t0


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
    ap.add_argument("--kills", type=int, default=20, help="total SIGKILLs, spread over the three commands")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["train", "compare", "tune"], action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-delay", type=float, default=1.5, help="earliest kill, seconds after start")
    ns = ap.parse_args()
    rng = random.Random(ns.seed)
    names = ns.only or ["train", "compare", "tune"]
    totals = {"kills": 0, "resumes": 0, "lost": 0, "duplicated": 0, "mismatched": 0}
    with tempfile.TemporaryDirectory(prefix="ajuste-chaos-") as tmp:
        tmp = Path(tmp)
        for i, name in enumerate(names):
            kills = ns.kills // len(names) + (1 if i < ns.kills % len(names) else 0)
            ref_args = commands(tmp / "ref", ns.quick)[name]
            _, ref_seconds = run_once(ref_args, None)
            args = commands(tmp / "chaos", ns.quick)[name]
            done, k, resumes = False, 0, 0
            while not done:
                delay = rng.uniform(ns.min_delay, max(ns.min_delay + 0.5, ref_seconds)) if k < kills else None
                done, _ = run_once(args, delay)
                if not done:
                    k += 1
                resumes += 1
            out_ref, out_got = Path(ref_args[-1]), Path(args[-1])
            res = check(name, out_ref, out_got, args)
            print(f"{name:8s} reference {ref_seconds:6.1f}s  kills {k:3d}  runs {resumes:3d}  " +
                  "  ".join(f"{key} {v}" for key, v in res.items()), flush=True)
            totals["kills"] += k
            totals["resumes"] += resumes - 1
            for key in ("lost", "duplicated", "mismatched"):
                totals[key] += res[key]
    print("total  " + "  ".join(f"{k} {v}" for k, v in totals.items()))
    return 0 if totals["lost"] == totals["duplicated"] == totals["mismatched"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
