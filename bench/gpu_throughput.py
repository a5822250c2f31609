"""Training throughput of ajuste's loop against the reference recipes, on one device, in one process.

    python bench/gpu_throughput.py                    # on a GPU: ViT-B/16 and ConvNeXt-T at 224, BERT-base
    python bench/gpu_throughput.py --smoke            # anywhere: tiny models, a few steps (checks it runs)

Vision: ajuste's full fine-tuning step (`train.steps._train_epoch`: its autocast dtype, channels_last choice,
optimizer and gradient scaler) against timm's reference recipe (AMP autocast, channels_last, fused AdamW), both
on randomly initialised models (`pretrained=False`: nothing to download), the same batches moved from host
memory. Text: ajuste's step on its own length-bucketed, dynamically padded batches against Hugging Face's
`Trainer` (bf16, `DataCollatorWithPadding`), on a randomly initialised BERT-base-sized encoder and the same
texts. Each side warms up, then is timed over the same number of steps; the table gives examples per second
and ajuste's ratio to the reference measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _image_batches(n: int, batch: int, size: int, classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        out.append((x.pin_memory() if torch.cuda.is_available() else x, y))
    return out


def _timed(run, batches: list, warmup: int, device: torch.device) -> float:
    """Examples per second of ``run`` over the batches after ``warmup`` (those run first, untimed)."""
    run(batches[:warmup])
    _sync(device)
    t0 = time.perf_counter()
    run(batches[warmup:])
    _sync(device)
    return sum(len(y) for _, y in batches[warmup:]) / (time.perf_counter() - t0)


def ajuste_vision(arch: str, device: torch.device, batches: list, warmup: int, compile: bool = False) -> float:
    """Images per second of ajuste's training step (full fine-tuning); ``compile``: as train.compile does."""
    from ajuste.backbones.factory import create_backbone
    from ajuste.config import RunConfig
    from ajuste.training.execution import grad_scaler
    from ajuste.training.inference import amp_for, use_channels_last
    from ajuste.training.loop import _fast_optimizer
    from ajuste.training.steps import _train_epoch
    from ajuste.training.param_groups import build_param_groups, make_optimizer

    cfg = RunConfig().override({"train.device": str(device), "optim.label_smoothing": 0.0, "optim.grad_clip": 0.0})
    bb = create_backbone(f"timm/{arch}", num_classes=10, pretrained=False).to(device)
    cl = use_channels_last(cfg, bb)
    if cl:
        bb.to(memory_format=torch.channels_last)
    bb.set_trainable(None)
    groups = build_param_groups(bb.layer_groups(), trainable=None, lr=1e-4, head_lr=1e-3, weight_decay=0.05)
    opt = _fast_optimizer(make_optimizer("adamw", groups), cfg)
    amp = amp_for(cfg, bb, training=True)
    scaler = grad_scaler(amp, device)
    from ajuste.data.pipeline import to_device_batch

    def forward(x: torch.Tensor) -> torch.Tensor:
        return bb(to_device_batch(x, channels_last=cl, device=device))

    if compile:  # the warm-up batches include the compilation
        forward = torch.compile(forward)

    def run(part: list) -> None:
        _train_epoch(bb, part, opt, cfg, forward=forward, amp=amp, step0=0, total_steps=len(batches), bar=None,
                     task=None, on_diverge=lambda lr: None, scaler=scaler)

    return _timed(run, batches, warmup, device)


def timm_vision(arch: str, device: torch.device, batches: list, warmup: int) -> float:
    """Images per second of timm's reference recipe: AMP, channels_last, fused AdamW."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=10).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def run(part: list) -> None:
        for x, y in part:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

    return _timed(run, batches, warmup, device)


WORDS = ["film", "great", "awful", "story", "acting", "plot", "slow", "brilliant", "dull", "music", "scene",
         "ending", "cast", "boring", "superb", "long", "short", "funny", "sad", "the", "a", "and", "was"]


def _texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    import random

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 120))) for _ in range(n)]
    return texts, [rng.randint(0, 1) for _ in range(n)]


def _bert_folder(tmp: Path, smoke: bool) -> Path:
    """A randomly initialised BERT (base-sized unless ``smoke``) with a WordPiece tokenizer over the bench's
    words, saved as a Hugging Face folder: nothing downloaded, no model package needed."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    cfg = BertConfig() if not smoke else BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp)  # BERT-base: 12 layers x 768, 30,522-token embedding
    tok.save_pretrained(tmp)
    return tmp


