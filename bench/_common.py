"""Shared bits of the benchmarks: threads, CPU description, data subsets, tutorial-style image loading, tables.

Benchmarks are scripts, not tests: they take minutes, print a table and the ratios, and are run by hand
(docs/benchmarks.md has the commands and the numbers). Both sides of a comparison run in the same process,
one after the other, on the same examples and with the same number of threads.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def set_threads(n: int) -> None:
    """Before torch is imported: OpenMP reads OMP_NUM_THREADS once."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(n)


def cpu_description() -> str:
    model = platform.processor() or "unknown CPU"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1]
                break
    except OSError:
        pass
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
    from ajuste.training.execution import native_bf16

    return f"{model} ({os.cpu_count()} cores; {', '.join(have) or 'no AVX2'}; native bf16: {native_bf16()})"


def dataset(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        raise SystemExit(f"{p} not found: the benchmarks need the shared data sets (see {SHARED}/README.md)")
    return p


def subset_splits(data: Any, splits: dict, *, train: int | None, val: int | None, test: int | None = None,
                  seed: int = 0) -> dict:
    """Stratified subsets of the splits by count (None: all)."""
    import numpy as np

    from ajuste.data.splits import take_fraction

    out = {k: np.asarray(v) for k, v in splits.items()}
    for name, n in (("train", train), ("val", val), ("test", test)):
        if n is not None and n < len(out[name]):
            out[name] = np.asarray(take_fraction(out[name], data.labels, float(n), seed=seed))
    return out


def load_subset(cfg: Any, args: Any, *, test: int | None = None) -> tuple[Any, dict]:
    """The data of ``cfg``, its splits cut to ``args.train`` / ``args.val`` (0: all) and ``test`` examples,
    and the CPU line every benchmark prints first."""
    from ajuste.training.run import prepare_data

    data, splits = prepare_data(cfg)
    splits = subset_splits(data, splits, train=args.train or None, val=args.val or None, test=test)
    print(f"CPU: {cpu_description()}; threads {args.threads}")
    return data, splits


class PathsDataset:
    """The torchvision ``ImageFolder`` of a tutorial, over given (path, label) pairs: every access opens,
    decodes and transforms the JPEG again."""

    def __init__(self, paths: list[str], labels: list[int], transform: Any) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        return self.transform(img), self.labels[i]


def tutorial_transforms(size: int, mean: list[float], std: list[float], interpolation: str):
    """The PyTorch transfer-learning tutorial's transforms (with the backbone's own normalisation)."""
    from torchvision import transforms as T

    interp = getattr(T.InterpolationMode, interpolation.upper(), T.InterpolationMode.BILINEAR)
    train = T.Compose([T.RandomResizedCrop(size, interpolation=interp), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize(mean, std)])
    val = T.Compose([T.Resize(int(size / 0.875), interpolation=interp), T.CenterCrop(size), T.ToTensor(),
                     T.Normalize(mean, std)])
    return train, val


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                     [line(r) for r in cells[1:]])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def tutorial_epochs(model: Any, optimizer: Any, train_ds: Any, val_ds: Any, epochs: int) -> tuple[list[float], float]:
    """The PyTorch tutorials' training loop: cross-entropy, StepLR(7, 0.1), batch 32, no worker processes,
    validation accuracy after every epoch. Returns the seconds of each epoch and the best validation accuracy."""
    import torch
    from torch.utils.data import DataLoader

    criterion = torch.nn.CrossEntropyLoss()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    train_loader = DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=0)
    val_loader = DataLoader(val_ds, batch_size=32, shuffle=False, num_workers=0)
    seconds, best = [], 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, labels in val_loader:
                correct += (model(inputs).argmax(1) == labels).sum().item()
        seconds.append(time.perf_counter() - t0)
        best = max(best, correct / len(val_ds))
    return seconds, best


def cross_entropy(logits: Any, y: Any) -> float:
    """Mean cross-entropy of numpy logits (N, C) against integer labels (N,)."""
    import numpy as np

    z = logits - logits.max(1, keepdims=True)
    return float(-(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(y)), y].mean())


def accuracy(logits: Any, y: Any) -> float:
    return float((logits.argmax(1) == y).mean())


def parse_or_analyse(ap: Any, analyse: Any) -> Any:
    """The command line of a benchmark that trains (``DATA ... --threads N``) or tabulates result files it
    wrote earlier (``--analyse FILES``): adds those two options, parses, runs ``analyse`` and returns None
    in the second case; otherwise sets the threads and returns the arguments."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--analyse", type=Path, nargs="+", help="result files to tabulate (no training)")
    args = ap.parse_args()
    if args.analyse:
        analyse(args.analyse)
        return None
    if not args.data:
        ap.error("give DATA, or --analyse FILES")
    set_threads(args.threads)
    return args
