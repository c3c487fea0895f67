"""In-memory datasets and device-resident, on-device-augmented batching."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from prune_cli.errors import DataError


@dataclass
class ArrayDataset:
    """A whole dataset held in memory as tensors (CPU until .to())."""

    name: str
    x_train: torch.Tensor  # uint8, (N, C, H, W)
    y_train: torch.Tensor  # int64, (N,)
    x_test: torch.Tensor  # uint8
    y_test: torch.Tensor  # int64
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale (x/255)
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(
                    f"{self.name}: x_{split} must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"{self.name}: y_{split} must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
                )
        channels = self.x_train.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{self.name}: mean/std need {channels} channel values")


@runtime_checkable
class BatchSource(Protocol):
    """What the training loop needs from a data source (DeviceData, or e.g. an ImageNet loader).

    A source that can hold out a validation split also has ``n_val`` (0 until split),
    ``hold_out(fraction, split, seed)`` and ``val_batches(batch_size)`` (like ``test_batches``);
    :func:`prune_cli.data.build_data` refuses ``dataset.val_fraction`` for a source without them.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    n_train: int
    n_test: int

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def train_batches(
        self, batch_size: int, epoch_seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def test_batches(
        self, batch_size: int = 1024
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class EpochPlan(NamedTuple):
    """Everything random about one training epoch, on the CPU, one entry per position in the epoch."""

    perm: torch.Tensor  # int64 (N,): sample index at each position
    dy: torch.Tensor | None  # int64 (N,): crop top offset in the padded image, in [0, 2*pad]
    dx: torch.Tensor | None  # int64 (N,): crop left offset in the padded image, in [0, 2*pad]
    flip: torch.Tensor | None  # bool (N,): mirror horizontally after cropping


def draw_epoch(n: int, epoch_seed: int, augment: bool, pad: int) -> EpochPlan:
    """Draw one epoch's order and augmentation from a CPU generator seeded with `epoch_seed`.

    The result is a pure function of (n, epoch_seed, augment, pad): the permutation is drawn
    first, so it is the same with and without augmentation; then crop offsets, then flips.
    """
    g = torch.Generator().manual_seed(int(epoch_seed))
    perm = torch.randperm(n, generator=g)
    if not augment:
        return EpochPlan(perm, None, None, None)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool()
    return EpochPlan(perm, dy, dx, flip)


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Zero-pad `x` (B, C, H, W) by `pad` pixels, crop H×W at per-sample (dy, dx), then mirror
    the samples where `flip` is true; one gather, same dtype as `x`."""
    b, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H)
    # A mirrored crop reads its columns right to left.
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    # Flat pixel indices shared by all channels: one gather is ~3x faster than 4-D indexing.
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(xp.reshape(b, c, hp * wp), 2, idx).view(b, c, h, w)


def normalization(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` on ``device`` such that ``x * scale + shift == (x / 255 - mean) / std``
    for uint8 images: the normalisation folded into one multiply-add."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (255.0 * s)).to(device), (-m / s).to(device)


def global_steps(n_train: int, batch_size: int) -> int:
    """Number of global batches in one epoch: ceil(n_train / batch_size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return math.ceil(n_train / batch_size)


# ----------------------------------------------------------------------------------------------
# The validation split: a held-out part of the training set
# ----------------------------------------------------------------------------------------------

SPLITS = ("stratified", "random")
"""How :func:`split_indices` draws the held-out part (``dataset.split``)."""


def holdout_size(n: int, fraction: float) -> int:
    """How many of ``n`` training samples a ``fraction`` holds out: ``n - int((1 - fraction) * n)``
    (Zimmer et al.'s ``train_size = int(0.9 * n)``, the rest validation)."""
    return n - int((1.0 - fraction) * n)


def split_indices(
    labels: torch.Tensor, fraction: float, split: str = "stratified", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: int64 index tensors into ``labels`` (the training set's, CPU) that hold
    out :func:`holdout_size` samples for validation, a pure function of (labels, fraction, split,
    seed); disjoint, and together every index once.

    ``random``: exactly ``torch.utils.data.random_split(range(n), [n - v, v],
    generator=torch.Generator().manual_seed(seed))`` (the indices in that order), so that a
    paper's split is reproduced. ``stratified``: each class keeps its share of the held-out part
    (class quotas rounded by largest remainder, ties to the smaller label; a class's samples
    drawn in a seeded permutation), indices in increasing order. Values no split can honour
    raise :class:`DataError` naming ``dataset.val_fraction`` or ``dataset.split``.
    """
    n = int(labels.shape[0])
    if not 0.0 < fraction < 1.0:
        raise DataError(f"dataset.val_fraction={fraction}: must be in (0, 1) to hold out samples")
    if split not in SPLITS:
        raise DataError(f"dataset.split={split}: expected {' or '.join(SPLITS)}")
    v = holdout_size(n, fraction)
    if v < 1 or v >= n:
        which = "no sample" if v < 1 else "every sample"
        raise DataError(
            f"dataset.val_fraction={fraction}: holds out {which} of the {n} training samples"
        )
    g = torch.Generator().manual_seed(int(seed))
    if split == "random":
        perm = torch.randperm(n, generator=g)  # what random_split draws
        return perm[: n - v], perm[n - v :]
    classes, counts = torch.unique(labels.cpu(), sorted=True, return_counts=True)
    quota = [c * v / n for c in counts.tolist()]
    take = [math.floor(q) for q in quota]
    by_remainder = sorted(range(len(take)), key=lambda i: (take[i] - quota[i], i))
    for i in by_remainder[: v - sum(take)]:
        take[i] += 1
    for c, k, t in zip(classes.tolist(), counts.tolist(), take):
        if t >= k:
            raise DataError(
                f"dataset.val_fraction={fraction}: the stratified split leaves class {c} no"
                f" training sample (it has {k}); hold out less or use dataset.split=random"
            )
    # the samples of each class in index order, classes in label order
    by_class = torch.split(torch.argsort(labels.cpu(), stable=True), counts.tolist())
    train, val = [], []
    for members, t in zip(by_class, take):
        drawn = members[torch.randperm(len(members), generator=g)]
        val.append(drawn[:t])
        train.append(drawn[t:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class DeviceData:
    """Device-resident batches: the whole set lives on `device` as uint8; batches are cut by index
    and augmented there (random crop with `pad` pixels of zero padding + horizontal flip), no workers."""

    def __init__(
        self,
        data: ArrayDataset,
        device: torch.device | str,
        augment: bool,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if pad < 0:
            raise ValueError(f"pad={pad} must be >= 0")
        self.device = torch.device(device)
        self.augment = augment
        self.pad = pad
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.name = data.name
        self.num_classes = data.num_classes
        self.input_shape: tuple[int, ...] = tuple(data.x_train.shape[1:])
        self.n_train = int(data.x_train.shape[0])
        self.n_test = int(data.x_test.shape[0])
        self.x_train = data.x_train.to(self.device).contiguous()
        self.y_train = data.y_train.to(self.device)
        self.x_test = data.x_test.to(self.device).contiguous()
        self.y_test = data.y_test.to(self.device)
        # the held-out validation part of the training set (none until hold_out)
        self.n_val = 0
        self.x_val = self.x_train[:0]
        self.y_val = self.y_train[:0]
        self._scale, self._shift = normalization(data.mean, data.std, self.device)

    def hold_out(self, fraction: float, split: str = "stratified", seed: int = 0) -> None:
        """Hold out part of the training set for validation (:func:`split_indices`): the
        training batches come from the rest only, :meth:`val_batches` yields the held-out part."""
        if self.n_val:
            raise ValueError(f"{self.name}: a validation split is already held out")
        train, val = split_indices(self.y_train.cpu(), fraction, split, seed)
        train, val = train.to(self.device), val.to(self.device)
        self.x_val, self.y_val = self.x_train[val].contiguous(), self.y_train[val]
        self.x_train, self.y_train = self.x_train[train].contiguous(), self.y_train[train]
        self.n_train, self.n_val = int(train.numel()), int(val.numel())

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of global batches in one epoch: ceil(n_train / batch_size)."""
        return global_steps(self.n_train, batch_size)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self._shift, x.float(), self._scale)
        if self.channels_last:
            return out.contiguous(memory_format=torch.channels_last)
        return out

    def _shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous slice of global positions [start, stop) (sizes differ by <= 1)."""
        n = stop - start
        lo = start + (n * self.rank) // self.world_size
        hi = start + (n * (self.rank + 1)) // self.world_size
        return lo, hi

    def train_batches(
        self, batch_size: int, epoch_seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `steps_per_epoch(batch_size)` (x, y) batches of one epoch, in an order and with an
        augmentation fixed by `epoch_seed` alone (same on every device and every rank).

        x is normalized float32 (B, C, H, W) on the device, y int64. `batch_size` is the global
        batch; with world_size > 1 this rank gets its contiguous slice of each global batch, so
        concatenating the ranks' batches in rank order gives the world_size=1 batch.
        """
        steps = self.steps_per_epoch(batch_size)
        plan = draw_epoch(self.n_train, epoch_seed, self.augment, self.pad)
        perm = plan.perm.to(self.device)
        if self.augment:
            dy, dx, flip = (t.to(self.device) for t in (plan.dy, plan.dx, plan.flip))
        for step in range(steps):
            lo, hi = self._shard(step * batch_size, min((step + 1) * batch_size, self.n_train))
            idx = perm[lo:hi]
            x = self.x_train[idx]
            if self.augment:
                x = crop_flip(x, dy[lo:hi], dx[lo:hi], flip[lo:hi], self.pad)
            yield self._normalize(x), self.y_train[idx]

    def test_batches(self, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the whole test set in order, normalized, without augmentation (every rank sees
        all of it)."""
        return self._in_order(self.x_test, self.y_test, batch_size)

    def val_batches(self, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the held-out validation part like the test set: in order, normalized, without
        augmentation, all of it on every rank (empty without :meth:`hold_out`)."""
        return self._in_order(self.x_val, self.y_val, batch_size)

    def _in_order(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        for start in range(0, y.shape[0], batch_size):
            stop = start + batch_size
            yield self._normalize(x[start:stop]), y[start:stop]
