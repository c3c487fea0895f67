"""Structured L1 filter pruning through the real runner: smaller network, every method, resume."""

from __future__ import annotations

import json

import torch
from conftest import run_inprocess

SMALL = [
    "model=resnet20",
    "dataset=synthetic",
    "dataset.input_shape=[3,16,16]",  # a quarter of CIFAR's cost: seconds, not a minute
    "dataset.loader.n_train=256",
    "dataset.loader.n_test=128",
    "train.epochs=2",
    "train.batch_size=64",
    "pruning=l1_filter",
    "pruning.stage_ratios=[0.5,0.25,0.25]",
    "pruning.levels=2",
    "runtime.device=cpu",
]


def test_l1_filter_levels_shrink_the_network_and_resume(tmp_path):
    run_dir = tmp_path / "lrw"
    rows = run_inprocess(run_dir, *SMALL, "method=lrw", "method.retrain_epochs=1")
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert rows[2]["total_params"] < rows[1]["total_params"] < rows[0]["total_params"]
    assert rows[2]["flops"] < rows[1]["flops"] < rows[0]["dense_flops"]
    assert rows[1]["theoretical_speedup"] > 1.0
    assert {(r["pruning"], r["criterion"], r["one_shot"]) for r in rows} == {
        ("l1_filter", "l1_filter", False)
    }
    inf = rows[1]["prune"]["inference"]
    assert inf["dense_ms"] > 0 and inf["pruned_ms"] > 0  # measured, not asserted faster
    # the checkpoint is the smaller architecture; the pruner's state (the channel plans of the
    # levels so far) is saved beside it
    state = torch.load(run_dir / "checkpoints/level_01.pt")
    assert state["layer1.0.conv1.weight"].shape[0] == 8  # 16 filters at ratio 0.5
    pruning = torch.load(run_dir / "checkpoints/level_01_pruning.pt")
    assert [len(p["layer1.0.conv1"]) for p in pruning["plans"]] == [8]
    assert len(torch.load(run_dir / "checkpoints/level_02_pruning.pt")["plans"]) == 2
    assert not (run_dir / "checkpoints/level_01_plan.pt").exists()
    assert not (run_dir / "checkpoints/level_01_masks.pt").exists()

    # drop the last level and run again: it resumes on the smaller network from level 1
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")
    again = run_inprocess(run_dir, *SMALL, "method=lrw", "method.retrain_epochs=1")
    assert json.loads(lines[2])["total_params"] == again[2]["total_params"]
    assert abs(json.loads(lines[2])["acc"] - again[2]["acc"]) < 1e-9


def test_l1_filter_with_weight_rewinding(tmp_path):
    rows = run_inprocess(
        tmp_path / "wr", *SMALL, "method=wr", "method.retrain_epochs=1", "pruning.levels=1"
    )
    assert rows[1]["rewind_epoch"] == 1 and rows[1]["total_params"] < rows[0]["total_params"]
