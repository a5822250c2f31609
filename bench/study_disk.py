"""Disk use of a study, run by run: what each run's weights take, and what they would take written in full.

    python bench/study_disk.py runs/compare-sms STUDY2 ...

For each study directory: the total on disk (every file, as `du --apparent-size` counts), then per run the size
of its directory and of its `model.safetensors`, whether the weights are stored by reference to a base model
(`ajuste.training.stored_weights`), and the bytes of the tensors the file leaves to the base. Run it on the same
study made before and after a change to compare the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main(argv: list[str]) -> int:
    from safetensors import safe_open

    for study in map(Path, argv):
        rows = []
        for run in sorted((study / "runs").iterdir()):
            weights = run / "model.safetensors"
            if not weights.is_file():
                continue
            with safe_open(str(weights), framework="pt") as fh:
                meta = fh.metadata() or {}
            ref = json.loads(meta["base"]) if "base" in meta else None
            rows.append((run.name, _size(run), weights.stat().st_size, ref))
        best = study / "best_model"
        total = _size(study)
        print(f"\n{study}: {_mb(total)} MB in all; runs/ {_mb(sum(r[1] for r in rows))} MB"
              + (f"; best_model/ {_mb(_size(best))} MB" if best.is_dir() else ""))
        print("| run | dir MB | model.safetensors MB | base reference | left to the base MB |")
        print("|---|---|---|---|---|")
        for name, size, wsize, ref in rows:
            print(f"| {name} | {_mb(size)} | {_mb(wsize)} | {ref['model'] if ref else 'in full'} | "
                  f"{_mb(ref['bytes']) if ref else '0'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
