"""Writers of tiny dataset files in the official formats, for tests that cannot download.

Every image carries a learnable class signal (a fixed per-class template plus noise), so a tiny
training run on these files can beat chance.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def class_images(
    n: int, num_classes: int, shape: tuple[int, ...], rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images of `shape` with labels: class template (fixed by `seed`) + noise."""
    templates = np.random.default_rng(seed + 10_000).uniform(48, 208, size=(num_classes, *shape))
    labels = rng.permutation(np.arange(n) % num_classes)
    noise = rng.normal(0.0, 40.0, size=(n, *shape))
    images = np.clip(np.rint(templates[labels] + noise), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, name: str) -> dict:
    return {
        b"batch_label": name.encode(),
        label_key: [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }


def _pack(folder: Path, archive: Path) -> Path:
    """Tar+gzip `folder` as `archive` (top-level entry = the folder's name) and remove the folder."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return archive


def write_cifar10(
    root: str | Path,
    n_per_batch: int = 20,
    n_test: int = 20,
    as_archive: bool = False,
    seed: int = 0,
) -> Path:
    """Write CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) under `root`, as
    `cifar-10-batches-py/` or, with `as_archive`, as `cifar-10-python.tar.gz`; return that path."""
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        x, y = class_images(n_per_batch, 10, (3, 32, 32), rng, seed)
        _pickle(
            folder / f"data_batch_{i}", _cifar_batch(x, y, b"labels", f"training batch {i} of 5")
        )
    x, y = class_images(n_test, 10, (3, 32, 32), rng, seed)
    _pickle(folder / "test_batch", _cifar_batch(x, y, b"labels", "testing batch 1 of 1"))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _pickle(
        folder / "batches.meta",
        {
            b"label_names": [n.encode() for n in names],
            b"num_cases_per_batch": n_per_batch,
            b"num_vis": 3072,
        },
    )
    return _pack(folder, root / "cifar-10-python.tar.gz") if as_archive else folder


def write_cifar100(
    root: str | Path, n_train: int = 200, n_test: int = 100, as_archive: bool = False, seed: int = 0
) -> Path:
    """Write CIFAR-100 python files (train, test, meta; fine and coarse labels) under `root`, as
    `cifar-100-python/` or, with `as_archive`, as `cifar-100-python.tar.gz`; return that path."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = class_images(n, 100, (3, 32, 32), rng, seed)
        batch = _cifar_batch(x, y, b"fine_labels", split)
        batch[b"coarse_labels"] = [int(v) // 5 for v in y]
        _pickle(folder / split, batch)
    _pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
        },
    )
    return _pack(folder, root / "cifar-100-python.tar.gz") if as_archive else folder


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8, (n,) labels or (n, rows, cols) images) in the idx format."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(
    root: str | Path,
    n_train: int = 100,
    n_test: int = 50,
    gz: bool = False,
    flat: bool = False,
    seed: int = 0,
) -> Path:
    """Write the four MNIST idx files (gzipped when `gz`) into `root/MNIST/raw/` (or `root/` when
    `flat`) and return that folder."""
    folder = Path(root) if flat else Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = class_images(n, 10, (28, 28), rng, seed)
        for kind, array in (("images-idx3", x), ("labels-idx1", y.astype(np.uint8))):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                buf = io.BytesIO()
                with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
                    f.write(data)
                (folder / (name + ".gz")).write_bytes(buf.getvalue())
            else:
                (folder / name).write_bytes(data)
    return folder
