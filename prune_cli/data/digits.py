"""scikit-learn's bundled handwritten digits: 1,797 real 8×8 images, available offline."""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from prune_cli.data.base import ArrayDataset, DataError


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `load_digits()` images (N, 8, 8) and targets, read from the file it ships
    (`sklearn/datasets/data/digits.csv.gz`) without importing scikit-learn, seconds of every
    job's start; through `load_digits()` where that file is not found."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(roots))) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if path is None or not path.is_file():
        import sklearn.datasets

        bunch = sklearn.datasets.load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's `utils.extmath._approximate_mode` (1.9), the same draws from ``rng``."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Sorted train and test indices of `sklearn.model_selection.train_test_split(...,
    test_size=test_fraction, stratify=y, random_state=seed)`: the same sets, drawn the same way
    (StratifiedShuffleSplit's first split; tests/test_data.py compares them with scikit-learn's).
    The split of a run is thus a function of prune-cli's code, not of the installed version."""
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    classes, y_indices, counts = np.unique(y, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        members = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ArrayDataset:
    """The digits set as uint8 (N, 1, 8, 8) with a stratified train/test split that is a pure
    function of (test_fraction, split_seed); mean/std come from the train split."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"dataset.test_fraction={test_fraction}: must be in (0, 1)")
    images, target = _digits()
    # Pixel values are 0..16; map them onto the usual 0..255 range.
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, split_seed)
    x_train = x[train_idx]
    y_train = y[train_idx]
    x_test = x[test_idx]
    y_test = y[test_idx]
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
