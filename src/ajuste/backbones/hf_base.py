"""What every Hugging Face backbone shares, text or image: the network is ``AutoModel`` (no task head), the
pooling and the linear classifier are ours, and the layer groups and LoRA targets come from the network's
structure (its stack of transformer layers or stages), never from module names.

The network's own pooler, when it has parameters (BERT's and ViT's dense + tanh on the first token), is
unused by our pooling and kept frozen (it would otherwise sit in the optimizer with no gradient).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajuste.backbones.adapters import auto_lora_targets, stack_linear
from ajuste.backbones.base import Backbone, LayerGroup, Split, call_until


def stack_prefix(net: nn.Module) -> tuple[str, int]:
    """The network's stack of layers (transformer layers, or a convnet's stages): the ModuleList holding the
    most parameters, by name, and its length; ("", 0) when it has none. BERT: ``encoder.layer``, GPT-2: ``h``,
    Llama: ``layers``, ViT: ``encoder.layer``, ConvNeXt: ``encoder.stages``."""
    best, best_n, best_len = "", -1, 0
    for name, mod in net.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n, best_len = name, n, len(mod)
    return best, best_len


def new_head(hidden: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(hidden, num_classes)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class HFBase(Backbone):
    """A Hugging Face ``AutoModel`` with our pooling and head. Subclasses: ``features`` and ``data_config``,
    and ``preprocessor`` (the tokenizer or image processor saved beside the config)."""

    inner_attr = "encoder"

    def __init__(self, encoder: nn.Module, *, name: str, source: str, pooling: str, num_classes: int,
                 hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.name = name
        self.source = source
        self.pooling = pooling
        self._classifier = new_head(hidden, num_classes)
        # By identity: a PEFT wrapper renames the encoder's parameters. A parameter-free pooler (Swin's average
        # pool) is not listed: an image model's mean pooling uses it.
        self._unused_modules = [m for n, m in encoder.named_children()
                                if n == "pooler" and any(True for _ in m.parameters())]
        self._unused = {id(p) for m in self._unused_modules for p in m.parameters()}
        for p in encoder.parameters():
            if id(p) in self._unused:
                p.requires_grad_(False)

    @property
    def preprocessor(self) -> Any:
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Linear:
        return self._classifier

    def _layer_list_prefix(self) -> tuple[str, int]:
        """The encoder's stack of layers (names as ``self.encoder`` sees them, a PEFT wrapper included)."""
        return stack_prefix(self.encoder)

    def _body_groups(self) -> list[LayerGroup]:
        prefix, n_layers = self._layer_list_prefix()
        named = [(n, p) for n, p in self.encoder.named_parameters() if id(p) not in self._unused]
        if not prefix:
            return [LayerGroup("encoder", named)]
        embed = LayerGroup("embeddings")
        layers = [LayerGroup(f"layer.{i}") for i in range(n_layers)]
        seen_layer = False
        for n, p in named:
            if n.startswith(prefix + "."):
                idx = int(n[len(prefix) + 1:].split(".")[0])
                layers[idx].params.append((n, p))
                seen_layer = True
            elif not seen_layer:
                embed.params.append((n, p))
            else:
                # Parameters after the stack (a final norm, relative-position tables): top layer's group.
                layers[-1].params.append((n, p))
        return [embed, *layers]

    # --- frozen-prefix split (ajuste.training.cache); the modality's parts: _encode, _rerun, _split_probe ---------
    def _split_body(self, g: int, groups: list[LayerGroup]) -> Split | None:
        """Cut at the input of layer ``g - 1`` of the stack (group 0 is the embeddings).

        Prefix: the network's own forward, stopped at that layer: (B, T, H) hidden states, or a convnet's
        (B, C, h, w) feature maps. Suffix: the network's forward again with the embeddings returning the cached
        activations and the layers below the cut passing them through; the layers below the cut do not run.
        Accepted only if a probe batch gives the same features both ways (a network whose forward does more
        between the embeddings and the layers, or whose layers return tuples, is left uncut)."""
        if self.peft or self.encoder is not self.net:
            return None
        prefix_name, n_layers = self._layer_list_prefix()
        if not prefix_name or not 1 <= g <= n_layers:
            return None
        layers = self.encoder.get_submodule(prefix_name)
        embeddings = getattr(self.encoder, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            return None
        start, below = layers[g - 1], list(layers[:g - 1])

        def prefix(inputs: Any) -> torch.Tensor:
            return call_until(self.encoder, start, lambda: self._encode(inputs))

        def rest(acts: Any) -> torch.Tensor:
            hidden = acts["hidden"] if isinstance(acts, dict) else acts
            with _replaced_forward(embeddings, lambda *a, **k: hidden), contextlib.ExitStack() as stack:
                for layer in below:
                    stack.enter_context(_replaced_forward(layer, _passthrough))
                return self._rerun(acts)

        sp = Split(g, f"{prefix_name}.{g - 1}", [*layers[g - 1:], *self._after_layers(prefix_name)], prefix, rest,
                   ragged=self.modality == "text")
        return sp if self._split_matches(sp) else None

    def _after_layers(self, prefix_name: str) -> list[nn.Module]:
        """Modules of the network outside the embeddings and the layer stack (a final norm): suffix side."""
        top = prefix_name.split(".")[0]
        return [m for n, m in self.encoder.named_children() if n not in (top, "embeddings") and
                m not in self._unused_modules]

    @torch.no_grad()
    def _split_matches(self, sp: Split) -> bool:
        inputs, as_acts = self._split_probe()
        was_training = self.training
        self.eval()
        try:
            want = self.features(inputs)
            got = sp.rest(as_acts(sp.prefix(inputs)))
        finally:
            self.train(was_training)
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)

    def _encode(self, inputs: Any) -> Any:
        """The network's forward on a batch of inputs (the split's prefix stops inside it)."""
        raise NotImplementedError

    def _rerun(self, acts: Any) -> torch.Tensor:
        """Pooled features from the network's forward with its embeddings replaced (they return the cache)."""
        raise NotImplementedError

    def _split_probe(self) -> tuple[Any, Any]:
        """A probe batch, and what turns the prefix's output on it into the suffix's activations."""
        raise NotImplementedError

    def reset_head(self, num_classes: int) -> None:
        self._classifier = new_head(self._classifier.in_features, num_classes)

    def describe(self) -> dict[str, Any]:
        return self._with_peft({"kind": "hf", "name": self.name, "source": self.source, "pooling": self.pooling,
                                "num_classes": self.num_classes, "dropout": self.head_dropout.p})

    def _adapter_excluded(self) -> set[int]:
        return {id(m) for top in self._unused_modules for m in top.modules()}

    def lora_targets(self, r: int) -> list[str]:
        """Attention query/value projections where the naming says which they are; else, by module type, every
        nn.Linear and transformers Conv1D inside the layer stack (see ``adapters.auto_lora_targets``)."""
        stack, _ = stack_prefix(self.net)
        return auto_lora_targets(self.adapter_candidates(), r, net_modules=dict(self.net.named_modules()),
                                 stack=stack)

    def linear_targets(self) -> list[str]:
        """``peft.targets=all-linear``: the linear layers inside the layer stack (not a pooler or a patch stem)."""
        stack, _ = stack_prefix(self.net)
        return stack_linear(self.adapter_candidates(), stack) if stack else super().linear_targets()

    def save_pretrained_parts(self, folder: Path) -> None:
        """Config + tokenizer or image processor files, so a run directory rebuilds the network offline."""
        folder.mkdir(parents=True, exist_ok=True)
        self.net.config.save_pretrained(folder)
        self.preprocessor.save_pretrained(folder)


def _passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def _replaced_forward(module: nn.Module, fn: Any):
    """``module`` computes ``fn`` instead of its forward for the duration (an instance attribute shadows
    the class's method; hooks still run)."""
    module.forward = fn
    try:
        yield
    finally:
        del module.forward
