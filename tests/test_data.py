"""The data layer: loaders on tiny official-format files, and device-resident batching."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import time

import numpy as np
import pytest
import sklearn.datasets
import torch
from datafiles import idx_bytes, write_cifar10, write_cifar100, write_mnist

from prune_cli.data import (
    ArrayDataset,
    BatchSource,
    DataError,
    DeviceData,
    build_data,
    cifar,
    mnist,
)
from prune_cli.data.base import draw_epoch
from prune_cli.data.digits import load_digits
from prune_cli.data.files import md5sum
from prune_cli.data.synthetic import load_synthetic

# A local port nobody listens on: connections are refused at once, no network needed.
REFUSED = "http://127.0.0.1:9/"


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def unnormalize(x: torch.Tensor, data: ArrayDataset) -> torch.Tensor:
    """Normalized float batch back to uint8 pixels."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return ((x.cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- digits


def test_digits_split_is_stratified_fixed_and_disjoint():
    d = load_digits(test_fraction=0.2, split_seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.uint8
    assert len(d.y_train) + len(d.y_test) == 1797
    assert len(d.y_test) == 360 and d.num_classes == 10
    assert int(d.x_train.max()) == 255 and int(d.x_train.min()) == 0

    # Stratified: each class's share of the test set matches its share of the whole set.
    y_all = sklearn.datasets.load_digits().target
    expected = np.bincount(y_all) * 0.2
    assert np.all(np.abs(np.bincount(d.y_test.numpy()) - expected) <= 1)

    # Disjoint and complete: train ∪ test is exactly the original multiset of (image, label).
    full = (
        np.rint(sklearn.datasets.load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    )
    rows = np.concatenate([full, y_all[:, None].astype(np.uint8)], axis=1)
    ours = np.concatenate(
        [
            np.concatenate([d.x_train.reshape(-1, 64).numpy(), d.y_train.numpy()[:, None]], axis=1),
            np.concatenate([d.x_test.reshape(-1, 64).numpy(), d.y_test.numpy()[:, None]], axis=1),
        ]
    ).astype(np.uint8)
    assert sorted(map(bytes, rows)) == sorted(map(bytes, ours))

    # Fixed by split_seed; another seed gives another split.
    again = load_digits(test_fraction=0.2, split_seed=0)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    other = load_digits(test_fraction=0.2, split_seed=1)
    assert not torch.equal(other.x_test, d.x_test)

    scaled = d.x_train.double() / 255
    assert d.mean[0] == pytest.approx(float(scaled.mean()))
    assert d.std[0] == pytest.approx(float(scaled.std(unbiased=False)))


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.25, 1 / 3, 0.5, 0.9])
def test_digits_are_scikit_learns_and_split_as_train_test_split_splits(fraction):
    """The loader reads scikit-learn's file itself and draws the stratified split itself: both
    must be exactly what `load_digits()` and `train_test_split(stratify=y)` give."""
    from sklearn.model_selection import train_test_split

    from prune_cli.data.digits import _digits, stratified_split

    bunch = sklearn.datasets.load_digits()
    images, target = _digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    rng = np.random.RandomState(7)
    labels = {"digits": bunch.target, "uneven": rng.randint(0, 7, size=301) ** 2 % 11}
    for y in labels.values():
        for seed in (0, 1, 2, 13, 12345):
            train, test = train_test_split(
                np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed
            )
            ours = stratified_split(y, fraction, seed)
            assert np.array_equal(ours[0], np.sort(train)) and np.array_equal(
                ours[1], np.sort(test)
            )


def test_digits_rejects_bad_fraction():
    with pytest.raises(DataError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_from_folder_matches_the_written_pickles(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=20, n_test=30)
    d = cifar.load_cifar10(str(tmp_path), download=False)
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert d.y_train.shape == (100,) and d.y_train.dtype == torch.int64
    assert d.x_test.shape == (30, 3, 32, 32)
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2470, 0.2435, 0.2616)
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    # Row-major 3072 = 3 planes of 32×32: the CHW layout of the official format.
    assert np.array_equal(d.x_train[20:40].numpy(), batch[b"data"].reshape(-1, 3, 32, 32))
    assert d.y_train[20:40].tolist() == batch[b"labels"]
    # The root may also be the extracted folder itself.
    assert torch.equal(cifar.load_cifar10(str(folder), download=False).x_test, d.x_test)


