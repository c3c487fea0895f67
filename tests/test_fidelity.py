"""Issue 13's checks on real runs: the LR (and momentum) the paper presets apply equal the
authors' schedules, BIMP spends exactly its budget, ALLR's d1 under Zimmer's scope is the formula
over all weights and biases, and a validation split selects the best-validation epoch.

One sweep of tiny runs through the real CLI; the authors' schedules come from
:mod:`prune_cli.authors` (PyTorch's scheduler classes stepped as the authors' code steps them,
sharing no code with :mod:`prune_cli.schedules`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch

from prune_cli.authors import authors_schedule

# LeNet on digits, dense T = 10 epochs of a step recipe (0.1, x0.1 at 5 and 8), 23 steps/epoch
BASE = [
    "experiment=quickstart",
    "train.epochs=10",
    "pruning.levels=1",
    "pruning.rate=0.5",
    "runtime.progress=false",
    "runtime.eval_every=0",
]
LEHUA = ["ft", "lrw", "slr", "clr"]
ZIMMER = ["ft", "lrw", "slr", "clr", "llr", "allr"]
T_RETRAIN = 10


def prune_run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "prune_cli.cli", *args, f"runtime.cache_dir={tmp / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(argv, cwd=tmp, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def lr_log(path: Path) -> tuple[list[float], list[float] | None]:
    with open(path) as f:
        table = list(csv.DictReader(f))
    lrs = [float(r["lr"]) for r in table]
    mom = [float(r["momentum"]) for r in table] if table and "momentum" in table[0] else None
    return lrs, mom


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """Every paper preset's method retraining one level of t = 10 after the same dense model."""
    tmp = tmp_path_factory.mktemp("fidelity")
    methods = [f"{m}_lehua2021" for m in LEHUA] + [f"{m}_zimmer2023" for m in ZIMMER]
    prune_run(
        tmp,
        "-m",
        *BASE,
        f"method={','.join(methods)}",
        f"method.retrain_epochs={T_RETRAIN}",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${hydra:runtime.choices.method}",
    )
    return {m: tmp / "sweep" / m for m in methods}


def expected(paper: str, method: str, run: Path) -> tuple[list[float], list[float] | None]:
    dense, _ = lr_log(run / "lr_level_0.csv")
    level = rows(run)[1]
    return authors_schedule(
        paper,
        method,
        T_RETRAIN,
        23,
        T=10,
        lr=0.1,
        milestones=[5, 8],
        gamma=0.1,
        original=dense,
        d1=level["prune"]["d1_all"],
    )


@pytest.mark.parametrize(
    "paper,method",
    [("lehua2021", m) for m in LEHUA] + [("zimmer2023", m) for m in ZIMMER],
)
def test_the_lr_a_preset_applies_is_the_authors(sweep, paper, method):
    run = sweep[f"{method}_{paper}"]
    got_lr, got_m = lr_log(run / "lr_level_1.csv")
    want_lr, want_m = expected(paper, method, run)
    assert len(got_lr) == len(want_lr) == T_RETRAIN * 23
    assert max(abs(a - b) for a, b in zip(got_lr, want_lr)) <= 1e-9
    if want_m is None:
        assert got_m is None  # the recipe's constant momentum
    else:  # Le & Hua's CLR cycles the momentum (OneCycleLR's cycle_momentum=True)
        assert got_m is not None and max(abs(a - b) for a, b in zip(got_m, want_m)) <= 1e-9
        assert min(got_m) == pytest.approx(0.85) and max(got_m) == pytest.approx(0.95)


def test_allr_d1_under_zimmers_scope_is_over_all_weights_and_biases(sweep):
    run = sweep["allr_zimmer2023"]
    level = rows(run)[1]
    dense = torch.load(run / "checkpoints" / "level_00.pt")
    masks = torch.load(run / "checkpoints" / "level_01_pruning.pt")["masks"]
    theta = {k: v.double() for k, v in dense.items() if k.rsplit(".", 1)[-1] in ("weight", "bias")}
    pruned = {k: v * masks[k].double() if k in masks else v for k, v in theta.items()}
    norm_sq = sum(float(v.pow(2).sum()) for v in theta.values())
    pruned_sq = sum(float(v.pow(2).sum()) for v in pruned.values())
    s = level["prune"]["s"]
    d1_all = math.sqrt(abs(norm_sq - pruned_sq)) / (math.sqrt(norm_sq) * math.sqrt(s))
    assert level["prune"]["d1_all"] == pytest.approx(d1_all, rel=1e-6)
    assert level["d1"] == pytest.approx(d1_all, rel=1e-6)  # the scope ALLR used
    assert level["prune"]["d1"] != pytest.approx(d1_all, rel=1e-3)  # prunable-only differs
    d = min(1.0, max(d1_all, T_RETRAIN / 10))
    assert level["d"] == pytest.approx(d, rel=1e-6)


def test_bimp_b21_t0_10_l3_spends_exactly_11_epochs_after_t0(tmp_path):
    prune_run(
        tmp_path,
        *BASE,
        "method=bimp_zimmer2023",
        "method.budget_epochs=21",
        "pruning.levels=3",
        "pruning.rate=null",
        "pruning.target_sparsity=0.9",
        "hydra.run.dir=run",
    )
    rs = rows(tmp_path / "run")
    n_train = rs[0]["images_seen"] // 10
    assert [r["retrain_epochs"] for r in rs[1:]] == [3, 3, 5]  # whole epochs, rest on the last
    assert sum(r["images_seen"] for r in rs[1:]) == 11 * n_train
    assert [r["retrain_steps"] for r in rs[1:]] == [3 * 23, 3 * 23, 5 * 23]


def test_best_validation_selection_reports_both_accuracies(tmp_path):
    prune_run(
        tmp_path,
        *BASE,
        "method=lrw",
        "dataset.val_fraction=0.1",
        "dataset.split=stratified",
        "train.select=best_val",
        "runtime.eval_every=1",
        "hydra.run.dir=run",
    )
    run = tmp_path / "run"
    level = rows(run)[1]
    assert 0 < level["val_acc"] <= 1 and 0 < level["acc"] <= 1
    best = level["best_epoch"]
    assert 1 <= best <= 10
    with open(run / "metrics.csv") as f:
        epochs = [r for r in csv.DictReader(f) if r["level"] == "1"]
    # the row's test accuracy is that of the best-validation epoch's weights
    assert float(epochs[best - 1]["test_acc"]) == pytest.approx(level["acc"])
    n_train = rows(run)[0]["images_seen"] // 10
    assert n_train == 1437 - 144  # 10% of the digits' training set held out
