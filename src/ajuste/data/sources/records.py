"""The two records of a loaded data set: `LabelledData`, what `load_data` returns whatever the source, and
`_Raw`, what a source's loader hands to the common finish (labels still class names)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False, repr=False)
class LabelledData:
    """A labelled data set, whatever its source.

    ``inputs`` holds image file paths (str), or a uint8 image array (N,H,W,3) / (N,H,W), or texts (list[str]),
    or text pairs (list of (first, second) tuples: NLI, paraphrase; ``pairs`` says so). A pair stays one item,
    so every path that indexes, subsets or splits examples carries both sides without knowing of them.
    ``labels`` are int64 indices into ``classes``. ``splits`` maps "train"/"val"/"test" to int64 index arrays
    when the source defines them ({} otherwise).

    ``task`` (`ajuste.tasks`): for ``multilabel`` ``targets`` is the (N, K) 0/1 float32 matrix over the label
    names ``classes``; for ``regression`` ``targets`` holds the (N,) float values and ``classes`` the target's
    name. ``labels`` are then strata that keep splits and fractions representative (a row's rarest label;
    a quantile bin of the target), not outputs. ``y`` is what the model learns: ``targets`` or ``labels``.
    """

    modality: str
    inputs: list[str] | np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"
    targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {self.modality!r}")
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"inputs has {len(self.inputs)} items but labels has {len(self.labels)}")
        if (self.task == "classification") != (self.targets is None):
            raise ValueError(f"a {self.task} data set {'needs' if self.targets is None else 'takes no'} targets")
        if self.targets is not None:
            self.targets = np.asarray(self.targets, dtype=np.float32)
            if len(self.targets) != len(self.labels):
                raise ValueError(f"targets has {len(self.targets)} rows but labels has {len(self.labels)}")
        self.splits = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in self.splits.items()}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items()) or "none"
        return (
            f"LabelledData(modality={self.modality!r}, n={len(self)}, classes={len(self.classes)}, "
            f"splits: {splits}, source={self.source!r}, warnings={len(self.warnings)})"
        )

    @property
    def y(self) -> np.ndarray:
        """What the model learns for each example: class indices, or the targets of a multi-label or regression
        task."""
        return self.labels if self.targets is None else self.targets

    @property
    def pairs(self) -> bool:
        """Whether the inputs are text pairs, (first, second) tuples."""
        return self.modality == "text" and len(self.inputs) > 0 and isinstance(self.inputs[0], tuple)

    def labels_in_words(self) -> str:
        """'10 classes', '21 labels' (multi-label) or 'a numeric target' (regression), for messages."""
        if self.task == "regression":
            return f"a numeric target ({self.classes[0]})"
        return f"{len(self.classes)} {'labels' if self.task == 'multilabel' else 'classes'}"

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name (per label name, multi-label), in class-index order; {} for
        regression."""
        if self.task == "regression":
            return {}
        if self.targets is not None:
            return {name: int(c) for name, c in zip(self.classes, self.targets.sum(0))}
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def subset(self, indices) -> LabelledData:
        """The examples at ``indices`` (in that order); predefined splits are dropped."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.inputs, np.ndarray):
            inputs: list[str] | np.ndarray = self.inputs[idx]
        else:
            inputs = [self.inputs[i] for i in idx]
        return LabelledData(
            modality=self.modality,
            inputs=inputs,
            labels=self.labels[idx],
            classes=list(self.classes),
            splits={},
            source=self.source,
            warnings=list(self.warnings),
            task=self.task,
            targets=None if self.targets is None else self.targets[idx],
        )


@dataclass
class _Raw:
    """What a loader found, before labels become indices. ``labels`` are class names (str)."""

    modality: str
    inputs: list[str] | np.ndarray
    labels: list[str]
    splits: dict[str, np.ndarray]
    where: str  # "in hymenoptera/" / "in data.csv (column 'label')": used in error messages
    describe: str  # "image folder hymenoptera/": the start of LabelledData.source
    unit: str  # "images" / "rows"
    warnings: list[str] = field(default_factory=list)
    declared_classes: list[str] | None = None  # image class folders, including empty ones
    class_hint: str = "add examples or remove the class"  # how to fix a class with too few; may use {cls}
    details: str = ""  # extra facts for LabelledData.source ("text column 'x', label column 'y'")
    skipped: list[str] = field(default_factory=list)  # what was skipped, for an error that follows (see _noting)
    label_name: str = "label"  # the label column: a regression target's name