def test_cifar10_from_archive_without_md5_check(tmp_path):
    write_cifar10(tmp_path, as_archive=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    d = cifar.load_cifar10(str(tmp_path), download=False, verify_md5=False)
    assert d.x_train.shape == (100, 3, 32, 32)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()
    # No temporary extraction folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


def test_cifar10_archive_md5_is_verified(tmp_path, monkeypatch):
    archive = write_cifar10(tmp_path, as_archive=True)
    # The tiny archive is not the official one: verification must refuse it, naming the file.
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(archive), "md5")
    assert not (tmp_path / "cifar-10-batches-py").exists()
    # With the archive's own md5 as the "official" one, verification passes.
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, md5=md5sum(archive)))
    assert cifar.load_cifar10(str(tmp_path), download=False).x_test.shape == (20, 3, 32, 32)


def test_cifar10_corrupted_archive(tmp_path):
    archive = write_cifar10(tmp_path, as_archive=True)
    archive.write_bytes(archive.read_bytes()[:200])
    for verify in (True, False):
        with pytest.raises(DataError) as excinfo:
            cifar.load_cifar10(str(tmp_path), download=False, verify_md5=verify)
        assert_one_line_error(excinfo, str(archive))


def test_cifar10_malformed_batch_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(folder / "data_batch_3"))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(folder / "data_batch_3"))


def test_cifar100_from_folder_and_archive(tmp_path):
    write_cifar100(tmp_path / "a", n_train=200, n_test=100)
    d = cifar.load_cifar100(str(tmp_path / "a"), download=False)
    assert d.name == "cifar100" and d.num_classes == 100
    assert d.x_train.shape == (200, 3, 32, 32) and d.x_test.shape == (100, 3, 32, 32)
    assert sorted(set(d.y_train.tolist())) == list(range(100))
    assert d.mean == (0.5071, 0.4865, 0.4409)

    archive = write_cifar100(tmp_path / "b", as_archive=True)
    with pytest.raises(DataError, match="md5"):
        cifar.load_cifar100(str(tmp_path / "b"), download=False)
    e = cifar.load_cifar100(str(tmp_path / "b"), download=False, verify_md5=False)
    assert torch.equal(e.x_train, d.x_train) and torch.equal(e.y_test, d.y_test)
    assert archive.is_file()


def test_missing_root_without_download_names_the_root(tmp_path):
    root = tmp_path / "nowhere"
    for load, title in (
        (cifar.load_cifar10, "CIFAR-10"),
        (cifar.load_cifar100, "CIFAR-100"),
        (mnist.load_mnist, "MNIST"),
    ):
        with pytest.raises(DataError) as excinfo:
            load(str(root), download=False)
        assert_one_line_error(excinfo, f"dataset.root={root}", title, "not found", "download=false")


def test_download_failure_is_fast_and_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(
        cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, url=REFUSED + "c.tar.gz")
    )
    monkeypatch.setattr(mnist, "MIRRORS", (REFUSED, REFUSED + "other/"))
    start = time.monotonic()
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tmp_path), download=True)
    assert_one_line_error(
        excinfo, f"dataset.root={tmp_path}", "cifar-10-python.tar.gz", "download failed"
    )
    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(str(tmp_path), download=True)
    assert_one_line_error(excinfo, f"dataset.root={tmp_path}", "MNIST", "download failed", REFUSED)
    assert time.monotonic() - start < 30
    # A failed download leaves no partial file that a later run would mistake for the archive.
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz,flat", [(False, False), (True, False), (False, True), (True, True)])
def test_mnist_idx_files(tmp_path, gz, flat):
    folder = write_mnist(tmp_path, n_train=100, n_test=50, gz=gz, flat=flat)
    d = mnist.load_mnist(str(tmp_path), download=False)
    assert d.name == "mnist" and d.num_classes == 10
    assert d.x_train.shape == (100, 1, 28, 28) and d.x_train.dtype == torch.uint8
    assert d.x_test.shape == (50, 1, 28, 28) and d.y_test.dtype == torch.int64
    assert d.mean == (0.1307,) and d.std == (0.3081,)
    name = "t10k-labels-idx1-ubyte" + (".gz" if gz else "")
    raw = (folder / name).read_bytes()
    labels = np.frombuffer(gzip.decompress(raw) if gz else raw, dtype=np.uint8, offset=8)
    assert d.y_test.tolist() == labels.tolist()


def test_mnist_wrong_magic_and_truncated(tmp_path):
    folder = write_mnist(tmp_path)
    path = folder / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(b"\x00\x00\x08\x04" + good[4:])
    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(path), "magic")

    path.write_bytes(good[: len(good) - 100])
    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(path), "truncated")

    path.write_bytes(good[:10])
    with pytest.raises(DataError, match="truncated"):
        mnist.load_mnist(str(tmp_path), download=False)

    # Swapped files: labels where images belong.
    path.write_bytes(idx_bytes(np.zeros(100, dtype=np.uint8)))
    with pytest.raises(DataError, match="expected an idx image file"):
        mnist.load_mnist(str(tmp_path), download=False)


