"""The data layer: loaders that return an ArrayDataset, and DeviceData that batches it on a device.

A dataset config is a Hydra node with `_target_` naming a loader (e.g.
`prune_cli.data.cifar.load_cifar10`); `build_data` instantiates it and wraps the result.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prune_cli.data.base import ArrayDataset, BatchSource, DataError, DeviceData
from prune_cli.data.files import one_line

__all__ = ["ArrayDataset", "BatchSource", "DataError", "DeviceData", "build_data"]


def _locate(path: str) -> Any:
    """Import the object at dotted `path` (longest importable module prefix, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Only a missing prefix means "try a shorter one"; a missing dependency is the error.
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def build_data(
    loader_cfg: DictConfig | Mapping[str, Any],
    device: torch.device | str,
    augment: bool,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> BatchSource:
    """Instantiate the loader named by `loader_cfg._target_` and return a batch source.

    An ArrayDataset is wrapped in DeviceData on `device`; an object that already implements the
    BatchSource interface (e.g. a DataLoader-backed ImageNet source) is returned as is. A target
    that cannot be imported, or a loader failure, raises DataError with one line.
    """
    cfg = loader_cfg if isinstance(loader_cfg, DictConfig) else OmegaConf.create(dict(loader_cfg))
    target = cfg.get("_target_")
    if not target:
        raise DataError(
            "dataset.loader._target_ is missing: name a loader such as prune_cli.data.digits.load_digits"
        )
    try:
        fn = _locate(str(target))
    except Exception as e:
        raise DataError(
            f"dataset.loader._target_={target}: cannot be imported ({one_line(e)})"
        ) from e
    try:
        # Loaders take plain Python values (tuples, lists), not OmegaConf containers.
        # where the batches go, passed only to loaders that build their own batch source
        runtime = {
            "device": device,
            "rank": rank,
            "world_size": world_size,
            "channels_last": channels_last,
        }
        accepted = inspect.signature(fn).parameters
        obj = instantiate(
            cfg, _convert_="all", **{k: v for k, v in runtime.items() if k in accepted}
        )
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise DataError(f"dataset.loader._target_={target}: {one_line(e)}") from e
    if isinstance(obj, ArrayDataset):
        return DeviceData(
            obj, device, augment, rank=rank, world_size=world_size, channels_last=channels_last
        )
    if isinstance(obj, BatchSource):
        return obj
    raise DataError(
        f"dataset.loader._target_={target}: returned {type(obj).__name__}, expected an ArrayDataset or a batch source"
    )
