"""Built-in models; configurations build them with ``hydra.utils.instantiate`` from ``_target_``.

``cifar_resnet(depth)`` lives in :mod:`prune_cli.models.cifar_resnet` (not re-exported: the
function would shadow its own module).
"""

from prune_cli.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from prune_cli.models.lenet import LeNet300100
from prune_cli.models.vgg import CifarVGG, cifar_vgg

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "LeNet300100",
    "PadShortcut",
    "cifar_vgg",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]
