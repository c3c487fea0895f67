"""prune-report: aggregate run directories into a CSV, a comparison table and paper figures.

    prune-report DIR... [--out OUTDIR] [--reference renda2020] [--metric acc]

Every ``results.jsonl`` under the given directories is read; rows are grouped by (model,
dataset, pruning, criterion, one_shot, method, retrain_epochs, level) and summarised over seeds.
The accuracy change of a row is its metric minus the dense (level 0) ``acc`` of the same run, in
percentage points. Outputs: ``OUTDIR/report.csv``, ``acc_vs_compression.png`` and, when the runs
retrain for two or more lengths t, ``acc_vs_retrain_time.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import signal
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

# Conventional names and a fixed colour per method, so every figure reads the same way.
METHOD_LABELS = {
    "ft": "FT",
    "wr": "WR",
    "lrw": "LRW",
    "slr": "SLR",
    "clr": "CLR",
    "llr": "LLR",
    "allr": "ALLR",
    "bimp": "BIMP",
}
METHOD_MARKERS = {
    "ft": "o",
    "wr": "s",
    "lrw": "^",
    "slr": "v",
    "clr": "D",
    "llr": "P",
    "allr": "X",
    "bimp": "*",
}
METHOD_COLORS = {
    "ft": "#1f77b4",
    "wr": "#2ca02c",
    "lrw": "#d62728",
    "slr": "#9467bd",
    "clr": "#8c564b",
    "llr": "#e377c2",
    "allr": "#ff7f0e",
    "bimp": "#17becf",
}
BLOCK_KEYS = ("model", "dataset", "pruning", "criterion", "one_shot")
GROUP_KEYS = (*BLOCK_KEYS, "method", "retrain_epochs", "level")
METRICS = ("acc", "acc_after_prune")
STATS = ("mean", "std", "median", "min", "max")
REFERENCE_PACKAGE = "prune_cli"
REFERENCE_DIR = "reference"

# Our model names -> Renda et al.'s `network`, with the dataset that network was trained on.
RENDA_NETWORKS = {
    "resnet20": ("resnet20", "cifar10"),
    "resnet56": ("resnet56", "cifar10"),
    "resnet110": ("resnet110", "cifar10"),
    "vgg16_nofc": ("vgg16_nofc", "cifar10"),
    "resnet50": ("resnet50", "imagenet"),
}
RENDA_METHODS = {"ft": "finetune", "wr": "lottery", "lrw": "lr_finetune"}
RENDA_CRITERIA = {"global_magnitude": "Unstructured"}
# Densities in the reference are rounded to 4 digits for one-shot cells; ours to one weight.
DENSITY_RTOL = 0.02


class ReportError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------


def find_results(dirs: Sequence[Path]) -> list[Path]:
    """Every ``results.jsonl`` under ``dirs`` (each listed once, sorted).

    Raises ReportError naming the first directory that does not exist or holds no results.
    """
    found: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ReportError(f"{d}: no such directory")
        files = sorted(d.rglob("results.jsonl"))
        if not files:
            raise ReportError(f"{d}: no results.jsonl found in this directory or below it")
        for f in files:
            found[f.resolve()] = None
    return list(found)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one run's ``results.jsonl``, one per level (the last row wins on repeats).

    Each row gains ``run`` (the run directory) and ``dense_acc`` (the level-0 ``acc`` of the
    same run, or None when the run has no level-0 row). Raises ReportError naming the file when
    it cannot be read, is not JSON lines, or lacks a grouping key.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read results ({e})") from None
    by_level: dict[int, dict[str, Any]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{lineno}: not a JSON results row ({e.msg})") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}:{lineno}: not a JSON results row (not an object)")
        missing = [k for k in (*GROUP_KEYS, "acc", "density") if k not in row]
        if missing:
            raise ReportError(f"{path}:{lineno}: results row lacks {', '.join(missing)}")
        by_level[int(row["level"])] = row
    if not by_level:
        raise ReportError(f"{path}: empty results file")
    dense = by_level.get(0, {}).get("acc")
    return [
        {**row, "run": str(path.parent), "dense_acc": dense} for _, row in sorted(by_level.items())
    ]


def load_runs(dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """All rows of all runs under ``dirs`` (see ``find_results`` and ``load_rows``)."""
    return [row for f in find_results(dirs) for row in load_rows(f)]


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    """mean, sample std (n − 1; NaN for one value), median, min, max of ``values``."""
    if not values:
        return dict.fromkeys(STATS, math.nan)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _group_key(row: dict[str, Any]) -> tuple:
    key = {k: row[k] for k in GROUP_KEYS}
    key["one_shot"] = bool(key["one_shot"])
    key["retrain_epochs"] = float(key["retrain_epochs"] or 0.0)
    key["level"] = int(key["level"])
    # Three significant digits of density keep runs of different pruning rates apart.
    return (*key.values(), float(f"{float(row['density']):.3g}"))


def aggregate(rows: Iterable[dict[str, Any]], metric: str = "acc") -> list[dict[str, Any]]:
    """One record per group of ``GROUP_KEYS`` (and density), summarised over seeds.

    A record holds the group keys, ``n`` (rows with a value of ``metric``), ``seeds``, the
    ``STATS`` of ``metric`` (as ``{metric}_mean`` ...) and of the accuracy change in percentage
    points (``delta_pp_mean`` ...: 100 · (metric − dense acc of the same run)), and the means of
    density, compression, wall_s and images_seen. Records are sorted by block, method, t, level.
    """
    groups: dict[tuple, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        groups[_group_key(row)][_identity(row)] = row
    records = []
    mixed = 0
    for key, by_identity in groups.items():
        members = list(by_identity.values())
        seeds = [r.get("seed") for r in members]
        mixed += len(seeds) != len(set(seeds))
        values = [float(r[metric]) for r in members if r.get(metric) is not None]
        deltas = [
            100.0 * (float(r[metric]) - float(r["dense_acc"]))
            for r in members
            if r.get(metric) is not None and r.get("dense_acc") is not None
        ]
        rec: dict[str, Any] = dict(zip(GROUP_KEYS, key[: len(GROUP_KEYS)]))
        rec["n"] = len(values)
        rec["seeds"] = " ".join(str(s) for s in sorted({r.get("seed") for r in members}, key=str))
        rec["metric"] = metric
        rec |= {f"{metric}_{k}": v for k, v in _stats(values).items()}
        rec |= {f"delta_pp_{k}": v for k, v in _stats(deltas).items()}
        for col in ("density", "compression", "wall_s", "images_seen"):
            col_values = [float(r[col]) for r in members if r.get(col) is not None]
            rec[f"{col}_mean" if col in ("wall_s", "images_seen") else col] = (
                statistics.fmean(col_values) if col_values else math.nan
            )
        records.append(rec)
    if mixed:
        print(
            f"prune-report: warning: {mixed} group(s) pool runs of the same seed that differ in "
            "settings the report does not group by (e.g. lr); their statistics mix them",
            file=sys.stderr,
        )
    return sorted(records, key=_record_order)


def _identity(row: dict[str, Any]) -> tuple:
    """What makes two rows the same measurement: one dense model at level 0, one run otherwise.

    Runs that differ only in retraining share their dense model, so its row is counted once.
    """
    if int(row["level"]) == 0 and row.get("dense_cache"):
        return ("dense", row["dense_cache"], row.get("seed"))
    return ("run", row.get("config_hash") or row["run"], row.get("seed"))


def _method_rank(method: str) -> tuple[int, str]:
    order = list(METHOD_LABELS)
    return (order.index(method) if method in order else len(order), method)


def _record_order(rec: dict[str, Any]) -> tuple:
    block = tuple(str(rec[k]) for k in BLOCK_KEYS)
    return (
        block,
        _method_rank(rec["method"]),
        rec["retrain_epochs"],
        rec["level"],
        -rec["density"],
    )


def _block(rec: dict[str, Any]) -> tuple:
    return tuple(rec[k] for k in BLOCK_KEYS)


def _plot_reference(ax, refs: dict, line: list[dict], x_key: str, method: str, color) -> None:
    """The published cells that match ``line``'s points, dashed, in the method's colour."""
    ref = [refs[record_key(r)] for r in line if record_key(r) in refs]
    if ref:
        ax.plot(
            [c[x_key] for c in ref],
            [c["delta_pp"] for c in ref],
            ls="--",
            marker=_marker(method),
            mfc="white",
            color=color,
            alpha=0.85,
            label=f"{_label(method)} (Renda et al.)",
        )


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method.upper())


def _block_title(block: tuple) -> str:
    model, dataset, pruning, criterion, one_shot = block
    how = "one-shot" if one_shot else "iterative"
    name = criterion.replace("_", " ")
    extra = f" [{pruning}]" if pruning not in (criterion, "one_shot") else ""
    return f"{model} on {dataset}: {how} {name}{extra}"


def _fmt_t(t: float) -> str:
    return f"{t:g}"


# ----------------------------------------------------------------------------------------------
# CSV and table
# ----------------------------------------------------------------------------------------------


def csv_columns(metric: str) -> list[str]:
    """The columns of ``report.csv`` for ``metric``, in order."""
    return [
        *GROUP_KEYS,
        "density",
        "compression",
        "n",
        "seeds",
        "metric",
        *(f"{metric}_{k}" for k in STATS),
        *(f"delta_pp_{k}" for k in STATS),
        "wall_s_mean",
        "images_seen_mean",
    ]


def write_csv(records: list[dict[str, Any]], path: Path, metric: str = "acc") -> Path:
    """Write ``records`` (from ``aggregate``) to ``path``; NaN is written as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(metric))
        writer.writeheader()
        for rec in records:
            writer.writerow(
                {
                    k: "" if isinstance(v, float) and math.isnan(v) else v
                    for k, v in rec.items()
                    if k in writer.fieldnames
                }
            )
    return path


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table per (model, dataset, pruning): one row per (t, level), one column
    per method, cells ``metric mean ± std (Δ pp vs dense)`` in percent over seeds."""
    if not records:
        return "(no results)"
    metric = records[0]["metric"]
    blocks: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        blocks[_block(rec)].append(rec)
    out: list[str] = []
    for block, recs in blocks.items():
        methods = sorted({r["method"] for r in recs}, key=_method_rank)
        cells: dict[tuple, dict[str, str]] = defaultdict(dict)
        rows: dict[tuple, tuple[float, float]] = {}
        for r in recs:
            # All methods share the dense model, so level 0 is one row whatever t was swept.
            rk = (
                (0.0, 0, 1.0)
                if r["level"] == 0
                else (r["retrain_epochs"], r["level"], r["density"])
            )
            rows[rk] = (r["density"], r["compression"])
            cells[rk][r["method"]] = _cell(r, metric)
        ns = {r["n"] for r in recs}
        n = f"n = {ns.pop()}" if len(ns) == 1 else f"n ≤ {max(ns)}"
        out.append(
            f"{_block_title(block)} | {metric} in %, mean ± std over seeds ({n}), "
            "change vs dense in pp"
        )
        width = max(
            [len(_label(m)) for m in methods]
            + [len(c) for row in cells.values() for c in row.values()]
        )
        head = f"{'t':>5} {'level':>5} {'density':>8} {'compress':>9}"
        head += "".join(f"  {_label(m):<{width}}" for m in methods)
        out += [head.rstrip(), "-" * len(head.rstrip())]
        for rk in sorted(rows):
            density, compression = rows[rk]
            t = "-" if rk[1] == 0 else _fmt_t(rk[0])
            line = f"{t:>5} {rk[1]:>5} {density:>8.4f} {compression:>8.2f}x"
            line += "".join(f"  {cells[rk].get(m, '-'):<{width}}" for m in methods)
            out.append(line.rstrip())
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _cell(rec: dict[str, Any], metric: str) -> str:
    mean, std = rec[f"{metric}_mean"], rec[f"{metric}_std"]
    if math.isnan(mean):
        return "-"
    text = f"{100 * mean:.2f}"
    if not math.isnan(std):
        text += f" ± {100 * std:.2f}"
    delta = rec["delta_pp_mean"]
    if rec["level"] != 0 and not math.isnan(delta):
        text += f" ({delta:+.2f})"
    return text


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The records of a ``report.csv`` with numbers, booleans and NaN restored."""
    ints = {"level", "n"}
    strs = {"model", "dataset", "pruning", "criterion", "method", "seeds", "metric"}
    records = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            rec: dict[str, Any] = {}
            for k, v in raw.items():
                if k in strs:
                    rec[k] = v
                elif k == "one_shot":
                    rec[k] = v == "True"
                elif k in ints:
                    rec[k] = int(v)
                else:
                    rec[k] = float(v) if v != "" else math.nan
            records.append(rec)
    return records