def ajuste_text(folder: Path, device: torch.device, texts: list[str], labels: list[int], batch: int,
                warmup: int) -> float:
    """Texts per second of ajuste's full fine-tuning step on its length-bucketed, padded batches."""
    import numpy as np

    from ajuste.backbones.factory import create_backbone
    from ajuste.config import RunConfig
    from ajuste.data.pipeline import Pipeline, make_preprocessing
    from ajuste.data.sources import LabelledData
    from ajuste.training.execution import grad_scaler
    from ajuste.training.inference import amp_for
    from ajuste.training.loop import _fast_optimizer
    from ajuste.training.steps import _train_epoch
    from ajuste.training.param_groups import build_param_groups, make_optimizer

    data = LabelledData(modality="text", inputs=texts, labels=np.asarray(labels), classes=["neg", "pos"])
    n = len(texts)
    cfg = RunConfig().override({"train.device": str(device), "optim.label_smoothing": 0.0, "optim.grad_clip": 0.0})
    bb = create_backbone(str(folder), num_classes=2, pretrained=True).to(device)
    bb.set_trainable(None)
    pre = make_preprocessing(data, bb, image_size=None, max_length=128)
    pipe = Pipeline(data, {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}, pre,
                    tokenizer=bb.tokenizer, augment="none", batch_size=batch)
    groups = build_param_groups(bb.layer_groups(), trainable=None, lr=3e-5, head_lr=3e-4, weight_decay=0.01)
    opt = _fast_optimizer(make_optimizer("adamw", groups), cfg)
    amp = amp_for(cfg, bb, training=True)
    scaler = grad_scaler(amp, device)
    from ajuste.data.pipeline import to_device_batch

    def forward(inputs):
        return bb(to_device_batch(inputs, device=device))

    batches = list(pipe.loader("train", shuffle=True, augment=False, seed=0))

    def run(part: list) -> None:
        _train_epoch(bb, part, opt, cfg, forward=forward, amp=amp, step0=0, total_steps=len(batches), bar=None,
                     task=None, on_diverge=lambda lr: None, scaler=scaler)

    return _timed(run, batches, warmup, device)


def hf_trainer_text(folder: Path, device: torch.device, texts: list[str], labels: list[int], batch: int,
                    warmup: int) -> float:
    """Texts per second of Hugging Face's Trainer: bf16 (fp16 on older GPUs), dynamic padding."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, use_safetensors=True)
    enc = tok(texts, truncation=True, max_length=128)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
            for i in range(len(texts))]
    steps = math.ceil(len(rows) / batch)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001 - transformers' callback signature
            _sync(device)
            times.append(time.perf_counter())

    gpu = device.type == "cuda"
    bf16 = not gpu or torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, bf16=bf16,
                                 fp16=gpu and not bf16, use_cpu=not gpu, report_to=[], save_strategy="no",
                                 logging_strategy="no", dataloader_num_workers=0, learning_rate=3e-5)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok),
                          callbacks=[Clock()])
        trainer.train()
    timed = times[warmup - 1:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and a few steps: checks that it runs")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--compile", action="store_true", help="also ajuste with train.compile (torch.compile)")
    ns = ap.parse_args()
    from _common import set_threads

    if not torch.cuda.is_available():
        set_threads(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = (4, 1) if ns.smoke else (ns.steps, ns.warmup)
    size, batch = (64, 4) if ns.smoke else (224, 64)
    archs = ["test_vit", "test_convnext"] if ns.smoke else ["vit_base_patch16_224", "convnext_tiny"]
    rows = []
    for arch in archs:
        batches = _image_batches(steps + warmup, batch, size)
        ref = timm_vision(arch, device, batches, warmup)
        ours = ajuste_vision(arch, device, batches, warmup)
        rows.append({"model": arch, "unit": "img/s", "reference": "timm (AMP, channels_last, fused AdamW)",
                     "reference_per_s": round(ref, 1), "ajuste_per_s": round(ours, 1), "ratio": round(ours / ref, 3)})
        if ns.compile:
            fast = ajuste_vision(arch, device, batches, warmup, compile=True)
            rows[-1].update(ajuste_compiled_per_s=round(fast, 1), compiled_ratio=round(fast / ref, 3))
        print(json.dumps(rows[-1]), flush=True)
    tbatch = 4 if ns.smoke else 32
    texts, labels = _texts(tbatch * (steps + warmup))
    with tempfile.TemporaryDirectory() as tmp:
        folder = _bert_folder(Path(tmp), ns.smoke)
        ref = hf_trainer_text(folder, device, texts, labels, tbatch, warmup)
        ours = ajuste_text(folder, device, texts, labels, tbatch, warmup)
    rows.append({"model": "bert-base (random)" if not ns.smoke else "bert-tiny (random)", "unit": "texts/s",
                 "reference": "HF Trainer (bf16, dynamic padding)", "reference_per_s": round(ref, 1),
                 "ajuste_per_s": round(ours, 1), "ratio": round(ours / ref, 3)})
    print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    if ns.json:
        ns.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
