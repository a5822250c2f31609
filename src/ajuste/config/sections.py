"""The sections of a run's configuration other than ``strategy``: dataclasses whose fields carry their help
text in metadata (the CLI and docs/config.md are generated from it) and whose ``__post_init__`` rejects a bad
value in one line naming the field."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ajuste.errors import ConfigError
from ajuste.metrics import LEGACY, METRICS

AUGMENT_LEVELS = ("auto", "none", "light", "strong")
TRACKERS = ("tensorboard", "mlflow")  # train.log_to (ajuste.training.tracking)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _check_range(name: str, value: float | None, lo: float, hi: float, *, lo_open=False) -> None:
    if value is None:
        return
    bad = value <= lo if lo_open else value < lo
    if bad or value > hi:
        left = "(" if lo_open else "["
        raise ConfigError(f"{name}={value!r} is out of range: expected a value in {left}{lo}, {hi}]")


@dataclass
class DataConfig:
    source: str = _help("Data: built-in name (digits), image folder, .npz, or CSV/TSV/JSONL file", default="digits")
    text_col: str | None = _help("Text column of a table (auto-detected when obvious); two columns 'first,second' "
                                 "for a text pair (NLI, paraphrase), encoded as the tokenizer's pair", default=None)
    label_col: str | None = _help("Label column of a table (auto-detected when obvious); several 0/1 columns "
                                  "'a,b,c' for multi-label", default=None)
    task: str = _help("What a label is: auto | classification | multilabel ('|'-separated names, or several 0/1 "
                      "columns) | regression (a number); auto detects multi-label from '|' in label cells and "
                      "regression from a float column with more than 20 distinct values, and says so",
                      default="auto")
    fraction: float = _help("Share of the training split to use (stratified, ≥1 per class); >1 = a count", default=1.0)
    val_size: float = _help("Validation share carved from the data when the source has no val split", default=0.15)
    test_size: float = _help("Test share carved from the data when the source has no test split", default=0.15)
    split_seed: int = _help("Seed of the train/val/test split (fixed across training seeds)", default=0)
    image_size: int | None = _help("Input resolution; auto = backbone default, smaller for tiny images", default=None)
    augment: str = _help("Training augmentation: auto | none | light | strong", default="auto")
    hflip: bool | None = _help("Random horizontal flips (auto: on for photo folders, off for digits/arrays)", default=None)
    max_length: int = _help("Maximum tokens per text example (longer ones are truncated)", default=128)
    batch_size: int = _help("Training batch size", default=32)
    strict: bool = _help("Fail on the first unreadable image, malformed JSONL line or row without a text or label "
                         "(naming the file and line) instead of skipping it with a warning that counts them",
                         default=False)

    def __post_init__(self) -> None:
        _check_range("data.fraction", self.fraction, 0.0, float("inf"), lo_open=True)
        if not math.isfinite(self.fraction):
            raise ConfigError(f"data.fraction={self.fraction}: give a share in (0, 1] or a number of examples")
        if self.fraction > 1 and float(self.fraction) != int(self.fraction):
            raise ConfigError(f"data.fraction={self.fraction:g}: above 1 it is a number of training examples and "
                              f"must be whole (0.15 is 15% of the training split)")
        _check_range("data.val_size", self.val_size, 0.0, 0.9, lo_open=True)
        _check_range("data.test_size", self.test_size, 0.0, 0.9, lo_open=True)
        if self.val_size + self.test_size >= 1:
            raise ConfigError(f"data.val_size={self.val_size:g} + data.test_size={self.test_size:g} is "
                              f"{self.val_size + self.test_size:g}: nothing would be left to train on; keep their "
                              f"sum under 1 (e.g. 0.15 each)")
        if self.split_seed < 0:
            raise ConfigError(f"data.split_seed={self.split_seed} must be ≥ 0 (numpy seeds are non-negative)")
        if self.task not in ("auto", "classification", "multilabel", "regression"):
            raise ConfigError(f"data.task={self.task!r} is not one of auto, classification, multilabel, regression")
        if self.augment not in AUGMENT_LEVELS:
            raise ConfigError(f"data.augment={self.augment!r} is not one of {', '.join(AUGMENT_LEVELS)}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be ≥ 1")
        if self.max_length < 4:
            raise ConfigError(f"data.max_length={self.max_length} must be ≥ 4")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"data.image_size={self.image_size} must be ≥ 16")


@dataclass
class ModelConfig:
    name: str = _help("Backbone: auto, a zoo name (see `ajuste models`), a timm name, or a Hugging Face id/folder "
                      "(auto: minilm-l6 for text; efficientnet_lite1 for up to 1,000 images, "
                      "efficientnet_lite0 for more)", default="auto")
    pretrained: bool = _help("Start from pretrained weights (scratch strategy re-initialises regardless)", default=True)
    dropout: float | None = _help("Dropout before the classifier (auto: 0.1, scratch 0.3)", default=None)
    pooling: str = _help("Pooling of a Hugging Face model: auto | mean | cls | last (auto: mean for "
                         "sentence-transformers models, last real token for decoder-only LMs, cls for ViT-style "
                         "image models and mean for convnets, else cls)", default="auto")
    bn: str = _help("BatchNorm statistics while fine-tuning: auto | frozen | train (auto: frozen for pretrained "
                    "weights, as in the Keras fine-tuning guide; train for scratch)", default="auto")

    def __post_init__(self) -> None:
        _check_range("model.dropout", self.dropout, 0.0, 0.95)
        if self.bn not in ("auto", "frozen", "train"):
            raise ConfigError(f"model.bn={self.bn!r} is not one of auto, frozen, train")
        if self.pooling not in ("auto", "mean", "cls", "last"):
            raise ConfigError(f"model.pooling={self.pooling!r} is not one of auto, mean, cls, last")


@dataclass
class OptimConfig:
    name: str = _help("Optimizer: adamw | sgd", default="adamw")
    lr: float | None = _help("Base learning rate of the backbone (auto per strategy and modality)", default=None)
    head_lr_mult: float | None = _help("LR multiplier of the new head relative to optim.lr", default=None)
    layer_decay: float | None = _help("Discriminative LR: each layer group below the top gets LR × this^depth "
                                      "(auto: 1, discriminative/gradual 0.7)", default=None)
    weight_decay: float | None = _help("Decoupled weight decay (never applied to biases and norms)", default=None)
    momentum: float = _help("SGD momentum", default=0.9)
    warmup: float = _help("Warmup as a share of each phase's steps", default=0.1)
    schedule: str = _help("LR schedule after warmup: cosine | constant", default="cosine")
    label_smoothing: float | None = _help("Label smoothing of the cross-entropy (auto: 0, scratch 0.1)", default=None)
    grad_clip: float = _help("Clip the gradient norm to this (0 = off)", default=1.0)

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name={self.name!r} is not one of adamw, sgd")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule={self.schedule!r} is not one of cosine, constant")
        _check_range("optim.lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_range("optim.head_lr_mult", self.head_lr_mult, 0.0, 1000.0, lo_open=True)
        _check_range("optim.layer_decay", self.layer_decay, 0.0, 1.0, lo_open=True)
        _check_range("optim.weight_decay", self.weight_decay, 0.0, 10.0)
        _check_range("optim.momentum", self.momentum, 0.0, 1.0)
        _check_range("optim.warmup", self.warmup, 0.0, 0.9)
        _check_range("optim.label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("optim.grad_clip", self.grad_clip, 0.0, 1e6)


@dataclass
class TrainConfig:
    epochs: int | None = _help("Max epochs of the main phase (auto per strategy and modality)", default=None)
    patience: int = _help("Early stopping: epochs without improvement of train.monitor before stopping", default=3)
    max_seconds: float | None = _help("Time limit of the fit in seconds, as Lightning's max_time (auto: none). After "
                                      "each epoch the run ends when the next epoch, as long as the last one, would "
                                      "pass it; it keeps its best epoch so far, is tested as usual and records "
                                      "stopped_by: time limit. A resumed run counts the training seconds of its "
                                      "earlier sessions. A study under --budget sets it per cell", default=None)
    monitor: str = _help("The validation metric that picks the best epoch (kept weights), drives early stopping and "
                         "ranks a study's arms and a search's trials: auto | accuracy | balanced_accuracy | macro_f1 | "
                         "auroc (binary, or the mean one-vs-rest) | loss (auto: macro_f1 when the largest training "
                         "class is over 3x the smallest, else accuracy; said when it picks macro_f1). Ties are broken "
                         "by the loss within a phase; a later phase, such as two-stage's end-to-end one, must score "
                         "higher to replace an earlier phase's best (a fine-tuned model's val loss often rises while "
                         "its accuracy still climbs). val_accuracy and val_loss are accepted as before. Multi-label: "
                         "map (auto) | micro_f1 | macro_f1 | auroc | loss; regression: rmse (auto) | mae | r2 | loss",
                         default="auto")
    regression_loss: str = _help("Regression: mse | huber, on the target standardised with the training split's mean "
                                 "and standard deviation", default="mse")
    class_balance: str = _help("Imbalanced classes: none | weights (the loss weights each class by the inverse of its "
                               "training frequency) | sampler (batches drawn with each class equally likely, with "
                               "replacement; an epoch keeps its length). A study applies it to every arm: "
                               "compare --set train.class_balance=weights",
                               default="none")
    min_steps: int = _help("Small data: each epoch repeats the training set so a phase gets about this many "
                           "optimizer steps (and early stopping waits for them)", default=100)
    seed: int = _help("Training seed (initialisation, shuffling, augmentation)", default=0)
    threads: int | None = _help("Torch intra-op threads (auto: all cores; under torchrun the cores shared out "
                                "among the workers)", default=None)
    device: str = _help("Where to train and predict: auto (the GPU when CUDA is present, else the CPU) | cpu | cuda "
                        "| cuda:N | mps. Under torchrun each worker takes cuda:LOCAL_RANK", default="auto")
    precision: str = _help("Numeric precision of the forward passes: auto (on a GPU bf16 where supported, else fp16 "
                           "with a gradient scaler; on the CPU as train.bf16 says) | fp32 | bf16 | fp16 (GPU only). "
                           "Weights and the optimizer stay fp32 (mixed precision)", default="auto")
    grad_accum: int = _help("Gradient accumulation: each optimizer step sums the gradients of this many batches of "
                            "data.batch_size (an effective batch N times larger, in the memory of one)", default=1)
    compile: bool = _help("torch.compile the training forward pass (whole-network phases and trainable rests on "
                          "cached activations): fused kernels on GPUs after a compile of a minute or so per phase; "
                          "false: eager PyTorch", default=False)
    sync_bn: bool = _help("Data-parallel training on GPUs: BatchNorm layers that learn normalise over the whole "
                          "global batch (SyncBatchNorm); false: over each worker's share, with the running statistics "
                          "averaged after each epoch (CUDA only)", default=False)
    bf16: str = _help("bf16 autocast: auto (where the CPU has native bf16 — AMX or AVX512-BF16 —: transformers and "
                      "frozen passes) | on | off", default="auto")
    channels_last: str = _help("channels_last memory format for convnets: auto | on | off", default="auto")
    cache_features: bool = _help("Cache frozen-backbone features for head-only phases (no augmentation then); "
                                 "false: run the frozen backbone every epoch there", default=True)
    cache: str = _help("Frozen-prefix activation cache: auto (when the layer groups below the first trainable one "
                       "stay frozen for a phase, run them once and train the rest from their stored output; "
                       "shared by epochs, phases, tune trials and study cells; the training split only without "
                       "augmentation) | off", default="auto")
    cache_dir: str | None = _help("Directory for activation-cache files, shared by processes and re-runs (auto: "
                                  "<out>/cache for studies, memory only for a single run; a temporary directory "
                                  "for what does not fit in memory)", default=None)
    cache_max_gb: float = _help("Largest activation-cache entry (one split at one layer); a larger one is not "
                                "cached: the frozen layers then run every epoch", default=8.0)
    cache_dtype: str = _help("Storage type of cached activations: bf16 (half of fp32's memory; storage only, "
                             "compute stays fp32 without native bf16) | fp16 | fp32", default="bf16")
    fold_bn: bool = _help("Frozen BatchNorm is folded into the convolution before it: forward-only passes "
                          "(filling the activation cache) run a folded copy (same outputs to ~1e-5, ~1.5x faster "
                          "for EfficientNet-Lite0 on CPU), training folds on the fly while the statistics are "
                          "frozen (same gradients; no pass over the activations); false: the model as it is",
                          default=True)
    small_depthwise: bool = _help("Training convnets: depthwise convolutions over feature maps of at most 4x4 run as "
                                  "a dense per-channel product (exact; oneDNN's backward pass there was half of an "
                                  "EfficientNet-Lite0 step at 48 px); false: torch's convolution", default=True)
    fused_adamw: bool = _help("AdamW updates all parameters in one fused kernel (as Hugging Face's Trainer does; ~9x "
                              "faster optimizer step on CPU); false: torch's per-tensor loop", default=True)
    text_batches: str = _help("Text batches: auto (length-bucketed, each padded to its longest example) | random "
                              "(random batches padded to their longest) | max_length (padded to data.max_length)",
                              default="auto")
    image_memory: str = _help("Decoded, resized images: auto (kept in memory while they fit in half of the "
                              "available memory) | off (decoded again in every batch)", default="auto")
    calibrate: bool = _help("After training, fit one temperature T on the validation split (temperature scaling, "
                            "Guo et al. 2017) and divide the logits by it in predict, evaluate and every export: "
                            "calibrated probabilities, the same labels; false: T = 1", default=True)
    log_to: list[str] = _help("Experiment trackers a run also logs to: tensorboard (event files in the run "
                              "directory's tensorboard/) and/or mlflow (MLFLOW_TRACKING_URI, else MLflow's default "
                              "store), e.g. --set train.log_to=mlflow,tensorboard; needs pip install "
                              "'ajuste[tracking]' (docs/tracking.md)", default_factory=list)

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"train.epochs={self.epochs} must be ≥ 1")
        if self.min_steps < 0:
            raise ConfigError(f"train.min_steps={self.min_steps} must be ≥ 0")
        if self.patience < 1:
            raise ConfigError(f"train.patience={self.patience} must be ≥ 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"train.max_seconds={self.max_seconds!r} must be > 0 (none: no time limit)")
        if self.monitor not in ("auto", *METRICS, *LEGACY):
            raise ConfigError(f"train.monitor={self.monitor!r} is not one of auto, {', '.join(METRICS)}")
        if self.regression_loss not in ("mse", "huber"):
            raise ConfigError(f"train.regression_loss={self.regression_loss!r} is not one of mse, huber")
        if self.class_balance not in ("none", "weights", "sampler"):
            raise ConfigError(f"train.class_balance={self.class_balance!r} is not one of none, weights, sampler")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device={self.device!r} is not one of auto, cpu, cuda, cuda:N (N: a GPU number, "
                              f"e.g. cuda:1), mps")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision={self.precision!r} is not one of auto, fp32, bf16, fp16")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum={self.grad_accum} must be ≥ 1 (1: no accumulation)")
        for name in ("bf16", "channels_last"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is not one of auto, on, off")
        for name, options in (("cache", ("auto", "off")), ("image_memory", ("auto", "off")),
                              ("cache_dtype", ("bf16", "fp16", "fp32")),
                              ("text_batches", ("auto", "random", "max_length"))):
            if getattr(self, name) not in options:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is not one of {', '.join(options)}")
        unknown = [t for t in self.log_to if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"train.log_to: {unknown[0]!r} is not a tracker; give a list of "
                              f"{' and/or '.join(TRACKERS)}, e.g. --set train.log_to=mlflow,tensorboard")
        if len(set(self.log_to)) != len(self.log_to):
            raise ConfigError(f"train.log_to={','.join(self.log_to)} lists a tracker twice")
        if not self.cache_max_gb > 0:
            raise ConfigError(f"train.cache_max_gb={self.cache_max_gb!r} must be > 0 (train.cache=off turns the "
                              f"cache off)")


@dataclass
class PeftConfig:
    r: int | None = _help("lora: rank of the low-rank update (≤ the smallest in/out size of a target layer); "
                          "auto: 16 for text, 8 for images", default=None)
    alpha: float | None = _help("lora: scaling; the update is scaled by alpha / r (auto: 2 × r)", default=None)
    dropout: float = _help("lora: dropout on the adapter's input", default=0.1)
    targets: str = _help("lora/ia3: modules that get adapters: auto (attention query/value for transformers, "
                         "1x1 convs for convnets), all-linear (every linear layer of the transformer layers) "
                         "or comma-separated names, suffixes or globs (e.g. query,value or conv_pw)", default="auto")
    num_virtual_tokens: int = _help("prompt-/prefix-tuning: number of learned virtual tokens", default=20)

    def __post_init__(self) -> None:
        if self.r is not None and self.r < 1:
            raise ConfigError(f"peft.r={self.r} must be ≥ 1 (the rank of the LoRA update)")
        _check_range("peft.alpha", self.alpha, 0.0, 1e6, lo_open=True)
        _check_range("peft.dropout", self.dropout, 0.0, 0.9)
        if self.num_virtual_tokens < 1 or self.num_virtual_tokens > 512:
            raise ConfigError(f"peft.num_virtual_tokens={self.num_virtual_tokens} must be in [1, 512]")
        names = [t.strip() for t in str(self.targets).split(",")]
        if not self.targets.strip() or any(not t for t in names):
            raise ConfigError(f"peft.targets={self.targets!r}: expected auto or a comma-separated list of module "
                              f"names, e.g. query,value")

    def target_list(self) -> list[str] | None:
        """The user's target patterns, or None for auto."""
        if self.targets.strip().lower() == "auto":
            return None
        return [t.strip() for t in self.targets.split(",")]
