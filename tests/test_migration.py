"""Runs and caches of prune-cli format 1 (before the `runtime` node and the pruner interface):
a cached dense model carries over under its new key, an old run directory is one clear line."""

from __future__ import annotations

import json
import os
import sys

import procs
from conftest import compose

from prune_cli.store import FORMAT, DenseCache, dense_hash, legacy_dense_hash

# what format-1 prune-cli (commit e612e2e) keyed these dense models by, computed by that code
FORMAT_1_KEYS = {
    ("experiment=quickstart",): "f2c9b868dc27",
    ("model=resnet56",): "53d4bda85197",
    ("model=resnet50",): "bb98c8503b39",  # ImageNet: the loader's worker count was hashed
    ("model=resnet56", "runtime.eval_batch_size=500"): "e7bd01d134f2",
}


def test_the_legacy_key_is_what_format_1_computed():
    for overrides, key in FORMAT_1_KEYS.items():
        cfg = compose(*overrides)
        assert legacy_dense_hash(cfg)[:12] == key
        assert dense_hash(cfg)[:12] != key


def test_a_format_1_dense_entry_moves_to_its_new_key(tmp_path):
    cfg = compose("experiment=quickstart", f"runtime.cache_dir={tmp_path}")
    old = DenseCache(tmp_path, legacy_dense_hash(cfg))
    old.dir.mkdir(parents=True)
    (old.dir / "final.pt").write_bytes(b"weights")
    (old.dir / "snap_0000.pt").write_bytes(b"snapshot")
    meta = {"acc": 0.9, "epochs": 10, "images_seen": 1, "wall_s": 1.0, "snapshots": [0]}
    (old.dir / "meta.json").write_text(json.dumps(meta))
    cache = DenseCache.of(cfg)
    assert cache.key == dense_hash(cfg) and cache.meta() == meta
    assert (cache.dir / "final.pt").read_bytes() == b"weights" and cache.kept() == [0]
    assert not old.meta_path.exists()
    assert DenseCache.of(cfg).meta() == meta  # once moved, found directly


def test_a_format_1_run_directory_is_refused_with_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config_hash": "0" * 64}) + "\n")
    (run / "results.jsonl").write_text(json.dumps({"level": 0, "acc": 0.5}) + "\n")
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        "experiment=quickstart",
        f"runtime.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "earlier prune-cli" in lines[0] and "format 1" in lines[0]
    assert f"writes {FORMAT}" in lines[0] and str(run) in lines[0]
    assert json.loads((run / "run.json").read_text()) == {"config_hash": "0" * 64}  # untouched
