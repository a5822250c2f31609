"""Fast paths are chosen automatically and each has a switch: channels_last, BatchNorm folding for frozen
passes, length-bucketed dynamic padding, decoded images in memory, threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ajuste.backbones.base import Backbone, fold_batchnorms
from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline, make_preprocessing
from ajuste.training.loop import use_channels_last


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def test_channels_last_for_convnets_only_and_switchable(tiny_timm, tiny_text):
    cfg = RunConfig()
    assert use_channels_last(cfg, tiny_timm) is True
    assert use_channels_last(cfg, tiny_text) is False
    assert use_channels_last(cfg.override({"train.channels_last": "off"}), tiny_timm) is False


def test_folded_copy_gives_the_same_features_without_batchnorm(tiny_timm):
    _randomise_bn(tiny_timm)
    tiny_timm.eval()
    probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    twin = tiny_timm.inference_copy(probe)
    assert twin is not tiny_timm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in tiny_timm.modules())  # the original is untouched
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(twin.features(x), tiny_timm.features(x), rtol=1e-4, atol=1e-5)
        g = len(tiny_timm.layer_groups()) - 2
        torch.testing.assert_close(twin.forward_prefix(x, g), tiny_timm.forward_prefix(x, g), rtol=1e-4, atol=1e-5)


class _SharedConv(nn.Module):
    """A convolution whose output is normalised *and* reused raw: folding would change the reuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Tiny(Backbone):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net
        self.head = nn.Linear(3, 2)

    @property
    def classifier(self) -> nn.Linear:
        return self.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).mean((2, 3))


def test_folding_that_would_change_outputs_is_refused():
    bb = _Tiny(_SharedConv())
    _randomise_bn(bb)
    probe = torch.randn(2, 3, 8, 8)
    assert fold_batchnorms(_SharedConv(), probe) == 1  # the pair is found...
    assert bb.inference_copy(probe) is bb  # ...but the check on the probe keeps the original


def test_fold_switch_is_part_of_the_cache_key(digits_small):
    from ajuste.training import cache
    from ajuste.training.run import train_run

    base = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "data.image_size": 32,
            "strategy.name": "linear-probe", "train.epochs": 1, "train.min_steps": 0, "train.threads": 1}
    cache.clear()
    train_run(cfg=RunConfig().override(base), data=digits_small, progress=False, evaluate_test=False)
    train_run(cfg=RunConfig().override({**base, "train.fold_bn": False}), data=digits_small, progress=False,
              evaluate_test=False)
    assert cache.REGISTRY.stats["builds"] == 4 and cache.REGISTRY.stats["hits"] == 0
    cache.clear()


# --- text batches -----------------------------------------------------------------------------------------


def _text_pipeline(tiny_text, n=200):
    from ajuste.data.sources import LabelledData

    rng = np.random.default_rng(0)
    words = ["spam", "free", "call", "now", "hello", "see", "you", "later", "win", "prize"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]
    data = LabelledData(inputs=texts, labels=rng.integers(0, 2, n), classes=["ham", "spam"], modality="text",
                        source="synthetic")
    pre = make_preprocessing(data, tiny_text, image_size=None, max_length=64)
    splits = {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}
    return Pipeline(data, splits, pre, tokenizer=tiny_text.tokenizer, batch_size=16)


def _padding(loader) -> tuple[int, int, set[int]]:
    padded = real = 0
    widths = set()
    for inputs, _ in loader:
        mask = inputs["attention_mask"]
        padded += mask.numel()
        real += int(mask.sum())
        widths.add(mask.shape[1])
    return padded, real, widths


def test_length_bucketed_batches_pad_less_than_random_ones(tiny_text):
    pipe = _text_pipeline(tiny_text)
    bucketed, real, widths = _padding(pipe.loader("train", shuffle=True, seed=0))
    assert all(w % 8 == 0 for w in widths)
    pipe.configure(text_batches="random")
    random_, real2, _ = _padding(pipe.loader("train", shuffle=True, seed=0))
    pipe.configure(text_batches="max_length")
    fixed, real3, widths3 = _padding(pipe.loader("train", shuffle=True, seed=0))
    assert real == real2 == real3  # every token seen once in each
    assert bucketed < 0.8 * random_ < 0.8 * fixed
    assert widths3 == {64}


def test_text_batches_switch_comes_from_the_config(tiny_text):
    with pytest.raises(ValueError, match="text_batches"):
        _text_pipeline(tiny_text).configure(text_batches="sorted")
    from ajuste.errors import ConfigError

    with pytest.raises(ConfigError, match="train.text_batches"):
        RunConfig().override({"train.text_batches": "sorted"})


# --- images in memory, threads ------------------------------------------------------------------------------


def test_decoded_images_are_kept_unless_switched_off(tmp_path, tiny_timm):
    from PIL import Image

    from ajuste.data.sources import load_data

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    data = load_data(str(tmp_path))
    pre = make_preprocessing(data, tiny_timm, image_size=32, max_length=8)
    idx = np.arange(len(data))
    splits = {"train": idx, "val": idx, "test": idx}
    on = Pipeline(data, splits, pre, augment="none")
    list(on.loader("train"))
    assert len(on.store._cache) == len(data)
    off = Pipeline(data, splits, pre, augment="none")
    off.configure(image_memory="off")
    list(off.loader("train"))
    assert len(off.store._cache) == 0
    a, b = next(iter(on.loader("val"))), next(iter(off.loader("val")))
    assert torch.equal(a[0], b[0])  # same pixels either way


