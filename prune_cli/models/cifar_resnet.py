"""CIFAR ResNets of He et al. 2016 (section 4.2) with option-A (parameter-free) shortcuts.

Three stages of ``width``, ``2 * width`` and ``4 * width`` channels on 32×32, 16×16 and 8×8
feature maps, ``n = (depth - 2) / 6`` basic blocks per stage, global average pooling and a
linear classifier ``fc``. With ``width=16`` the parameter counts are those of the paper:
ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.models.init import kaiming_normal_init


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels; no parameters.

    The ``planes_out - planes_in`` new channels are split between the front and the back,
    as in the reference implementations (half on each side when the width doubles).
    """

    def __init__(self, planes_in: int, planes_out: int, stride: int) -> None:
        super().__init__()
        if planes_out < planes_in:
            raise ValueError(f"PadShortcut cannot shrink channels: {planes_in} -> {planes_out}")
        self.planes_in = planes_in
        self.planes_out = planes_out
        self.stride = stride
        self.pad_front = (planes_out - planes_in) // 2
        self.pad_back = planes_out - planes_in - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W, W, H, H, C, C)
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"{self.planes_in}, {self.planes_out}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x)."""

    def __init__(self, planes_in: int, planes_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(planes_in, planes_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes_out)
        self.conv2 = nn.Conv2d(planes_out, planes_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes_out)
        if stride != 1 or planes_in != planes_out:
            self.shortcut: nn.Module = PadShortcut(planes_in, planes_out, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv1-bn1 → ``layer1``..``layer3`` of ``blocks_per_stage`` BasicBlocks → avg-pool → ``fc``."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.depth = 6 * blocks_per_stage + 2
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, blocks_per_stage, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.fc = nn.Linear(4 * width, num_classes)
        self.apply(kaiming_normal_init)

    @staticmethod
    def _stage(planes_in: int, planes_out: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(planes_in, planes_out, stride)]
        layers += [BasicBlock(planes_out, planes_out, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...); ValueError otherwise."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 56, 110, ...); got depth={depth}"
        )
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, width=width)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters for 10 classes)."""
    return cifar_resnet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M parameters for 10 classes)."""
    return cifar_resnet(32, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-44 (0.66M parameters for 10 classes)."""
    return cifar_resnet(44, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (0.85M parameters for 10 classes)."""
    return cifar_resnet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-110 (1.7M parameters for 10 classes)."""
    return cifar_resnet(110, num_classes)