def comparison_table(report_csv: Path) -> str:
    """The printable per-method × compression table of a ``report.csv`` (see ``format_table``)."""
    return format_table(read_csv(report_csv))


# ----------------------------------------------------------------------------------------------
# Published reference results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Published per-cell medians (``cells``) and dense accuracies by network (``dense``)."""

    name: str
    cells: list[dict[str, Any]]
    dense: dict[str, float]


def available_references() -> list[str]:
    """Names accepted by ``--reference`` (folders of packaged reference data)."""
    root = resources.files(REFERENCE_PACKAGE) / REFERENCE_DIR
    return sorted(p.name for p in root.iterdir() if (p / "cells_median.csv").is_file())


def load_reference(name: str) -> Reference:
    """The packaged reference ``name`` (read with importlib.resources, so wheels work too).

    Raises ReportError for an unknown name.
    """
    known = available_references()
    if name not in known:
        raise ReportError(f"unknown reference {name!r} (available: {', '.join(known) or 'none'})")
    root = resources.files(REFERENCE_PACKAGE) / REFERENCE_DIR / name
    with (root / "cells_median.csv").open(newline="") as f:
        cells = [
            {
                **r,
                "iterative": r["iterative"] == "True",
                "density": float(r["density"]),
                "retrain_epochs": float(r["retrain_epochs"]),
                "test_median": float(r["test_median"]),
            }
            for r in csv.DictReader(f)
        ]
    with (root / "dense_baselines.csv").open(newline="") as f:
        dense = {r["network"]: float(r["mean"]) for r in csv.DictReader(f)}
    return Reference(name, cells, dense)