def test_mnist_truncated_gz(tmp_path):
    folder = write_mnist(tmp_path, gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(str(tmp_path), download=False)
    assert_one_line_error(excinfo, str(path))


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable():
    a = load_synthetic(n_train=200, n_test=100, seed=3)
    b = load_synthetic(n_train=200, n_test=100, seed=3)
    c = load_synthetic(n_train=200, n_test=100, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (200, 3, 32, 32) and len(a.mean) == 3
    assert load_synthetic(shape=[1, 8, 8]).x_test.shape[1:] == (1, 8, 8)
    # Nearest class mean on the train split classifies the test split far above chance.
    xtr, xte = a.x_train.float().flatten(1), a.x_test.float().flatten(1)
    means = torch.stack([xtr[a.y_train == k].mean(0) for k in range(10)])
    acc = (torch.cdist(xte, means).argmin(1) == a.y_test).float().mean()
    assert acc > 0.9


# ---------------------------------------------------------------- DeviceData


@pytest.fixture
def small() -> ArrayDataset:
    return load_synthetic(n_train=103, n_test=37, num_classes=5, shape=(3, 12, 10), seed=1)


def test_batch_shapes_and_count(small):
    dd = DeviceData(small, "cpu", augment=True, pad=2)
    assert isinstance(dd, BatchSource)
    assert (dd.n_train, dd.n_test, dd.input_shape, dd.num_classes) == (103, 37, (3, 12, 10), 5)
    assert (
        dd.steps_per_epoch(32) == 4
        and dd.steps_per_epoch(103) == 1
        and dd.steps_per_epoch(1) == 103
    )
    batches = list(dd.train_batches(32, epoch_seed=0))
    assert len(batches) == 4
    assert [len(y) for _, y in batches] == [32, 32, 32, 7]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 12, 10)
    # One epoch visits every sample exactly once.
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(small.y_train.tolist())
    tests = list(dd.test_batches(16))
    assert [len(y) for _, y in tests] == [16, 16, 5]
    assert torch.equal(torch.cat([y for _, y in tests]), small.y_test)


def test_order_is_a_function_of_the_epoch_seed(small):
    dd = DeviceData(small, "cpu", augment=True)
    a = list(dd.train_batches(25, epoch_seed=7))
    b = list(DeviceData(small, "cpu", augment=True).train_batches(25, epoch_seed=7))
    c = list(dd.train_batches(25, epoch_seed=8))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert not torch.equal(a[0][0], c[0][0])
    # The permutation does not depend on augmentation.
    plain = list(DeviceData(small, "cpu", augment=False).train_batches(25, epoch_seed=7))
    assert torch.equal(torch.cat([y for _, y in plain]), torch.cat([y for _, y in a]))


def test_normalization_values(small):
    dd = DeviceData(small, "cpu", augment=False)
    x, y = next(dd.test_batches(1024))
    mean = torch.tensor(small.mean).view(1, -1, 1, 1)
    std = torch.tensor(small.std).view(1, -1, 1, 1)
    assert torch.allclose(x, (small.x_test.float() / 255 - mean) / std, atol=1e-5)
    assert torch.equal(y, small.y_test)
    # Without augmentation a train batch is the permuted samples, normalized.
    perm = draw_epoch(small.x_train.shape[0], 5, False, 4).perm
    xt, yt = next(dd.train_batches(40, epoch_seed=5))
    assert torch.equal(yt, small.y_train[perm[:40]])
    assert torch.allclose(xt, (small.x_train[perm[:40]].float() / 255 - mean) / std, atol=1e-5)


def test_crop_and_flip_match_a_per_sample_reference(small):
    """Each output equals torchvision's RandomCrop(padding=pad, fill=0) + hflip done by hand on
    its source image (pad, slice, mirror), with the offsets and flips the epoch plan drew."""
    pad = 3
    dd = DeviceData(small, "cpu", augment=True, pad=pad)
    plan = draw_epoch(small.x_train.shape[0], 11, True, pad)
    batches = list(dd.train_batches(50, epoch_seed=11))
    out = unnormalize(torch.cat([x for x, _ in batches]), small)
    h, w = small.x_train.shape[2:]
    for j in range(len(out)):
        img = small.x_train[plan.perm[j]]
        top, left = int(plan.dy[j]), int(plan.dx[j])
        ref = torch.nn.functional.pad(img, (pad,) * 4, value=0)[:, top : top + h, left : left + w]
        if plan.flip[j]:
            ref = ref.flip(-1)
        assert torch.equal(out[j], ref), j
    assert plan.flip.any() and not plan.flip.all()
    assert len(set(plan.dy.tolist())) == 2 * pad + 1


def test_crop_is_a_real_shift(small):
    """Independently of the plan: every output is some shifted (and maybe mirrored) window of
    its zero-padded source image, and the shifts vary across samples."""
    pad = 2
    dd = DeviceData(small, "cpu", augment=True, pad=pad)
    x, y = next(dd.train_batches(103, epoch_seed=3))
    out = unnormalize(x, small)
    perm = draw_epoch(103, 3, False, pad).perm
    h, w = small.x_train.shape[2:]
    seen = set()
    for j in range(20):
        padded = torch.nn.functional.pad(small.x_train[perm[j]], (pad,) * 4)
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[j],
                padded[:, dy : dy + h, dx : dx + w].flip(-1)
                if flip
                else padded[:, dy : dy + h, dx : dx + w],
            )
        ]
        assert len(matches) == 1, (j, matches)
        seen.add(matches[0])
    assert len(seen) > 5


