"""prune-report and the end-of-sweep callback, on a real tiny sweep run through the real CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import matplotlib.image as mpimg
import procs
import pytest
from matplotlib.container import BarContainer
from omegaconf import OmegaConf

from prune_cli.callbacks import ReportOnMultirunEnd
from prune_cli.report import (
    aggregate,
    build_report,
    comparison_table,
    load_reference,
    main,
    match_reference,
    plot_acc_vs_compression,
    report_outputs,
)
from prune_cli.report.aggregation import layer_frame, layer_order, load_runs
from prune_cli.report.plots import plot_layer_density

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real sweep shared by the module: FT and LRW × 2 seeds × t ∈ {1, 2}, 2 levels each.

    The report callback is added on the command line, so the sweep also exercises it through
    Hydra's real multirun path.
    """
    root = tmp_path_factory.mktemp("report")
    sweep_dir = root / "sweep"
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        "-m",
        "experiment=quickstart",
        "method=ft,lrw",
        f"seed={','.join(map(str, SEEDS))}",
        "train.epochs=2",
        "pruning.levels=2",
        "method.retrain_epochs=1,2",
        f"hydra.sweep.dir={sweep_dir}",
        f"runtime.cache_dir={root / 'cache'}",
        "runtime.progress=false",
        "++hydra.callbacks.report._target_=prune_cli.callbacks.ReportOnMultirunEnd",
    ]
    # One thread: LeNet is too small to gain from more, and idle OpenMP threads spin under load.
    env = {**os.environ, "PRUNE_CLI_DATA": str(root / "data"), "OMP_NUM_THREADS": "1"}
    proc = procs.run(argv, cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sweep_dir, proc


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    """The report of the sweep, built once for the tests that only read it."""
    out = tmp_path_factory.mktemp("report_out")
    build_report([sweep[0]], out)
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _runs(sweep_dir: Path) -> list[list[dict]]:
    files = sorted(sweep_dir.rglob("results.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines() if line] for f in files]


def test_csv_statistics_match_the_runs(sweep, report):
    sweep_dir, _ = sweep
    csv_path = report / "report.csv"
    got = {
        (r["method"], float(r["retrain_epochs"]), int(r["level"])): r for r in _read_csv(csv_path)
    }
    # Recompute independently: pruned levels per (method, t, level); the dense model per seed.
    accs, deltas, dense = defaultdict(list), defaultdict(list), defaultdict(dict)
    for rows in _runs(sweep_dir):
        dense_acc = next(r["acc"] for r in rows if r["level"] == 0)
        for r in rows:
            if r["level"] == 0:
                dense[r["method"]][r["seed"]] = r["acc"]
                continue
            key = (r["method"], float(r["retrain_epochs"]), r["level"])
            accs[key].append(r["acc"])
            deltas[key].append(100 * (r["acc"] - dense_acc))
    assert len(accs) == 2 * 2 * 2  # methods × t × levels
    for key, values in accs.items():
        row = got[key]
        assert int(row["n"]) == len(values) == len(SEEDS)
        assert float(row["acc_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["acc_std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["acc_median"]) == pytest.approx(statistics.median(values))
        assert float(row["acc_min"]) == pytest.approx(min(values))
        assert float(row["acc_max"]) == pytest.approx(max(values))
        assert float(row["delta_pp_mean"]) == pytest.approx(statistics.fmean(deltas[key]))
        assert float(row["density"]) == pytest.approx(0.8 ** key[2], abs=1e-4)
    for method, by_seed in dense.items():
        # Runs that differ only in t share one dense model per seed: counted once.
        row = got[(method, 0.0, 0)]
        assert int(row["n"]) == len(by_seed) == len(SEEDS)
        assert float(row["acc_mean"]) == pytest.approx(statistics.fmean(by_seed.values()))


def test_budget_columns_from_the_real_rows(sweep, report):
    """budget_epochs / budget_images: the run's dense training plus every level's retraining so
    far, from the rows the runner wrote (each run counts the dense model it shares)."""
    sweep_dir, _ = sweep
    epochs, images = defaultdict(list), defaultdict(list)
    for rows in _runs(sweep_dir):
        rows = sorted(rows, key=lambda r: r["level"])
        spent_epochs, spent_images = rows[0]["epochs"], rows[0]["images_seen"]
        assert spent_epochs == 2 and spent_images > 0
        for r in rows:
            if r["level"]:
                spent_epochs += r["retrain_epochs"]
                spent_images += r["images_seen"]
            key = (r["method"], float(r["retrain_epochs"]), r["level"])
            epochs[key].append(spent_epochs)
            images[key].append(spent_images)
    records = _read_csv(report / "report.csv")
    assert len(records) == len(epochs) == 2 + 2 * 2 * 2
    for r in records:
        key = (r["method"], float(r["retrain_epochs"]), int(r["level"]))
        assert float(r["budget_epochs"]) == pytest.approx(statistics.fmean(epochs[key]))
        assert float(r["budget_images"]) == pytest.approx(statistics.fmean(images[key]))
        assert float(r["budget_epochs"]) == 2 + key[1] * key[2]


FIGURES = (
    "acc_vs_compression",
    "acc_vs_retrain_time",
    "accuracy_vs_budget",
    "layer_density",
    "layer_density_levels",
)


def _check_pdf(path: Path) -> None:
    """A PDF: its header, no Type 3 fonts (publishers reject them), and a non-blank page when
    poppler's pdftoppm is there to render it."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:], path
    assert b"/Type3" not in data, f"{path} embeds Type 3 fonts"
    if shutil.which("pdftoppm"):
        procs.run(
            ["pdftoppm", "-png", "-r", "30", "-singlefile", str(path), str(path.with_suffix(""))],
            check=True,
        )
        page = mpimg.imread(path.with_suffix(".png"))
        assert page.shape[0] > 50 and page.std() > 0.01, f"{path} renders blank"


def test_figures_are_valid_png_and_pdf(report):
    for name in FIGURES:
        image = mpimg.imread(report / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image.std() > 0.01, f"{name} is blank"
        _check_pdf(report / f"{name}.pdf")
        assert not (report / f"{name}.svg").exists()  # not asked for


def test_retrain_time_plot_needs_two_retrain_lengths(sweep, tmp_path):
    sweep_dir, _ = sweep
    for fmt in ("png", "pdf"):  # a stale figure of an earlier report must go
        (tmp_path / f"acc_vs_retrain_time.{fmt}").write_bytes(b"stale")
    run = next(p.parent for p in sweep_dir.rglob("results.jsonl"))
    build_report([run], tmp_path, formats=("png",))
    assert (tmp_path / "acc_vs_compression.png").is_file()
    assert not list(tmp_path.glob("acc_vs_retrain_time.*"))


def test_cli_prints_the_table_and_writes_svg_on_request(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    assert main([str(sweep_dir), "--out", str(tmp_path), "--formats", "svg"]) == 0
    out = capsys.readouterr().out
    assert "FT" in out and "LRW" in out and "1.25x" in out and "1.56x" in out
    written = ", ".join(str(p) for p in report_outputs(tmp_path))
    assert out == comparison_table(tmp_path / "report.csv") + f"wrote {written}\n"
    for name in ("report.csv", "report.md", "report.tex", "layer_density.csv"):
        assert str(tmp_path / name) in written
    svg = (tmp_path / "acc_vs_compression.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "</svg>" in svg
    assert not list(tmp_path.glob("*.p[nd][gf]"))  # only the formats asked for


# ----------------------------------------------------------------------------------------------
# Markdown and LaTeX tables: their numbers are the CSV's
# ----------------------------------------------------------------------------------------------

MD_CELL = re.compile(
    r"^(\*\*)?(?P<mean>\d+\.\d\d)(?: ± (?P<std>\d+\.\d\d))?(\*\*)?"
    r"(?: \((?P<delta>[+-]\d+\.\d\d)\))?$"
)
TEX_CELL = re.compile(
    r"^\$(\\mathbf\{)?(?P<mean>\d+\.\d\d)\}?(?: \\pm (?P<std>\d+\.\d\d))?\$"
    r"(?: \(\$(?P<delta>[+-]\d+\.\d\d)\$\))?$"
)


def _md_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]  # header, (separator), rows


def _tex_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line.strip() for line in text.splitlines() if line.rstrip().endswith("\\\\")]
    split = [[c.strip() for c in line[:-2].split(" & ")] for line in lines]
    return split[0], split[1:]


def _two(x: float) -> str:
    return f"{round(x, 2) + 0.0:.2f}"


CITED = {"Renda et al.": "renda2020", "Le & Hua": "lehua2021", "Zimmer et al.": "zimmer2023"}


def _check_table(header, rows, cell_re, by_key, label_of) -> int:
    """Every cell of ``rows`` against its CSV record; returns the number of cells checked."""
    checked = 0
    for row in rows:
        t, level = row[0], int(row[1])
        for name, cell in zip(header[3:], row[3:]):
            method = label_of[name.split(" (")[0]]
            rec = by_key[(method, 0.0 if level == 0 else float(t), level)]
            if " (" in name and cell == "n/r":  # a published cell without a retrievable value
                ref = CITED[name.split(" (")[1].rstrip(")").replace("\\&", "&")]
                assert rec[f"reference_{ref}_cell"] and not rec[f"reference_{ref}_acc"]
                checked += 1
                continue
            m = cell_re.match(cell)
            assert m, (name, cell)
            if " (" in name:  # a reference column: the published value and its change
                ref = CITED[name.split(" (")[1].rstrip(")").replace("\\&", "&")]
                assert m["mean"] == _two(100 * float(rec[f"reference_{ref}_acc"]))
                delta = float(rec[f"reference_{ref}_delta_pp"])
                assert m["delta"] == f"{round(delta, 2) + 0.0:+.2f}"
                if rec[f"reference_{ref}_std"]:
                    assert m["std"] == _two(100 * float(rec[f"reference_{ref}_std"]))
            else:
                assert m["mean"] == _two(100 * float(rec["acc_mean"]))
                if rec["acc_std"]:
                    assert m["std"] == _two(100 * float(rec["acc_std"]))
                if level:
                    assert m["delta"] == f"{round(float(rec['delta_pp_mean']), 2) + 0.0:+.2f}"
            assert re.match(r"[\d.]+", row[2])[0] == f"{float(rec['compression']):.2f}"
            checked += 1
    return checked


def _label_of() -> dict[str, str]:
    from prune_cli.report.style import METHODS

    return {s.label: m for m, s in METHODS.items()}


def test_markdown_and_latex_numbers_equal_the_csv(report):
    tmp_path = report
    records = _read_csv(tmp_path / "report.csv")
    by_key = {(r["method"], float(r["retrain_epochs"]), int(r["level"])): r for r in records}
    md_header, md_rows = _md_rows((tmp_path / "report.md").read_text())
    tex_header, tex_rows = _tex_rows((tmp_path / "report.tex").read_text())
    assert md_header == tex_header == ["t", "level", "compression", "FT", "LRW"]
    # level 0 once, then 2 levels for each of 2 t
    assert [r[:2] for r in md_rows] == [["-", "0"], ["1", "1"], ["1", "2"], ["2", "1"], ["2", "2"]]
    assert [r[1] for r in tex_rows] == [r[1] for r in md_rows]
    n = _check_table(md_header, md_rows, MD_CELL, by_key, _label_of())
    assert n == len(md_rows) * 2
    assert _check_table(tex_header, tex_rows, TEX_CELL, by_key, _label_of()) == n
    tex = (tmp_path / "report.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert "\\toprule" in tex and "\\bottomrule" in tex and "lenet300\\_100" in tex


def test_best_mean_of_a_row_is_bold(report):
    _, rows = _md_rows((report / "report.md").read_text())
    for row in rows[1:]:
        means = [float(MD_CELL.match(c)["mean"]) for c in row[3:]]
        bold = [c.startswith("**") for c in row[3:]]
        assert bold == [m == max(means) for m in means], row


# ----------------------------------------------------------------------------------------------
# One curve per (method, t); per-layer density
# ----------------------------------------------------------------------------------------------


def test_one_curve_per_method_and_retrain_length(sweep):
    sweep_dir, _ = sweep
    records = aggregate(load_runs([sweep_dir]))
    fig = plot_acc_vs_compression(records)
    gids = [line.get_gid() for ax in fig.axes for line in ax.get_lines() if line.get_gid()]
    expected = {f"{m} t={t}" for m in ("ft", "lrw") for t in (1, 2)}
    assert sorted(gids) == sorted(expected)  # each exactly once
    pruned = records[records["level"] > 0]
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                method, t = line.get_gid().split(" t=")
                mine = pruned[(pruned["method"] == method) & (pruned["retrain_epochs"] == float(t))]
                assert list(line.get_ydata()) == pytest.approx(list(mine["delta_pp_mean"]))
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert [t.split(" (")[0] for t in titles] == [
        "retraining t = 1 epochs per level",
        "retraining t = 2 epochs per level",
    ]


def test_layer_density_over_seeds_in_network_order(sweep, report):
    sweep_dir, _ = sweep
    layers = _read_csv(report / "layer_density.csv")
    # LeNet-300-100 in network order (results.jsonl stores the layers sorted by name)
    assert [r["layer"] for r in layers[:3]] == ["fc1", "fc2", "fc"]
    expect = defaultdict(list)
    for rows in _runs(sweep_dir):
        for r in rows:
            assert set(r["layer_density"]) == {"fc1", "fc2", "fc"}
            t = 0.0 if r["level"] == 0 else float(r["retrain_epochs"])
            for name, d in r["layer_density"].items():
                expect[(r["method"], t, r["level"], name)].append(d)
    for r in layers:
        key = (r["method"], float(r["retrain_epochs"]), int(r["level"]), r["layer"])
        values = expect[key] if int(r["level"]) else sorted(set(expect[key]))
        assert float(r["layer_density_mean"]) == pytest.approx(statistics.fmean(values))
        assert int(r["n"]) == len(SEEDS)
        if int(r["level"]) == 0:
            assert float(r["layer_density_mean"]) == 1.0
    assert len(layers) == 3 * (2 + 2 * 2 * 2)  # layers × (dense per method + method × t × level)


def test_layer_density_plot_has_a_bar_per_method_and_t(sweep):
    sweep_dir, _ = sweep
    fig = plot_layer_density(layer_frame(load_runs([sweep_dir])))
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2", "fc"]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert sorted(b.patches[0].get_gid() for b in bars) == sorted(
        f"{m} t={t}" for m in ("ft", "lrw") for t in (1, 2)
    )
    assert all(len(b.patches) == 3 for b in bars)


def test_layer_order_puts_the_classifier_last_and_counts_numbers():
    names = ["fc", "layer1.10.conv1", "layer1.9.conv2", "conv1", "layer1.9.conv1", "layer2.0.conv1"]
    assert layer_order(names) == [
        "conv1",
        "layer1.9.conv1",
        "layer1.9.conv2",
        "layer1.10.conv1",
        "layer2.0.conv1",
        "fc",
    ]
    assert layer_order(["fc", "fc2", "fc1"]) == ["fc1", "fc2", "fc"]
    # a row's own `layers` list wins over the guess
    row = {
        **_resnet56_rows()[1],
        "layer_density": {"a": 0.5, "b": 0.25},
        "layers": ["b", "a"],
    }
    frame = layer_frame([row])
    assert list(frame["layer"]) == ["b", "a"]


def test_runs_without_layer_density_still_report(tmp_path):
    runs = tmp_path / "runs"
    for name, rows in _group_by_run(_resnet56_rows(methods=("ft",))).items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (runs / "layer_density.png").write_bytes(b"stale")
    build_report([runs], runs)
    assert (runs / "report.md").is_file() and (runs / "acc_vs_compression.pdf").is_file()
    assert not list(runs.glob("layer_density*"))


def test_metric_after_prune(sweep):
    sweep_dir, _ = sweep
    records = aggregate(load_runs([sweep_dir]), metric="acc_after_prune")
    assert set(records["metric"]) == {"acc_after_prune"}
    assert records[records["level"] == 0]["acc_after_prune_mean"].isna().all()
    assert records[records["level"] > 0]["acc_after_prune_mean"].notna().all()


def _bad_results(tmp_path: Path) -> Path:
    bad = tmp_path / "bad" / "run"
    bad.mkdir(parents=True)
    (bad / "results.jsonl").write_text('{"level": 0, "acc": 0.9\n')
    return bad.parent


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no such directory"),
        ("empty", "no results.jsonl"),
        ("reference", "unknown reference 'nope'"),
        ("corrupt", "results.jsonl:1: not a JSON results row"),
        ("metric", "unknown metric"),
        ("format", "unknown figure format 'eps'"),
    ],
)
def test_errors_exit_2_with_one_line(sweep, tmp_path, capsys, case, needle):
    sweep_dir, _ = sweep
    (tmp_path / "empty").mkdir()
    args = {
        "missing": [str(tmp_path / "missing")],
        "empty": [str(tmp_path / "empty")],
        "reference": [str(sweep_dir), "--out", str(tmp_path), "--reference", "nope"],
        "corrupt": [str(_bad_results(tmp_path))],
        "metric": [str(sweep_dir), "--out", str(tmp_path), "--metric", "loss"],
        "format": [str(sweep_dir), "--out", str(tmp_path), "--formats", "png,eps"],
    }[case]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-report: error: ") and needle in lines[0]
    assert captured.out == ""


def test_console_script_exit_status(tmp_path):
    proc = procs.run(
        [sys.executable, "-m", "prune_cli.report", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"prune-report: error: {tmp_path / 'missing'}: no such directory"


# ----------------------------------------------------------------------------------------------
# Published reference (Renda et al. 2020), on hand-made ResNet-56 rows
# ----------------------------------------------------------------------------------------------


def _renda(network: str) -> tuple[dict, float]:
    """The packaged reference read with plain csv: cells keyed by (method, iterative, t, density)."""
    root = resources.files("prune_cli") / "reference" / "renda2020"
    with (root / "cells_median.csv").open(newline="") as f:
        cells = {
            (
                r["retrain_method"],
                r["iterative"],
                float(r["retrain_epochs"]),
                round(float(r["density"]), 4),
            ): float(r["test_median"])
            for r in csv.DictReader(f)
            if r["network"] == network and r["prune_method"] == "Unstructured"
        }
    with (root / "dense_baselines.csv").open(newline="") as f:
        dense = next(float(r["mean"]) for r in csv.DictReader(f) if r["network"] == network)
    return cells, dense


def _resnet56_rows(methods=("ft", "wr", "lrw"), model="resnet56", one_shot=False) -> list[dict]:
    rows = []
    for method in methods:
        for seed in SEEDS:
            common = {
                "model": model,
                "dataset": "cifar10",
                "pruning": "global_magnitude",
                "criterion": "global_magnitude",
                "one_shot": one_shot,
                "method": method,
                "seed": seed,
                "config_hash": f"{model}-{method}-{seed}",
                "run": f"{model}-{method}-{seed}",
                "dense_acc": 0.934,
            }
            rows.append(
                {
                    **common,
                    "level": 0,
                    "density": 1.0,
                    "compression": 1.0,
                    "acc": 0.934,
                    "retrain_epochs": 0,
                }
            )
            for level in (1, 2, 3):
                density = 0.8**level
                acc = 0.93 - 0.001 * level + 0.001 * seed
                rows.append(
                    {
                        **common,
                        "level": level,
                        "density": density,
                        "compression": 1 / density,
                        "acc": acc,
                        "retrain_epochs": 182.0,
                    }
                )
    return rows


def test_reference_matches_published_cells():
    cells, dense = _renda("resnet56")
    records = match_reference(aggregate(_resnet56_rows()), load_reference("renda2020"))
    names = {"ft": "finetune", "wr": "lottery", "lrw": "lr_finetune"}
    pruned = records[records["level"] > 0]
    assert records["reference_renda2020_acc"].notna().sum() == len(pruned) == 3 * 3
    assert records[records["level"] == 0]["reference_renda2020_acc"].isna().all()
    assert (records[records["level"] == 0]["reference_renda2020_cell"] == "").all()
    for _, rec in pruned.iterrows():
        median = cells[(names[rec["method"]], "True", 182.0, round(0.8 ** rec["level"], 4))]
        assert "resnet56 Unstructured iterative" in rec["reference_renda2020_cell"]
        assert rec["reference_renda2020_acc"] == pytest.approx(median)
        assert rec["reference_renda2020_delta_pp"] == pytest.approx(100 * (median - dense))
        assert rec["reference_renda2020_t"] == 182.0
    # LRW at 1.25x, t = 182: the README's reading guide (93.82 vs a 93.46 dense baseline).
    lrw = pruned[(pruned["method"] == "lrw") & (pruned["level"] == 1)].iloc[0]
    assert lrw["reference_renda2020_acc"] == pytest.approx(0.9382, abs=5e-5)


def _n_matched(rows) -> int:
    records = match_reference(aggregate(rows), load_reference("renda2020"))
    return int(records["reference_renda2020_acc"].notna().sum())


def test_reference_ignores_cells_that_do_not_match():
    assert _n_matched(_resnet56_rows(model="lenet300_100")) == 0
    assert _n_matched(_resnet56_rows(methods=("slr",))) == 0
    # One-shot ResNet-56 cells exist at the same densities: they match as iterative=False.
    assert _n_matched(_resnet56_rows(one_shot=True)) == 9


def test_reference_overlay_is_drawn(tmp_path, capsys):
    records = match_reference(aggregate(_resnet56_rows()), load_reference("renda2020"))
    fig = plot_acc_vs_compression(records)
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert {"FT (Renda et al.)", "WR (Renda et al.)", "LRW (Renda et al.)"} <= labels
    dashed = [line for ax in fig.axes for line in ax.get_lines() if "Renda" in line.get_label()]
    assert all(line.get_linestyle() == "--" for line in dashed)
    # Through the CLI on the same rows written as a run directory: no "no match" note.
    runs = tmp_path / "runs"
    for name, rows in _group_by_run(_resnet56_rows()).items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(runs), "--reference", "renda2020"]) == 0
    assert "no run matches" not in capsys.readouterr().err
    assert mpimg.imread(runs / "acc_vs_compression.png").ndim == 3


def test_reference_columns_in_the_tables_equal_the_csv(tmp_path):
    runs = tmp_path / "runs"
    for name, rows in _group_by_run(_resnet56_rows()).items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report([runs], tmp_path, reference="renda2020")
    records = _read_csv(tmp_path / "report.csv")
    by_key = {(r["method"], float(r["retrain_epochs"]), int(r["level"])): r for r in records}
    for text, split, cell_re in (
        ((tmp_path / "report.md").read_text(), _md_rows, MD_CELL),
        ((tmp_path / "report.tex").read_text(), _tex_rows, TEX_CELL),
    ):
        header, rows = split(text)
        assert header[3:] == [
            "FT",
            "FT (Renda et al.)",
            "WR",
            "WR (Renda et al.)",
            "LRW",
            "LRW (Renda et al.)",
        ]
        checked = _check_table(header, rows[1:], cell_re, by_key, _label_of())
        assert checked == 3 * 6
    # the README's reading guide: LRW at 1.25x, published 93.82 (+0.36 vs 93.46)
    _, rows = _md_rows((tmp_path / "report.md").read_text())
    lrw = next(r for r in records if r["method"] == "lrw" and r["level"] == "1")
    assert (
        rows[1][header.index("LRW (Renda et al.)")]
        == f"{100 * float(lrw['reference_renda2020_acc']):.2f} (+0.36)"
    )


def _group_by_run(rows: list[dict]) -> dict[str, list[dict]]:
    """Hand-made rows as the results.jsonl rows of each run (without the loader's own keys)."""
    by_run = defaultdict(list)
    for r in rows:
        by_run[r["run"]].append({k: v for k, v in r.items() if k not in ("run", "dense_acc")})
    return by_run


def test_reference_without_match_says_so_once(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    build_report([sweep_dir], tmp_path, reference="renda2020", formats=("png",))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run matches a published renda2020 cell" in err[0]
    assert (tmp_path / "acc_vs_compression.png").is_file()


def test_reference_is_packaged_with_provenance():
    root = resources.files("prune_cli") / "reference" / "renda2020"
    readme = (root / "README.md").read_text()
    assert "PROVENANCE" in readme and "rewinding-iclr20-public" in readme and "273e67d" in readme
    assert math.isclose(load_reference("renda2020").dense["resnet56"], 0.9346, abs_tol=1e-4)


# ----------------------------------------------------------------------------------------------
# The end-of-sweep callback
# ----------------------------------------------------------------------------------------------


def test_callback_reported_the_real_sweep(sweep):
    sweep_dir, proc = sweep
    for name in ("report.csv", "report.md", "report.tex", "layer_density.csv"):
        assert (sweep_dir / name).is_file(), name
    for name in FIGURES:
        assert (sweep_dir / f"{name}.png").is_file() and (sweep_dir / f"{name}.pdf").is_file()
    assert comparison_table(sweep_dir / "report.csv") in proc.stdout


def test_callback_on_a_sweep_dir(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    copy = tmp_path / "copy"
    for f in sweep_dir.rglob("results.jsonl"):
        (copy / f.parent.name).mkdir(parents=True)
        (copy / f.parent.name / "results.jsonl").write_bytes(f.read_bytes())
    ReportOnMultirunEnd().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(copy)}}})
    )
    assert (copy / "report.csv").is_file() and (copy / "acc_vs_retrain_time.png").is_file()
    assert "LRW" in capsys.readouterr().out


def test_callback_never_raises(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})
    with caplog.at_level(logging.WARNING, logger="prune_cli.callbacks"):
        ReportOnMultirunEnd(reference="renda2020").on_multirun_end(config)
    assert "prune-report of the sweep failed" in caplog.text and "no such directory" in caplog.text
