"""The real `prune-run` CLI: the quick start, the paper command on a tiny CIFAR archive, the
run directory it writes, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from datafiles import write_cifar10

from prune_cli.store import config_hash, dense_hash, legacy_dense_hash


def test_quickstart_end_to_end(cli, tmp_path):
    proc = cli("experiment=quickstart", installed=True)  # the console script a user runs
    assert "level  density" in proc.stdout  # the printed per-level table
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["level"] for r in rows] == list(range(11))
    for r in rows:
        # (1 - rate)^k, to the rounding of one weight per level
        assert r["density"] == pytest.approx(
            0.8 ** r["level"], abs=(r["level"] + 1) / r["prunable_params"]
        )
        assert r["compression"] == pytest.approx(1 / r["density"])
        for key in (
            "nonzero_params",
            "acc",
            "retrain_epochs",
            "method",
            "seed",
            "images_seen",
            "wall_s",
            "acc_after_prune",
        ):
            assert key in r
    assert rows[-1]["acc"] > 0.8  # real learning on real digits
    assert {(r["pruning"], r["criterion"], r["one_shot"]) for r in rows} == {
        ("global_magnitude", "global_magnitude", False)
    }
    assert not list(run.glob("checkpoints/*_masks.pt"))  # the pruner's state is level_XX_pruning.pt
    assert json.loads((run / "run.json").read_text())["format"] == 2
    for r in rows:
        k = r["level"]
        state = torch.load(run / f"checkpoints/level_{k:02d}.pt")
        masks = torch.load(run / f"checkpoints/level_{k:02d}_pruning.pt")["masks"]
        alive = sum(int(m.sum()) for m in masks.values())
        assert alive == r["prunable_alive"]
        for name, m in masks.items():
            assert torch.all(state[name][~m] == 0)  # plain state_dict, exact zeros where pruned
        assert sum(int((state[n] != 0).sum()) for n in masks) <= alive
    assert (run / "config.yaml").exists() and (run / "summary.txt").exists()


def test_rerun_of_complete_run_does_no_training(cli, tmp_path):
    cli("experiment=quickstart", "pruning.levels=1", "train.epochs=2")
    before = (tmp_path / "run" / "results.jsonl").read_text()
    proc = cli("experiment=quickstart", "pruning.levels=1", "train.epochs=2")
    assert "nothing to do" in proc.stdout
    assert (tmp_path / "run" / "results.jsonl").read_text() == before


def test_paper_command_on_tiny_cifar_archive(cli, tmp_path):
    root = tmp_path / "cifar"
    write_cifar10(root, n_per_batch=20, n_test=40, as_archive=True)
    proc = cli(
        "method=lrw",
        "model=resnet56",
        f"dataset.root={root}",
        "+dataset.loader.verify_md5=false",
        "train.epochs=2",
        "method.retrain_epochs=1",
        "pruning.levels=1",
        "runtime.device=cpu",
    )
    cfg = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert cfg["model"] == "resnet56" and cfg["dataset"] == "cifar10"
    assert "level  density" in proc.stdout


def test_model_selects_its_recipe_and_overrides_win():
    cfg = compose("method=lrw", "model=resnet56")
    assert (cfg.dataset.name, cfg.train.epochs, cfg.train.batch_size) == ("cifar10", 182, 128)
    assert list(cfg.train.schedule.milestones) == [91, 136] and cfg.train.weight_decay == 2e-4
    assert cfg.model.net.depth == 56
    cfg = compose("model=resnet56", "dataset=cifar100", "train.epochs=3")
    assert (cfg.dataset.name, cfg.dataset.num_classes, cfg.train.epochs) == ("cifar100", 100, 3)
    assert compose("model=vgg16").train.weight_decay == 5e-4
    assert compose("model=lenet300_100").train.name == "lenet"


def test_config_hash_is_pinned():
    # Dense caches and run directories are named by these hashes: a refactor that changes them
    # orphans every existing cache. Change the pinned values only on purpose.
    # Format 2 (the `runtime` node, pruners by `_target_`) renamed both on purpose; the key that
    # format 1 gave the dense model stays computable, so that its cache entry is moved, not
    # retrained (store.DenseCache.of).
    cfg = compose("experiment=quickstart")
    assert config_hash(cfg)[:16] == PINNED_RUN_HASH
    assert dense_hash(cfg)[:16] == PINNED_DENSE_HASH
    assert legacy_dense_hash(cfg)[:16] == PINNED_FORMAT_1_DENSE_HASH
    # a speed-only setting or a new null-valued key does not change them
    assert dense_hash(compose("experiment=quickstart", "runtime.channels_last=true")) == dense_hash(
        cfg
    )
    assert config_hash(compose("experiment=quickstart", "runtime.progress=false")) == config_hash(
        cfg
    )
    # nothing under `runtime` changes a result, so none of it is hashed
    runtime = [
        *["runtime.device=cpu", "runtime.threads=2", "runtime.cache_dir=/elsewhere"],
        *["runtime.rerun=true", "runtime.workers=0", "runtime.compile=true"],
        *["runtime.channels_last=true", "runtime.eval_batch_size=7", "logger=none"],
        *["runtime.eval_every=0", "runtime.log_every_n_steps=1"],
    ]
    assert config_hash(compose("experiment=quickstart", *runtime)) == config_hash(cfg)
    assert dense_hash(compose("experiment=quickstart", *runtime)) == dense_hash(cfg)
    # what does change a result does change them
    assert config_hash(compose("experiment=quickstart", "pruning=random")) != config_hash(cfg)
    assert config_hash(compose("experiment=quickstart", "pruning.scope=layerwise")) != config_hash(
        cfg
    )
    assert dense_hash(compose("experiment=quickstart", "pruning=random")) == dense_hash(cfg)
    assert dense_hash(compose("experiment=quickstart", "train.lr=0.05")) != dense_hash(cfg)
    # where the data lives does not change results; a model's name and exclusions not its dense run
    assert dense_hash(compose("dataset.root=/a")) == dense_hash(compose("dataset.root=/b"))
    assert config_hash(compose("dataset.root=/a")) == config_hash(compose("dataset.root=/b"))
    assert dense_hash(compose("model=vgg16")) == dense_hash(compose("model=vgg16_nofc"))


PINNED_RUN_HASH = "e02c041b4b894ea3"
PINNED_DENSE_HASH = "2687d4e48eb5e95f"
PINNED_FORMAT_1_DENSE_HASH = "f2c9b868dc273c25"  # the format-1 PINNED_DENSE_HASH


BAD = [
    (["method=bogus"], "method/bogus"),
    (["train.epochs=abc"], "train.epochs"),
    (["pruning.rate=1.5"], "pruning.rate"),
    (["method=wr", "method.retrain_epochs=500"], "method.retrain_epochs"),
    (["train.bogus_key=1"], "train.bogus_key"),
]


@pytest.mark.parametrize(("args", "names"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_nothing_started(cli, tmp_path, args, names):
    proc = cli("experiment=quickstart", *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-run: error:") and names in lines[0]
    assert not (tmp_path / "run").exists()


def test_missing_cifar_root_fails_before_training(cli, tmp_path):
    proc = cli(
        "model=resnet20",
        f"dataset.root={tmp_path / 'nowhere'}",
        "dataset.download=false",
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0]
    assert not (tmp_path / "run" / "results.jsonl").exists()
    assert not (tmp_path / "cache").exists()


def test_lenet_on_mnist_idx_files(cli, tmp_path):
    from datafiles import write_mnist

    root = tmp_path / "mnist"
    write_mnist(root, n_train=200, n_test=100, gz=True)
    cli(
        "model=lenet300_100",
        "dataset=mnist",
        f"dataset.root={root}",
        "dataset.download=false",
        "train.epochs=2",
        "pruning.levels=1",
        "runtime.device=cpu",
    )
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert (
        rows[0]["dataset"] == "mnist" and rows[0]["prunable_params"] == 784 * 300 + 300 * 100 + 1000
    )
