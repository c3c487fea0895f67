"""MNIST from the official idx files (plain or .gz), parsed with numpy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from prune_cli.data.base import ArrayDataset, DataError
from prune_cli.data.files import download, one_line

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# md5 of the official .gz files.
FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
MEAN = (0.1307,)
STD = (0.3081,)


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx image (magic 2051 → uint8 (n, rows, cols)) or label (magic 2049 → uint8 (n,))
    file, gzipped when the name ends in .gz; a bad magic number or short file raises DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({one_line(e)})") from e
    if len(raw) < 8:
        raise DataError(f"{path}: truncated idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[0:4], "big")
    if magic == IMAGES_MAGIC:
        header = 16
        if len(raw) < header:
            raise DataError(f"{path}: truncated idx file ({len(raw)} bytes)")
        dims = tuple(int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    elif magic == LABELS_MAGIC:
        header = 8
        dims = (int.from_bytes(raw[4:8], "big"),)
    else:
        raise DataError(
            f"{path}: bad idx magic number {magic} (expected {IMAGES_MAGIC} images or {LABELS_MAGIC} labels)"
        )
    size = int(np.prod(dims))
    if len(raw) < header + size:
        raise DataError(
            f"{path}: truncated idx file ({len(raw) - header} of {size} data bytes for shape {dims})"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _fetch(stem: str, md5: str, raw_dir: Path) -> Path:
    dest = raw_dir / (stem + ".gz")
    errors = []
    for mirror in MIRRORS:
        try:
            download(mirror + dest.name, dest, md5)
            return dest
        except Exception as e:
            errors.append(f"{mirror}: {one_line(e)}")
    raise DataError("; ".join(errors))


def _pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected an idx image file (magic {IMAGES_MAGIC})")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected an idx label file (magic {LABELS_MAGIC})")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels outside [0, 10)")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(root: str, download: bool = True) -> ArrayDataset:
    """MNIST (60,000 train / 10,000 test, 1×28×28 uint8) from the four official idx files.

    Each file is looked up (plain or .gz) in `root/MNIST/raw/`, then in `root/`; missing ones are
    downloaded (md5-checked) into `root/MNIST/raw/` when `download`. Missing or malformed files
    raise DataError with one line naming the path.
    """
    root_path = Path(root).expanduser()
    paths: dict[str, Path] = {}
    for stem, md5 in FILES.items():
        found = _find(root_path, stem)
        if found is None:
            expected = f"expected {stem}[.gz] in {root_path / 'MNIST' / 'raw'} or {root_path}"
            if not download:
                raise DataError(
                    f"dataset.root={root_path}: MNIST not found ({expected}) and download=false"
                )
            try:
                found = _fetch(stem, md5, root_path / "MNIST" / "raw")
            except Exception as e:
                raise DataError(
                    f"dataset.root={root_path}: MNIST not found ({expected}) and download failed: {one_line(e)}"
                ) from e
        paths[stem] = found
    x_train, y_train = _pair(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"])
    x_test, y_test = _pair(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"])
    return ArrayDataset("mnist", x_train, y_train, x_test, y_test, 10, MEAN, STD)
