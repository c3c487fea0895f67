"""One run on two processes (torchrun, gloo on CPU) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import sys

import procs
import torch

COMMON = [
    "experiment=quickstart",
    "train.epochs=2",
    "pruning.levels=1",
    "train.batch_size=64",
    "runtime.progress=false",
]


def _run(argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_process_ddp_matches_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(
        [
            sys.executable,
            "-m",
            "prune_cli.cli",
            *COMMON,
            f"runtime.cache_dir={tmp_path / 'c1'}",
            f"hydra.run.dir={one}",
        ],
        tmp_path,
    )
    proc = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "prune_cli.cli",
            *COMMON,
            f"runtime.cache_dir={tmp_path / 'c2'}",
            f"hydra.run.dir={two}",
        ],
        tmp_path,
    )
    assert proc.stdout.count("level  density") == 1  # only rank 0 prints the table
    rows1 = [json.loads(x) for x in (one / "results.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two / "results.jsonl").read_text().splitlines()]
    assert len(rows2) == len(rows1) == 2  # one results file, one row per level
    for a, b in zip(rows1, rows2, strict=True):
        assert a["density"] == b["density"] and a["nonzero_params"] == b["nonzero_params"]
        assert abs(a["acc"] - b["acc"]) < 1e-9
        assert a["images_seen"] == b["images_seen"]
    w1 = torch.load(one / "checkpoints/level_01.pt")
    w2 = torch.load(two / "checkpoints/level_01.pt")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k
    m1 = torch.load(one / "checkpoints/level_01_pruning.pt")["masks"]
    m2 = torch.load(two / "checkpoints/level_01_pruning.pt")["masks"]
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
