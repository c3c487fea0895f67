"""prune-report's published references (Renda et al., Le & Hua, Zimmer et al.) and its budget
view, on small hand-written run directories (results.jsonl as the runner writes them; no
training)."""

from __future__ import annotations

import csv
import json
import math
import re
from importlib import resources
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from prune_cli.report import (
    aggregate,
    available_references,
    build_report,
    load_reference,
    load_references,
    main,
    match_references,
    plot_acc_vs_compression,
    plot_accuracy_vs_budget,
)
from prune_cli.report.aggregation import ReportError, load_runs
from prune_cli.report.references import read_reference, reference_names_of

IMAGENET = 1_281_167  # training images per ImageNet epoch
CIFAR = 50_000
SEEDS = (0, 1)


def _run(
    name: str,
    *,
    model,
    dataset,
    pruning,
    criterion,
    one_shot,
    method,
    seed,
    levels,
    dense_acc,
    epochs,
    images_per_epoch,
    t,
    dense_cache=None,
) -> tuple[str, list[dict]]:
    """One run's rows: the dense model (level 0), then ``levels`` as (density, acc) pairs."""
    common = {
        "model": model,
        "dataset": dataset,
        "pruning": pruning,
        "criterion": criterion,
        "one_shot": one_shot,
        "method": method,
        "seed": seed,
        "config_hash": f"{name}-{seed}",
    }
    rows = [
        {
            **common,
            "level": 0,
            "density": 1.0,
            "compression": 1.0,
            "acc": dense_acc,
            "acc_after_prune": None,
            "retrain_epochs": 0,
            "epochs": epochs,
            "images_seen": epochs * images_per_epoch,
            "dense_cache": dense_cache or f"dense-{name}",
        }
    ]
    for level, (density, acc) in enumerate(levels, 1):
        row = {
            **common,
            "level": level,
            "density": density,
            "compression": 1.0 / density,
            "acc": acc + 0.001 * seed,
            "acc_after_prune": acc / 2,
            "retrain_epochs": t,
            "images_seen": round(t * images_per_epoch),
        }
        if criterion == "l1_filter" or pruning.startswith("taylor"):
            row["prune"] = {
                "params_before": 25_557_032,
                "params_after": round(25_557_032 * density),
                "flops_before": 4_100_000_000,
                "flops_after": round(4_100_000_000 * density),
            }
        rows.append(row)
    return f"{name}-{seed}", rows


def _runs() -> dict[str, list[dict]]:
    """The fixture's runs, two seeds each:

    - Le & Hua's structured ImageNet cells: PFEC ResNet-50 DCP30 and ResNet-18 E with CLR (and
      FT, which the slides do not have), Taylor-FO-BN-72 % with FT and CLR;
    - Renda et al.: iterative global magnitude ResNet-56, LRW, t = 182, three levels;
    - Zimmer et al.: BIMP on ResNet-56 (budget 200 = T0 150 + 5 levels of 10 epochs) to 90 %
      sparsity, and LLR at the same budget on the same dense model.
    """
    runs = {}
    imagenet = dict(dataset="imagenet", one_shot=True, epochs=90, images_per_epoch=IMAGENET, t=90)
    for seed in SEEDS:
        for method in ("ft", "clr"):
            runs.update(
                [
                    _run(
                        f"r50-dcp30-{method}",
                        model="resnet50",
                        pruning="l1_filter_resnet50_dcp30",
                        criterion="l1_filter",
                        method=method,
                        seed=seed,
                        levels=[(0.663, 0.755)],
                        dense_acc=0.7615,
                        **imagenet,
                    ),
                    _run(
                        f"r50-taylor72-{method}",
                        model="resnet50",
                        pruning="taylor_fo_bn_resnet50_72",
                        criterion="taylor_fo_bn",
                        method=method,
                        seed=seed,
                        levels=[(0.555, 0.748)],
                        dense_acc=0.7615,
                        **imagenet,
                    ),
                ]
            )
        runs.update(
            [
                _run(
                    "r18-e-clr",
                    model="resnet18",
                    pruning="l1_filter_resnet18_e",
                    criterion="l1_filter",
                    method="clr",
                    seed=seed,
                    levels=[(0.681, 0.690)],
                    dense_acc=0.6976,
                    **imagenet,
                ),
                _run(
                    "r56-lrw",
                    model="resnet56",
                    dataset="cifar10",
                    pruning="global_magnitude",
                    criterion="global_magnitude",
                    one_shot=False,
                    method="lrw",
                    seed=seed,
                    levels=[(0.8, 0.935), (0.64, 0.934), (0.512, 0.933)],
                    dense_acc=0.934,
                    epochs=182,
                    images_per_epoch=CIFAR,
                    t=182,
                ),
            ]
        )
        for method in ("bimp", "llr"):
            runs.update(
                [
                    _run(
                        f"r56-{method}",
                        model="resnet56",
                        dataset="cifar10",
                        pruning="global_magnitude",
                        criterion="global_magnitude",
                        one_shot=False,
                        method=method,
                        seed=seed,
                        levels=[(0.1 ** (k / 5), 0.93 - 0.004 * k) for k in range(1, 6)],
                        dense_acc=0.931,
                        epochs=150,
                        images_per_epoch=CIFAR,
                        t=10,
                        dense_cache=f"dense-r56-bimp-{seed}",
                    ),  # one dense model for both methods
                ]
            )
    return runs


