"""Two-stage's end-to-end phase: keep its most accurate validation epoch, its last epoch, or the mean of the
weights of its last K epochs (`strategy.stage2_average`)? Decided on validation only, by split halves.

    python bench/weight_average.py DATA [--seeds 0 1 2] [--fraction 1] [--out runs/wavg] [--threads 1]
    python bench/weight_average.py --analyse runs/wavg/*.json        # the table again, no training

DATA: ``digits``, a shared data set's name (``pneumoniamnist``, ``clothing-small``, ``hymenoptera``) or a path.
Each seed trains ajuste's default two-stage run once (``strategy.stage2_average=0``: the run itself keeps its
most accurate epoch) and snapshots the weights after every end-to-end epoch; afterwards every snapshot and the
mean of the last K of them (K = 2, 3, 4, half, all; BatchNorm statistics recomputed when they train) predict
the validation and test splits. Logits go to ``<out>/<data>-s<seed>.json``.

The comparison is on validation only, by split halves: 400 times, pick the most accurate epoch on a random half
(ties by the lower loss, as ``train.monitor=val_accuracy`` does) and score it on the other half, where the last
epoch and each average (which use no validation to choose) are scored too. The printed difference is the mean
over halves in points; test accuracy is printed beside it for the record, not for choosing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def train_and_snapshot(source: str, seed: int, fraction: float, path: Path) -> None:
    import torch

    import ajuste.training.loop as L
    from ajuste.config import RunConfig
    from ajuste.training.run import train_run

    snaps: list[dict[str, torch.Tensor]] = []
    real_fit = L.fit

    def fit_with_snapshots(**kw):
        backbone, callback = kw["backbone"], kw.get("on_epoch_end")

        def hook(rec, result):
            if rec.phase == "all":
                snaps.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
            if callback is not None:
                callback(rec, result)

        kw["on_epoch_end"] = hook
        return real_fit(**kw)

    L.fit = fit_with_snapshots  # train_run imports fit from the module when it runs
    try:
        cfg = RunConfig().override({"data.source": source, "strategy.name": "two-stage", "train.seed": seed,
                                    "data.fraction": fraction, "strategy.stage2_average": 0.0})
        res = train_run(cfg=cfg, out=None, progress=False)
    finally:
        L.fit = real_fit
    bb, pipe, cfg = res.backbone, res.pipeline, res.config
    cl = L.use_channels_last(cfg, bb)

    def logits(split: str) -> tuple[list, list]:
        lg, y = L.predict_logits(bb, pipe.loader(split), amp=L.amp_for(cfg, bb, training=False), channels_last=cl)
        return lg.tolist(), y.tolist()

    out: dict = {"source": source, "seed": seed, "fraction": fraction, "run": {k: res.summary.get(k) for k in
                                                         ("best_epoch", "epochs", "val_accuracy", "test_accuracy")},
                 "epochs": [], "average": {}}
    for sd in snaps:
        bb.load_state_dict(sd)
        out["epochs"].append({s: logits(s)[0] for s in ("val", "test")})
    out["y"] = {s: logits(s)[1] for s in ("val", "test")}
    n = len(snaps)
    for k in sorted({2, 3, 4, n // 2, n} - {0, 1}):
        total = None
        for sd in snaps[-k:]:
            total = {key: v.float().clone() for key, v in sd.items() if v.is_floating_point()} if total is None \
                else {key: total[key] + sd[key].float() for key in total}
        bb.load_state_dict({key: (total[key] / k).to(v.dtype) if key in total else v for key, v in snaps[-1].items()})
        if cfg.model.bn == "train":
            L._refresh_batchnorm(bb, pipe, channels_last=cl, w=L.World())
        out["average"][str(k)] = {s: logits(s)[0] for s in ("val", "test")}
    path.write_text(json.dumps(out))
    print(f"{path}: {n} end-to-end epochs; the run kept epoch {res.summary['best_epoch']}, "
          f"test {res.summary['test_accuracy']:.3f}", flush=True)


def analyse(paths: list[Path], halves: int = 400) -> None:
    rows, pooled = [], {}
    for p in paths:
        d = json.loads(p.read_text())
        yv, yt = np.array(d["y"]["val"]), np.array(d["y"]["test"])
        ev = [np.array(e["val"]) for e in d["epochs"]]
        et = [np.array(e["test"]) for e in d["epochs"]]
        cands = {"last epoch": (ev[-1], et[-1])}
        cands.update({f"mean of last {k}": (np.array(a["val"]), np.array(a["test"])) for k, a in d["average"].items()})
        rng = np.random.default_rng(0)
        diff = {c: [] for c in cands}
        for _ in range(halves):
            perm = rng.permutation(len(yv))
            a, b = perm[: len(yv) // 2], perm[len(yv) // 2:]
            pick = max(range(len(ev)), key=lambda i: (C.accuracy(ev[i][a], yv[a]), -C.cross_entropy(ev[i][a], yv[a])))
            base = C.accuracy(ev[pick][b], yv[b])
            for c, (v, _) in cands.items():
                diff[c].append(C.accuracy(v[b], yv[b]) - base)
        pick = max(range(len(ev)), key=lambda i: (C.accuracy(ev[i], yv), -C.cross_entropy(ev[i], yv)))
        frac = d.get("fraction", 1.0)
        name = f"{Path(d['source']).stem}{'' if frac == 1 else f' {frac:g}'} s{d['seed']}"
        rows.append([name, "most accurate epoch", f"{C.accuracy(ev[pick], yv):.3f} (epoch {pick + 1})", "0",
                     f"{C.accuracy(et[pick], yt):.3f}"])
        for c, (v, t) in cands.items():
            m = 100 * float(np.mean(diff[c]))
            pooled.setdefault(c, []).append(m)
            rows.append([name, c, f"{C.accuracy(v, yv):.3f}", f"{m:+.2f}", f"{C.accuracy(t, yt):.3f}"])
    print(C.table(["run", "kept weights", "val acc", "split-half vs most accurate epoch (pt)", "test acc"], rows))
    print()
    print(C.table(["kept weights", "split-half difference, mean over runs (pt)", "runs ahead / behind"],
                  [[c, f"{np.mean(v):+.2f}", f"{sum(x > 0 for x in v)} / {sum(x < 0 for x in v)}"]
                   for c, v in pooled.items()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("runs/wavg"))
    args = C.parse_or_analyse(ap, analyse)
    if args is None:
        return
    source = args.data
    if source != "digits" and not Path(source).exists():
        source = str(C.dataset(source))
        if Path(source).name == "pneumoniamnist":
            source = str(Path(source) / "pneumoniamnist.npz")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.data).name + ("" if args.fraction == 1 else f"-f{args.fraction:g}")
    paths = []
    for seed in args.seeds:
        path = args.out / f"{stem}-s{seed}.json"
        if not path.exists():  # re-running continues where an interrupted one stopped
            train_and_snapshot(source, seed, args.fraction, path)
        paths.append(path)
    analyse(paths)


if __name__ == "__main__":
    main()
