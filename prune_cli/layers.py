"""What every part of prune-cli means by a weight layer, and a safe way to run a model in
eval mode: one definition each (costs, pruning, channel removal and export share them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
"""Convolutions (any dimension, transposed included) and linear layers: the layers whose
weights are pruned and whose multiply-accumulates are counted."""


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules whose weight is a parameter, by qualified name, in model order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, WEIGHT_LAYERS) and isinstance(module.weight, nn.Parameter)
    }


@contextlib.contextmanager
def modes_kept(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval (``training=False``) or train mode, or as it is
    (``None``), and give every submodule its own train/eval flag back afterwards (also on
    error: a model whose submodules differ in mode, e.g. frozen batch norms, stays as it was)."""
    modes = {m: m.training for m in model.modules()}
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for m, flag in modes.items():
            m.training = flag
