"""The validation split: held out of the training set (stratified or torch's random_split), the
batch sources that train on the rest, evaluation on it, and the config keys that ask for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafiles import class_images
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from prune_cli.config import CONF_DIR, ConfigError, register, validate
from prune_cli.data import DataError, DeviceData, build_data
from prune_cli.data.base import holdout_size, split_indices
from prune_cli.data.digits import load_digits
from prune_cli.data.synthetic import load_synthetic
from prune_cli.store import config_hash, dense_hash
from prune_cli.train import evaluate

torch.set_num_threads(1)

DIGITS = {"_target_": "prune_cli.data.digits.load_digits"}


def labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    """Shuffled labels with ``counts[c]`` samples of class ``c``."""
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# ---------------------------------------------------------------- the split itself


@pytest.mark.parametrize("split", ["stratified", "random"])
def test_split_is_deterministic_disjoint_and_complete(split):
    y = labels([50, 30, 20, 7, 93])
    train, val = split_indices(y, 0.1, split, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert len(val) == holdout_size(len(y), 0.1) == 20
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(y)))  # disjoint, complete
    again = split_indices(y, 0.1, split, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    other = split_indices(y, 0.1, split, seed=4)
    assert not torch.equal(other[1], val)


def test_holdout_size_is_zimmers_int_of_the_train_part():
    # train_size = int(0.9 * n), val_size = n - train_size
    for n in (10, 1437, 50_000, 1_281_167, 999):
        assert holdout_size(n, 0.1) == n - int(0.9 * n)
    assert holdout_size(50_000, 0.1) == 5_000


@pytest.mark.parametrize("n,fraction", [(50_000, 0.1), (1437, 0.2), (101, 0.37)])
def test_random_is_torch_random_split(n, fraction):
    v = holdout_size(n, fraction)
    train_ref, val_ref = torch.utils.data.random_split(
        range(n), [n - v, v], generator=torch.Generator().manual_seed(42)
    )
    train, val = split_indices(torch.zeros(n, dtype=torch.long), fraction, "random", seed=42)
    assert train.tolist() == list(train_ref.indices)
    assert val.tolist() == list(val_ref.indices)


def test_stratified_keeps_each_class_share():
    counts = [500, 300, 120, 77, 3]
    y = labels(counts)
    train, val = split_indices(y, 0.1, "stratified", seed=0)
    got = torch.bincount(y[val], minlength=len(counts)).tolist()
    assert sum(got) == holdout_size(len(y), 0.1)
    for k, g in zip(counts, got):
        assert abs(g - 0.1 * k) < 1  # each class's quota, rounded
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    # every class keeps training samples
    assert set(y[train].tolist()) == set(range(len(counts)))


@pytest.mark.parametrize(
    "fraction,split,needle",
    [
        (0.0, "stratified", "dataset.val_fraction=0.0"),
        (1.0, "random", "dataset.val_fraction=1.0"),
        (-0.2, "random", "dataset.val_fraction=-0.2"),
        (0.995, "random", "holds out every sample of the 100"),
        (0.1, "kfold", "dataset.split=kfold"),
    ],
)
def test_split_errors_name_the_key(fraction, split, needle):
    with pytest.raises(DataError) as e:
        split_indices(labels([50, 50]), fraction, split)
    assert "\n" not in str(e.value) and needle in str(e.value)


def test_stratified_split_that_empties_a_class_is_an_error():
    y = labels([2, 1])  # v = 3 - int(0.4 * 3) = 2; class 1's quota 0.67 takes its one sample
    with pytest.raises(DataError, match=r"dataset.val_fraction=0.6: .*leaves class 1 no training"):
        split_indices(y, 0.6, "stratified")
    split_indices(y, 0.6, "random")  # random does not look at the classes


# ---------------------------------------------------------------- in-memory batch sources


def rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(r) for r in x.reshape(len(x), -1).numpy())


@pytest.mark.parametrize("split", ["stratified", "random"])
def test_device_data_trains_on_the_rest_and_yields_the_held_out_part(split):
    full = load_digits()
    data = build_data(DIGITS, "cpu", augment=False, val_fraction=0.1, split=split, split_seed=7)
    assert isinstance(data, DeviceData)
    train, val = split_indices(full.y_train, 0.1, split, 7)
    assert (data.n_train, data.n_val, data.n_test) == (len(train), len(val), len(full.y_test))
    assert torch.equal(data.x_train, full.x_train[train])
    assert torch.equal(data.y_val, full.y_train[val])
    assert rows(torch.cat([data.x_train, data.x_val])) == rows(full.x_train)

    # an epoch's training batches: every sample of the train part once, none of the held-out one
    xs, ys = zip(*data.train_batches(100, epoch_seed=5))
    assert data.steps_per_epoch(100) == len(xs) == -(-data.n_train // 100)
    assert sum(len(y) for y in ys) == data.n_train
    train_part = torch.cat([x for x, _ in data._in_order(data.x_train, data.y_train, 1000)])
    assert rows(_bytes(torch.cat(xs))) == rows(_bytes(train_part))

    # the held-out part: in order, normalised like the test set, in batches of the given size
    vx, vy = zip(*data.val_batches(50))
    assert [len(y) for y in vy] == [50] * (data.n_val // 50) + [data.n_val % 50] * bool(
        data.n_val % 50
    )
    assert torch.equal(torch.cat(vy), data.y_val)
    test_like = DeviceData(full, "cpu", augment=False)
    assert torch.allclose(torch.cat(vx), test_like._normalize(full.x_train[val]))


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """Float samples as uint8 rows (exactly equal floats, equal bytes)."""
    return x.contiguous().view(torch.uint8)


def test_without_a_split_nothing_changes():
    full = load_digits()
    data = build_data(DIGITS, "cpu", augment=False)
    plain = build_data(DIGITS, "cpu", augment=False, val_fraction=0.0, split="random")
    for d in (data, plain):
        assert (d.n_train, d.n_val) == (len(full.y_train), 0)
        assert list(d.val_batches(10)) == []
        assert torch.equal(d.x_train, full.x_train)


def test_every_rank_evaluates_the_whole_held_out_part():
    full = load_synthetic(n_train=200, n_test=50, num_classes=4, shape=(3, 8, 8), seed=0)
    parts, trained = [], 0
    for rank in range(3):
        d = DeviceData(full, "cpu", augment=True, rank=rank, world_size=3)
        d.hold_out(0.25, "stratified", 0)
        parts.append(torch.cat([y for _, y in d.val_batches(16)]))
        assert d.n_train == 150 and d.n_val == 50
        trained += sum(len(y) for _, y in d.train_batches(64, 1))
    assert all(torch.equal(p, parts[0]) for p in parts)
    assert trained == 150  # the ranks' shards together: the train part once
    with pytest.raises(ValueError, match="already held out"):
        d.hold_out(0.25)


def test_a_batch_source_that_cannot_hold_out_is_refused_naming_the_key():
    with pytest.raises(DataError) as e:
        build_data({"_target_": f"{__name__}.FixedSource"}, "cpu", augment=False, val_fraction=0.1)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("dataset.val_fraction=0.1: the batch source of")
    assert isinstance(
        build_data({"_target_": f"{__name__}.FixedSource"}, "cpu", False), FixedSource
    )


class FixedSource:
    """A batch source without a validation split (a user's, say)."""

    name, num_classes, input_shape, n_train, n_test = "fixed", 2, (1, 2, 2), 4, 4

    def steps_per_epoch(self, batch_size):
        return 1

    def train_batches(self, batch_size, epoch_seed):
        yield torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)

    def test_batches(self, batch_size=1024):
        yield torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)


