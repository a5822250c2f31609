"""``--format onnx``: ``model.onnx`` with a dynamic batch axis (and sequence axis for text), from torch's dynamo
exporter when onnxscript is installed, else from the TorchScript-based one; checked with onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim

from ajuste.errors import AjusteError
from ajuste.export.common import Positional, as_args, input_names, quiet, write_sidecars


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise AjusteError(f"--format onnx needs {' and '.join(missing)}: pip install 'ajuste[onnx]'")


def write(bb: Any, run: Any, stage: Path, probes: list[Any]) -> str:
    names = input_names(probes[0])
    wrapper = Positional(bb, names, run.temperature, run.task).eval()
    args = as_args(probes[0], names)
    text = bb.modality == "text"
    path = stage / "model.onnx"
    errors = []
    # The dynamo exporter (torch.export; the default since torch 2.9) needs onnxscript; the TorchScript-based
    # one is deprecated but still works and needs nothing else. Use the first that succeeds.
    exporters = (["dynamo"] if importlib.util.find_spec("onnxscript") else []) + ["torchscript"]
    for exporter in exporters:
        try:
            with quiet(), torch.no_grad():
                if exporter == "dynamo":
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
            write_sidecars(bb, run, stage, names)
            return exporter
        except Exception as exc:  # noqa: BLE001 - try the next exporter; report all if none works
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            errors.append(f"{exporter}: {first}")
            for p in stage.glob("model.onnx*"):
                p.unlink()
    raise AjusteError(f"ONNX export of {run.run_dir} failed ({'; '.join(errors)}); --format torchscript or "
                      f"hf may still work")


def check(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(stage / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    outs = []
    for p in probes:
        feeds = {n: t.numpy() for n, t in zip(input_names(p), as_args(p, input_names(p))) if n in wanted}
        outs.append(torch.from_numpy(sess.run(["logits"], feeds)[0]).float())
    return outs
