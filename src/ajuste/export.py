"""Export a finished run directory for inference, in ajuste's own format or for other runtimes.

``export_run(run_dir=..., out=..., format=...)``:

- ``ajuste`` (default): a run directory ``load_run`` / ``ajuste evaluate`` / ``predict`` load; with
  ``merge=True`` LoRA/IA3 adapters are folded into the weights (peft ``merge_and_unload``) so it loads
  without peft, otherwise the adapters are kept.
- ``hf``: text runs → a Hugging Face folder (custom code: the encoder, ajuste's pooling, the linear head)
  for ``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``; image runs →
  timm's hub format for ``timm.create_model("local-dir:" + dir, pretrained=True)``.
- ``onnx``: ``model.onnx`` with a dynamic batch axis (and sequence axis for text).
- ``torchscript``: ``model.pt`` from ``torch.jit.trace``.

Every format but ``ajuste`` needs a plain network: LoRA/IA3 are merged first; prompt/prefix tuning
(learned extra inputs) is refused. The export is written into a staging directory next to ``out``,
reloaded the way users load it, and its logits on two probe batches (different batch sizes and, for
text, sequence lengths) are compared with the source run's; only an export that matches is moved to
``out``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ajuste.errors import AjusteError
from ajuste.io import atomic_save_safetensors, atomic_write_json, atomic_write_text

FORMATS = ("ajuste", "hf", "onnx", "torchscript")
# Files a run directory needs for evaluate/predict, plus its records (summary last: it marks completion).
_COPY = ["config.yaml", "labels.json", "preprocessing.json", "splits.json", "metrics.jsonl"]

_PROBE_TEXTS = ["a probe sentence for the export check", "short", "another, rather different line of text!",
                "free entry in a weekly prize draw"]
# A second batch of another size and length: catches shapes a trace or an exporter baked in. The long
# text is cut at the run's max_length, so truncation is checked too.
_PROBE_TEXTS_2 = ["ok", "the second probe batch has a different size and a much longer sequence than the first "
                  * 20, "third", "fourth line", "fifth, the last one"]


@dataclass
class ExportResult:
    out: Path
    merged: bool
    method: str | None  # the PEFT method of the source run, None for a plain run
    max_abs_diff: float  # largest |logit difference| between source and export on the probe batches
    peft_needed: bool  # whether loading the export needs the peft library
    model_bytes: int
    format: str = "ajuste"
    exporter: str | None = None  # onnx: "dynamo" or "torchscript" (the legacy exporter)
    files: list[str] = field(default_factory=list)
    modality: str = "image"


def probe_inputs(backbone: Any, preprocessing: Any, n: int = 4, *, second: bool = False) -> Any:
    """A small fixed batch in the model's input format (images: noise at the input size). ``second``:
    another batch of a different size (and sequence length)."""
    g = torch.Generator().manual_seed(1 if second else 0)
    if backbone.modality == "image":
        size = preprocessing.image_size
        return torch.randn(n + 3 if second else n, 3, size, size, generator=g)
    return dict(backbone.tokenizer(_probe_texts(n, second), padding=True, truncation=True,
                                   max_length=preprocessing.max_length, return_tensors="pt"))


def _probe_texts(n: int = 4, second: bool = False) -> list[str]:
    return list(_PROBE_TEXTS_2) if second else _PROBE_TEXTS[:n]


@torch.no_grad()
def _logits(backbone: Any, inputs: Any) -> torch.Tensor:
    backbone.eval()
    return backbone(inputs).float()


def export_run(*, run_dir: str | Path, out: str | Path, format: str = "ajuste", merge: bool = False,
               overwrite: bool = False, rtol: float = 1e-3) -> ExportResult:
    """Write ``run_dir`` to ``out`` in ``format`` and check it reproduces the run's logits (|Δ| ≤ rtol ×
    max(1, max |logit|)); raise ``AjusteError`` and leave ``out`` untouched otherwise."""
    from ajuste.backbones.adapters import get_method, merge_adapters, mergeable_methods
    from ajuste.train.run_eval import load_run, weights_digest

    if format not in FORMATS:
        raise AjusteError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    if format == "onnx":
        _require_onnx()
    replace = _check_out(run_dir, out, overwrite=overwrite)
    run = load_run(run_dir)
    bb = run.backbone
    method = bb.peft["method"] if bb.peft else None
    peft_method = get_method(method) if method else None
    if format != "ajuste" and peft_method and peft_method.wraps and not peft_method.mergeable:
        raise AjusteError(f"{run_dir} is a {method} run: {peft_method.why_no_merge}, so there is no plain network "
                          f"to export as {format}; use --format ajuste (only {' and '.join(mergeable_methods())} "
                          f"merge)")
    probes = [probe_inputs(bb, run.preprocessing)]
    if format != "ajuste":
        probes.append(probe_inputs(bb, run.preprocessing, second=True))
    before = [_logits(bb, p) for p in probes]
    merge = merge or format != "ajuste"
    if merge:
        merge_adapters(bb)  # raises a one-line ConfigError for prompt/prefix tuning
    merged = bool(merge and peft_method and peft_method.wraps)

    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        writer, checker = _FORMATS_IMPL[format]
        exporter = writer(bb, run, stage, probes)
        # Check the written directory, not the in-memory model: this is what users will load.
        after = checker(stage, bb, run, probes)
        diff = max(float((a - b).abs().max()) for a, b in zip(after, before))
        scale = max(float(b.abs().max()) for b in before + [torch.ones(1)])
        if not diff <= rtol * scale:
            raise AjusteError(f"export check failed: {format} logits differ from {run_dir} by up to {diff:.3g} "
                              f"(allowed {rtol * scale:.2g}); nothing was written to {out}")
        record = {"format": format, "from": str(run_dir), "merged": merged, "method": method,
                  "max_abs_logit_diff": diff, "probe_batches": [_shape(p) for p in probes]}
        if exporter:
            record["exporter"] = exporter
        if format == "ajuste":
            summary: dict[str, Any] = dict(run.summary or {})
            summary["export"] = record
            summary["weights_sha256"] = weights_digest(stage / "model.safetensors")  # merged weights: a new file
            atomic_write_json(stage / "summary.json", summary)
        else:
            atomic_write_json(stage / "export.json", record)
        _check_tree(stage)
        if replace:
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    main_file = {"ajuste": "model.safetensors", "hf": "model.safetensors", "onnx": "model.onnx",
                 "torchscript": "model.pt"}[format]
    return ExportResult(out=out, merged=merged, method=method, max_abs_diff=diff,
                        peft_needed=bool(format == "ajuste" and bb.peft and peft_method.wraps),
                        model_bytes=(out / main_file).stat().st_size, format=format, exporter=exporter,
                        files=sorted(p.name for p in out.iterdir()), modality=bb.modality)


def _shape(p: Any) -> list[int]:
    return list((p["input_ids"] if isinstance(p, dict) else p).shape)


# --- where the export goes ------------------------------------------------------------------------------


def _check_out(run_dir: Path, out: Path, *, overwrite: bool) -> bool:
    """Refuse an output that would clobber the run or something that is not an earlier export.
    Returns whether an existing export is to be replaced (after the new one checks out)."""
    r, o = run_dir.resolve(), out.resolve()
    if o == r:
        raise AjusteError("--out must differ from the run directory")
    if o in r.parents:
        raise AjusteError(f"--out {out} contains the run directory {run_dir}; choose a directory outside it")
    if out.is_symlink():
        raise AjusteError(f"--out {out} is a symbolic link; give a real directory path")
    if not out.exists():
        return False
    if not out.is_dir():
        raise AjusteError(f"--out {out} is a file; give a directory path")
    if not any(out.iterdir()):
        return False  # renaming the finished export onto an empty directory replaces it
    if not overwrite:
        raise AjusteError(f"{out} exists and is not empty; use another --out or --overwrite")
    made = _made_by_ajuste(out)
    if made != "an export":
        raise AjusteError(f"{out} holds {made}, not an earlier export; --overwrite replaces only an export — "
                          f"choose another --out")
    return True


def _made_by_ajuste(path: Path) -> str:
    """What ``path`` holds, in words: "an export" only for what `export_run` wrote. An ajuste-format export
    is laid out like a run (config.yaml, summary.json...), so a run is told apart by what an export never has:
    a status.json or checkpoint/ (every training run, finished or not), or a summary without an export
    record. backbone.json alone proves nothing: every run directory has one."""
    from ajuste.io import ajuste_dir_kind, read_json

    if (path / "export.json").is_file():
        return "an export"
    kind = ajuste_dir_kind(path)
    if kind == "study":
        return "a study of `ajuste compare`"
    if kind == "search":
        return "a search of `ajuste tune`"
    if (path / "status.json").exists() or (path / "checkpoint").exists():
        return "a training run"
    if kind == "run":  # config.yaml and summary.json, no status: an ajuste-format export if it says so
        rec = read_json(path / "summary.json", "choose another --out")
        return "an export" if isinstance(rec, dict) and "export" in rec else "a training run"
    return "files that ajuste did not write"


def _inside(root: Path, name: str) -> Path:
    """``root/name`` for a file name taken from a run's files: never a path that leaves ``root``."""
    target = root / name
    if not name or Path(name).is_absolute() or name in (".", "..") or len(Path(name).parts) != 1 \
            or not target.resolve().is_relative_to(root.resolve()):
        raise AjusteError(f"refusing to export file name {name!r}: it would be written outside {root}")
    return target