def test_padding_is_zero_in_pixel_space():
    n, pad = 64, 4
    white = torch.full((n, 3, 8, 8), 255, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.int64)
    data = ArrayDataset(
        "white", white, labels, white[:4], labels[:4], 2, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    )
    dd = DeviceData(data, "cpu", augment=True, pad=pad)
    x, _ = next(dd.train_batches(n, epoch_seed=0))
    out = unnormalize(x, data)
    assert set(out.unique().tolist()) <= {0, 255}
    plan = draw_epoch(n, 0, True, pad)
    for j in range(n):
        zero_rows = int((out[j, 0] == 0).all(dim=1).sum())
        zero_cols = int((out[j, 0] == 0).all(dim=0).sum())
        assert zero_rows == abs(int(plan.dy[j]) - pad)
        assert zero_cols == abs(int(plan.dx[j]) - pad)
        # The rest of the image is untouched white.
        assert int((out[j] == 255).sum()) == 3 * (8 - zero_rows) * (8 - zero_cols)
    # A zero pixel normalizes to -mean/std, not to 0.
    for c, (m, s) in enumerate(zip(data.mean, data.std)):
        assert x[:, c].min().item() == pytest.approx(-m / s, abs=1e-5)


def test_flip_only_when_pad_is_zero(small):
    dd = DeviceData(small, "cpu", augment=True, pad=0)
    x, _ = next(dd.train_batches(103, epoch_seed=2))
    out = unnormalize(x, small)
    plan = draw_epoch(103, 2, True, 0)
    src = small.x_train[plan.perm]
    expected = torch.where(plan.flip.view(-1, 1, 1, 1), src.flip(-1), src)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("world_size,batch_size", [(2, 32), (3, 25), (4, 103)])
def test_ddp_shards_concatenate_to_the_global_batch(small, world_size, batch_size):
    whole = list(DeviceData(small, "cpu", augment=True).train_batches(batch_size, epoch_seed=4))
    shards = [
        list(
            DeviceData(small, "cpu", augment=True, rank=r, world_size=world_size).train_batches(
                batch_size, 4
            )
        )
        for r in range(world_size)
    ]
    assert all(len(s) == len(whole) for s in shards)
    for step, (x, y) in enumerate(whole):
        parts = [s[step] for s in shards]
        sizes = [len(py) for _, py in parts]
        assert max(sizes) - min(sizes) <= 1
        assert torch.equal(torch.cat([px for px, _ in parts]), x)
        assert torch.equal(torch.cat([py for _, py in parts]), y)
    # Every rank still evaluates the whole test set.
    test_y = torch.cat(
        [y for _, y in DeviceData(small, "cpu", False, rank=1, world_size=2).test_batches(10)]
    )
    assert torch.equal(test_y, small.y_test)


def test_channels_last(small):
    dense = DeviceData(small, "cpu", augment=True)
    cl = DeviceData(small, "cpu", augment=True, channels_last=True)
    x, _ = next(cl.train_batches(16, epoch_seed=0))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert torch.equal(x, next(dense.train_batches(16, epoch_seed=0))[0])
    xt, _ = next(cl.test_batches(8))
    assert xt.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches_without_host_syncs(small):
    cpu = list(DeviceData(small, "cpu", augment=True).train_batches(32, epoch_seed=9))
    dd = DeviceData(small, "cuda", augment=True)
    it = dd.train_batches(32, epoch_seed=9)
    first = next(it)  # the once-per-epoch copy of the plan to the device happens here
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(it)
        tests = list(dd.test_batches(16))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu = [first, *rest]
    assert all(x.is_cuda and y.is_cuda for x, y in gpu + tests)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)


