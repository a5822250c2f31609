"""Batches: tokenised text padded to each batch's longest example, length-bucketed sampling, each worker's
share of a global batch under data parallelism, and the move of a batch to its device."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


class TextDataset(Dataset):
    def __init__(self, encodings: list[dict[str, list[int]]], labels: np.ndarray) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, k: int) -> tuple[dict[str, list[int]], Any]:
        return self.encodings[k], target(self.labels, k)


def target(labels: np.ndarray, i: int) -> Any:
    """Row ``i``'s label as a batch collates it: an int class, or a float tensor (multi-label row, regression
    value)."""
    if labels.dtype.kind in "iu":
        return int(labels[i])
    return torch.as_tensor(labels[i], dtype=torch.float32)


def tokenize(tokenizer: Any, texts: list[Any], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids (and mask, token types) per text, unpadded. Text pairs, (first, second) tuples, take the
    tokenizer's pair encoding: ``[CLS] a [SEP] b [SEP]`` with token type 1 on b for BERT-style models,
    truncated from the longer side first so that neither side is cut away whole."""
    texts = list(texts)
    if texts and isinstance(texts[0], tuple):
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], truncation="longest_first",
                        max_length=max_length, padding=False)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


class LengthBucketSampler:
    """Batches of similar length, so dynamic padding pads little.

    Shuffled: indices are shuffled, cut into pools of 50 batches, each pool sorted by length and cut
    into batches, and the batch order shuffled — random batches, each of near-uniform length.
    Not shuffled (evaluation): sorted by length; order of outputs is restored by the caller's indices.
    """

    POOL_BATCHES = 50

    def __init__(self, lengths: list[int], batch_size: int, *, shuffle: bool, generator: torch.Generator) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            # Evaluation keeps the dataset order (callers zip outputs with inputs).
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        order = torch.randperm(n, generator=self.generator).numpy()
        pool = bs * self.POOL_BATCHES
        batches = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + bs].tolist() for i in range(0, len(chunk), bs))
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in perm]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class PadCollate:
    """Pads a batch to its longest example, rounded up to a multiple of 8 (dynamic padding).

    Rounding keeps the number of distinct shapes small: oneDNN builds kernels per shape, and a new
    shape every batch costs more than the few padded tokens.
    """

    def __init__(self, pad_id: int, multiple: int = 8, *, fixed: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = multiple
        self.fixed = fixed  # pad every batch to this length instead (train.text_batches=max_length)

    def __call__(self, batch: list[tuple[dict[str, list[int]], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        longest = max(len(x["input_ids"]) for x, _ in batch)
        longest = -(-longest // self.multiple) * self.multiple
        if self.fixed is not None:
            longest = max(self.fixed, max(len(x["input_ids"]) for x, _ in batch))
        out: dict[str, torch.Tensor] = {}
        for key in batch[0][0]:
            fill = self.pad_id if key == "input_ids" else 0
            rows = [x[key] + [fill] * (longest - len(x[key])) for x, _ in batch]
            out[key] = torch.tensor(rows, dtype=torch.long)
        ys = [y for _, y in batch]
        return out, (torch.stack(ys) if isinstance(ys[0], torch.Tensor) else torch.tensor(ys, dtype=torch.long))


# --- data parallelism: each worker's share of a global batch -------------------------------------------


class ShardedBatches:
    """Each worker's share of every global batch of a batch sampler.

    Every worker builds the same global batches (same sampler, same seed) and keeps ``batch[rank::size]``.
    Training (``drop_short=True``) drops a global batch with fewer examples than workers — a worker with
    nothing to compute would still have to join the step's all-reduce; at most size-1 examples of an
    epoch's last batch are lost, as with ``DistributedSampler(drop_last=True)``. Evaluation keeps every
    example: an empty share is simply skipped (no collective happens per evaluation batch).
    """

    def __init__(self, batches: Iterable[list[int]], w: Any, *, drop_short: bool) -> None:
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


def shard_batches(batches: Any, world: Any, training: bool) -> Any:
    """A batch sampler cut to this worker's share (unchanged outside data-parallel training)."""
    if world is None or not world.active:
        return batches
    return ShardedBatches(batches, world, drop_short=training)


def batches_loader(ds: Any, batch_size: int, *, shuffle: bool, generator: torch.Generator, world: Any,
                   collate_fn: Any = None) -> DataLoader:
    """The batches ``DataLoader(ds, batch_size, shuffle, generator)`` would make, this worker's share of each."""
    order = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
    sampler = shard_batches(BatchSampler(order, batch_size, drop_last=False), world, shuffle)
    # The DataLoader draws its base seed from ``generator`` before the sampler does, as the plain
    # DataLoader(shuffle=True, generator=...) of a single process does: same batches, same order.
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0, generator=generator)


def to_device_batch(inputs: Any, *, channels_last: bool = False, device: torch.device | None = None) -> Any:
    """A batch on ``device`` (None or the CPU: where it is), images in channels_last order when asked."""
    if device is not None and device.type != "cpu":
        if isinstance(inputs, dict):
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in inputs.items()}
        inputs = inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return inputs
    if channels_last:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def balanced_draw(ds: Any, labels: np.ndarray, generator: torch.Generator) -> Any:
    """``ds`` resampled for train.class_balance=sampler: as many rows, drawn with replacement so that each class
    is equally likely (each row's weight the inverse of its class's count). The samplers that shuffle, bucket
    and shard the rows then work on the draw as on the data; ``labels``: one per row of ``ds``."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
    drawn = torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.utils.data.Subset(ds, drawn.tolist())
