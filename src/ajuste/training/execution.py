"""Where a pass runs and at which precision: ``train.device``, ``train.precision``, ``train.grad_accum``.

The device is resolved once per process and command (``auto``: the GPU when CUDA is present, else the CPU;
under torchrun, ``cuda:LOCAL_RANK``). The model moves there; batches and labels move there as they are used;
what is kept (cached activations, logits, weights on disk) comes back to the CPU.

Precision is chosen per pass, not per process. On the CPU, bf16 autocast pays only where the CPU has native bf16
(AMX or AVX512-BF16), and there only for transformers and for forward-only passes: it slowed convnet training
(DESIGN.md, ``train.bf16``). On a GPU, ``auto`` is bf16 where the card supports it and fp16 with a gradient scaler
elsewhere (pre-Ampere cards). Weights and optimizer state stay fp32 (mixed precision).

Why torch.amp here and not ``accelerate.Accelerator(mixed_precision=...)``: the Accelerator's precision is one
setting of a process-wide state, and a second Accelerator with another setting raises ``ValueError:
AcceleratorState has already been initialized and cannot be changed`` (accelerate 1.16, measured). A study or a
search runs cells and trials of different settings in one process, and one run mixes precisions (a bf16 frozen
pass, an fp32 convnet training pass), so the per-pass choice stays here, on the same torch.amp primitives
(``torch.autocast``, ``torch.amp.GradScaler``) that accelerate itself wraps.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

from ajuste.data.pipeline import to_device_batch
from ajuste.errors import AjusteError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``train.device`` → a torch device that exists here, or one line saying why not (exit 2)."""
    if name == "auto":
        if torch.cuda.is_available():
            return _local_cuda()
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise AjusteError("train.device=mps, but this machine has no Apple GPU that PyTorch can use "
                              "(torch.backends.mps.is_available() is False); use --set train.device=cpu or auto")
        return torch.device("mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AjusteError(f"train.device={name}, but PyTorch sees no CUDA GPU on this machine "
                              f"(torch.cuda.is_available() is False; torch {torch.__version__}, CUDA build "
                              f"{torch.version.cuda or 'none'}); use --set train.device=cpu or auto")
        if name == "cuda":
            return _local_cuda()
        index = int(name.split(":", 1)[1])
        count = torch.cuda.device_count()
        if index >= count:
            raise AjusteError(f"train.device={name}, but this machine has {count} CUDA GPU"
                              f"{'s' * (count != 1)} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return torch.device("cuda", index)
    raise AjusteError(f"train.device={name!r} is not one of auto, cpu, cuda, cuda:N, mps")


def _local_cuda() -> torch.device:
    """The GPU of this worker: cuda:LOCAL_RANK under torchrun / accelerate launch, else cuda:0."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0) % max(1, torch.cuda.device_count()))


def model_device(module: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on (the CPU for a model without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16).

    Without either (AVX2-only CPUs: many AMD EPYC and older Xeon), oneDNN emulates bf16 and autocast is
    a trap, measured on a 2-core AVX2 EPYC: EfficientNet-Lite0 frozen forward 18× slower than fp32
    (1,613 vs 88 ms per 64 images at 48 px, channels_last), MiniLM-L6 training step 17× slower
    (34.8 vs 2.0 s per 32 texts at 64 tokens). With AMX (Sapphire Rapids) bf16 is faster (DESIGN.md)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - private probes; absent or failing means "not known to be native"
            continue
    return False


def _gpu_bf16(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - a driver that cannot answer: fp16 is the safe choice
        return False


def amp_dtype(train_cfg: Any, *, convnet: bool, text: bool, training: bool,
              device: torch.device) -> torch.dtype | None:
    """The autocast dtype of one pass (None: fp32). ``train_cfg`` is a run's ``train`` section."""
    precision = train_cfg.precision
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise AjusteError("train.precision=fp16 needs a GPU (fp16 on a CPU is emulated and slow); use bf16 or "
                          "fp32 on the CPU, or auto")
    if precision in AMP_DTYPES:
        return AMP_DTYPES[precision]
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if _gpu_bf16(device) else torch.float16
    if device.type == "mps":
        return None  # not measured here: stay exact
    mode = train_cfg.bf16
    if mode == "off":
        return None
    if mode == "on":
        return torch.bfloat16
    if not native_bf16():
        return None
    return torch.bfloat16 if (text or not training) else None


def autocast(dtype: torch.dtype | None, device: torch.device | str = "cpu"):
    """torch.autocast for ``dtype`` on ``device``'s type; a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return torch.autocast(kind, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> Any:
    """A gradient scaler for fp16 training on a GPU (fp16 gradients underflow without one); None otherwise."""
    if dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def to_device(x: Any, device: torch.device | None) -> Any:
    """A tensor, or a dict of tensors (a text batch), on ``device`` (`to_device_batch` without the layout)."""
    return to_device_batch(x, device=device)