# ---------------------------------------------------------------- ImageNet's folder source

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture
def imagenet(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 2)):
        images, y = class_images(n * len(WNIDS), len(WNIDS), (20, 24, 3), rng, 0)
        for i, (image, label) in enumerate(zip(images, y)):
            folder = tmp_path / split / WNIDS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.JPEG", quality=90)
    return {
        "_target_": "prune_cli.data.imagenet.load_imagenet",
        "root": str(tmp_path),
        "workers": 0,
        "image_size": 16,
    }


def test_imagenet_holds_out_part_of_the_train_folder(imagenet):
    data = build_data(imagenet, "cpu", augment=False, val_fraction=0.2, split_seed=1)
    folder = data.train_set.folder
    assert (data.n_train, data.n_val, data.n_test) == (24, 6, 6)
    train, val = data.train_set.indices, data.val_set.indices
    assert sorted(train + val) == list(range(30)) and not set(train) & set(val)
    assert [folder.targets[i] for i in val] == [0, 0, 1, 1, 2, 2]  # stratified, in order
    # training draws only the train part; evaluation-transformed held-out images in order
    ys = torch.cat([y for _, y in data.train_batches(5, 3)])
    assert len(ys) == 24 and sorted(ys.tolist()) == sorted(folder.targets[i] for i in train)
    vx, vy = zip(*data.val_batches(4))
    assert [len(y) for y in vy] == [4, 2] and torch.cat(vy).tolist() == [0, 0, 1, 1, 2, 2]
    # a held-out image is the train folder's sample through the evaluation transform
    image = data.test_set.transform(folder.loader(folder.samples[val[0]][0]))
    x0, _ = data._to_device(image[None], torch.tensor([0]))
    assert torch.equal(vx[0][:1], x0)

    rand = build_data(imagenet, "cpu", augment=False, val_fraction=0.2, split="random")
    ref = torch.utils.data.random_split(
        range(30), [24, 6], generator=torch.Generator().manual_seed(0)
    )
    assert rand.val_set.indices == list(ref[1].indices)
    assert list(build_data(imagenet, "cpu", augment=False).val_batches(4)) == []