def match_reference(records: list[dict[str, Any]], reference: Reference) -> dict[tuple, dict]:
    """The published cell that matches each pruned record, keyed by the record's group key.

    A record matches a cell when its model (and dataset), method, criterion, one-shot flag and
    retrain epochs map onto the cell's and the densities agree within ``DENSITY_RTOL``. The value
    holds the cell's ``compression``, ``density``, ``retrain_epochs``, ``test_median`` and
    ``delta_pp`` (100 · (median − the reference's dense mean for that network)).
    """
    index: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in reference.cells:
        index[(c["network"], c["prune_method"], c["iterative"], c["retrain_method"])].append(c)
    matches: dict[tuple, dict] = {}
    for rec in records:
        net = RENDA_NETWORKS.get(rec["model"])
        if rec["level"] == 0 or net is None or net[1] != rec["dataset"]:
            continue
        key = (
            net[0],
            RENDA_CRITERIA.get(rec["criterion"]),
            not rec["one_shot"],
            RENDA_METHODS.get(rec["method"]),
        )
        for c in index.get(key, []):
            same_t = math.isclose(c["retrain_epochs"], rec["retrain_epochs"], rel_tol=1e-6)
            if same_t and math.isclose(c["density"], rec["density"], rel_tol=DENSITY_RTOL):
                base = reference.dense[net[0]]
                matches[record_key(rec)] = {
                    "compression": 1.0 / c["density"],
                    "density": c["density"],
                    "retrain_epochs": c["retrain_epochs"],
                    "test_median": c["test_median"],
                    "delta_pp": 100.0 * (c["test_median"] - base),
                }
                break
    return matches


