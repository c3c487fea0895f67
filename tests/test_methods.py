"""Real tiny runs of every retraining method: the per-step LR written to the run directory
against each method's formula (prune_cli/schedules.py), rewinding, ALLR's d from the saved
weights, BIMP's budget."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import TINY, run_inprocess

T, LR = 6, 0.1
SPE = math.ceil(1437 / 256)  # digits: 1,437 training images in the fixed 80/20 split


def eta(x: float) -> float:
    return LR * (1.0 if x < 3 else 0.1 if x < 5 else 0.01)


def lr_log(run_dir, level):
    with open(run_dir / f"lr_level_{level}.csv") as f:
        return [(int(r["step"]), float(r["epoch"]), float(r["lr"])) for r in csv.DictReader(f)]


def expected(method: str, x: float, t: float, row: dict) -> float:
    eta_max, eta_last = LR, eta((T * SPE - 1) / SPE)
    if method == "ft":
        return eta_last
    if method in ("lrw", "wr"):
        return eta(T - t + x)
    if method == "slr":
        return eta(x * T / t)
    if method == "clr":
        lo, w = 0.001 * eta_max, 0.1 * t
        if x < w:
            return lo + (eta_max - lo) * x / w
        return lo + 0.5 * (eta_max - lo) * (1 + math.cos(math.pi * (x - w) / (t - w)))
    if method == "llr":
        return eta_max * (1 - x / t)
    if method == "allr":
        d = min(1.0, max(row["d1"], t / T))
        return d * eta_max * (1 - x / t)
    raise AssertionError(method)


@pytest.mark.parametrize("method", ["ft", "wr", "lrw", "slr", "clr", "llr", "allr"])
def test_per_step_lr_of_real_runs(tmp_path, method):
    t = 4
    rows = run_inprocess(tmp_path / method, *TINY, f"method={method}", f"method.retrain_epochs={t}")
    assert [r["level"] for r in rows] == [0, 1, 2]
    dense = lr_log(tmp_path / method, 0)
    assert len(dense) == T * SPE
    assert all(lr == pytest.approx(eta(i / SPE)) for i, _, lr in dense)
    for row in rows[1:]:
        log = lr_log(tmp_path / method, row["level"])
        assert len(log) == t * SPE  # the last step included, nothing more
        for step, epoch, lr in log:
            assert epoch == pytest.approx(step / SPE, abs=1e-6)
            assert lr == pytest.approx(expected(method, step / SPE, t, row), rel=1e-6, abs=1e-12)
        assert row["retrain_epochs"] == t and row["method"] == method


def test_allr_start_matches_saved_weights(tmp_path):
    t = 2
    run_dir = tmp_path / "allr"
    rows = run_inprocess(run_dir, *TINY, "method=allr", f"method.retrain_epochs={t}")
    for row in rows[1:]:
        k = row["level"]
        before = torch.load(run_dir / f"checkpoints/level_{k - 1:02d}.pt")
        mask = torch.load(run_dir / f"checkpoints/level_{k:02d}_pruning.pt")["masks"]
        theta = torch.cat([before[n].flatten() for n in mask])
        theta_p = torch.cat([(before[n] * mask[n]).flatten() for n in mask])
        s = 0.2
        d1 = float((theta - theta_p).norm() / (theta.norm() * math.sqrt(s)))
        d = min(1.0, max(d1, t / T))
        assert row["d1"] == pytest.approx(d1, rel=1e-4)
        assert row["prune"]["d1"] == pytest.approx(d1, rel=1e-4) and row["prune"]["s"] == s
        assert row["d"] == pytest.approx(d, rel=1e-4)
        assert lr_log(run_dir, k)[0][2] == pytest.approx(d * LR, rel=1e-4)


def test_weight_rewinding_starts_from_dense_snapshot(tmp_path):
    t = 4
    run_dir = tmp_path / "wr"
    rows = run_inprocess(run_dir, *TINY, "method=wr", f"method.retrain_epochs={t}")
    snap = torch.load(
        tmp_path / "cache" / "dense" / rows[0]["dense_cache"] / f"snap_{T - t:04d}.pt"
    )
    final = torch.load(run_dir / "checkpoints/level_00.pt")
    assert any(not torch.equal(snap[k], final[k]) for k in snap)
    assert rows[1]["rewind_epoch"] == T - t


def test_bimp_spends_exactly_the_budget(tmp_path):
    run_dir = tmp_path / "bimp"
    rows = run_inprocess(
        run_dir,
        "experiment=bimp",
        "model=lenet300_100",
        "train.batch_size=256",
        "train.epochs=4",
        "method.budget_epochs=10",
        "pruning.levels=3",
        "pruning.target_sparsity=0.5",
    )
    steps = sum(len(lr_log(run_dir, r["level"])) for r in rows)
    assert steps == 10 * SPE  # dense 4 epochs + 3 levels x 2 epochs = B
    assert rows[-1]["density"] == pytest.approx(0.5, abs=1e-4)
    assert all(r["method"] == "bimp" for r in rows)
    dense = lr_log(run_dir, 0)
    assert dense[0][2] == pytest.approx(0.1) and dense[-1][2] == pytest.approx(0.1 / (4 * SPE))


def test_fast_path_switches_run_and_keep_the_masks(tmp_path):
    """torch.compile + bf16 autocast + channels-last through the real runner (CPU inductor)."""
    rows = run_inprocess(
        tmp_path / "fast",
        *TINY,
        "train.epochs=2",
        "method.retrain_epochs=1",
        "runtime.compile=true",
        "train.precision=bf16",
        "runtime.channels_last=true",
    )
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert rows[-1]["acc"] > 0.5  # it learns
    state = torch.load(tmp_path / "fast" / "checkpoints" / "level_02.pt")
    masks = torch.load(tmp_path / "fast" / "checkpoints" / "level_02_pruning.pt")["masks"]
    assert not any(k.startswith("_orig_mod") for k in state)  # a plain state_dict, not the wrapper
    assert all(torch.all(state[n][~m] == 0) for n, m in masks.items())