def test_fit_sets_the_configured_threads(digits_small):
    from ajuste.training.run import train_run

    before = torch.get_num_threads()
    try:
        cfg = RunConfig().override({"model.name": "timm/test_efficientnet", "model.pretrained": False,
                                    "data.image_size": 32, "strategy.name": "linear-probe", "train.epochs": 1,
                                    "train.min_steps": 0, "train.threads": 1})
        train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fused_adamw_makes_the_same_steps_and_can_be_switched_off():
    from ajuste.training.loop import _fast_optimizer
    from ajuste.training.param_groups import make_optimizer

    torch.manual_seed(0)
    nets = [nn.Linear(6, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0].weight.detach().clone()
    opts = []
    for net, fused in zip(nets, (True, False)):
        groups = [{"params": list(net.parameters()), "lr": 1e-2, "base_lr": 1e-2, "weight_decay": 0.1, "name": "g"}]
        opts.append(_fast_optimizer(make_optimizer("adamw", groups), RunConfig().override({"train.fused_adamw": fused})))
    assert opts[0].param_groups[0]["fused"] is True and not opts[1].param_groups[0]["fused"]
    x = torch.randn(8, 6)
    for _ in range(5):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(nets[0].weight, start)  # the steps did something
    opts[1].load_state_dict(opts[0].state_dict())  # a checkpoint resumes across the switch


def _loss_and_grads(bb: Backbone, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    bb.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks on both sides
    loss = nn.functional.cross_entropy(bb(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_through_frozen_batchnorm_folds_it_with_the_same_loss_and_gradients(tiny_timm, channels_last):
    from ajuste.backbones.frozen_bn import folded_frozen_batchnorm

    _randomise_bn(tiny_timm)
    tiny_timm.set_trainable(None, freeze_bn_stats=True)  # fine-tuning: every BN in eval mode, γ/β train
    tiny_timm.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tiny_timm.to(memory_format=fmt)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=fmt)
    y = torch.tensor([0, 1, 2, 1])
    keys = list(tiny_timm.state_dict())
    want_loss, want = _loss_and_grads(tiny_timm, x, y)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in tiny_timm.modules())
    with folded_frozen_batchnorm(tiny_timm.net, torch.randn(2, 3, 32, 32)) as n:
        assert n == n_bn  # every norm of this net follows a convolution
        got_loss, got = _loss_and_grads(tiny_timm, x, y)
        assert any(type(m).__name__.startswith("Folded") for m in tiny_timm.modules())
        assert list(tiny_timm.state_dict()) == keys  # a checkpoint taken meanwhile is the same file
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5)
    assert set(got) == set(want) and any("bn" in k for k in got)  # γ/β still get their gradients
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-5, msg=k)
    assert not any(type(m).__name__.startswith("Folded") for m in tiny_timm.modules())  # classes restored


def test_batchnorm_that_trains_is_not_folded(tiny_timm):
    """Scratch / model.bn=train: the norms learn their statistics, so the forward stays the norm's own."""
    from ajuste.backbones.frozen_bn import folded_frozen_batchnorm

    tiny_timm.set_trainable(None)
    tiny_timm.train()
    bn = next(m for m in tiny_timm.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with folded_frozen_batchnorm(tiny_timm.net, torch.randn(2, 3, 32, 32)) as n:
        assert n > 0
        before = bn.running_mean.clone()
        out = tiny_timm(x)
        assert not torch.equal(bn.running_mean, before)  # statistics updated: the norm ran
        tiny_timm.eval()  # validation inside the same fit: folded, equal to the norm's eval output
        with torch.no_grad():
            folded_eval = tiny_timm(x)
    with torch.no_grad():
        torch.testing.assert_close(folded_eval, tiny_timm(x), rtol=1e-4, atol=1e-5)
    assert out.shape == (4, 3)


def test_folding_on_the_fly_that_would_change_outputs_is_refused():
    from ajuste.backbones.frozen_bn import folded_frozen_batchnorm

    net = _SharedConv()
    _randomise_bn(net)
    with folded_frozen_batchnorm(net, torch.randn(2, 3, 8, 8)) as n:
        assert n == 0
        assert type(net.conv) is nn.Conv2d and type(net.bn) is nn.BatchNorm2d


def test_a_copy_made_while_folding_folds_for_good(tiny_timm):
    """The activation cache copies the model during fit: the copy must not fold twice."""
    from ajuste.backbones.frozen_bn import folded_frozen_batchnorm

    _randomise_bn(tiny_timm)
    tiny_timm.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = tiny_timm.features(x)
    with folded_frozen_batchnorm(tiny_timm.net, torch.randn(2, 3, 32, 32)):
        twin = tiny_timm.inference_copy(torch.randn(2, 3, 32, 32))
    assert twin is not tiny_timm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    with torch.no_grad():
        torch.testing.assert_close(twin.features(x), want, rtol=1e-4, atol=1e-5)


class _InPlaceAdapter(nn.Module):
    """conv, then an adapter delta added in place (zero when the probe runs, as a fresh LoRA's is), then BN:
    folding the norm into the conv alone would leave the trained delta un-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.delta = nn.Conv2d(3, 3, 1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)
        self.bn = nn.BatchNorm2d(3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y += self.delta(x)
        return self.bn(y)


def test_an_output_changed_in_place_before_the_norm_is_not_folded():
    from ajuste.backbones.frozen_bn import find_pairs, folded_frozen_batchnorm

    net = _InPlaceAdapter()
    _randomise_bn(net)
    assert find_pairs(net, torch.randn(2, 3, 8, 8)) == []
    with folded_frozen_batchnorm(net, torch.randn(2, 3, 8, 8)) as n:
        assert n == 0
