"""`prune-schedules`: every method's LR over one level, plotted before any GPU time is spent."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import pytest

from prune_cli.plot_schedules import LABELS, curves


def test_curves_of_all_seven_methods_follow_the_recipe():
    data = curves(["model=resnet56", "method.retrain_epochs=40"], steps_per_epoch=4, d1=0.3, s=0.2)
    assert set(LABELS) == {"ft", "wr", "lrw", "slr", "clr", "llr", "allr"} <= set(data)
    xs, lrw = data["lrw"]
    assert len(xs) == 40 * 4 and lrw[0] == pytest.approx(0.001)  # epochs 142..182: LR 0.001
    assert data["ft"][1] == [pytest.approx(0.001)] * 160
    assert data["slr"][1][0] == pytest.approx(0.1) and data["llr"][1][0] == pytest.approx(0.1)
    assert data["allr"][1][0] == pytest.approx(0.1 * 0.3)  # d = max(d1, t/T) = 0.3
    assert data["clr"][1][0] == pytest.approx(1e-4)  # starts at eta_min
    assert len(data["original"][1]) == 182 * 4


def test_command_writes_a_png(tmp_path):
    out = tmp_path / "lr.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prune_cli.plot_schedules",
            "--out",
            str(out),
            "model=resnet20",
            "method.retrain_epochs=30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 800
    bad = subprocess.run(
        [sys.executable, "-m", "prune_cli.plot_schedules", "method.warmup_fraction=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "method.warmup_fraction" in bad.stderr
