"""Device, precision and gradient accumulation (issue 28, item 1): resolution, one clear line for a device
that is not here, every strategy on an explicitly named CPU, accumulation equal to one big batch. The tests
marked `gpu` run where CUDA is, and skip cleanly elsewhere (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.training import execution

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# --- resolution ---------------------------------------------------------------------------------------------


def test_device_names_are_checked_when_the_config_is_read():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert RunConfig().override({"train.device": ok}).train.device == ok
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", "CPU"):
        with pytest.raises(ConfigError, match="train.device"):
            RunConfig().override({"train.device": bad})
    with pytest.raises(ConfigError, match="train.precision"):
        RunConfig().override({"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="train.grad_accum"):
        RunConfig().override({"train.grad_accum": 0})


def test_auto_is_the_gpu_when_cuda_is_here_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert execution.resolve_device("auto") == torch.device("cpu")
    assert execution.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert execution.resolve_device("auto") == torch.device("cuda", 0)
    assert execution.resolve_device("cuda:3") == torch.device("cuda", 3)
    monkeypatch.setenv("LOCAL_RANK", "2")  # a torchrun worker takes its own GPU
    assert execution.resolve_device("cuda") == torch.device("cuda", 2)
    with pytest.raises(AjusteError, match=r"cuda:4, but this machine has 4 CUDA GPUs \(cuda:0 to cuda:3\)"):
        execution.resolve_device("cuda:4")


def test_asking_for_cuda_without_one_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from ajuste.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    rc = main(["train", "digits", "--model", "timm/test_efficientnet", "-s", "linear-probe", "--set",
               "train.device=cuda", "--set", "model.pretrained=false", "-q", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "train.device=cuda, but PyTorch sees no CUDA GPU" in lines[0] and "train.device=cpu" in lines[0]
    assert not (out / "summary.json").exists()


def test_precision_auto_per_device(monkeypatch):
    cfg = RunConfig().train
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert execution.amp_dtype(cfg, convnet=True, text=False, training=True, device=gpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a pre-Ampere card
    assert execution.amp_dtype(cfg, convnet=True, text=False, training=True, device=gpu) is torch.float16
    fp16 = RunConfig().override({"train.precision": "fp16"}).train
    with pytest.raises(AjusteError, match="fp16 needs a GPU"):
        execution.amp_dtype(fp16, convnet=True, text=False, training=True, device=torch.device("cpu"))
    # fp16 training on a GPU gets a gradient scaler; bf16 and fp32 do not need one
    assert execution.grad_scaler(torch.bfloat16, gpu) is None and execution.grad_scaler(None, gpu) is None
    assert execution.grad_scaler(torch.float16, torch.device("cpu")) is None


# --- every strategy on an explicitly named CPU, and accumulation -----------------------------------------


def _tiny_run(digits_small, strategy: str, **sets):
    from ajuste.training.run import train_run

    cfg = RunConfig().override({"data.source": "digits", "model.name": "timm/test_efficientnet",
                                "model.pretrained": False, "data.image_size": 32, "strategy.name": strategy,
                                "train.epochs": 1, "strategy.head_epochs": 1, "train.min_steps": 0,
                                "train.device": "cpu", **sets})
    return train_run(cfg=cfg, data=digits_small, progress=False)


@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "two-stage", "gradual", "discriminative",
                                      "scratch", "scratch-compact", "bitfit"])
def test_every_strategy_trains_a_step_on_an_explicit_cpu(digits_small, strategy):
    res = _tiny_run(digits_small, strategy)
    assert res.summary["status"] == "complete"
    assert all(p.device.type == "cpu" for p in res.backbone.parameters())
    assert torch.isfinite(torch.tensor(res.summary["val_loss"]))


def test_two_batches_accumulated_equal_one_batch_twice_as_large(tiny_timm):
    """train.grad_accum=2 at batch 8 steps with the gradient of one batch of 16 (the mean over its examples)."""
    import copy

    from ajuste.training.steps import _train_epoch

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    models = [tiny_timm, copy.deepcopy(tiny_timm)]
    grads = []
    for model, batches, accum in ((models[0], [(x, y)], 1), (models[1], [(x[:8], y[:8]), (x[8:], y[8:])], 2)):
        model.eval()  # no dropout or batch statistics: the same function of the inputs in both
        cfg = RunConfig().override({"train.grad_accum": accum, "optim.grad_clip": 0, "optim.label_smoothing": 0.0})
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        for g in opt.param_groups:
            g["base_lr"] = 0.0
        seen = {}

        def keep(optimizer=opt, seen=seen, model=model):  # the gradient the step is taken with
            seen.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        opt.register_step_pre_hook(lambda o, a, k: keep())
        model.train = lambda mode=True: model  # keep eval mode inside _train_epoch
        _train_epoch(model, batches, opt, cfg, forward=model, amp=None, step0=0, total_steps=len(batches), bar=None,
                     task=None, on_diverge=lambda lr: None)
        grads.append(seen)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_train_compile_compiles_the_training_pass_of_each_phase_but_a_cached_head(digits_small, monkeypatch):
    """train.compile hands each phase's training forward to torch.compile, except the linear head on cached
    features. (A real compile of this tiny model takes about a minute on this CPU, with the same losses to 1e-6:
    the GPU check times the real thing; here torch.compile is recorded and passed through.)"""
    compiled = []

    def record(fn, *args, **kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    plain = _tiny_run(digits_small, "two-stage")
    assert not compiled
    res = _tiny_run(digits_small, "two-stage", **{"train.compile": True})
    assert len(compiled) == 1  # the end-to-end phase; the head phase trains on cached features
    assert res.summary["val_loss"] == pytest.approx(plain.summary["val_loss"], abs=1e-6)


# --- on a GPU (skipped without CUDA) ----------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "two-stage", "scratch", "lora"])
def test_every_strategy_trains_on_cuda(digits_small, strategy, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    res = _tiny_run(digits_small, strategy, **{"train.device": "cuda", "train.precision": precision})
    assert res.summary["status"] == "complete"
    assert torch.isfinite(torch.tensor(res.summary["val_loss"]))
    assert all(p.device.type == "cuda" for p in res.backbone.parameters())
    assert all(b.device.type == "cuda" for b in res.backbone.buffers())


@pytest.mark.gpu
@cuda
def test_train_compile_on_cuda_trains_as_eager_does(digits_small):
    eager = _tiny_run(digits_small, "full", **{"train.device": "cuda", "train.precision": "fp32"})
    compiled = _tiny_run(digits_small, "full", **{"train.device": "cuda", "train.precision": "fp32",
                                                  "train.compile": True})
    assert compiled.summary["val_loss"] == pytest.approx(eager.summary["val_loss"], rel=1e-3)


@pytest.mark.gpu
@cuda
def test_the_feature_cache_is_built_on_the_gpu_and_kept_on_the_cpu(digits_small):
    from ajuste.training import cache

    cache.REGISTRY.entries.clear()
    res = _tiny_run(digits_small, "linear-probe", **{"train.device": "cuda"})
    assert res.summary["status"] == "complete"
    stored = [e.data for e in cache.REGISTRY.entries.values() if isinstance(e.data, torch.Tensor)]
    assert stored, "the head-only phase trained on cached features"
    assert all(t.device.type == "cpu" for t in stored)


@pytest.mark.gpu
@cuda
def test_kill_on_the_gpu_then_resume(tmp_path):
    """SIGKILL in the end-to-end phase of a CUDA run, then the same command: every epoch once, the run
    completes. Losses agree to 1e-3, not bit for bit: cuDNN's backward kernels are not deterministic."""
    import json

    from test_kill import TINY, _finish, _kill_when, _lines, _start

    args = [*TINY, "--strategy", "two-stage", "--epochs", "3", "--set", "strategy.head_epochs=3", "--fraction",
            "0.3", "--set", "train.device=cuda"]
    _finish(["train", *args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"
    proc = _start(["train", *args, "--out", str(out)])
    _kill_when(proc, lambda: any(r["phase"] == "all" for r in _lines(out / "metrics.jsonl")))
    _finish(["train", *args, "--out", str(out)])
    ref, got = _lines(tmp_path / "ref" / "metrics.jsonl"), _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in got] == list(range(len(ref)))
    for a, b in zip(ref, got):
        assert a["phase"] == b["phase"] and abs(a["val_loss"] - b["val_loss"]) < 1e-3
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