# ---------------------------------------------------------------- build_data


def test_build_data_from_configs(tmp_path):
    dd = build_data(
        {"_target_": "prune_cli.data.digits.load_digits", "split_seed": 1}, "cpu", augment=False
    )
    assert isinstance(dd, DeviceData) and dd.input_shape == (1, 8, 8) and dd.n_test == 360
    write_cifar10(tmp_path)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"_target_": "prune_cli.data.cifar.load_cifar10", "root": str(tmp_path), "download": False}
    )
    dd = build_data(cfg, "cpu", augment=True, rank=1, world_size=2, channels_last=True)
    assert dd.name == "cifar10" and dd.world_size == 2 and dd.channels_last
    syn = build_data(
        OmegaConf.create(
            {"_target_": "prune_cli.data.synthetic.load_synthetic", "shape": [1, 6, 6]}
        ),
        "cpu",
        True,
    )
    assert syn.input_shape == (1, 6, 6)


def test_build_data_errors(tmp_path):
    with pytest.raises(DataError) as excinfo:
        build_data({"_target_": "prune_cli.data.nosuch.load"}, "cpu", augment=False)
    assert_one_line_error(
        excinfo, "dataset.loader._target_=prune_cli.data.nosuch.load", "cannot be imported"
    )
    with pytest.raises(DataError, match="(?i)no module named 'nosuchpackage'"):
        build_data({"_target_": "nosuchpackage.load"}, "cpu", augment=False)
    # A loader's own DataError comes through unwrapped.
    root = tmp_path / "empty"
    with pytest.raises(DataError) as excinfo:
        build_data(
            {"_target_": "prune_cli.data.cifar.load_cifar10", "root": str(root), "download": False},
            "cpu",
            True,
        )
    assert_one_line_error(excinfo, f"dataset.root={root}")
    assert str(excinfo.value).startswith("dataset.root=")
    with pytest.raises(DataError, match="missing"):
        build_data({"root": "x"}, "cpu", augment=False)


class _Source:
    """A stand-in for a DataLoader-backed source (e.g. ImageNet) that already batches itself."""

    name, num_classes, input_shape, n_train, n_test = "fake", 2, (3, 4, 4), 4, 2

    def steps_per_epoch(self, batch_size: int) -> int:
        return 1

    def train_batches(self, batch_size, epoch_seed):
        yield torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.int64)

    def test_batches(self, batch_size=1024):
        yield torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64)


def make_source() -> _Source:
    return _Source()


def test_build_data_passes_a_batch_source_through():
    src = build_data({"_target_": f"{__name__}.make_source"}, "cpu", augment=True)
    assert isinstance(src, _Source)


# ---------------------------------------------------------------- end to end


def test_tiny_cifar_files_are_learnable(tmp_path):
    """The official-format files from tests/datafiles.py carry a class signal a linear model learns."""
    write_cifar10(tmp_path, n_per_batch=40, n_test=100)
    dd = DeviceData(cifar.load_cifar10(str(tmp_path), download=False), "cpu", augment=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(8):
        for x, y in dd.train_batches(50, epoch_seed=epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in dd.test_batches())
    assert correct / dd.n_test > 0.5


def test_download_shows_progress_and_checks_md5(tmp_path, caplog):
    """A real HTTP download on loopback: progress lines every 10% (no terminal), md5 checked."""
    import functools
    import hashlib
    import http.server
    import logging
    import threading

    from prune_cli.data.files import download

    served = tmp_path / "srv"
    served.mkdir()
    blob = os.urandom(3 << 20)
    (served / "a.tar.gz").write_bytes(blob)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz"
        with caplog.at_level(logging.INFO, logger="prune_cli"):
            download(url, tmp_path / "got" / "a.tar.gz", hashlib.md5(blob).hexdigest())
        assert (tmp_path / "got" / "a.tar.gz").read_bytes() == blob
        notes = [r.getMessage() for r in caplog.records if "a.tar.gz:" in r.getMessage()]
        assert notes and notes[-1].endswith("100%")
        with pytest.raises(DataError, match="wrong md5"):
            download(url, tmp_path / "bad" / "a.tar.gz", "0" * 32)
        assert not (tmp_path / "bad" / "a.tar.gz").exists()
    finally:
        server.shutdown()
