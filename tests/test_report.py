"""prune-report and the end-of-sweep callback, on a real tiny sweep run through the real CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import matplotlib.image as mpimg
import pytest
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
)

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
        f"cache_dir={root / 'cache'}",
        "progress=false",
        "++hydra.callbacks.report._target_=prune_cli.callbacks.ReportOnMultirunEnd",
    ]
    # One thread: LeNet is too small to gain from more, and idle OpenMP threads spin under load.
    env = {**os.environ, "PRUNE_CLI_DATA": str(root / "data"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sweep_dir, proc


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _runs(sweep_dir: Path) -> list[list[dict]]:
    files = sorted(sweep_dir.rglob("results.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines() if line] for f in files]


def test_csv_statistics_match_the_runs(sweep, tmp_path):
    sweep_dir, _ = sweep
    csv_path = build_report([sweep_dir], tmp_path)
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


def test_plots_are_valid_images(sweep, tmp_path):
    sweep_dir, _ = sweep
    build_report([sweep_dir], tmp_path)
    for name in ("acc_vs_compression.png", "acc_vs_retrain_time.png"):
        image = mpimg.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image.std() > 0.01, f"{name} is blank"


def test_retrain_time_plot_needs_two_retrain_lengths(sweep, tmp_path):
    sweep_dir, _ = sweep
    run = next(p.parent for p in sweep_dir.rglob("results.jsonl"))
    build_report([run], tmp_path)
    assert (tmp_path / "acc_vs_compression.png").is_file()
    assert not (tmp_path / "acc_vs_retrain_time.png").exists()


def test_cli_prints_the_table(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    assert main([str(sweep_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FT" in out and "LRW" in out and "1.25x" in out and "1.56x" in out
    assert out == comparison_table(tmp_path / "report.csv") + f"wrote {_written(tmp_path)}\n"


def _written(out: Path) -> str:
    names = ("report.csv", "acc_vs_compression.png", "acc_vs_retrain_time.png")
    return ", ".join(str(out / n) for n in names)


def test_metric_after_prune(sweep, tmp_path):
    sweep_dir, _ = sweep
    rows = _read_csv(build_report([sweep_dir], tmp_path, metric="acc_after_prune"))
    assert {r["metric"] for r in rows} == {"acc_after_prune"}
    assert all(r["acc_after_prune_mean"] == "" for r in rows if r["level"] == "0")
    assert all(r["acc_after_prune_mean"] != "" for r in rows if r["level"] != "0")


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
    }[case]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-report: error: ") and needle in lines[0]
    assert captured.out == ""


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
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
    records = aggregate(_resnet56_rows())
    matches = match_reference(records, load_reference("renda2020"))
    names = {"ft": "finetune", "wr": "lottery", "lrw": "lr_finetune"}
    pruned = [r for r in records if r["level"] > 0]
    assert len(matches) == len(pruned) == 3 * 3
    for rec in pruned:
        key = (*(rec[k] for k in ("model", "dataset", "pruning", "criterion", "one_shot")),)
        key += (rec["method"], rec["retrain_epochs"], rec["level"], rec["density"])
        median = cells[(names[rec["method"]], "True", 182.0, round(0.8 ** rec["level"], 4))]
        assert matches[key]["test_median"] == pytest.approx(median)
        assert matches[key]["delta_pp"] == pytest.approx(100 * (median - dense))
    # LRW at 1.25x, t = 182: the README's reading guide (93.82 vs a 93.46 dense baseline).
    lrw = next(m for k, m in matches.items() if k[5] == "lrw" and k[7] == 1)
    assert lrw["test_median"] == pytest.approx(0.9382, abs=5e-5)


def test_reference_ignores_cells_that_do_not_match():
    ref = load_reference("renda2020")
    assert match_reference(aggregate(_resnet56_rows(model="lenet300_100")), ref) == {}
    assert match_reference(aggregate(_resnet56_rows(methods=("slr",))), ref) == {}
    # One-shot ResNet-56 cells exist at the same densities: they match as iterative=False.
    one_shot = match_reference(aggregate(_resnet56_rows(one_shot=True)), ref)
    assert len(one_shot) == 9


def test_reference_overlay_is_drawn(tmp_path, capsys):
    records = aggregate(_resnet56_rows())
    fig = plot_acc_vs_compression(records, match_reference(records, load_reference("renda2020")))
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


def _group_by_run(rows: list[dict]) -> dict[str, list[dict]]:
    """Hand-made rows as the results.jsonl rows of each run (without the loader's own keys)."""
    by_run = defaultdict(list)
    for r in rows:
        by_run[r["run"]].append({k: v for k, v in r.items() if k not in ("run", "dense_acc")})
    return by_run


def test_reference_without_match_says_so_once(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    build_report([sweep_dir], tmp_path, reference="renda2020")
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
    assert (sweep_dir / "report.csv").is_file()
    assert (sweep_dir / "acc_vs_compression.png").is_file()
    assert (sweep_dir / "acc_vs_retrain_time.png").is_file()
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