def _write(root: Path, runs: dict[str, list[dict]]) -> Path:
    for name, rows in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("runs"), _runs())


@pytest.fixture(scope="module")
def report_all(runs_dir, tmp_path_factory) -> Path:
    """The report of the fixture's runs with ``--reference all``, PNG and PDF."""
    out = tmp_path_factory.mktemp("report_all")
    build_report([runs_dir], out, reference="all")
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _md_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Markdown tables by their heading: (header, rows)."""
    tables = {}
    for section in text.split("\n## ")[1:]:
        title = section.splitlines()[0]
        lines = [line for line in section.splitlines() if line.startswith("|")]
        split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        if split:
            tables[title] = (split[0], split[2:])
    return tables


def _table(tables: dict, needle: str) -> tuple[list[str], list[list[str]]]:
    (key,) = [k for k in tables if needle in k]
    return tables[key]


# ----------------------------------------------------------------------------------------------
# Shipped references and --reference
# ----------------------------------------------------------------------------------------------


def test_three_papers_ship_with_their_sources():
    assert available_references() == ["lehua2021", "renda2020", "zimmer2023"]
    for name, source in (
        ("renda2020", "rewinding-iclr20-public"),
        ("lehua2021", "e1b8ec333db35e0e32e360151956b0f48f102735"),
        ("zimmer2023", "7bad593701d7285a624575ef52548ff3aefdc3c3"),
    ):
        readme = (resources.files("prune_cli") / "reference" / name / "README.md").read_text()
        assert "PROVENANCE" in readme and source in readme
    lehua = load_reference("lehua2021")
    assert lehua.citation == "Le & Hua" and lehua.retrievable
    # the published CSVs keep their provenance columns
    root = resources.files("prune_cli") / "reference" / "lehua2021"
    with (root / "imagenet_pfec_clr_vs_dcp.csv").open(newline="") as f:
        assert {"source", "notes", "nptm_config"} <= set(csv.DictReader(f).fieldnames)


def test_reference_option_takes_a_name_a_list_or_all():
    assert reference_names_of("lehua2021") == ["lehua2021"]
    assert reference_names_of(" zimmer2023, renda2020 ") == ["zimmer2023", "renda2020"]
    assert reference_names_of("all") == available_references()
    assert reference_names_of("renda2020,all") == ["renda2020", "lehua2021", "zimmer2023"]
    assert [r.name for r in load_references("all")] == available_references()
    for bad, needle in (("nope", "'nope'"), ("renda2020,", "''"), ("renda2020,lehua", "'lehua'")):
        with pytest.raises(ReportError, match=f"unknown reference {needle}"):
            reference_names_of(bad)


def test_bad_name_in_a_list_is_one_line_exit_2(runs_dir, tmp_path, capsys):
    assert main([str(runs_dir), "--out", str(tmp_path), "--reference", "renda2020,nope"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("prune-report: error: unknown reference 'nope'") and "all" in line
    assert captured.out == ""


def test_lehua_configurations_map_to_our_presets():
    cells = load_reference("lehua2021").cells
    matchable = {(c.model, c.pruning, c.method): c for c in cells if c.method}
    assert set(matchable) == {
        ("resnet50", f"taylor_fo_bn_resnet50_{p}", m) for p in (56, 72, 81) for m in ("ft", "clr")
    } | {("resnet18", f"l1_filter_resnet18_{v}", "clr") for v in "efg"} | {
        ("resnet50", f"l1_filter_resnet50_dcp{p}", "clr") for p in (30, 50, 70)
    }
    # % on the slides, fractions here; the DCP rows (another pruning method) never match
    e = matchable[("resnet18", "l1_filter_resnet18_e", "clr")]
    assert (e.acc, e.acc_std, e.dense_acc) == pytest.approx((0.6931, 0.0006, 0.6976))
    assert e.retrain_epochs is None  # the slides give no t: any t matches
    assert sum(c.method is None for c in cells) == 6


# ----------------------------------------------------------------------------------------------
# The overlay: tables, the unmatched list, figures
# ----------------------------------------------------------------------------------------------


def test_lehua_values_appear_in_the_tables(report_all):
    tables = _md_tables((report_all / "report.md").read_text())
    header, rows = _table(tables, "l1_filter_resnet50_dcp30")
    assert header[3:] == ["FT", "CLR", "CLR (Le & Hua)"]  # no FT cell on the slides
    (pruned,) = [r for r in rows if r[1] == "1"]
    assert pruned[header.index("CLR (Le & Hua)")] == "76.03 (-0.12)"  # 76.03 vs 76.15
    header, rows = _table(tables, "taylor_fo_bn_resnet50_72")
    assert header[3:] == ["FT", "FT (Le & Hua)", "CLR", "CLR (Le & Hua)"]
    (pruned,) = [r for r in rows if r[1] == "1"]
    assert pruned[header.index("FT (Le & Hua)")] == "74.50 (-1.65)"
    assert pruned[header.index("CLR (Le & Hua)")] == "75.22 (-0.93)"
    header, rows = _table(tables, "l1_filter_resnet18_e")
    (pruned,) = [r for r in rows if r[1] == "1"]
    assert pruned[header.index("CLR (Le & Hua)")] == "69.31 ± 0.06 (-0.45)"  # the one std
    tex = (report_all / "report.tex").read_text()
    assert "CLR (Le \\& Hua)" in tex and "$76.03$ ($-0.12$)" in tex
    # the CSV: fractions, the published compression and the cell's own name
    rec = next(
        r
        for r in _csv(report_all / "report.csv")
        if r["pruning"] == "l1_filter_resnet50_dcp30" and r["method"] == "clr" and r["level"] == "1"
    )
    assert float(rec["reference_lehua2021_acc"]) == pytest.approx(0.7603)
    assert float(rec["reference_lehua2021_delta_pp"]) == pytest.approx(-0.12)
    assert float(rec["reference_lehua2021_compression"]) == pytest.approx(1 / (1 - 0.337))
    assert rec["reference_lehua2021_t"] == ""  # not on the slides
    assert "DCP30" in rec["reference_lehua2021_cell"]
    assert rec["reference_renda2020_cell"] == rec["reference_zimmer2023_cell"] == ""


def test_all_overlays_each_paper(report_all):
    records = _csv(report_all / "report.csv")
    for name in ("renda2020", "lehua2021", "zimmer2023"):
        assert any(r[f"reference_{name}_cell"] for r in records), name
    renda = [r for r in records if r["reference_renda2020_acc"]]
    assert sorted((r["method"], r["level"]) for r in renda) == [
        ("lrw", "1"),
        ("lrw", "2"),
        ("lrw", "3"),
    ]
    lrw1 = next(r for r in renda if r["level"] == "1")
    assert float(lrw1["reference_renda2020_acc"]) == pytest.approx(0.9382, abs=5e-5)
    tables = _md_tables((report_all / "report.md").read_text())
    header, _ = _table(tables, "resnet56 on cifar10")
    assert header[3:] == ["LRW", "LRW (Renda et al.)", "LLR", "BIMP", "BIMP (Zimmer et al.)"]


def test_zimmer_reports_no_retrievable_values(report_all):
    zimmer = load_reference("zimmer2023")
    assert not zimmer.retrievable
    assert zimmer.cells and all(math.isnan(c.acc) for c in zimmer.cells)
    assert all("NOT RETRIEVED" in c.label for c in zimmer.cells)
    # Table 1: 3 sparsities x 6 methods x 3 t; Table 2: BIMP at 3 sparsities on two networks
    assert len(zimmer.cells) == 3 * 6 * 3 + 2 * 3
    records = _csv(report_all / "report.csv")
    (bimp,) = [r for r in records if r["reference_zimmer2023_cell"]]
    assert (bimp["method"], bimp["level"]) == ("bimp", "5")  # 90 % sparsity, the last level
    assert (
        bimp["reference_zimmer2023_acc"] == ""
        and "NOT RETRIEVED" in bimp["reference_zimmer2023_cell"]
    )
    md = (report_all / "report.md").read_text()
    header, rows = _table(_md_tables(md), "resnet56 on cifar10")
    column = header.index("BIMP (Zimmer et al.)")
    assert [r[column] for r in rows if r[0] == "10"] == ["-"] * 4 + ["n/r"]
    assert "n/r: the paper has this cell, its value could not be retrieved" in md
    assert "Zimmer et al. (zimmer2023): 1 of " in md
    assert "published values could not be retrieved" in md


def test_cells_without_a_published_counterpart_are_listed(runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(runs_dir), "--out", str(out), "--reference", "all", "--formats", "png"]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert "published references:" in lines
    start = "  cells with no published counterpart in "
    lehua = [line for line in lines if line.startswith(start + "Le & Hua (lehua2021): ")]
    dcp30 = next(line for line in lehua if "l1_filter_resnet50_dcp30" in line)
    assert dcp30.endswith(": FT t=90 (level 1)")  # CLR has its slide value
    r56 = next(line for line in lehua if "resnet56 on cifar10" in line)
    assert r56.endswith("LRW t=182 (levels 1-3); LLR t=10 (levels 1-5); BIMP t=10 (levels 1-5)")
    zimmer = [line for line in lines if line.startswith(start + "Zimmer et al. (zimmer2023): ")]
    r56 = next(line for line in zimmer if "resnet56 on cifar10" in line)
    assert r56.endswith("LRW t=182 (levels 1-3); LLR t=10 (levels 1-5); BIMP t=10 (levels 1-4)")
    head = next(line for line in lines if line.startswith("Renda et al. (renda2020): "))
    n_pruned = 5 * 1 + 3 + 2 * 5  # the imagenet runs (one level each), LRW, BIMP and LLR
    assert head == f"Renda et al. (renda2020): 3 of {n_pruned} cells matched"
    # the same list in report.md
    md = (out / "report.md").read_text()
    assert "## Published references" in md
    assert "- cells with no published counterpart in Le & Hua (lehua2021): " in md


def test_overlay_is_drawn_per_paper(runs_dir):
    records = match_references(aggregate(load_runs([runs_dir])), load_references("all"))
    fig = plot_acc_vs_compression(records)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    labels = {line.get_label() for line in lines}
    assert {"LRW (Renda et al.)", "CLR (Le & Hua)", "FT (Le & Hua)"} <= labels
    assert "Zimmer et al.: n/r (published value not retrievable)" in labels
    styles = {line.get_label(): line.get_linestyle() for line in lines}
    assert styles["LRW (Renda et al.)"] == "--" and styles["CLR (Le & Hua)"] == "-."
    # the Le & Hua point of DCP30 sits at the published compression (33.7 % fewer parameters)
    (dcp30,) = [
        line
        for ax in fig.axes
        if "dcp30" in ax.get_title()
        for line in ax.get_lines()
        if line.get_label() == "CLR (Le & Hua)"
    ]
    assert list(dcp30.get_xdata()) == pytest.approx([1 / (1 - 0.337)])
    assert list(dcp30.get_ydata()) == pytest.approx([-0.12])
    legend_text = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert "CLR (Le & Hua)" in legend_text


def test_a_paper_in_the_common_cells_format(tmp_path):
    folder = tmp_path / "mine2024"
    folder.mkdir()
    (folder / "reference.json").write_text(json.dumps({"citation": "Mine", "reader": "cells"}))
    (folder / "cells.csv").write_text(
        "model,dataset,method,pruning,criterion,one_shot,density,retrain_epochs,top1_pct,"
        "top1_std_pct,dense_top1_pct,compression,label\n"
        "resnet56,cifar10,lrw,,global_magnitude,false,0.8,,93.5,0.1,93.4,,Table 9\n"
    )
    ref = read_reference(folder)
    assert (ref.name, ref.citation) == ("mine2024", "Mine")
    (cell,) = ref.cells
    assert (cell.acc, cell.dense_acc, cell.compression) == pytest.approx((0.935, 0.934, 1.25))
    assert cell.one_shot is False and cell.retrain_epochs is None
    rows = [r for rows in _runs().values() for r in rows if r["model"] == "resnet56"]
    records = match_references(aggregate(rows), [ref])
    matched = records[records["reference_mine2024_cell"] != ""]
    assert list(zip(matched["method"], matched["level"])) == [("lrw", 1)]
    assert matched["reference_mine2024_delta_pp"].iloc[0] == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# The budget view
# ----------------------------------------------------------------------------------------------


def test_budget_columns_count_dense_and_every_retraining(report_all):
    records = _csv(report_all / "report.csv")
    by_key = {(r["pruning"], r["method"], int(r["level"])): r for r in records}
    for method in ("bimp", "llr"):  # they share one dense model: it counts for each
        for level in range(6):
            rec = by_key[("global_magnitude", method, level)]
            assert float(rec["budget_epochs"]) == 150 + 10 * level
            assert float(rec["budget_images"]) == (150 + 10 * level) * CIFAR
    assert float(by_key[("global_magnitude", "bimp", 5)]["budget_epochs"]) == 200  # B
    for level in range(4):
        rec = by_key[("global_magnitude", "lrw", level)]
        assert float(rec["budget_epochs"]) == 182 * (1 + level)
        assert float(rec["budget_images"]) == 182 * (1 + level) * CIFAR
    rec = by_key[("l1_filter_resnet50_dcp30", "clr", 1)]
    assert float(rec["budget_epochs"]) == 180 and float(rec["budget_images"]) == 180 * IMAGENET


def test_budget_is_unknown_without_the_dense_epochs(tmp_path):
    runs = {}
    for name, rows in _runs().items():
        if name.startswith("r56-lrw"):
            runs[name] = [{k: v for k, v in r.items() if k != "epochs"} for r in rows]
    _write(tmp_path / "runs", runs)
    for fmt in ("png", "pdf"):
        (tmp_path / f"accuracy_vs_budget.{fmt}").write_bytes(b"stale")
    build_report([tmp_path / "runs"], tmp_path, formats=("png",))
    records = _csv(tmp_path / "report.csv")
    assert all(r["budget_epochs"] == "" for r in records)
    assert all(r["budget_images"] != "" for r in records)  # images_seen is still there
    assert not list(tmp_path.glob("accuracy_vs_budget.*"))


def test_budget_figure_is_written(report_all):
    for fmt in ("png", "pdf"):
        path = report_all / f"accuracy_vs_budget.{fmt}"
        assert path.is_file() and path.stat().st_size > 1000
    image = mpimg.imread(report_all / "accuracy_vs_budget.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01
    assert (report_all / "accuracy_vs_budget.pdf").read_bytes().startswith(b"%PDF-")


def test_budget_figure_has_a_curve_per_method_and_t_in_epochs_and_images(runs_dir):
    records = aggregate(load_runs([runs_dir]))
    fig = plot_accuracy_vs_budget(records)
    r56 = [ax for ax in fig.axes if ax.get_visible() and "resnet56" in ax.get_title()]
    assert sorted(ax.get_xlabel().split(" (")[0] for ax in r56) == [
        "total training epochs",
        "total training images seen",
    ]
    for ax in r56:
        curves = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
        assert set(curves) == {"lrw t=182", "llr t=10", "bimp t=10"}
        bimp = curves["bimp t=10"]
        scale = 1 if "epochs" in ax.get_xlabel() else CIFAR
        assert list(bimp.get_xdata()) == pytest.approx([scale * (150 + 10 * k) for k in range(6)])
        accs = [93.1] + [100 * (0.93 - 0.004 * k) + 0.05 for k in range(1, 6)]  # mean of 2 seeds
        assert list(bimp.get_ydata()) == pytest.approx(accs)
    assert re.search(r"vs total training spent", fig.get_suptitle())
