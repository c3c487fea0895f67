"""Built-in models; configurations build them with ``hydra.utils.instantiate`` from ``_target_``.

``cifar_resnet(depth)`` lives in :mod:`prune_cli.models.cifar_resnet` (not re-exported: the
function would shadow its own module).
"""

from typing import Any

from torch import nn

from prune_cli.errors import ConfigError, first_line, import_object
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
    "build_model",
    "cifar_vgg",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


def build_model(net: Any) -> nn.Module:
    """The model a ``model.net`` node describes (``_target_`` and its arguments), on the CPU.

    The one place prune-cli builds a model (runs, checks, export): a target that cannot be
    imported or built is a :class:`~prune_cli.errors.ConfigError` naming ``model.net``.
    """
    from hydra.utils import instantiate

    target = net.get("_target_") if net is not None else None
    if not target:
        raise ConfigError("model.net._target_: missing; name a model class or function")
    try:
        import_object(str(target))
    except ImportError as e:
        raise ConfigError(f"model.net._target_={target}: cannot be imported ({e})") from e
    try:
        model = instantiate(net)
    except Exception as e:  # noqa: BLE001 - instantiate wraps argument errors and the model's own
        raise ConfigError(
            f"model.net: cannot build {target} ({first_line(e.__cause__ or e)})"
        ) from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.net._target_={target}: returned {type(model).__name__}, not a torch module"
        )
    return model