# ---------------------------------------------------------------- evaluate(split=...)


def test_evaluate_counts_the_chosen_split():
    data = build_data(DIGITS, "cpu", augment=False, val_fraction=0.1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def accuracy(batches):
        right = total = 0
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
        return right / total

    with torch.no_grad():
        assert evaluate(model, data, 7, split="val") == accuracy(data.val_batches(1000))
        assert evaluate(model, data, 7) == accuracy(data.test_batches(1000))
    assert evaluate(model, data, 7, split="val") != evaluate(model, data, 7, split="test")
    with pytest.raises(ValueError, match="split='train'"):
        evaluate(model, data, 7, split="train")
    without = build_data(DIGITS, "cpu", augment=False)
    with pytest.raises(ConfigError, match=r"^dataset.val_fraction: digits has no validation"):
        evaluate(model, without, 7, split="val")


# ---------------------------------------------------------------- the config keys


def composed(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=["dataset=digits", "train=lenet", "model=lenet300_100", *overrides]
        )


def test_the_new_keys_default_to_null_and_leave_the_hashes_alone():
    cfg = composed()
    assert cfg.dataset.val_fraction is None and cfg.dataset.split is None
    assert cfg.dataset.split_seed is None and cfg.train.select is None
    validate(cfg)
    # a config of before these keys existed (they absent) has the same run and dense hashes
    old = OmegaConf.to_container(cfg)
    for key in ("val_fraction", "split", "split_seed"):
        del old["dataset"][key]
    del old["train"]["select"]
    old = OmegaConf.create(old)
    assert (config_hash(old), dense_hash(old)) == (config_hash(cfg), dense_hash(cfg))
    split = composed("dataset.val_fraction=0.1")
    assert dense_hash(split) != dense_hash(cfg)


def test_valid_split_and_selection():
    validate(
        composed(
            "dataset.val_fraction=0.1",
            "dataset.split=random",
            "dataset.split_seed=42",
            "train.select=best_val",
        )
    )
    validate(composed("dataset.val_fraction=0", "train.select=final"))


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["dataset.val_fraction=1.0"], "dataset.val_fraction=1.0: must be in [0, 1)"),
        (["dataset.val_fraction=-0.1"], "dataset.val_fraction=-0.1: must be in [0, 1)"),
        (["dataset.split=kfold"], "dataset.split=kfold: expected stratified or random"),
        (["dataset.split_seed=-1"], "dataset.split_seed=-1: must be an integer"),
        (["train.select=best_test"], "train.select=best_test: expected final or best_val"),
        (["train.select=best_val"], "train.select=best_val: needs a validation split"),
        (
            ["train.select=best_val", "dataset.val_fraction=0"],
            "train.select=best_val: needs a validation split",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        validate(composed(*overrides))
    assert "\n" not in str(e.value) and needle in str(e.value)