def record_key(rec: dict[str, Any]) -> tuple:
    """The group key of an aggregated record (``GROUP_KEYS`` and density)."""
    return (*(rec[k] for k in GROUP_KEYS), rec["density"])


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

# Shading of "rewinding wins": a colour no method uses, drawn under the curves.
WIN_COLOR = "#f5c542"
WIN_LABEL = "WR or LRW better than FT"

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
}


def _grid(n: int, ncols_max: int, w: float = 4.2, h: float = 3.2):
    # A bare Figure needs no pyplot backend or global figure registry (safe in callbacks).
    from matplotlib.figure import Figure

    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> None:
    # bbox "tight" keeps the legend that sits below the panels inside the image.
    fig.savefig(path, dpi=160, bbox_inches="tight")


def _shared_legend(fig, axes) -> None:
    """One legend under the panels: each method beside its reference curve, then the rest."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    rows = 2 if any("Renda" in label for label in entries) else 1
    ncol = min(max(math.ceil(len(entries) / rows), 1), 8)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol,
        frameon=False,
    )


def _marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _compression_ticks(ax, values: Iterable[float]) -> None:
    """Label the log axis with the compressions that were run (at most ~8, as '4.77×')."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = sorted(set(round(v, 6) for v in values))
    if len(ticks) > 8:
        step = math.ceil(len(ticks) / 8)
        ticks = ticks[::step]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:.3g}×" for t in ticks])


