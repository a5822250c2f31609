"""Data-parallel training under ``torchrun`` (or ``accelerate launch``): one process per worker.

``ajuste train`` notices the launcher's environment (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``...) and
joins the process group: gloo on CPU, NCCL when every worker has a GPU. Each optimizer step takes the
*same global batch* as a single process would (``data.batch_size`` examples), split between the workers,
and the gradients are summed across workers before the step, so N workers compute what one process computes
— only BatchNorm layers that still learn see their own share of the batch (as in PyTorch DDP without
SyncBatchNorm). Rank 0 alone writes the run directory; every rank reads a checkpoint to resume.

Why not ``torch.nn.parallel.DistributedDataParallel``: a strategy changes which parameters train between
phases, head-only phases train the head on cached features (a forward path DDP does not wrap), and PEFT
selects parameters by name. One coalesced all-reduce of the trainable gradients after ``backward`` is
what DDP does, without overlapping communication with the backward pass (little to gain on CPU gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from ajuste.errors import AjusteError


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


def setup_from_env() -> World:
    """Join the process group when a launcher started several workers; a no-op otherwise."""
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
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "gloo"
    dist.init_process_group(backend=backend)
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


class ShardedBatches:
    """Each worker's share of every global batch of a batch sampler.

    Every worker builds the same global batches (same sampler, same seed) and keeps ``batch[rank::size]``.
    Training (``drop_short=True``) drops a global batch with fewer examples than workers — a worker with
    nothing to compute would still have to join the step's all-reduce; at most size-1 examples of an
    epoch's last batch are lost, as with ``DistributedSampler(drop_last=True)``. Evaluation keeps every
    example: an empty share is simply skipped (no collective happens per evaluation batch).
    """

    def __init__(self, batches: Iterable[list[int]], w: World, *, drop_short: bool) -> None:
        self.batches, self.w, self.drop_short = batches, w, drop_short

    def _shares(self) -> Iterator[list[int]]:
        for b in self.batches:
            b = list(b)
            if self.drop_short and len(b) < self.w.size:
                continue
            share = b[self.w.rank::self.w.size]
            if share:
                yield share

    def __iter__(self) -> Iterator[list[int]]:
        return self._shares()

    def __len__(self) -> int:
        return sum(1 for _ in self._shares())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over the workers (float64)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def sync_gradients(params: list[torch.nn.Parameter], n_local: int, loss_sum: float) -> tuple[int, float]:
    """Turn each worker's *summed* per-example gradients into the global batch mean, on every worker.

    One flat buffer [grads of all params..., n_local, loss_sum] is all-reduced (SUM), then the gradients
    are divided by the global example count. A parameter without a gradient on this worker contributes
    zeros (its slot must exist on every worker for the buffers to line up).
    """
    import torch.distributed as dist

    flat = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel()) for p in params]
    buf = torch.cat(flat + [torch.tensor([float(n_local), float(loss_sum)])])
    dist.all_reduce(buf)
    n_global, loss_global = int(round(buf[-2].item())), buf[-1].item()
    offset = 0
    for p in params:
        k = p.numel()
        g = buf[offset:offset + k].view_as(p) / max(1, n_global)
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.copy_(g)
        offset += k
    return n_global, loss_global


@torch.no_grad()
def sync_module(module: torch.nn.Module) -> None:
    """Parameters from rank 0 (guards against any drift); learned buffers (BN statistics) averaged."""
    import torch.distributed as dist

    for p in module.parameters():
        dist.broadcast(p.data, src=0)
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
