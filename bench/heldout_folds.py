"""Two-stage on a set whose validation split is too small to choose: does the end-to-end phase beat the
head-only phase on images that neither chose anything? Measured by k-fold cross-validation over the set's
*training* images only (its test folder is never read).

    python bench/heldout_folds.py hymenoptera [--folds 5] [--seeds 0 1] [--out runs/folds] [--threads 1]
        [--set KEY=VALUE ...]     # a variant of the default run, e.g. --set strategy.head_epochs=30
    python bench/heldout_folds.py hymenoptera --strategy linear-probe --set train.epochs=15 ...  # any strategy
    python bench/heldout_folds.py --analyse runs/folds/*.json        # the table again, no training
    python bench/heldout_folds.py --analyse runs/a/*.json runs/b/*.json  # variants side by side, paired

DATA: a shared data set's name or a path of an image folder with ``train/<class>/`` (and a val or test folder,
which is left out). For each seed and fold, the fold's images are held out; ajuste's default ``two-stage`` run
(``model.name: auto``, every default) trains on the rest, carving its validation split from it the way
``make_splits`` always does (15%, stratified). Three sets of weights predict the validation split and the
held-out fold: the head-only phase's best (what the run would keep if end-to-end training never ran), the
end-to-end phase's result (the mean of its last epochs' weights), and what the run kept. Logits go to
``<out>/<data>-s<seed>-f<fold>.json``; re-running skips the folds already done.

The table pools the held-out folds (every training image is held out once per seed) and compares two rules
for choosing between the phases on validation: the end-to-end phase replaces the head-only one when it is
more accurate, ties broken by the lower loss (``train.monitor=val_accuracy``), or only when it is strictly
more accurate (a tie keeps the model with fewer trained weights).

``--strategy`` runs another strategy instead (only the kept model is scored). Analysed together, runs of
different variants (strategy and ``--set`` settings) on the same seeds and folds are compared image by
image: pooled held-out accuracy per variant, and for each pair how many held-out images one gets right and
the other wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def fold_data(source: str, folds: int, seed: int, fold: int):
    """The set's training images only, with ``fold`` of ``folds`` (stratified, shuffled by ``seed``) as the
    test split: ajuste carves its validation split from the rest."""
    from sklearn.model_selection import StratifiedKFold

    from ajuste.data.sources import LabelledData, load_data

    data = load_data(source)
    pool = np.asarray(data.splits.get("train", np.arange(len(data))), dtype=np.int64)
    y = data.labels[pool]
    rest, held = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool, y))[fold]
    inputs = [data.inputs[i] for i in pool] if isinstance(data.inputs, list) else data.inputs[pool]
    return LabelledData(modality=data.modality, inputs=inputs, labels=y, classes=data.classes,
                        splits={"train": rest, "test": held}, source=f"{source} (fold {fold} of {folds})")


def train_fold(source: str, folds: int, seed: int, fold: int, path: Path, sets: dict | None = None,
               strategy: str = "two-stage") -> None:
    import torch

    import ajuste.training.loop as L
    from ajuste.config import RunConfig
    from ajuste.training.run import train_run

    snaps: dict[str, dict[str, torch.Tensor]] = {}
    real_fit, real_average = L.fit, L._take_average

    def copy(backbone) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in backbone.state_dict().items()}

    def fit_with_snapshots(**kw):
        backbone, callback = kw["backbone"], kw.get("on_epoch_end")

        def hook(rec, result):
            if rec.phase == "head" and result.best_epoch == rec.epoch:  # the head-only phase's best so far
                snaps["head"] = copy(backbone)
            if callback is not None:
                callback(rec, result)

        kw["on_epoch_end"] = hook
        return real_fit(**kw)

    def average_with_snapshot(backbone, *args, **kw):
        best = real_average(backbone, *args, **kw)
        snaps["all"] = copy(backbone)  # the averaged weights, still loaded whether or not the run keeps them
        return best

    if strategy == "two-stage":  # other strategies are scored by their kept model alone: no phase snapshots
        L.fit, L._take_average = fit_with_snapshots, average_with_snapshot
    try:
        data = fold_data(source, folds, seed, fold)
        cfg = RunConfig().override({"data.source": source, "strategy.name": strategy, "train.seed": seed,
                                    **(sets or {})})
        res = train_run(cfg=cfg, data=data, out=None, progress=False)
    finally:
        L.fit, L._take_average = real_fit, real_average
    bb, pipe, cfg = res.backbone, res.pipeline, res.config
    cl = L.use_channels_last(cfg, bb)

    def logits() -> dict[str, list]:
        return {s: L.predict_logits(bb, pipe.loader(s), amp=L.amp_for(cfg, bb, training=False),
                                    channels_last=cl)[0].tolist() for s in ("val", "test")}

    out: dict = {"source": source, "seed": seed, "fold": fold, "folds": folds, "model": cfg.model.name,
                 "strategy": strategy, "sets": sets or {},
                 "run": {k: res.summary.get(k) for k in ("best_epoch", "epochs", "val_accuracy", "test_accuracy")},
                 "kept": logits()}
    for name, sd in snaps.items():
        bb.load_state_dict(sd)
        out[name] = logits()
    out["y"] = {s: L.predict_logits(bb, pipe.loader(s), amp=None, channels_last=cl)[1].tolist()
                for s in ("val", "test")}
    path.write_text(json.dumps(out))
    print(f"{path}: {cfg.model.name}, train/val/held-out {len(pipe.splits['train'])}/{len(pipe.splits['val'])}/"
          f"{len(pipe.splits['test'])}, kept held-out accuracy {res.summary['test_accuracy']:.3f}", flush=True)


# Settings that change where and how fast a run trains, not what it learns: not part of a variant's name.
NEUTRAL = ("train.cache_dir", "train.threads")


def variant(d: dict) -> str:
    sets = [f"{k}={v}" for k, v in sorted(d.get("sets", {}).items()) if k not in NEUTRAL]
    return " ".join([d.get("strategy", "two-stage"), d["model"], *sets])


def analyse(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(paths)]
    names = sorted({variant(d) for d in runs})
    if len(names) == 1 and all("all" in d for d in runs):  # two-stage alone: its phases and rules
        analyse_phases(runs)
    else:
        compare_variants(runs, names)


def compare_variants(runs: list[dict], names: list[str]) -> None:
    """Pooled held-out accuracy of the kept model per variant, over the (seed, fold) pairs all variants ran,
    and per pair of variants the held-out images only one of them gets right."""
    right: dict[str, dict[tuple, np.ndarray]] = {n: {} for n in names}
    for d in runs:
        y = np.array(d["y"]["test"])
        right[variant(d)][(d["seed"], d["fold"])] = np.array(d["kept"]["test"]).argmax(1) == y
    common = sorted(set.intersection(*(set(r) for r in right.values())))
    if not common:
        raise SystemExit("no (seed, fold) was run by every variant")
    pooled = {n: np.concatenate([right[n][k] for k in common]) for n in names}
    total = len(next(iter(pooled.values())))
    print(f"{len(common)} (seed, fold) runs per variant, {total} held-out predictions each")
    print(C.table(["variant", "held-out accuracy, pooled"],
                  [[n, f"{pooled[n].mean():.4f} ({int(pooled[n].sum())} of {total})"] for n in names]))
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            only_a, only_b = int((pooled[a] & ~pooled[b]).sum()), int((pooled[b] & ~pooled[a]).sum())
            rows.append([a, b, only_a, only_b])
    if rows:
        print(C.table(["variant A", "variant B", "right in A only", "right in B only"], rows))


def analyse_phases(runs: list[dict]) -> None:
    rows, right, total = [], {"head": 0, "all": 0, "loss rule": 0, "strict rule": 0}, 0
    for d in runs:
        yv, yt = np.array(d["y"]["val"]), np.array(d["y"]["test"])
        v = {k: np.array(d[k]["val"]) for k in ("head", "all")}
        t = {k: np.array(d[k]["test"]) for k in ("head", "all")}
        acc = {k: C.accuracy(v[k], yv) for k in v}
        loss = {k: C.cross_entropy(v[k], yv) for k in v}
        tie = abs(acc["all"] - acc["head"]) <= 1e-9
        by_loss = "all" if acc["all"] > acc["head"] + 1e-9 or (tie and loss["all"] < loss["head"] - 1e-4) else "head"
        strict = "all" if acc["all"] > acc["head"] + 1e-9 else "head"
        held = {k: int((t[k].argmax(1) == yt).sum()) for k in t}
        for k in ("head", "all"):
            right[k] += held[k]
        right["loss rule"] += held[by_loss]
        right["strict rule"] += held[strict]
        total += len(yt)
        rows.append([f"s{d['seed']} f{d['fold']}", d["model"], f"{acc['head']:.3f} / {acc['all']:.3f}",
                     f"{loss['head']:.3f} / {loss['all']:.3f}", f"{held['head']} / {held['all']} of {len(yt)}",
                     by_loss, strict])
    print(C.table(["seed, fold", "model", "val acc: head / end-to-end", "val loss: head / end-to-end",
                   "held-out right: head / end-to-end", "loss rule keeps", "strict rule keeps"], rows))
    print()
    print(C.table(["weights", "held-out accuracy, pooled"],
                  [[k, f"{right[k] / total:.3f} ({right[k]} of {total})"] for k in right]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", type=int, nargs="+", help="run these folds only (split the work across processes)")
    ap.add_argument("--out", type=Path, default=Path("runs/folds"))
    ap.add_argument("--strategy", default="two-stage",
                    help="the strategy run in every fold (other than two-stage: the kept model is scored alone)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting changed from the default in every run (a variant; give it its own --out)")
    args = C.parse_or_analyse(ap, analyse)
    if args is None:
        return
    source = args.data if Path(args.data).exists() else str(C.dataset(args.data))
    import yaml

    sets = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.sets)}
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in args.seeds:
        for fold in args.only if args.only is not None else range(args.folds):
            path = args.out / f"{Path(source).name}-s{seed}-f{fold}.json"
            if not path.exists():
                train_fold(source, args.folds, seed, fold, path, sets, args.strategy)
            paths.append(path)
    analyse(paths)


if __name__ == "__main__":
    main()
