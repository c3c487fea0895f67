"""Pruning: *pruners* decide how weights are removed (masks, or channels cut out of the network),
*criteria* decide which first. Both are named by ``_target_`` in the ``pruning`` config node, so a
user adds either from their own config directory; the runner only speaks the protocol of
:class:`~prune_cli.pruning.base.Pruner` (see :mod:`prune_cli.pruning.base`).

- :mod:`prune_cli.pruning.masks`: :class:`MaskPruner` (unstructured) and the masks it keeps.
- :mod:`prune_cli.pruning.channels`: :class:`ChannelPruner` (structured, through Torch-Pruning's
  dependency graph).
- :mod:`prune_cli.pruning.criteria`: the built-in score functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prune_cli.errors import ConfigError, first_line
from prune_cli.pruning.base import Network, Pruner, ScoreContext, criterion_name
from prune_cli.pruning.masks import MaskPruner, Masks, prunable_parameters

__all__ = [
    "MaskPruner",
    "Masks",
    "Network",
    "Pruner",
    "ScoreContext",
    "build_pruner",
    "criterion_name",
    "prunable_parameters",
]


def build_pruner(node: Mapping[str, Any]) -> Pruner:
    """The pruner the ``pruning`` config node names (``_target_``, with its criterion); one line
    naming the key when it cannot be built."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    target = node.get("_target_") if node is not None else None
    if not target:
        raise ConfigError(
            "pruning._target_: missing; name a pruner such as prune_cli.pruning.MaskPruner"
        )
    crit = node.get("criterion")
    if not isinstance(crit, Mapping) or not crit.get("_target_"):
        raise ConfigError("pruning.criterion._target_: missing; name a score function")
    cfg = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    _check_options(str(target), [str(k) for k in cfg if not str(k).startswith("_")])
    try:
        pruner = instantiate(cfg, _convert_="all")
    except Exception as e:  # noqa: BLE001 - instantiate wraps import and argument errors alike
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"pruning: cannot build {target} ({first_line(cause)})") from e
    if not isinstance(pruner, Pruner):
        raise ConfigError(f"pruning._target_={target}: not a prune_cli.pruning.Pruner")
    return pruner


def __getattr__(name: str):
    # the pruners of other kinds, importable as prune_cli.pruning.<Name> without loading their
    # dependencies (Torch-Pruning) for a run that does not use them
    if name == "ChannelPruner":
        from prune_cli.pruning.channels import ChannelPruner

        return ChannelPruner
    if name == "GradualMaskPruner":
        from prune_cli.pruning.gradual import GradualMaskPruner

        return GradualMaskPruner
    raise AttributeError(name)


def _check_options(target: str, keys: list[str]) -> None:
    """Every key of the pruning node is an argument of its pruner (one line naming the first
    that is not, with the ones that are)."""
    import inspect

    from prune_cli.errors import import_object

    try:
        cls = import_object(target)
    except ImportError as e:
        raise ConfigError(f"pruning._target_={target}: cannot be imported ({e})") from e
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in keys:
        if key not in params:
            known = ", ".join(k for k in params if k != "self")
            raise ConfigError(
                f"pruning.{key}: not an option of {target.rsplit('.', 1)[-1]} (options: {known});"
                " a preset that sets it may not fit this pruner"
            )
