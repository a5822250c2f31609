"""Text fine-tuning, sms-spam with MiniLM-L6: ajuste vs Hugging Face ``Trainer`` (pad to 128 / dynamic padding).

    python bench/text_ft.py [--train 0] [--val 0] [--test 0] [--epochs 1] [--threads 1] [--skip-pad128]

Data: sms-spam (../shared/datasets/sms-spam/SMSSpamCollection) with ajuste's stratified train/val/test split
(70/15/15), optionally subsampled (stratified) with --train/--val/--test; the same examples on every side.
Model: all-MiniLM-L6-v2 (offline package), full fine-tuning, batch 32, max 128 tokens, fp32 unless the CPU has
native bf16 (ajuste then uses bf16 autocast; the Trainer runs as configured by its defaults, fp32).

- ajuste: ``train_run`` with ``strategy.name=full`` (mean pooling, length-bucketed batches padded per batch to
  a multiple of 8, AdamW 5e-5 with warmup + cosine).
- Trainer: ``AutoModelForSequenceClassification`` + ``Trainer`` (defaults: AdamW 5e-5, linear decay), the
  tokenizer with ``padding="max_length"`` (128), or no padding + ``DataCollatorWithPadding`` (random batches
  padded to their longest); evaluation on the validation split every epoch.

Seconds per epoch include that epoch's validation pass on every side; accuracy is on the test split after the
last epoch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=0, help="training texts (stratified subset; 0 = all)")
    ap.add_argument("--val", type=int, default=0, help="validation texts (0 = all)")
    ap.add_argument("--test", type=int, default=0, help="test texts (0 = all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-pad128", action="store_true", help="leave out the slowest reference")
    args = ap.parse_args()
    C.set_threads(args.threads)

    from ajuste.config import RunConfig
    from ajuste.io import read_jsonl
    from ajuste.training.run import train_run

    source = C.dataset("sms-spam") / "SMSSpamCollection"
    cfg = RunConfig().override({"data.source": str(source), "model.name": "minilm-l6", "strategy.name": "full",
                                "train.epochs": args.epochs, "train.patience": args.epochs,
                                "train.threads": args.threads, "data.batch_size": 32, "data.max_length": 128,
                                "train.min_steps": 0})
    data, splits = C.load_subset(cfg, args, test=args.test or None)
    print(f"sms-spam: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test texts, "
          f"MiniLM-L6 full fine-tuning, {args.epochs} epoch(s), batch 32, max 128 tokens")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ajuste-bench-text-") as tmp:
        res = train_run(cfg=cfg, out=Path(tmp) / "run", data=data, splits=splits, progress=False)
        epochs = [h["seconds"] for h in read_jsonl(Path(tmp) / "run" / "metrics.jsonl")]
        ajuste_s = sum(epochs) / len(epochs)
        rows.append(["ajuste (length-bucketed, dynamic padding)", ajuste_s, res.summary["test_accuracy"]])
        del res
        refs = {}
        for padding in (("dynamic",) if args.skip_pad128 else ("dynamic", "max_length")):
            refs[padding] = trainer_run(data, splits, padding=padding, epochs=args.epochs, out=Path(tmp) / padding)
            name = {"dynamic": "Trainer + DataCollatorWithPadding", "max_length": 'Trainer, padding="max_length" (128)'}
            rows.append([name[padding], refs[padding][0], refs[padding][1]])
    print()
    print(C.table(["", "s / epoch (incl. validation)", "test acc"], [r[:1] + r[1:] for r in rows]))
    print()
    for padding, goal in (("max_length", 3.0), ("dynamic", 1.3)):
        if padding in refs:
            print(f"vs Trainer {padding}: {refs[padding][0] / ajuste_s:.2f}× faster (goal ≥ {goal}×); "
                  f"test accuracy {rows[0][2]:.4f} vs {refs[padding][1]:.4f}")


def trainer_run(data, splits, *, padding: str, epochs: int, out: Path) -> tuple[float, float]:
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from ajuste.backbones.zoo import minilm_l6_path
    from ajuste.lazy import quiet_transformers

    quiet_transformers()
    path = str(minilm_l6_path())
    tok = AutoTokenizer.from_pretrained(path)

    class Texts(torch.utils.data.Dataset):
        def __init__(self, idx) -> None:
            texts = [data.inputs[i] for i in idx]
            kw = {"padding": "max_length"} if padding == "max_length" else {}
            self.enc = tok(texts, truncation=True, max_length=128, **kw)
            self.labels = [int(data.labels[i]) for i in idx]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.labels[i]}

    train_ds, val_ds, test_ds = (Texts(splits[k]) for k in ("train", "val", "test"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.classes))
    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=32, per_device_eval_batch_size=64,
                              num_train_epochs=epochs, eval_strategy="epoch", save_strategy="no", report_to="none",
                              use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, logging_strategy="no",
                              seed=0)
    collator = DataCollatorWithPadding(tok) if padding == "dynamic" else None
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator)
    with C.Timer() as t:
        trainer.train()
    pred = trainer.predict(test_ds)
    acc = float((np.argmax(pred.predictions, axis=1) == pred.label_ids).mean())
    return t.seconds / epochs, acc


if __name__ == "__main__":
    main()
