"""prune-report: aggregate run directories into tables (CSV, Markdown, LaTeX) and paper figures.

    prune-report DIR... [--out OUTDIR] [--reference NAME[,NAME...]|all] [--metric acc]
                        [--formats png,pdf]

Every ``results.jsonl`` under the given directories is read; rows are grouped by (model,
dataset, pruning, criterion, one_shot, method, retrain_epochs, level) and summarised over seeds.
The accuracy change of a row is its metric minus the dense (level 0) ``acc`` of the same run, in
percentage points; its budget (``budget_epochs``, ``budget_images``) is what its run spent on
training up to that level (dense + every level's retraining). Outputs in OUTDIR:

- ``report.csv`` (every statistic, full precision, the budget, and per reference the matched
  published cell), ``report.md`` and ``report.tex`` (the comparison table: mean ± std over
  seeds per method and compression, a column per paper of ``--reference`` beside each method it
  covers), ``layer_density.csv`` (per-layer density of every level, over seeds);
- figures, each as PNG and PDF (``--formats``): ``acc_vs_compression`` (published values
  dashed), ``acc_vs_retrain_time`` (when a level was retrained for two or more t),
  ``accuracy_vs_budget`` (accuracy vs total training spent, when the runs record it),
  ``layer_density`` and ``layer_density_levels`` (when the runs record per-layer density).

``--reference`` takes a shipped paper's name (``prune_cli/reference/NAME``: ``renda2020``,
``lehua2021``, ``zimmer2023``), a comma list, or ``all``; the console and ``report.md`` then say
per paper how many cells matched and which have no published counterpart.

Modules: ``aggregation`` (reading and pandas aggregation), ``references`` (published results),
``tables``, ``plots``, ``style`` (the one registry of method labels, colours and markers, and
the matplotlib style).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What ``from prune_cli.report import NAME`` finds, imported on first use (PEP 562): pandas and
# matplotlib load only when a report is made, not for ``prune_cli.report.style`` alone.
_EXPORTS = {
    "ReportError": "aggregation",
    "aggregate": "aggregation",
    "failed_runs": "aggregation",
    "layer_frame": "aggregation",
    "load_runs": "aggregation",
    "METHODS": "style",
    "available_references": "references",
    "load_reference": "references",
    "load_references": "references",
    "match_reference": "references",
    "match_references": "references",
    "reference_summary": "references",
    "plot_acc_vs_compression": "plots",
    "plot_acc_vs_retrain_time": "plots",
    "plot_accuracy_vs_budget": "plots",
    "plot_layer_density": "plots",
    "plot_layer_density_levels": "plots",
}

__all__ = [*_EXPORTS, "build_report", "comparison_table", "main", "report_outputs"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TABLES = ("report.csv", "report.md", "report.tex", "layer_density.csv")
FIGURES = (
    "acc_vs_compression",
    "acc_vs_retrain_time",
    "accuracy_vs_budget",
    "layer_density",
    "layer_density_levels",
)
DEFAULT_FORMATS = ("png", "pdf")
FORMATS = ("png", "pdf", "svg")


def build_report(
    dirs: list[Path],
    out: Path,
    reference: str | None = None,
    metric: str = "acc",
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> Path:
    """Aggregate the runs under ``dirs`` into the tables and figures of ``out`` (see the module).

    A figure that has nothing to show (no level retrained for two t, no budget, no per-layer
    density) is not written, and a stale one from an earlier report there is removed. With
    ``reference`` (a name, a comma list or ``all``), the matching published cells of each paper
    are added (a one-line note on stderr per paper that none matches). Returns the CSV path;
    raises ReportError (one line) on missing directories, unreadable results, unknown names.
    """
    from prune_cli.report import plots
    from prune_cli.report.aggregation import (
        METRICS,
        ReportError,
        aggregate,
        layer_frame,
        load_runs,
        reference_column,
        write_csv,
    )
    from prune_cli.report.references import (
        load_references,
        match_references,
        reference_summary,
    )
    from prune_cli.report.tables import build_tables, to_latex, to_markdown

    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ReportError(
            f"unknown figure format {bad[0] if bad else ''!r} (choose from {', '.join(FORMATS)})"
        )
    refs = load_references(reference) if reference else []
    rows = load_runs([Path(d) for d in dirs])
    records = match_references(aggregate(rows, metric), refs)
    for ref in refs:
        if not (records[reference_column(ref.name, "cell")] != "").any():
            print(
                f"prune-report: no run matches a published {ref.name} cell "
                "(model, dataset, method, pruning, t and density); reporting without it",
                file=sys.stderr,
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(records, out / "report.csv")
    tables = build_tables(records)
    (out / "report.md").write_text(to_markdown(tables, reference_summary(records)))
    (out / "report.tex").write_text(to_latex(tables))
    layers = layer_frame(rows)

    figures = {"acc_vs_compression": lambda: plots.plot_acc_vs_compression(records)}
    if plots.retrain_time_panels(records):
        figures["acc_vs_retrain_time"] = lambda: plots.plot_acc_vs_retrain_time(records)
    if plots.budget_series(records):
        figures["accuracy_vs_budget"] = lambda: plots.plot_accuracy_vs_budget(records)
    if not layers.empty:
        write_csv(layers, out / "layer_density.csv")
        figures["layer_density"] = lambda: plots.plot_layer_density(layers)
        figures["layer_density_levels"] = lambda: plots.plot_layer_density_levels(layers)
    else:
        (out / "layer_density.csv").unlink(missing_ok=True)
    for name in FIGURES:
        # A stale figure from an earlier report of other runs would mislead.
        for fmt in FORMATS:
            (out / f"{name}.{fmt}").unlink(missing_ok=True)
        if name in figures:
            plots.save(figures[name](), out / name, formats)
    return csv_path


def comparison_table(report_csv: Path) -> str:
    """The printable per-method × compression table of a ``report.csv``, then (with reference
    columns) per paper the cells matched and those without a published counterpart."""
    from prune_cli.report.aggregation import read_csv
    from prune_cli.report.tables import build_tables, references_text, to_text

    records = read_csv(report_csv)
    return to_text(build_tables(records)) + references_text(records)


def report_outputs(out: Path) -> list[Path]:
    """The report files that exist in ``out``: tables first, then figures."""
    names = [*TABLES, *(f"{n}.{fmt}" for n in FIGURES for fmt in FORMATS)]
    return [Path(out) / n for n in names if (Path(out) / n).exists()]


def main(argv: Sequence[str] | None = None) -> int:
    """``prune-report``: print the comparison table and write tables and figures; 2 on bad input."""
    if hasattr(signal, "SIGPIPE"):  # `prune-report ... | head` ends quietly, as a Unix tool does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(
        prog="prune-report",
        description="Aggregate prune-run run or sweep directories into tables and figures.",
    )
    parser.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories"
    )
    parser.add_argument("--out", type=Path, help="output directory (default: the first DIR)")
    parser.add_argument(
        "--reference",
        metavar="NAME[,NAME...]|all",
        help="overlay published results of the papers shipped in prune_cli/reference "
        "(renda2020, lehua2021, zimmer2023): a name, a comma list, or all",
    )
    parser.add_argument(
        "--metric", default="acc", help="row value to aggregate: acc (default) or acc_after_prune"
    )
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="figure formats, comma-separated, of png, pdf, svg (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    from prune_cli.report.aggregation import ReportError, failed_runs

    out = args.out or args.dirs[0]
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    try:
        csv_path = build_report(
            args.dirs, out, reference=args.reference, metric=args.metric, formats=formats
        )
    except ReportError as e:
        print(f"prune-report: error: {e}", file=sys.stderr)
        return 2
    print(comparison_table(csv_path), end="")
    failed = failed_runs(args.dirs)
    if failed:
        print(f"{len(failed)} failed run(s); their finished levels are in the report:")
        for d, error in failed:
            print(f"  FAILED {d}: {error}")
    print(f"wrote {', '.join(str(p) for p in report_outputs(out))}")
    return 0
