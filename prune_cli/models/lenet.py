"""LeNet-300-100: the fully connected MNIST network of LeCun et al. 1998 used in pruning papers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prune_cli.models.init import kaiming_normal_init


class LeNet300100(nn.Module):
    """Flatten → Linear(prod(input_shape), 300) → ReLU → Linear(300, 100) → ReLU → ``fc``.

    ``input_shape`` is the shape of one example without the batch dimension, e.g. ``(1, 28, 28)``.
    The classifier is named ``fc`` so that configurations can exclude it from pruning by name.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        in_features = math.prod(self.input_shape)
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc = nn.Linear(100, num_classes)
        self.apply(kaiming_normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape, not view: a channels_last input is not contiguous in NCHW order
        x = x.reshape(x.shape[0], -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc(x)
