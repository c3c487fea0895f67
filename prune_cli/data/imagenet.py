"""ImageNet (ILSVRC-2012) from the standard class-folder layout, through a DataLoader with workers.

`root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG` (the validation images sorted into class
folders, e.g. by the usual `valprep.sh`). Workers decode and crop to uint8; the device normalises,
so the host-to-device copy carries a quarter of the bytes of float32.

The training order and augmentation of an epoch are a pure function of `epoch_seed` (each sample
position gets its own RNG seed), so they do not depend on the number of workers or of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from prune_cli.data.base import DataError, global_steps, normalization, split_indices
from prune_cli.data.files import one_line

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class _SeededImages(Dataset):
    """An ImageFolder whose items are looked up as `index` or `(index, seed)`; with a seed the
    random transform runs under that seed, leaving the caller's global RNG untouched. With
    `indices`, item `i` is the folder's sample `indices[i]` (a part of the folder)."""

    def __init__(
        self, folder: datasets.ImageFolder, transform: Any, indices: list[int] | None = None
    ) -> None:
        self.folder = folder
        self.transform = transform
        self.indices = indices

    def __len__(self) -> int:
        return len(self.folder) if self.indices is None else len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.indices is not None:
            index = self.indices[index]
        path, target = self.folder.samples[index]
        image = self.folder.loader(path)
        if seed is None:
            return self.transform(image), target
        # torchvision's random transforms draw from the global RNG: fork it so the seed is local.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), target


class _EpochBatches:
    """Batch sampler of one training epoch on one rank: global batches of a seeded permutation,
    each cut into `world_size` contiguous slices (sizes differ by <= 1); this rank takes its own."""

    def __init__(self, n: int, batch_size: int, epoch_seed: int, rank: int, world_size: int):
        g = torch.Generator().manual_seed(int(epoch_seed))
        perm = torch.randperm(n, generator=g)
        seeds = torch.randint(0, 2**62, (n,), generator=g)
        self.keys = list(zip(perm.tolist(), seeds.tolist()))
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, self.n, self.batch_size):
            batch = self.keys[start : start + self.batch_size]
            if len(batch) < self.world_size:
                # A last batch smaller than the world would leave a rank empty (DDP would hang):
                # wrap around to the epoch's first samples, as DistributedSampler pads.
                batch = batch + self.keys[: self.world_size - len(batch)]
            lo = len(batch) * self.rank // self.world_size
            hi = len(batch) * (self.rank + 1) // self.world_size
            yield batch[lo:hi]


def _collate(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def train_transform(image_size: int, augment: bool = True, crop_fraction: float = 0.875) -> Any:
    """PIL image → uint8 (3, image_size, image_size): RandomResizedCrop + horizontal flip, or the
    evaluation transform when not `augment`."""
    if not augment:
        return eval_transform(image_size, crop_fraction)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )


