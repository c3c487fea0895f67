"""The data layer: loaders that return an ArrayDataset, and DeviceData that batches it on a device.

A dataset config is a Hydra node with `_target_` naming a loader (e.g.
`prune_cli.data.cifar.load_cifar10`); `build_data` instantiates it and wraps the result.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prune_cli.data.base import ArrayDataset, BatchSource, DataError, DeviceData
from prune_cli.errors import import_object, one_line

__all__ = ["ArrayDataset", "BatchSource", "DataError", "DeviceData", "build_data"]


def build_data(
    loader_cfg: DictConfig | Mapping[str, Any],
    device: torch.device | str,
    augment: bool,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    *,
    workers: int = 0,
    val_fraction: float | None = None,
    split: str | None = None,
    split_seed: int | None = None,
) -> BatchSource:
    """Instantiate the loader named by `loader_cfg._target_` and return a batch source.

    An ArrayDataset is wrapped in DeviceData on `device`; an object that already implements the
    BatchSource interface (e.g. a DataLoader-backed ImageNet source) is returned as is. A target
    that cannot be imported, or a loader failure, raises DataError with one line.

    `val_fraction` (``dataset.val_fraction``; null or 0: none) holds out that part of the
    training set for validation, drawn by `split` (``stratified`` when null, or ``random``) with
    `split_seed` (0 when null); see :func:`prune_cli.data.base.split_indices`. The source's
    `n_train` and training batches are then the rest, `val_batches` the held-out part.
    """
    cfg = loader_cfg if isinstance(loader_cfg, DictConfig) else OmegaConf.create(dict(loader_cfg))
    target = cfg.get("_target_")
    if not target:
        raise DataError(
            "dataset.loader._target_ is missing: name a loader such as prune_cli.data.digits.load_digits"
        )
    try:
        fn = import_object(str(target))
    except ImportError as e:
        raise DataError(f"dataset.loader._target_={target}: cannot be imported ({e})") from e
    try:
        # Loaders take plain Python values (tuples, lists), not OmegaConf containers.
        # where the batches go, passed only to loaders that build their own batch source
        runtime = {
            "device": device,
            "rank": rank,
            "world_size": world_size,
            "channels_last": channels_last,
            "workers": workers,
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
        obj = DeviceData(
            obj, device, augment, rank=rank, world_size=world_size, channels_last=channels_last
        )
    if isinstance(obj, BatchSource):
        if val_fraction:
            if not callable(getattr(obj, "hold_out", None)):
                raise DataError(
                    f"dataset.val_fraction={val_fraction}: the batch source of {target} cannot hold"
                    " out a validation split (it has no hold_out method)"
                )
            split = "stratified" if split is None else split
            obj.hold_out(float(val_fraction), str(split), 0 if split_seed is None else split_seed)
        return obj
    raise DataError(
        f"dataset.loader._target_={target}: returned {type(obj).__name__}, expected an ArrayDataset or a batch source"
    )