def plot_acc_vs_compression(records: list[dict[str, Any]], refs: dict[tuple, dict] | None = None):
    """Figure: accuracy change (pp) vs compression (log x), one panel per (model, dataset,
    pruning), one line per method at its longest retraining t, ±std band over seeds, and the
    matched reference medians dashed in the method's colour. Returns the matplotlib Figure."""
    import matplotlib

    refs = refs or {}
    pruned = [r for r in records if r["level"] > 0 and not math.isnan(r["delta_pp_mean"])]
    blocks = sorted({_block(r) for r in pruned}, key=lambda b: tuple(map(str, b)))
    with matplotlib.rc_context(_STYLE):
        fig, axes = _grid(max(len(blocks), 1), 3)
        if not blocks:
            axes[0].text(
                0.5, 0.5, "no pruned levels to plot", ha="center", transform=axes[0].transAxes
            )
        for ax, block in zip(axes, blocks):
            recs = [r for r in pruned if _block(r) == block]
            several_t = len({r["retrain_epochs"] for r in recs}) > 1
            for method in sorted({r["method"] for r in recs}, key=_method_rank):
                mine = [r for r in recs if r["method"] == method]
                t = max(r["retrain_epochs"] for r in mine)
                line = sorted(
                    (r for r in mine if r["retrain_epochs"] == t), key=lambda r: r["compression"]
                )
                x = [r["compression"] for r in line]
                y = [r["delta_pp_mean"] for r in line]
                s = [_nan0(r["delta_pp_std"]) for r in line]
                color = METHOD_COLORS.get(method)
                label = _label(method) + (f" (t={_fmt_t(t)})" if several_t else "")
                ax.plot(x, y, marker=_marker(method), color=color, label=label, zorder=3)
                ax.fill_between(
                    x,
                    [a - b for a, b in zip(y, s)],
                    [a + b for a, b in zip(y, s)],
                    color=color,
                    alpha=0.14,
                    lw=0,
                )
                _plot_reference(ax, refs, line, "compression", method, color)
            ax.axhline(0.0, color="0.35", lw=0.8, ls=":", label="dense")
            ax.set_xscale("log")
            _compression_ticks(ax, [r["compression"] for r in recs])
            ax.set_xlabel("compression ratio (log scale)")
            ax.set_ylabel("accuracy change vs dense (pp)")
            ax.set_title(_block_title(block))
        fig.suptitle("Accuracy change vs compression\n(mean ± std over seeds)", fontsize=10.5)
        fig.tight_layout()
        _shared_legend(fig, axes)
    return fig


