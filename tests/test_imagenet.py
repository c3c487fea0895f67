"""ImageNet: the class-folder loader on tiny real JPEGs, DDP sharding, and the ResNet recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose
from datafiles import class_images
from PIL import Image
from torchvision import transforms

from prune_cli.data import BatchSource, DataError, build_data
from prune_cli.data.imagenet import MEAN, STD, _EpochBatches, eval_transform, load_imagenet

WNIDS = ("n01440764", "n01443537", "n01484850")


def write_imagenet(root: Path, n_train: int = 4, n_val: int = 2, size=(40, 48)) -> Path:
    """ImageNet's layout with real JPEGs: root/{train,val}/<wnid>/*.JPEG, `n_*` per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = class_images(n * len(WNIDS), len(WNIDS), (size[0], size[1], 3), rng, 0)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / WNIDS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{WNIDS[label]}_{i}.JPEG", quality=90)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_imagenet(tmp_path / "imagenet")


def _epoch(data, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(data.train_batches(batch_size, seed))


def test_batches_are_shaped_and_normalised(tiny):
    data = build_data(
        {
            "_target_": "prune_cli.data.imagenet.load_imagenet",
            "root": str(tiny),
            "image_size": 32,
        },
        "cpu",
        augment=True,
        workers=0,  # runtime.workers: not part of the loader's node
    )
    assert isinstance(data, BatchSource)
    assert (data.num_classes, data.input_shape, data.n_train, data.n_test) == (
        3,
        (3, 32, 32),
        12,
        6,
    )
    assert data.steps_per_epoch(5) == 3
    batches = _epoch(data, 5, seed=1)
    assert [tuple(x.shape) for x, _ in batches] == [(5, 3, 32, 32)] * 2 + [(2, 3, 32, 32)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # evaluation equals the textbook pipeline: resize 37 (32 / 0.875), center crop, ToTensor, Normalize
    reference = transforms.Compose(
        [
            transforms.Resize(37),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    x, y = next(iter(data.test_batches(6)))
    expected = torch.stack(
        [reference(data.test_set.folder.loader(p)) for p, _ in data.test_set.folder.samples[:6]]
    )
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    assert y.tolist() == [t for _, t in data.test_set.folder.samples[:6]]


def test_train_is_random_per_epoch_seed_and_eval_is_deterministic(tiny):
    data = load_imagenet(str(tiny), workers=0, image_size=32)
    rng = torch.get_rng_state()
    a, b = _epoch(data, 4, seed=7), _epoch(data, 4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # augmentation leaves the global RNG alone
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    c = _epoch(data, 4, seed=8)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # the same sample, cropped at random for training vs resized + center-cropped for evaluation
    evaluated = torch.cat([x for x, _ in data.test_batches(4)])
    assert torch.equal(evaluated, torch.cat([x for x, _ in data.test_batches(5)]))
    path, _ = data.train_set.folder.samples[0]
    ev = eval_transform(32)(data.train_set.folder.loader(path))
    trained = {data.train_set[(0, s)][0].float().sum().item() for s in range(4)}
    assert len(trained) > 1 and ev.float().sum().item() not in trained
    # workers decode in other processes yet give the same epoch
    with_workers = _epoch(load_imagenet(str(tiny), workers=2, image_size=32), 4, seed=7)
    assert all(torch.equal(xa, xw) for (xa, _), (xw, _) in zip(a, with_workers))


def test_ranks_shard_each_global_batch(tiny):
    single = _epoch(load_imagenet(str(tiny), workers=0, image_size=32), 4, seed=3)
    ranks = [
        _epoch(load_imagenet(str(tiny), rank=r, world_size=2, workers=0, image_size=32), 4, seed=3)
        for r in range(2)
    ]
    assert [len(r) for r in ranks] == [3, 3]
    for step, (x, y) in enumerate(single):
        assert [tuple(r[step][0].shape) for r in ranks] == [(2, 3, 32, 32)] * 2
        torch.testing.assert_close(torch.cat([r[step][0] for r in ranks]), x, rtol=0, atol=0)
        assert torch.cat([r[step][1] for r in ranks]).tolist() == y.tolist()
    # the ranks' samples are disjoint and cover the epoch; a last batch smaller than the world
    # wraps around rather than leave a rank empty
    shards = [[k for b in _EpochBatches(12, 5, 3, r, 2) for k in b] for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) + len(shards[1]) == 12
    assert {i for i, _ in shards[0] + shards[1]} == set(range(12))
    assert all(len(b) >= 1 for r in range(3) for b in _EpochBatches(10, 9, 0, r, 3))


@pytest.mark.parametrize("missing", ["val", "train"])
def test_missing_split_is_one_line_naming_the_path(tmp_path, missing):
    root = write_imagenet(tmp_path / "imagenet", n_train=1, n_val=1)
    for f in (root / missing).rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted((root / missing).rglob("*"), reverse=True):
        d.rmdir()
    (root / missing).rmdir()
    with pytest.raises(DataError) as e:
        build_data(
            {"_target_": "prune_cli.data.imagenet.load_imagenet", "root": str(root)},
            "cpu",
            augment=True,
            workers=0,
        )
    message = str(e.value)
    assert "\n" not in message and str(root) in message and f"no {missing}/ folder" in message


def test_resnet_selects_the_imagenet_recipe_and_overrides_win():
    cfg = compose("model=resnet50", "method=lrw")
    tr = cfg.train
    assert (cfg.dataset.name, cfg.dataset.num_classes, tr.epochs, tr.batch_size) == (
        "imagenet",
        1000,
        90,
        1024,
    )
    assert (tr.lr, tr.lr_reference_batch, tr.momentum, tr.weight_decay) == (0.4, 1024, 0.9, 1e-4)
    assert tr.schedule.warmup_epochs == 5 and list(tr.schedule.milestones) == [30, 60, 80]
    assert cfg.model.net._target_ == "torchvision.models.resnet50"
    assert cfg.dataset.loader.image_size == 224
    # data-loader workers are a runtime setting (never hashed), not the loader's
    assert "workers" not in cfg.dataset.loader and cfg.runtime.workers == 8
    cfg = compose("model=resnet18", "train.epochs=3", "dataset.input_shape=[3,64,64]")
    assert (cfg.train.epochs, cfg.dataset.loader.image_size, cfg.dataset.name) == (
        3,
        64,
        "imagenet",
    )
    assert compose("model=resnet34", "dataset=cifar10").dataset.name == "cifar10"
    assert compose("dataset=mnist").dataset.input_shape == [1, 28, 28]


def test_resnet18_end_to_end_on_tiny_imagenet(cli, tiny):
    proc = cli(
        "model=resnet18",
        f"dataset.root={tiny}",
        "runtime.workers=0",
        "dataset.num_classes=3",
        "dataset.input_shape=[3,16,16]",
        "train.epochs=1",
        "train.batch_size=12",
        "train.schedule.warmup_epochs=0",
        "method.retrain_epochs=1",
        "pruning.levels=1",
        "runtime.device=cpu",
    )
    row = json.loads((tiny.parent / "run" / "results.jsonl").read_text().splitlines()[0])
    assert row["model"] == "resnet18" and row["dataset"] == "imagenet"
    assert "level  density" in proc.stdout