def eval_transform(image_size: int, crop_fraction: float = 0.875) -> Any:
    """PIL image → uint8 (3, image_size, image_size), deterministic: resize the short side to
    round(image_size / crop_fraction) (256 for 224), then center-crop image_size."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size / crop_fraction)),
            transforms.CenterCrop(image_size),
            transforms.PILToTensor(),
        ]
    )


def _folder(root: Path, split: str) -> datasets.ImageFolder:
    path = root / split
    if not path.is_dir():
        raise DataError(
            f"{root}: no {split}/ folder (expected ImageNet's class-folder layout {split}/<wnid>/*.JPEG)"
        )
    try:
        return datasets.ImageFolder(str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read the class folders ({one_line(e)})") from e


class ImageFolderSource:
    """ImageNet from `root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG` as a BatchSource.

    Training: RandomResizedCrop(image_size) + horizontal flip (or the evaluation transform when
    not `augment`); evaluation: resize to round(image_size / crop_fraction), center-crop
    image_size. Both normalised with ImageNet's mean/std on `device` (CPU when None). Under DDP
    (`rank`, `world_size`) the training set is sharded per rank. A missing `train/` or `val/`, or
    unreadable class folders, raise DataError with one line naming the path.

    Training batches are this rank's slice of each global batch; evaluation runs the whole
    validation set on every rank (the loop's accuracy is not all-reduced, so each rank needs
    the full count).
    """

    def __init__(
        self,
        root: str | Path,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 8,
        image_size: int = 224,
        crop_fraction: float = 0.875,
        augment: bool = True,
        channels_last: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if workers < 0:
            raise ValueError(f"workers={workers} must be >= 0")
        self.root = Path(root).expanduser()
        train, val = _folder(self.root, "train"), _folder(self.root, "val")
        if val.classes != train.classes:
            missing = sorted(set(train.classes) ^ set(val.classes))[:3]
            raise DataError(
                f"{self.root}: train/ and val/ have different class folders (e.g. {', '.join(missing)})"
            )
        self.device = torch.device(device if device is not None else "cpu")
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.channels_last = channels_last
        self.name = "imagenet"
        self.num_classes = len(train.classes)
        self.input_shape: tuple[int, ...] = (3, image_size, image_size)
        self.n_train, self.n_test = len(train), len(val)
        self.train_set = _SeededImages(train, train_transform(image_size, augment, crop_fraction))
        self.test_set = _SeededImages(val, eval_transform(image_size, crop_fraction))
        self.n_val = 0  # the held-out part of train/ (none until hold_out)
        self.val_set = _SeededImages(train, self.test_set.transform, [])
        self._scale, self._shift = normalization(MEAN, STD, self.device)

    def hold_out(self, fraction: float, split: str = "stratified", seed: int = 0) -> None:
        """Hold out part of `train/`'s samples for validation (:func:`split_indices` of their
        class labels): training draws from the rest only, :meth:`val_batches` yields the held-out
        samples with the evaluation transform."""
        if self.n_val:
            raise ValueError(f"{self.root}: a validation split is already held out")
        folder = self.train_set.folder
        train, val = split_indices(torch.tensor(folder.targets), fraction, split, seed)
        self.train_set = _SeededImages(folder, self.train_set.transform, train.tolist())
        self.val_set = _SeededImages(folder, self.test_set.transform, val.tolist())
        self.n_train, self.n_val = len(self.train_set), len(self.val_set)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of global batches in one epoch: ceil(n_train / batch_size)."""
        return global_steps(self.n_train, batch_size)

    def _loader(self, dataset: Dataset, seed: int, **kwargs: Any) -> DataLoader:
        # A fresh loader per pass: worker start-up (~1 s) is negligible beside an ImageNet epoch.
        return DataLoader(
            dataset,
            num_workers=self.workers,
            # Its own generator: a DataLoader otherwise draws its base seed from the global RNG.
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
            prefetch_factor=4 if self.workers else None,
            **kwargs,
        )

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        out = torch.addcmul(self._shift, x.float(), self._scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out, y

    def train_batches(
        self, batch_size: int, epoch_seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `steps_per_epoch(batch_size)` (x, y) batches of one epoch, order and augmentation
        fixed by `epoch_seed` alone; x normalised float32 (B, 3, S, S) on the device, y int64.

        `batch_size` is the global batch: this rank gets its contiguous slice of each (about
        batch_size // world_size), so the ranks together see every sample of the epoch once.
        """
        sampler = _EpochBatches(self.n_train, batch_size, epoch_seed, self.rank, self.world_size)
        for x, y in self._loader(self.train_set, epoch_seed, batch_sampler=sampler):
            yield self._to_device(x, y)

    def test_batches(self, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the whole validation set in order with the evaluation transform (every rank sees
        all of it)."""
        return self._in_order(self.test_set, batch_size)

    def val_batches(self, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the held-out part of `train/` like the validation set (in order, evaluation
        transform, all of it on every rank; empty without :meth:`hold_out`)."""
        return self._in_order(self.val_set, batch_size)

    def _in_order(
        self, dataset: Dataset, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if len(dataset) == 0:
            return
        for x, y in self._loader(dataset, 0, batch_size=batch_size, shuffle=False):
            yield self._to_device(x, y)


load_imagenet = ImageFolderSource
"""The loader that `conf/dataset/imagenet.yaml` names: the BatchSource class itself."""
