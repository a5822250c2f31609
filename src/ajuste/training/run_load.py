"""Rebuild a finished run's model offline from its directory, refusing a directory whose files disagree (one line
naming the file and the fix). Evaluate, predict, export and a study's hand-over all load runs through here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file

from ajuste.backbones.factory import rebuild_backbone
from ajuste.config import load_config
from ajuste.data.pipeline import Preprocessing
from ajuste.errors import AjusteError
from ajuste.io import ajuste_dir_kind, read_json
from ajuste.tasks import Task
from ajuste.training import calibration, stored_weights
from ajuste.training.run_dir import read_status, status_error, weights_digest


@dataclass
class LoadedRun:
    run_dir: Path
    backbone: Any
    classes: list[str]
    preprocessing: Any
    config: Any
    summary: dict[str, Any] | None
    temperature: float = 1.0  # calibration.json's T, which the logits are divided by (1: none)
    task: Task = field(default_factory=Task)  # task.json: multi-label thresholds, regression target statistics


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a finished run's model offline; refuse a run directory whose files disagree."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise AjusteError(f"{run_dir} is a file; give the run directory `ajuste train` wrote (its --out)")
    if not run_dir.is_dir():
        raise AjusteError(f"run directory {run_dir} does not exist")
    needed = ["config.yaml", "labels.json", "preprocessing.json", "backbone.json", "model.safetensors"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    kind = ajuste_dir_kind(run_dir) if missing else ""
    if kind == "study":
        raise AjusteError(f"{run_dir} is a study of `ajuste compare`, not a run; its recommended model is "
                          f"{run_dir / 'best_model'}")
    if kind == "search":
        raise AjusteError(f"{run_dir} is a search of `ajuste tune`, not a run; train its best trial with "
                          f"`ajuste train --from-study {run_dir}`")
    if missing:
        status = read_status(run_dir)
        hint = f" (status: {status}; re-run the same `ajuste train` command to finish it)" if status else ""
        if status == "failed":  # re-running the same command would fail the same way: say why it failed
            hint = f" (training failed: {status_error(run_dir)})"
        elif (run_dir / "summary.json").is_file():  # finished, then damaged: re-running would refuse
            hint = " (the run had finished; a file was moved or deleted — retrain with `ajuste train ... --overwrite`)"
        raise AjusteError(f"{run_dir} is not a finished run: missing {', '.join(missing)}{hint}")
    classes = read_run_json(run_dir, "labels.json")
    task_file = run_dir / "task.json"
    task = Task.from_json(read_run_json(run_dir, "task.json") if task_file.is_file() else None)
    least = 1 if task.kind != "classification" else 2  # a regression run's one name: its target's
    if not (isinstance(classes, list) and len(classes) >= least and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise AjusteError(f"{run_dir}/labels.json must list the class names (at least {least} distinct "
                          f"string{'s' if least > 1 else ''}); it holds {str(classes)[:80]} — restore it from the run "
                          f"or retrain")
    desc = read_run_json(run_dir, "backbone.json")
    if not isinstance(desc, dict) or "kind" not in desc:
        raise AjusteError(f"{run_dir}/backbone.json does not describe a backbone (no 'kind'); restore it or retrain")
    if desc.get("num_classes") != len(classes):
        raise AjusteError(f"{run_dir}: backbone.json says {desc.get('num_classes')} classes but labels.json "
                          f"lists {len(classes)}; the run directory is inconsistent")
    summary = read_run_json(run_dir, "summary.json") if (run_dir / "summary.json").is_file() else None
    if isinstance(summary, dict) and isinstance(summary.get("classes"), list) and summary["classes"] != classes:
        raise AjusteError(f"{run_dir}/labels.json lists {_short(classes)} but the run was trained on "
                          f"{_short(summary['classes'])} (summary.json); restore labels.json or retrain")
    if desc["kind"] == "hf" and not (run_dir / "hf").is_dir():
        raise AjusteError(f"{run_dir} is a Hugging Face model's run but has no hf/ folder (its config and "
                          "tokenizer or image processor); "
                          "restore it from the run or retrain")
    weights = run_dir / "model.safetensors"
    meta = _check_weights_file(run_dir, weights, classes, summary)
    try:
        state = load_file(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError for a damaged header
        raise AjusteError(f"cannot read {weights} ({type(exc).__name__}: {str(exc)[:120]}); the file is damaged "
                          "— retrain or restore it") from None
    ref = stored_weights.reference(meta)
    if ref is not None:  # the trained tensors only: the rest from the base weights, checked by their hash
        backbone, state = stored_weights.with_base(run_dir, desc, state, ref)
    else:
        backbone = rebuild_backbone(desc, run_dir)
    _check_state_shapes(run_dir, backbone, state)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise AjusteError(f"{run_dir}/model.safetensors does not match the architecture in backbone.json "
                          f"({first[:200]})") from None
    backbone.eval()
    try:
        pre = Preprocessing.from_dict(read_run_json(run_dir, "preprocessing.json"))
    except (TypeError, ValueError) as exc:
        raise AjusteError(f"{run_dir}/preprocessing.json is not a preprocessing record ({exc}); restore it "
                          "or retrain") from None
    return LoadedRun(run_dir, backbone, classes, pre, load_config(run_dir / "config.yaml"), summary,
                     calibration.read_temperature(run_dir), task)


def _check_weights_file(run_dir: Path, weights: Path, classes: list[str], summary: Any) -> dict[str, str]:
    """Refuse weights that are not this run's: the classes in the file's header (runs since the header carries
    them) and the checksum in summary.json (when recorded). Returns the header."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: safetensors' own error type
        raise AjusteError(f"cannot read {weights} ({type(exc).__name__}: {str(exc)[:120]}); it is not a complete "
                          "safetensors file — retrain or restore it") from None
    if "labels" in meta:
        try:
            trained = json.loads(meta["labels"])
        except json.JSONDecodeError:
            trained = None
        if trained != classes:
            raise AjusteError(f"{weights} was trained for the classes {_short(trained)} but labels.json lists "
                              f"{_short(classes)}; the weights belong to another run — restore this run's files "
                              "or retrain")
    want = summary.get("weights_sha256") if isinstance(summary, dict) else None
    if want and weights_digest(weights) != want:
        raise AjusteError(f"{weights} is not the file this run saved (its sha256 differs from summary.json); it was "
                          "replaced or damaged — restore it or retrain")
    return meta


def _check_state_shapes(run_dir: Path, backbone: Any, state: dict) -> None:
    """Name the first missing, unexpected or differently shaped tensor (load_state_dict's message is a list)."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k, got, want = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise AjusteError(f"{run_dir}/model.safetensors does not fit backbone.json: {k} has shape {list(got)}, the "
                          f"architecture needs {list(want)}{more}; the weights belong to another model — restore "
                          "this run's files or retrain")
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the architecture does not"
        n = len(missing) + len(extra) - 1
        raise AjusteError(f"{run_dir}/model.safetensors does not fit backbone.json: it {what}"
                          f"{f' (+{n} more differences)' if n else ''}; restore this run's files or retrain")


def read_run_json(run_dir: Path, name: str) -> Any:
    return read_json(run_dir / name, "restore it from the run or retrain")


def _short(items: Any, limit: int = 6) -> str:
    if not isinstance(items, list):
        return repr(items)[:60]
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
