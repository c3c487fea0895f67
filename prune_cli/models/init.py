"""Weight initialisation shared by the built-in models."""

from __future__ import annotations

from torch import nn


def kaiming_normal_init(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights for every conv and linear layer.

    Meant for ``model.apply``. Biases and batch norm keep PyTorch's defaults, as in OpenLTH's
    ``kaiming_normal`` initializer and the reference CIFAR ResNet code.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
