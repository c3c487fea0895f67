"""scikit-learn's bundled handwritten digits: 1,797 real 8×8 images, available offline."""

from __future__ import annotations

import numpy as np
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split

from prune_cli.data.base import ArrayDataset, DataError


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ArrayDataset:
    """The digits set as uint8 (N, 1, 8, 8) with a stratified train/test split that is a pure
    function of (test_fraction, split_seed); mean/std come from the train split."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"dataset.test_fraction={test_fraction}: must be in (0, 1)")
    bunch = sklearn.datasets.load_digits()
    # Pixel values are 0..16; map them onto the usual 0..255 range.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=split_seed
    )
    x_train = x[np.sort(train_idx)]
    y_train = y[np.sort(train_idx)]
    x_test = x[np.sort(test_idx)]
    y_test = y[np.sort(test_idx)]
    scaled = x_train.astype(np.float64) / 255.0
    return ArrayDataset(
        name="digits",
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        num_classes=10,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
    )
