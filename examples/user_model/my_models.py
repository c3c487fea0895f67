"""A user's own network: any nn.Module works; prune-cli prunes its conv and linear weights."""

from __future__ import annotations

from torch import nn


class TinyConvNet(nn.Module):
    """Two 3x3 convolutions and a linear classifier."""

    def __init__(self, input_shape: list[int], num_classes: int, width: int = 16):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
