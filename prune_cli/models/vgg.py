"""CIFAR VGG as in OpenLTH's ``cifar_vgg_{11,13,16,19}`` (used by Renda et al. 2020).

Each number in the plan is a 3×3 conv (with bias, as in OpenLTH) + BN + ReLU, ``"M"`` a 2×2
max-pool; there is no pool after the last conv block, so a 32×32 input leaves a 2×2 map that
AvgPool2d(2) reduces to 512 features for the single linear classifier ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.models.init import kaiming_normal_init

PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}


class ConvModule(nn.Module):
    """conv3×3 (``conv``) → optional BN (``bn``) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """``layers`` (conv modules and max-pools of ``plan``) → AvgPool2d(2) → flatten → ``fc``."""

    def __init__(
        self, plan: list[int | str], num_classes: int = 10, batch_norm: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(channels, int(spec), batch_norm))
                channels = int(spec)
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(channels, num_classes)
        self.apply(kaiming_normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(x))
        return self.fc(x.flatten(1))


def cifar_vgg(depth: int = 16, num_classes: int = 10, batch_norm: bool = True) -> CifarVGG:
    """OpenLTH's CIFAR VGG of ``depth`` 11, 13, 16 or 19 (ValueError otherwise) for 32×32 inputs."""
    if depth not in PLANS:
        raise ValueError(f"CIFAR VGG depth must be one of {sorted(PLANS)}; got depth={depth}")
    return CifarVGG(PLANS[depth], num_classes=num_classes, batch_norm=batch_norm)
