"""`prune-schedules`: every method's LR over one level, plotted before any GPU time is spent."""

from __future__ import annotations

import sys

import matplotlib.image
import procs
import pytest
from matplotlib.colors import to_hex

from prune_cli.plot_schedules import (
    LABELS,
    authors_curves,
    coinciding,
    curves,
    max_difference,
    plot,
    plot_authors,
)
from prune_cli.report.style import METHODS


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


def test_coinciding_schedules_are_one_line_named_together():
    from prune_cli.cli import _compose

    overrides = ["model=resnet56", "method.retrain_epochs=40"]
    data = curves(overrides, steps_per_epoch=2, d1=0.0, s=0.2)
    groups = coinciding(data)
    # LRW replays the last 40 of 182 epochs at 0.001, FT's last LR; WR's LR is LRW's
    assert ["ft", "wr", "lrw"] in groups
    assert sorted(m for g in groups for m in g) == sorted(LABELS)
    fig = plot(data, _compose("config", None, overrides), 0.0)
    ax = fig.axes[1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [" = ".join(LABELS[m] for m in g) for g in groups]
    assert "FT = WR = LRW" in labels
    # every method drawn in its report colour, those of a shared curve dashed in turn
    lines = ax.get_lines()
    assert sorted(to_hex(line.get_color()) for line in lines) == sorted(
        METHODS[m].color for m in LABELS
    )
    shared = [line for line in lines if to_hex(line.get_color()) == METHODS["wr"].color]
    assert shared[0].get_linestyle() == "--"


def test_command_writes_a_png(tmp_path):
    out = tmp_path / "lr.png"
    proc = procs.run(
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
    bad = procs.run(
        [sys.executable, "-m", "prune_cli.plot_schedules", "method.warmup_fraction=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "method.warmup_fraction" in bad.stderr


@pytest.mark.parametrize(
    "paper,overrides,methods",
    [
        ("lehua2021", ["method.retrain_epochs=40"], ["ft", "lrw", "slr", "clr"]),
        # with a budget (T0 = 150, B = 200, L = 5: t = 10), BIMP too
        ("zimmer2023", ["experiment=bimp"], ["ft", "lrw", "slr", "clr", "llr", "allr", "bimp"]),
    ],
)
def test_authors_option_draws_each_preset_beside_the_authors_code(paper, overrides, methods):
    from prune_cli.cli import _compose

    data = authors_curves(["model=resnet56", *overrides], paper, steps_per_epoch=4, d1=0.3, s=0.2)
    assert list(data) == methods
    for name, d in data.items():
        assert len(d["ours"]) == len(d["theirs"]) == d["t"] * 4
        assert max_difference(d["ours"], d["theirs"]) <= 1e-9, name
        assert max_difference(d["ours_momentum"], d["theirs_momentum"]) <= 1e-9, name
    assert (data["clr"]["theirs_momentum"] is not None) == (paper == "lehua2021")
    fig = plot_authors(data, _compose("config", None, ["model=resnet56", *overrides]), paper)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == len(methods)
    assert all(
        ax.get_title().startswith(METHODS[m].label + ": max |ΔLR|") for ax, m in zip(shown, methods)
    )
    assert all([line.get_linestyle() for line in ax.get_lines()] == ["-", "--"] for ax in shown)


def test_authors_option_of_the_command(tmp_path, capsys):
    from prune_cli.plot_schedules import main

    out = tmp_path / "authors.png"
    main(["--authors", "lehua2021", "--steps-per-epoch", "4", "--out", str(out), "model=resnet20"])
    assert matplotlib.image.imread(out).shape[1] > 800
    with pytest.raises(SystemExit) as e:
        main(["--authors", "renda2020"])
    assert e.value.code == 2 and "--authors" in capsys.readouterr().err
    # the authors' code runs whole epochs only: one line, exit 2
    with pytest.raises(SystemExit) as e:
        main(["--authors", "zimmer2023", "model=resnet20", "method.retrain_epochs=2.5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "whole epochs" in err and len(err.strip().splitlines()) == 1
