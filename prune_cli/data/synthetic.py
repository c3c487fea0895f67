"""Learnable synthetic image data for tests and benchmarks (no files, no network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prune_cli.data.base import ArrayDataset, DataError


def make_class_images(
    n: int, num_classes: int, shape: Sequence[int], g: torch.Generator, templates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images: each is its class's template plus Gaussian noise, clipped to 0..255;
    labels cycle through the classes so every class is present whenever n >= num_classes."""
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    noise = torch.randn((n, *shape), generator=g) * 40.0
    x = (templates[y] + noise).round().clamp(0, 255).to(torch.uint8)
    return x, y.to(torch.int64)


def load_synthetic(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    shape: Sequence[int] = (3, 32, 32),
    seed: int = 0,
) -> ArrayDataset:
    """CIFAR-shaped (by default) uint8 data that a small network can learn: every class has a
    fixed random template and a sample is template + noise. A pure function of its arguments."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1 or n_train < 1 or n_test < 1 or num_classes < 2:
        raise DataError(
            f"synthetic: need shape (C, H, W), n_train, n_test >= 1 and num_classes >= 2; got "
            f"shape={shape}, n_train={n_train}, n_test={n_test}, num_classes={num_classes}"
        )
    g = torch.Generator().manual_seed(int(seed))
    # Templates in a mid range so the noise is rarely clipped away.
    templates = torch.rand((num_classes, *shape), generator=g) * 160.0 + 48.0
    x_train, y_train = make_class_images(n_train, num_classes, shape, g, templates)
    x_test, y_test = make_class_images(n_test, num_classes, shape, g, templates)
    scaled = x_train.double() / 255.0
    dims = (0, 2, 3)
    return ArrayDataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=tuple(float(v) for v in scaled.mean(dim=dims)),
        std=tuple(float(v) for v in scaled.std(dim=dims).clamp_min(1e-3)),
    )