def plot_acc_vs_retrain_time(records: list[dict[str, Any]], refs: dict[tuple, dict] | None = None):
    """Figure: accuracy change (pp) vs retrain epochs t, one panel per compression level, one
    line per method with ±std band; the t where max(WR, LRW) beats FT is shaded green.
    Returns the matplotlib Figure."""
    import matplotlib

    refs = refs or {}
    pruned = [r for r in records if r["level"] > 0 and not math.isnan(r["delta_pp_mean"])]
    panels = sorted(
        {(_block(r), r["level"], round(r["density"], 6)) for r in pruned},
        key=lambda p: (tuple(map(str, p[0])), p[1], -p[2]),
    )
    several_blocks = len({p[0] for p in panels}) > 1
    with matplotlib.rc_context(_STYLE):
        fig, axes = _grid(max(len(panels), 1), 4, w=3.6, h=3.0)
        for ax, (block, level, density) in zip(axes, panels):
            recs = [
                r
                for r in pruned
                if _block(r) == block and r["level"] == level and round(r["density"], 6) == density
            ]
            curves: dict[str, dict[float, float]] = {}
            for method in sorted({r["method"] for r in recs}, key=_method_rank):
                line = sorted(
                    (r for r in recs if r["method"] == method), key=lambda r: r["retrain_epochs"]
                )
                x = [r["retrain_epochs"] for r in line]
                y = [r["delta_pp_mean"] for r in line]
                s = [_nan0(r["delta_pp_std"]) for r in line]
                color = METHOD_COLORS.get(method)
                ax.plot(x, y, marker=_marker(method), color=color, label=_label(method), zorder=3)
                ax.fill_between(
                    x,
                    [a - b for a, b in zip(y, s)],
                    [a + b for a, b in zip(y, s)],
                    color=color,
                    alpha=0.12,
                    lw=0,
                )
                curves[method] = dict(zip(x, y))
                _plot_reference(ax, refs, line, "retrain_epochs", method, color)
            _shade_rewinding_wins(ax, curves)
            ax.axhline(0.0, color="0.35", lw=0.8, ls=":", label="dense")
            ts = sorted({r["retrain_epochs"] for r in recs})
            if len(ts) <= 10:
                ax.set_xticks(ts, [_fmt_t(t) for t in ts])
            ax.set_xlabel("retrain epochs t")
            ax.set_ylabel("accuracy change vs dense (pp)")
            title = f"{recs[0]['compression']:.3g}× compression (density {100 * recs[0]['density']:.1f}%)"
            ax.set_title(f"{_block_title(block)}\n{title}" if several_blocks else title)
        head = "Accuracy change vs retraining time (mean ± std over seeds)"
        if panels and not several_blocks:
            head += f"\n{_block_title(panels[0][0])}"
        fig.suptitle(head, fontsize=10.5)
        fig.tight_layout()
        _shared_legend(fig, axes)
    return fig