def _copy_file(src: Path, dst_dir: Path, name: str) -> None:
    if src.is_symlink():
        raise AjusteError(f"{src} is a symbolic link; an export copies only regular files of the run directory "
                          f"(replace the link by the file)")
    shutil.copy2(src, _inside(dst_dir, name))


def _check_tree(root: Path) -> None:
    """Everything under the staging directory is a regular file or directory inside it."""
    base = root.resolve()
    for p in root.rglob("*"):
        if p.is_symlink() or not p.resolve().is_relative_to(base):
            raise AjusteError(f"export wrote {p}, which points outside {root}; refusing to finish")


# --- ajuste run directory ---------------------------------------------------------------------------------


def _write_ajuste(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    from ajuste.train.run_eval import weights_metadata

    run_dir = run.run_dir
    for name in _COPY:
        if (run_dir / name).is_file():
            _copy_file(run_dir / name, stage, name)
    if (run_dir / "hf").is_dir():
        hf = _inside(stage, "hf")
        hf.mkdir()
        for f in sorted((run_dir / "hf").iterdir()):
            if not f.is_file() and not f.is_symlink():
                raise AjusteError(f"{f} is not a regular file; a run's hf/ folder holds only config and tokenizer "
                                  f"files")
            _copy_file(f, hf, f.name)
    if bb.peft and (run_dir / "adapter.safetensors").is_file():
        _copy_file(run_dir / "adapter.safetensors", stage, "adapter.safetensors")
    atomic_write_json(stage / "backbone.json", bb.describe())
    atomic_save_safetensors(stage / "model.safetensors", bb.state_dict(), metadata=weights_metadata(run.classes))
    return None


def _check_ajuste(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    from ajuste.train.run_eval import load_run

    loaded = load_run(stage).backbone
    return [_logits(loaded, p) for p in probes]


# --- Hugging Face / timm ----------------------------------------------------------------------------------

# Written next to the weights of a text export. BERT's own *ForSequenceClassification puts a pooler
# (dense + tanh on the first token) before the classifier, which no weight choice turns into ajuste's
# mean or first-token pooling, so the exact model needs these few lines of custom code.
_HF_MODELING = '''"""A text classifier exported by ajuste: a Hugging Face encoder, ajuste's pooling, a linear head.

Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class AjusteTextConfig(PretrainedConfig):
    model_type = "ajuste_text_classifier"

    def __init__(self, encoder_config=None, pooling="mean", **kwargs):
        self.encoder_config = dict(encoder_config or {})  # the encoder's own config.json
        self.pooling = pooling  # "mean" (over non-padding tokens) or "cls" (first token)
        super().__init__(**kwargs)


class AjusteForSequenceClassification(PreTrainedModel):
    config_class = AjusteTextConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        enc = dict(config.encoder_config)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(enc.pop("model_type"), **enc))
        hidden = getattr(self.encoder.config, "hidden_size", None) or self.encoder.config.dim
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight is in model.safetensors

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        hidden = self.encoder(**{k: v for k, v in given.items() if v is not None}).last_hidden_state  # (B, T, H)
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(pooled)  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


def _save_tokenizer(bb: Any, run: Any, folder: Path) -> None:
    """The run's tokenizer, truncating at the run's max_length by default (as `ajuste predict` does)."""
    tok = bb.tokenizer
    old = tok.model_max_length
    tok.model_max_length = int(run.preprocessing.max_length)
    try:
        tok.save_pretrained(folder)
    finally:
        tok.model_max_length = old


def _write_hf(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    if bb.modality == "image":
        return _write_timm(bb, run, stage)
    import transformers

    atomic_write_text(stage / "modeling_ajuste.py", _HF_MODELING)
    enc = bb.net
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in bb.classifier.state_dict().items()})
    atomic_save_safetensors(stage / "model.safetensors", state, metadata={"format": "pt"})
    config = {
        "architectures": ["AjusteForSequenceClassification"],
        "auto_map": {"AutoConfig": "modeling_ajuste.AjusteTextConfig",
                     "AutoModelForSequenceClassification": "modeling_ajuste.AjusteForSequenceClassification"},
        "model_type": "ajuste_text_classifier",
        "pooling": bb.pooling,
        "encoder_config": enc.config.to_dict(),
        "id2label": {str(i): c for i, c in enumerate(run.classes)},
        "label2id": {c: i for i, c in enumerate(run.classes)},
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    atomic_write_json(stage / "config.json", config)
    _save_tokenizer(bb, run, stage)
    return None


def _check_hf(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    if bb.modality == "image":
        return _check_timm(stage, probes)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with _quiet():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            stage, trust_remote_code=True, output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(stage, trust_remote_code=True)
    bad = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise AjusteError(f"export check failed: the Hugging Face folder loads with {bad[0].replace('_', ' ')} "
                          f"{sorted(info[bad[0]])[:3]}; the export is not usable")
    model.eval()
    outs = []
    with torch.no_grad():
        for second in (False, True):
            # The saved tokenizer on its own (no max_length): checks the truncation length travelled too.
            enc = tok(_probe_texts(second=second), padding=True, truncation=True, return_tensors="pt")
            outs.append(model(**enc).logits.float())
    return outs


def _timm_data_config(pre: Any) -> dict[str, Any]:
    # Arrays (digits, MedMNIST) are resized to a square ("squash"); photos are resized to base_size
    # on the shorter side and centre-cropped to image_size: crop_pct = image_size / base_size.
    square = bool(pre.square)
    return {"input_size": (3, int(pre.image_size), int(pre.image_size)), "mean": tuple(pre.mean),
            "std": tuple(pre.std), "interpolation": pre.interpolation,
            "crop_pct": 1.0 if square else float(pre.image_size) / float(pre.base_size),
            "crop_mode": "squash" if square else "center"}


def _write_timm(bb: Any, run: Any, stage: Path) -> None:
    from timm.models import save_for_hf

    model = bb.net
    # model_args: a compact net's channel widths, which timm.create_model("local-dir:...") applies.
    save_for_hf(model, str(stage), model_config={"label_names": list(run.classes)}, safe_serialization=True,
                data_config=_timm_data_config(run.preprocessing), model_args=bb.model_args or None)
    cfg = json.loads((stage / "config.json").read_text())
    # The architecture's default weights tag (e.g. "in1k") would claim weights this file does not hold.
    cfg.get("pretrained_cfg", {}).pop("tag", None)
    atomic_write_json(stage / "config.json", cfg)


def _check_timm(stage: Path, probes: list[Any]) -> list[torch.Tensor]:
    import timm

    with _quiet():
        model = timm.create_model(f"local-dir:{stage}", pretrained=True).eval()
    with torch.no_grad():
        return [model(p).float() for p in probes]


# --- ONNX and TorchScript -----------------------------------------------------------------------------------


class _Positional(torch.nn.Module):
    """The backbone with positional tensor inputs (the form exporters and tracers take)."""

    def __init__(self, backbone: Any, names: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.names == ["pixel_values"]:
            return self.backbone(tensors[0])
        return self.backbone(dict(zip(self.names, tensors)))


def _input_names(probe: Any) -> list[str]:
    return list(probe) if isinstance(probe, dict) else ["pixel_values"]


def _as_args(probe: Any, names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(probe[n] for n in names) if isinstance(probe, dict) else (probe,)


def _write_sidecars(bb: Any, run: Any, stage: Path, names: list[str]) -> None:
    atomic_write_json(stage / "labels.json", list(run.classes))
    pre = run.preprocessing.to_dict()
    pre["inputs"] = names
    atomic_write_json(stage / "preprocessing.json", pre)
    if bb.modality == "text":
        _save_tokenizer(bb, run, stage)


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise AjusteError(f"--format onnx needs {' and '.join(missing)}: pip install 'ajuste[onnx]'")


def _write_onnx(bb: Any, run: Any, stage: Path, probes: list[Any]) -> str:
    import importlib.util

    names = _input_names(probes[0])
    wrapper = _Positional(bb, names).eval()
    args = _as_args(probes[0], names)
    text = bb.modality == "text"
    path = stage / "model.onnx"
    errors = []
    # The dynamo exporter (torch.export; the default since torch 2.9) needs onnxscript; the TorchScript-based
    # one is deprecated but still works and needs nothing else. Use the first that succeeds.
    exporters = (["dynamo"] if importlib.util.find_spec("onnxscript") else []) + ["torchscript"]
    for exporter in exporters:
        try:
            with _quiet(), torch.no_grad():
                if exporter == "dynamo":
                    from torch.export import Dim

                    axes = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC} if text else {0: Dim.DYNAMIC}
                    torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"],
                                      dynamo=True, dynamic_shapes=(tuple(axes for _ in names),),  # forward(*tensors)
                                      external_data=False, verbose=False)
                else:
                    axes_named = {0: "batch", 1: "sequence"} if text else {0: "batch"}
                    dyn = {n: axes_named for n in names} | {"logits": {0: "batch"}}
                    torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"],
                                      dynamo=False, dynamic_axes=dyn, opset_version=17)
            import onnx

            onnx.checker.check_model(str(path))
            _write_sidecars(bb, run, stage, names)
            return exporter
        except Exception as exc:  # noqa: BLE001 - try the next exporter; report all if none works
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            errors.append(f"{exporter}: {first}")
            for p in stage.glob("model.onnx*"):
                p.unlink()
    raise AjusteError(f"ONNX export of {run.run_dir} failed ({'; '.join(errors)}); --format torchscript or "
                      f"hf may still work")


def _check_onnx(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(stage / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    outs = []
    for p in probes:
        feeds = {n: t.numpy() for n, t in zip(_input_names(p), _as_args(p, _input_names(p))) if n in wanted}
        outs.append(torch.from_numpy(sess.run(["logits"], feeds)[0]).float())
    return outs


def _write_torchscript(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    names = _input_names(probes[0])
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(_Positional(bb, names).eval(), _as_args(probes[0], names), strict=False,
                                 check_trace=False)
        torch.jit.save(traced, str(stage / "model.pt"))
    _write_sidecars(bb, run, stage, names)
    return None


def _check_torchscript(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    with _quiet():
        model = torch.jit.load(str(stage / "model.pt"), map_location="cpu")
    model.eval()
    with torch.no_grad():
        return [model(*_as_args(p, _input_names(p))).float() for p in probes]


@contextlib.contextmanager
def _quiet():
    """Exporters and loaders print progress and deprecation notes; the CLI prints one summary line."""
    from ajuste.lazy import quiet_transformers

    quiet_transformers()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


_FORMATS_IMPL = {
    "ajuste": (_write_ajuste, _check_ajuste),
    "hf": (_write_hf, _check_hf),
    "onnx": (_write_onnx, _check_onnx),
    "torchscript": (_write_torchscript, _check_torchscript),
}
