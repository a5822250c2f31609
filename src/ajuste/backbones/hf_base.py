"""What every Hugging Face backbone shares, text or image: the network is ``AutoModel`` (no task head), the
pooling and the linear classifier are ours, and the layer groups and LoRA targets come from the network's
structure (its stack of transformer layers or stages), never from module names.

The network's own pooler, when it has parameters (BERT's and ViT's dense + tanh on the first token), is
unused by our pooling and kept frozen (it would otherwise sit in the optimizer with no gradient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ajuste.backbones.adapters import auto_lora_targets, stack_linear
from ajuste.backbones.base import Backbone, LayerGroup


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
