"""CIFAR-10 / CIFAR-100 from the official python-pickle archives."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prune_cli.data.base import ArrayDataset, DataError
from prune_cli.data.files import check_md5, download, extract_tar, one_line


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    title: str
    url: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = _CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key=b"labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = _CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    label_key=b"fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


# ----------------------------------------------------------------------------------------------
# A pickle reader that runs no code
# ----------------------------------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """The pickle asks for a callable outside the allow-list (``name`` is ``module.name``)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _numpy_attr(module: str, name: str):
    """``numpy._core.<module>.<name>`` (numpy 2), else ``numpy.core.<module>.<name>`` (numpy 1)."""
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, module):
        core = np.core
    return getattr(getattr(core, module), name)


def _reconstruct(subtype, shape, dtype):
    # how an ndarray pickles (protocols 0-4): an empty array of exactly numpy.ndarray, filled by
    # its __setstate__ with the raw bytes
    if subtype is not np.ndarray:
        raise _Refused(f"numpy _reconstruct of {subtype!r}")
    return _numpy_attr("multiarray", "_reconstruct")(subtype, shape, dtype)


def _frombuffer(buf, dtype, shape, order):
    # how an ndarray pickles with protocol 5
    return _numpy_attr("numeric", "_frombuffer")(buf, _dtype(dtype), shape, order)


def _dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:  # an object array would hold whatever the pickle builds
        raise _Refused("numpy.dtype of Python objects")
    return dt


def _latin1(text, encoding="latin1"):
    # how Python 3 pickles bytes with protocol 2: _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


_PLAIN = {"dict": dict, "list": list, "bytes": bytes, "str": str, "int": int}
_ALLOWED = {
    **{(m, n): t for m in ("builtins", "__builtin__") for n, t in _PLAIN.items()},
    ("_codecs", "encode"): _latin1,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    **{(f"numpy.{c}.multiarray", "_reconstruct"): _reconstruct for c in ("core", "_core")},
    **{(f"numpy.{c}.numeric", "_frombuffer"): _frombuffer for c in ("core", "_core")},
}


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, strings, numbers and numpy arrays of plain dtypes, nothing
    else: a pickle that would call any other function (e.g. ``os.system``) is refused before
    anything of it runs."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def load_plain_pickle(path: Path):
    """The object pickled in ``path``, built by :class:`_PlainUnpickler` (Python 2 strings are
    read as bytes, as the official CIFAR batches need)."""
    with open(path, "rb") as f:
        return _PlainUnpickler(f, encoding="bytes").load()


def _read_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = load_plain_pickle(path)
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[spec.label_key], dtype=np.int64)
    except FileNotFoundError as e:
        raise DataError(
            f"{path}: missing {spec.title} file (incomplete {spec.folder}/ folder?)"
        ) from e
    except _Refused as e:
        raise DataError(
            f"{path}: not a {spec.title} batch: its pickle calls {e.name}; prune-cli reads only"
            " plain data and numpy arrays from dataset pickles and never runs code from them"
        ) from e
    except Exception as e:
        raise DataError(f"{path}: not a {spec.title} batch ({one_line(e)})") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: expected data (n, 3072) and n labels, got {data.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels outside [0, {spec.num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _read_folder(folder: Path, spec: _CifarSpec) -> ArrayDataset:
    train = [_read_batch(folder / f, spec) for f in spec.train_files]
    x_test, y_test = _read_batch(folder / spec.test_file, spec)
    return ArrayDataset(
        name=spec.name,
        x_train=torch.from_numpy(np.concatenate([x for x, _ in train])),
        y_train=torch.from_numpy(np.concatenate([y for _, y in train])),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
    )


def _load(spec: _CifarSpec, root: str, download_ok: bool, verify_md5: bool) -> ArrayDataset:
    root_path = Path(root).expanduser()
    where = f"dataset.root={root_path}"
    # Accept both root/ holding the extracted folder and root/ being that folder.
    if (root_path / spec.folder).is_dir():
        return _read_folder(root_path / spec.folder, spec)
    if all((root_path / f).is_file() for f in (spec.train_files[0], spec.test_file)):
        return _read_folder(root_path, spec)
    archive = root_path / spec.archive
    expected = f"expected {spec.folder}/ or {spec.archive}"
    if not archive.is_file():
        if not download_ok:
            raise DataError(f"{where}: {spec.title} not found ({expected}) and download=false")
        try:
            download(spec.url, archive, spec.md5)
        except Exception as e:
            raise DataError(
                f"{where}: {spec.title} not found ({expected}) and download failed: {one_line(e)}"
            ) from e
    elif verify_md5:
        check_md5(archive, spec.md5)
    return _read_folder(extract_tar(archive, spec.folder, root_path), spec)


def load_cifar10(root: str, download: bool = True, verify_md5: bool = True) -> ArrayDataset:
    """CIFAR-10 (50,000 train / 10,000 test, 3×32×32 uint8) from `root`.

    Looks for `cifar-10-batches-py/` (or `root` itself being it), then for
    `cifar-10-python.tar.gz` (md5-checked against the official one when `verify_md5`, then
    extracted), then downloads the official archive (always md5-checked) when `download`.
    Anything missing or unreadable raises DataError with one line naming the path.
    """
    return _load(CIFAR10, root, download, verify_md5)


def load_cifar100(root: str, download: bool = True, verify_md5: bool = True) -> ArrayDataset:
    """CIFAR-100 with fine labels (100 classes) from `root`; same lookup rules as load_cifar10
    with `cifar-100-python/` and `cifar-100-python.tar.gz`."""
    return _load(CIFAR100, root, download, verify_md5)