def _shade_rewinding_wins(ax, curves: dict[str, dict[float, float]]) -> None:
    """Shade the t where the better of WR and LRW is above FT (only at t that FT was run)."""
    rewinders = [curves[m] for m in ("wr", "lrw") if m in curves]
    if "ft" not in curves or not rewinders:
        return
    ts = sorted(t for t in curves["ft"] if any(t in c for c in rewinders))
    if not ts:
        return
    ft = [curves["ft"][t] for t in ts]
    best = [max(c[t] for c in rewinders if t in c) for t in ts]
    wins = [b > f for b, f in zip(best, ft)]
    if not any(wins):
        return
    if len(ts) == 1:
        # One t: fill_between would draw nothing, so mark the winning point's gap instead.
        ax.vlines(ts, ft, best, color=WIN_COLOR, alpha=0.6, lw=6, label=WIN_LABEL, zorder=1)
        return
    ax.fill_between(
        ts,
        ft,
        best,
        where=wins,
        interpolate=True,
        color=WIN_COLOR,
        alpha=0.45,
        zorder=1,
        lw=0,
        label=WIN_LABEL,
    )


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def build_report(
    dirs: list[Path], out: Path, reference: str | None = None, metric: str = "acc"
) -> Path:
    """Aggregate the runs under ``dirs`` into ``out/report.csv`` and the PNG figures.

    Writes ``acc_vs_compression.png`` always and ``acc_vs_retrain_time.png`` when the pruned
    rows have two or more distinct retrain epochs. With ``reference``, overlays the matching
    published medians (a one-line note on stderr when none match). Returns the CSV path;
    raises ReportError (one line) on missing directories, unreadable results, unknown names.
    """
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    ref = load_reference(reference) if reference else None
    records = aggregate(load_runs([Path(d) for d in dirs]), metric)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(records, out / "report.csv", metric)

    refs: dict[tuple, dict] = {}
    if ref is not None:
        refs = match_reference(records, ref)
        if not refs:
            print(
                f"prune-report: no run matches a published {ref.name} cell "
                "(model, dataset, method, pruning, t and density); plotting without it",
                file=sys.stderr,
            )
    fig = plot_acc_vs_compression(records, refs)
    _save(fig, out / "acc_vs_compression.png")
    retrain_t = {r["retrain_epochs"] for r in records if r["level"] > 0}
    time_png = out / "acc_vs_retrain_time.png"
    if len(retrain_t) >= 2:
        fig = plot_acc_vs_retrain_time(records, refs)
        _save(fig, time_png)
    elif time_png.exists():
        # A stale figure from an earlier report of other runs would mislead.
        time_png.unlink()
    return csv_path


def report_outputs(out: Path) -> list[Path]:
    """The report files that exist in ``out`` (CSV first, then PNGs)."""
    names = ("report.csv", "acc_vs_compression.png", "acc_vs_retrain_time.png")
    return [Path(out) / n for n in names if (Path(out) / n).exists()]


def main(argv: Sequence[str] | None = None) -> int:
    """``prune-report``: print the comparison table and write the CSV and PNGs; 2 on bad input."""
    if hasattr(signal, "SIGPIPE"):  # `prune-report ... | head` ends quietly, as a Unix tool does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(
        prog="prune-report",
        description="Aggregate prune-run run or sweep directories into a CSV, a table and plots.",
    )
    parser.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories"
    )
    parser.add_argument("--out", type=Path, help="output directory (default: the first DIR)")
    parser.add_argument("--reference", help="overlay published results (available: renda2020)")
    parser.add_argument(
        "--metric", default="acc", help="row value to aggregate: acc (default) or acc_after_prune"
    )
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0]
    try:
        csv_path = build_report(args.dirs, out, reference=args.reference, metric=args.metric)
    except ReportError as e:
        print(f"prune-report: error: {e}", file=sys.stderr)
        return 2
    print(comparison_table(csv_path), end="")
    print(f"wrote {', '.join(str(p) for p in report_outputs(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
