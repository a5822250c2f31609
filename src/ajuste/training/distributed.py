"""Data-parallel training under ``torchrun`` or ``accelerate launch``: one process per worker, through
Hugging Face accelerate and PyTorch's ``DistributedDataParallel``.

``ajuste train`` notices the launcher's environment (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``...) and joins
the process group through accelerate's ``PartialState``: gloo when the workers train on the CPU, NCCL when each
has a GPU (the backend follows ``train.device``, not merely whether CUDA exists). Each phase wraps what it trains
in ``DistributedDataParallel`` through ``Accelerator.prepare_model``; a phase that changes what trains (a
strategy's next stage, gradual unfreezing, the head on cached features, PEFT adapters) wraps the model again,
since DDP registers its gradient hooks for the parameters that require a gradient when it is built. The
head-on-cached-features phase wraps the same model: its forward pass starts from the cached activations.

Each optimizer step takes the *same global batch* as a single process would (``data.batch_size`` examples),
split between the workers. Every worker backpropagates its share's *summed* loss, DDP averages the gradients,
and the step multiplies them by workers / global examples: the mean over the global batch, as one process
computes it (also when the shares differ in size, and across ``train.grad_accum`` windows, where DDP's
``no_sync`` skips the reduction until the window's last batch). BatchNorm layers that still learn see their own
share of the batch, and their running statistics are averaged after each epoch; ``train.sync_bn`` uses
``SyncBatchNorm`` on GPUs instead. Rank 0 alone writes the run directory; every rank reads a checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ajuste.errors import AjusteError, ConfigError
from ajuste.training.execution import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def setup_from_env(device: str = "auto") -> World:
    """Join the process group when a launcher started several workers; a no-op otherwise.

    ``device``: ``train.device``. Workers that train on the CPU join over gloo, workers on GPUs over NCCL."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise AjusteError("WORLD_SIZE>1 but this PyTorch build has no torch.distributed; run a single process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise AjusteError(f"WORLD_SIZE={size} but {', '.join(missing)} is not set: start the workers with "
                          f"`torchrun --nproc_per_node={size} -m ajuste train ...`")
    from accelerate import PartialState


    with warnings.catch_warnings():  # accelerate's advice on OMP_NUM_THREADS: ajuste shares the cores out itself
        warnings.simplefilter("ignore")
        PartialState(cpu=resolve_device(device).type == "cpu")
    return world()


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if world().active:
        dist.barrier()


def threads_per_worker(w: World) -> int:
    """Split the cores between the workers of this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w.size) or 1)
    return max(1, (os.cpu_count() or 1) // max(1, local))


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over the workers (float64)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor's rows from every worker, concatenated in rank order, on the CPU (a validation split's logits
    and labels, for a metric that ranks them: AUROC, macro-F1)."""
    import torch.distributed as dist

    shares: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, [t.detach().cpu() for t in tensors])
    return [torch.cat([share[i] for share in shares]) for i in range(len(tensors))]


def _comm_device() -> torch.device:
    """Where a collective's tensor must be: NCCL reduces GPU tensors only (this worker's GPU), gloo CPU ones."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Forward(torch.nn.Module):
    """A phase's forward pass (the whole network, or the trainable rest on cached activations) as the module that
    DDP wraps: DDP's hooks cover ``owner``'s trainable parameters, and its forward prepares their reduction."""

    def __init__(self, owner: torch.nn.Module, forward: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self._forward = forward

    def forward(self, inputs: Any) -> torch.Tensor:
        return self._forward(inputs)


@functools.lru_cache(maxsize=None)
def _accelerator(cpu: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Buffers are not broadcast before each forward pass: BatchNorm statistics are averaged after each epoch
    # (sync_module). Unused parameters are looked for: a phase may train a parameter that its forward pass skips
    # (a pooler, a second head), and DDP would otherwise wait for its gradient forever.
    handler = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    # mixed_precision="no": precision is chosen per pass by train.precision (ajuste.training.execution)
    return Accelerator(cpu=cpu, device_placement=False, mixed_precision="no", kwargs_handlers=[handler])


def data_parallel(owner: torch.nn.Module, forward: Callable[[Any], torch.Tensor]) -> Any:
    """``forward`` wrapped in DistributedDataParallel for this phase (built again for every phase)."""
    acc = _accelerator(next(owner.parameters()).device.type == "cpu")
    wrapped = acc.prepare_model(_Forward(owner, forward), device_placement=False)
    models = getattr(acc, "_models", None)
    if isinstance(models, list):  # the Accelerator keeps what it prepared; a run re-wraps each phase
        models.clear()
    return wrapped


def no_sync(forward: Any, skip: bool) -> Any:
    """DDP's ``no_sync`` while ``skip`` (a batch inside an accumulation window), else nothing."""
    ddp = getattr(forward, "_orig_mod", forward)  # under train.compile, the DDP module inside
    if skip and isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def sync_batchnorm(module: torch.nn.Module, *, enabled: bool) -> Iterator[None]:
    """``train.sync_bn``: BatchNorm layers swapped for SyncBatchNorm ones (the same parameter and statistic
    tensors) for the block, then put back, so the model outside the fit is the one it was."""
    if not enabled or not world().active:
        yield
        return
    if next(module.parameters()).device.type != "cuda":
        raise ConfigError("train.sync_bn=true needs the workers on GPUs: PyTorch's SyncBatchNorm runs on CUDA only "
                          "(CPU workers average BatchNorm statistics after each epoch); remove --set train.sync_bn")
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and \
                    not isinstance(child, torch.nn.SyncBatchNorm):
                sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(child)
                setattr(parent, name, sync)
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


@torch.no_grad()
def sync_module(module: torch.nn.Module) -> None:
    """Learned buffers (BatchNorm statistics of each worker's share) averaged over the workers; the parameters
    need nothing: DDP gives every worker the same gradients."""
    import torch.distributed as dist

    size = dist.get_world_size()
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(size)
        else:
            dist.broadcast(b, src=0)


def any_worker(flag: bool) -> bool:
    """True on every worker when it is true on one (Ctrl-C reaches workers at different moments)."""
    if not world().active:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def describe(w: World) -> dict[str, Any]:
    import torch.distributed as dist

    return {"workers": w.size, "backend": dist.get_backend() if w.active else None}
