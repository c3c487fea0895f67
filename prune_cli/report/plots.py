"""The report's figures, drawn on bare matplotlib Figures (no pyplot state: safe in callbacks).

- ``plot_acc_vs_compression``: accuracy change vs compression, a panel per (block, t), a curve
  per method, the matched published values of every reference dashed (a dash pattern per
  paper, its citation in the legend).
- ``plot_acc_vs_retrain_time``: accuracy change vs t, a panel per compression level that was
  retrained for two or more t.
- ``plot_accuracy_vs_budget``: accuracy vs the total training spent up to each level (dense
  epochs + all retraining), in epochs and in images: Zimmer et al.'s budget view.
- ``plot_layer_density``: remaining weights per layer (network order) at the highest level, a
  bar (or line) per (method, t), beside the whole network's density.
- ``plot_layer_density_levels``: the same for every level, a heatmap per method (its longest t).
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prune_cli.report.aggregation import BLOCK_KEYS, block_of, reference_column, reference_names
from prune_cli.report.references import citation
from prune_cli.report.style import (
    STYLE,
    method_label,
    method_rank,
    method_style,
    reference_linestyle,
)
from prune_cli.report.tables import METRIC_NAMES, block_title, fmt_t

# matplotlib's PDF backend subsets fonts with fontTools, which logs every table it prunes at INFO
logging.getLogger("fontTools").setLevel(logging.WARNING)

# Shading of "rewinding wins": a colour no method uses, drawn under the curves.
WIN_COLOR = "#f5c542"
WIN_LABEL = "WR or LRW better than FT"


def save(fig, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``stem.FORMAT`` for each format; returns the paths."""
    import matplotlib

    paths = []
    # The font types are read when saving, not when drawing.
    with matplotlib.rc_context(STYLE):
        for fmt in formats:
            path = Path(stem).with_suffix(f".{fmt}")
            fig.savefig(path, dpi=160)
            paths.append(path)
    return paths


def _figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.figure import Figure

    w = max(w, 5.6 / ncols)  # room for the two-line title above a single panel
    # Constrained layout keeps titles, colour bars and the legend below the panels apart.
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _panels(groups: list[tuple[Any, list]], ncols_max: int, w: float, h: float):
    """A figure with one row (or more) of panels per group; returns (fig, [(group, item, ax)])."""
    ncols = max(1, min(ncols_max, max((len(items) for _, items in groups), default=1)))
    nrows = sum(max(1, math.ceil(len(items) / ncols)) for _, items in groups) or 1
    fig, grid = _figure(nrows, ncols, w, h)
    placed, used, row = [], set(), 0
    for group, items in groups:
        for j, item in enumerate(items):
            r, c = row + j // ncols, j % ncols
            placed.append((group, item, grid[r, c]))
            used.add((r, c))
        row += max(1, math.ceil(len(items) / ncols))
    for r in range(nrows):
        for c in range(ncols):
            grid[r, c].set_visible((r, c) in used)
    return fig, placed


GUIDES = ("dense", "whole network", WIN_LABEL)
# The legend entry of a reference whose matched cells have no retrievable value.
NOT_RETRIEVED_LABEL = "{}: n/r (published value not retrievable)"


def _guide(label: str) -> int | None:
    """The guide's place among the guides (after the methods), None for a method's entry."""
    if label in GUIDES:
        return GUIDES.index(label)
    if label.endswith(NOT_RETRIEVED_LABEL.format("")):
        return len(GUIDES)
    return None


def _shared_legend(fig, axes, rows: int | None = None) -> None:
    """One legend under the panels, filled column by column: each method above its reference
    curves (or its other t, with ``rows``), then the guides (dense, whole network, shading, the
    references without values)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    bases = list(dict.fromkeys(label.split(" (")[0] for label in entries if _guide(label) is None))

    def order(label: str) -> tuple:
        guide = _guide(label)
        if guide is not None:
            return (len(bases), guide, label)
        return (bases.index(label.split(" (")[0]), " (" in label, label)

    labels = sorted(entries, key=order)
    if not labels:
        return
    if rows is None:
        # a method, then one row per reference curve of it
        refs = [label.split(" (")[0] for label in labels if " (" in label and _guide(label) is None]
        rows = 1 + max((refs.count(b) for b in set(refs)), default=0)
    ncol = max(math.ceil(len(labels) / rows), 1)
    fig.legend(
        [entries[k] for k in labels], labels, loc="outside lower center", ncol=ncol, frameon=False
    )


def _seeds_text(records: pd.DataFrame) -> str:
    lo, hi = int(records["n"].min()), int(records["n"].max())
    if hi <= 1:
        return "one seed"
    n = f"{hi}" if lo == hi else f"up to {hi}"
    return f"mean ± std over {n} seeds"


def _dense_text(records: pd.DataFrame, block: tuple, metric: str) -> str:
    """``dense 97.78%``: the block's level-0 mean, when the metric has one there."""
    dense = _in_block(records, block)
    dense = dense[dense["level"] == 0][f"{metric}_mean"].dropna()
    return f"dense {100 * dense.mean():.2f}%" if len(dense) else ""


def _curve(ax, x, y, s, method: str, label: str, **kw) -> None:
    st = method_style(method)
    ax.plot(x, y, marker=st.marker, color=st.color, ls=st.linestyle, label=label, zorder=3, **kw)
    if any(v > 0 for v in s):
        ax.fill_between(
            x,
            [a - b for a, b in zip(y, s)],
            [a + b for a, b in zip(y, s)],
            color=st.color,
            alpha=0.14,
            lw=0,
        )


def _reference_curves(ax, line: pd.DataFrame, x: str, method: str) -> None:
    """Per reference, the published cells matched by ``line``'s points: dashed (the paper's
    pattern), hollow, in the method's colour, at the published compression (``x`` =
    ``"compression"``; ours where the paper gives none) or t (``x`` = ``"t"``; cells without a
    stated t are left out). Matched cells without a value add the reference's n/r legend entry.
    """
    st = method_style(method)
    for name in reference_names(line):
        matched = line[line[reference_column(name, "cell")].fillna("").astype(str) != ""]
        if matched.empty:
            continue
        ref = matched[matched[reference_column(name, "acc")].notna()]
        if len(ref) < len(matched):
            ax.plot([], [], ls="none", label=NOT_RETRIEVED_LABEL.format(citation(name)))
        if x == "compression":
            xs = ref[reference_column(name, "compression")].fillna(ref["compression"])
        else:
            xs = ref[reference_column(name, "t")]
        keep = xs.notna()
        if not keep.any():
            continue
        ax.plot(
            list(xs[keep]),
            list(ref[reference_column(name, "delta_pp")][keep]),
            ls=reference_linestyle(name),
            marker=st.marker,
            mfc="white",
            color=st.color,
            alpha=0.85,
            label=f"{st.label} ({citation(name)})",
            gid=f"{name} {method}",
        )


def _compression_ticks(ax, values: Iterable[float]) -> None:
    """Label the log axis with the compressions that were run (at most ~8, as '4.77×')."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = sorted(set(round(v, 6) for v in values))
    if len(ticks) > 8:
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:.3g}×" for t in ticks])


def _widen_narrow_xlim(ax, factor: float = 1.15) -> None:
    """Give a log x axis whose points (ours and a paper's: one level of a structured preset) sit
    at one compression, equal but for rounding, room around them; matplotlib widens only exactly
    equal limits."""
    lo, hi = ax.get_xlim()
    if 0 < lo and hi / lo < factor:
        ax.set_xlim(lo / factor, hi * factor)


def _same_ylim(axes) -> None:
    if len(axes) > 1:
        lo = min(ax.get_ylim()[0] for ax in axes)
        hi = max(ax.get_ylim()[1] for ax in axes)
        for ax in axes:
            ax.set_ylim(lo, hi)


def _blocks(records: pd.DataFrame) -> list[tuple]:
    return sorted({block_of(r) for _, r in records.iterrows()}, key=lambda b: tuple(map(str, b)))


def _in_block(records: pd.DataFrame, block: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=records.index)
    for k, v in zip(BLOCK_KEYS, block):
        mask &= records[k] == v
    return records[mask]


def _pruned(records: pd.DataFrame) -> pd.DataFrame:
    return records[(records["level"] > 0) & records["delta_pp_mean"].notna()]


def _empty(fig, ax, text: str) -> None:
    ax.set_visible(True)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


# ----------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------


def plot_acc_vs_compression(records: pd.DataFrame):
    """Accuracy change (pp) vs compression (log x): a panel per (block, retrain epochs t) with
    one curve per method, ±std band over seeds, the matched published medians dashed; the
    panels of a block share their y axis. Returns the matplotlib Figure."""
    import matplotlib

    pruned = _pruned(records)
    metric = records["metric"].iloc[0] if len(records) else "acc"
    groups = [
        (block, sorted(set(_in_block(pruned, block)["retrain_epochs"])))
        for block in _blocks(pruned)
    ]
    several_blocks = len(groups) > 1
    with matplotlib.rc_context(STYLE):
        fig, placed = _panels(groups or [(None, [None])], 3, 4.2, 3.3)
        if not groups:
            _empty(fig, placed[0][2], "no pruned levels to plot")
            return fig
        by_block: dict[tuple, list] = {}
        for block, t, ax in placed:
            by_block.setdefault(block, []).append(ax)
            recs = _in_block(pruned, block)
            recs = recs[recs["retrain_epochs"] == t]
            for method in sorted(set(recs["method"]), key=method_rank):
                line = recs[recs["method"] == method].sort_values("compression")
                _curve(
                    ax,
                    list(line["compression"]),
                    list(line["delta_pp_mean"]),
                    list(line["delta_pp_std"].fillna(0.0)),
                    method,
                    method_label(method),
                    gid=f"{method} t={fmt_t(t)}",
                )
                _reference_curves(ax, line, "compression", method)
            ax.axhline(0.0, color="0.35", lw=0.8, ls=":", label="dense")
            ax.set_xscale("log")
            _widen_narrow_xlim(ax)
            _compression_ticks(ax, _in_block(pruned, block)["compression"])
            ax.set_xlabel("compression ratio (log scale)")
            ax.set_ylabel("accuracy change vs dense (pp)")
            title = f"retraining t = {fmt_t(t)} epochs per level"
            dense = _dense_text(records, block, metric)
            title += f" ({dense})" if dense else ""
            ax.set_title(f"{block_title(block)}\n{title}" if several_blocks else title)
        for axes in by_block.values():
            _same_ylim(axes)
        head = f"{_metric_name(metric)}: change vs compression ({_seeds_text(pruned)})"
        if not several_blocks:
            head += f"\n{block_title(groups[0][0])}"
        fig.suptitle(head, fontsize=10.5)
        _shared_legend(fig, [ax for _, _, ax in placed])
    return fig


def _metric_name(metric: str) -> str:
    name = METRIC_NAMES.get(metric, metric)
    return name[0].upper() + name[1:]


def retrain_time_panels(records: pd.DataFrame) -> list[tuple[tuple, int, float]]:
    """(block, level, density) of the levels that were retrained for two or more t."""
    pruned = _pruned(records)
    key = pruned.groupby(
        [pruned[k] for k in BLOCK_KEYS] + [pruned["level"], pruned["density"].round(3)],
        sort=False,
    )["retrain_epochs"].nunique()
    panels = [(tuple(k[:-2]), int(k[-2]), float(k[-1])) for k, n in key.items() if n >= 2]
    return sorted(panels, key=lambda p: (tuple(map(str, p[0])), p[1], -p[2]))


def plot_acc_vs_retrain_time(records: pd.DataFrame):
    """Accuracy change (pp) vs retrain epochs t: a panel per compression level retrained for two
    or more t, one curve per method with ±std band; the t where max(WR, LRW) beats FT shaded.
    Returns the matplotlib Figure (one saying so when no level has two t)."""
    import matplotlib

    pruned = _pruned(records)
    metric = records["metric"].iloc[0] if len(records) else "acc"
    panels = retrain_time_panels(records)
    blocks = sorted({p[0] for p in panels}, key=lambda b: tuple(map(str, b)))
    groups = [(b, [p for p in panels if p[0] == b]) for b in blocks]
    several_blocks = len(groups) > 1
    with matplotlib.rc_context(STYLE):
        fig, placed = _panels(groups or [(None, [None])], 4, 3.6, 3.1)
        if not groups:
            _empty(fig, placed[0][2], "no level was retrained for two or more t")
            return fig
        # Each level on its own y scale: the methods' gaps at 1.25x would vanish beside 10x.
        for block, (_, level, density), ax in placed:
            recs = _in_block(pruned, block)
            recs = recs[(recs["level"] == level) & (recs["density"].round(3) == density)]
            curves: dict[str, dict[float, float]] = {}
            for method in sorted(set(recs["method"]), key=method_rank):
                line = recs[recs["method"] == method].sort_values("retrain_epochs")
                x, y = list(line["retrain_epochs"]), list(line["delta_pp_mean"])
                _curve(
                    ax, x, y, list(line["delta_pp_std"].fillna(0.0)), method, method_label(method)
                )
                curves[method] = dict(zip(x, y))
                _reference_curves(ax, line, "t", method)
            _shade_rewinding_wins(ax, curves)
            ax.axhline(0.0, color="0.35", lw=0.8, ls=":", label="dense")
            ts = sorted(set(recs["retrain_epochs"]))
            if min(ts) > 0 and max(ts) / min(ts) >= 8:
                ax.set_xscale("log")
                ax.minorticks_off()
            if len(ts) <= 10:
                ax.set_xticks(ts, [fmt_t(t) for t in ts])
            ax.set_xlabel("retraining epochs t per level")
            ax.set_ylabel("accuracy change vs dense (pp)")
            first = recs.iloc[0]
            title = f"level {level}: {first['compression']:.3g}× ({100 * first['density']:.1f}% of weights left)"
            ax.set_title(f"{block_title(block)}\n{title}" if several_blocks else title)
        head = f"{_metric_name(metric)}: change vs retraining time ({_seeds_text(pruned)})"
        if not several_blocks:
            head += f"\n{block_title(groups[0][0])}"
        fig.suptitle(head, fontsize=10.5)
        _shared_legend(fig, [ax for _, _, ax in placed])
    return fig


def _shade_rewinding_wins(ax, curves: dict[str, dict[float, float]]) -> None:
    """Shade the t where the better of WR and LRW is above FT (only at t that FT was run)."""
    rewinders = [curves[m] for m in ("wr", "lrw") if m in curves]
    if "ft" not in curves or not rewinders:
        return
    ts = sorted(t for t in curves["ft"] if any(t in c for c in rewinders))
    if len(ts) < 2:
        return
    ft = [curves["ft"][t] for t in ts]
    best = [max(c[t] for c in rewinders if t in c) for t in ts]
    wins = [b > f for b, f in zip(best, ft)]
    if any(wins):
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
# Budget
# ----------------------------------------------------------------------------------------------

BUDGET_AXES = {
    "budget_epochs": "total training epochs (dense + every level's retraining)",
    "budget_images": "total training images seen (dense + retraining)",
}


def _budget_line(records: pd.DataFrame, block: tuple, method: str, t: float) -> pd.DataFrame:
    """The points of one budget curve: the method's dense model, then its levels retrained for
    ``t`` epochs, in level order."""
    recs = _in_block(records, block)
    recs = recs[recs["method"] == method]
    line = recs[(recs["level"] == 0) | ((recs["level"] > 0) & (recs["retrain_epochs"] == t))]
    return line.sort_values("level")


def budget_series(records: pd.DataFrame) -> list[tuple[tuple, str, float]]:
    """(block, method, t) of the curves of ``plot_accuracy_vs_budget``: those with pruned
    levels whose training budget and metric are known."""
    metric = records["metric"].iloc[0] if len(records) else "acc"
    pruned = _pruned(records)
    known = pruned[pruned["budget_epochs"].notna() & pruned[f"{metric}_mean"].notna()]
    keys = {(block_of(r), r["method"], r["retrain_epochs"]) for _, r in known.iterrows()}
    return sorted(keys, key=lambda k: (tuple(map(str, k[0])), method_rank(k[1]), k[2]))


def plot_accuracy_vs_budget(records: pd.DataFrame):
    """The metric (in %) vs the total training spent up to each level, as Zimmer et al. compare
    methods: a curve per (method, t) from its dense model through its levels, x the dense
    epochs plus every level's retraining epochs so far (a second panel: the same in images
    seen). A method that only trains longer moves right, not up. A row of panels per block.
    Returns the matplotlib Figure (one saying so when no budget is known)."""
    import matplotlib
    from matplotlib.ticker import EngFormatter

    metric = records["metric"].iloc[0] if len(records) else "acc"
    series = budget_series(records)
    blocks = sorted({b for b, _, _ in series}, key=lambda b: tuple(map(str, b)))
    groups = []
    for block in blocks:
        recs = _in_block(records, block)
        axes = ["budget_epochs"]
        if recs[recs["level"] > 0]["budget_images"].notna().any():
            axes.append("budget_images")
        groups.append((block, axes))
    several_blocks = len(groups) > 1
    with matplotlib.rc_context(STYLE):
        fig, placed = _panels(groups or [(None, [None])], 2, 4.4, 3.3)
        if not groups:
            _empty(fig, placed[0][2], "no training budget recorded in these runs")
            return fig
        for block, x_key, ax in placed:
            mine = [(m, t) for b, m, t in series if b == block]
            for method, t in mine:
                line = _budget_line(records, block, method, t)
                line = line[line[x_key].notna() & line[f"{metric}_mean"].notna()]
                ts = sorted(tt for m, tt in mine if m == method)
                shorter = len(ts) - 1 - ts.index(t)
                _curve(
                    ax,
                    list(line[x_key]),
                    list(100 * line[f"{metric}_mean"]),
                    list(100 * line[f"{metric}_std"].fillna(0.0)),
                    method,
                    _series_label(method, t, len(ts) > 1),
                    alpha=1.0 - 0.6 * shorter / max(len(ts) - 1, 1),
                    gid=f"{method} t={fmt_t(t)}",
                )
            ax.set_xlabel(BUDGET_AXES[x_key])
            ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (%)")
            if x_key == "budget_images":
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            title = "in epochs" if x_key == "budget_epochs" else "in images"
            if several_blocks:
                title = f"{textwrap.fill(block_title(block), 52)}: {title}"
            ax.set_title(title)
        head = (
            f"{_metric_name(metric)} vs total training spent up to each level "
            f"({_seeds_text(_pruned(records))})"
        )
        if not several_blocks:
            head += f"\n{block_title(groups[0][0])}"
        fig.suptitle(head, fontsize=10.5)
        # a column per method, its t down the column
        rows = max(len({t for _, mm, t in series if mm == m}) for _, m, _ in series)
        _shared_legend(fig, [ax for _, _, ax in placed], rows=rows)
    return fig


# ----------------------------------------------------------------------------------------------
# Per-layer density
# ----------------------------------------------------------------------------------------------


def _series(layers: pd.DataFrame) -> list[tuple[str, float]]:
    """(method, t) pairs in registry order, then t."""
    pairs = {(m, t) for m, t in zip(layers["method"], layers["retrain_epochs"])}
    return sorted(pairs, key=lambda p: (method_rank(p[0]), p[1]))


def _longest(layers: pd.DataFrame, block: tuple, method: str) -> float:
    recs = _in_block(layers, block)
    return recs[recs["method"] == method]["retrain_epochs"].max()


def _series_label(method: str, t: float, several_t: bool) -> str:
    return method_label(method) + (f", t = {fmt_t(t)}" if several_t else "")


def plot_layer_density(layers: pd.DataFrame):
    """Remaining weights per layer (network order) at each block's highest level: a bar per
    (method, t) (a line when there are too many bars), the whole network's density dotted.
    Returns the matplotlib Figure."""
    import matplotlib
    import numpy as np

    pruned = layers[layers["level"] > 0]
    blocks = _blocks(pruned)
    with matplotlib.rc_context(STYLE):
        width = max(4.8, 0.09 * max((pruned["layer"].nunique(), 1)) + 3.0)
        fig, placed = _panels(
            [(b, [b]) for b in blocks] or [(None, [None])], 1, min(width, 16), 3.6
        )
        if not blocks:
            _empty(fig, placed[0][2], "no per-layer density in these runs")
            return fig
        for block, _, ax in placed:
            recs = _in_block(pruned, block)
            level = recs["level"].max()
            recs = recs[recs["level"] == level]
            names = recs.sort_values("layer_index").drop_duplicates("layer")["layer"].tolist()
            series = _series(recs)
            several_t = len({t for _, t in series}) > 1
            x = np.arange(len(names))
            bars = len(names) * len(series) <= 60
            step = 0.8 / max(len(series), 1)
            for i, (method, t) in enumerate(series):
                line = recs[(recs["method"] == method) & (recs["retrain_epochs"] == t)]
                line = line.set_index("layer").reindex(names)
                y = 100 * line["layer_density_mean"].to_numpy()
                err = 100 * line["layer_density_std"].fillna(0.0).to_numpy()
                st = method_style(method)
                label = _series_label(method, t, several_t)
                # Shorter t of the same method: the same colour, lighter (and dashed, as lines).
                mine = sorted(tt for m, tt in series if m == method)
                shorter = len(mine) - 1 - mine.index(t)
                alpha = 1.0 - 0.6 * shorter / max(len(mine) - 1, 1)
                if bars:
                    ax.bar(
                        x - 0.4 + step * (i + 0.5),
                        y,
                        step,
                        yerr=err if err.any() else None,
                        color=st.color,
                        alpha=alpha,
                        label=label,
                        capsize=1.5,
                        error_kw={"lw": 0.7},
                        gid=f"{method} t={fmt_t(t)}",
                    )
                else:
                    ax.plot(
                        x,
                        y,
                        marker=st.marker,
                        color=st.color,
                        alpha=alpha,
                        label=label,
                        ls=("-", "--", ":", "-.")[min(shorter, 3)],
                        lw=1.0,
                        ms=3,
                        gid=f"{method} t={fmt_t(t)}",
                    )
            overall = 100 * recs["density"].mean()
            ax.axhline(overall, color="0.3", lw=0.9, ls=":", label="whole network")
            ax.set_xticks(x, names, rotation=90 if len(names) > 8 else 0)
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_ylim(0, max(100 * recs["layer_density_max"].max() * 1.1, overall * 1.3, 1))
            ax.set_xlabel("layer (network order)")
            ax.set_ylabel("weights remaining (%)")
            ax.grid(axis="x", visible=False)
            first = recs.iloc[0]
            title = (
                f"level {level}: {first['compression']:.3g}× compression, "
                f"{overall:.1f}% of the prunable weights left"
            )
            ax.set_title(f"{block_title(block)}\n{title}" if len(blocks) > 1 else title)
        head = f"Per-layer density at the highest pruning level ({_seeds_text(pruned)})"
        fig.suptitle(
            head + (f"\n{block_title(blocks[0])}" if len(blocks) == 1 else ""), fontsize=10.5
        )
        # A column per method, its t down the column.
        rows = max(pruned.groupby("method")["retrain_epochs"].nunique().max(), 1)
        _shared_legend(fig, [ax for _, _, ax in placed], rows=int(rows))
    return fig


def plot_layer_density_levels(layers: pd.DataFrame):
    """Remaining weights per layer (columns, network order) at every pruning level (rows,
    labelled by compression): a heatmap per (block, method, t), values written in when they
    fit, on a log colour scale when the densities span more than 20×. Returns the Figure."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    pruned = layers[layers["level"] > 0]
    # Per method its longest t: the layer profile hardly depends on t, and every (method, t)
    # is compared at the highest level in plot_layer_density (all of them in the CSV).
    groups = [
        (b, [(m, t) for m, t in _series(_in_block(pruned, b)) if t == _longest(pruned, b, m)])
        for b in _blocks(pruned)
    ]
    n_layers = max(pruned["layer"].nunique(), 1)
    n_levels = max(pruned["level"].nunique(), 1)
    lo = max(100 * pruned["layer_density_mean"].min(), 0.01) if len(pruned) else 1.0
    norm = LogNorm(lo, 100) if lo < 5 else Normalize(0, 100)
    # Few layers: panels side by side; many: one per row, full width, layer names at the bottom.
    ncols = 3 if n_layers <= 12 else 1
    w = min(max(2.0, 0.5 * n_layers + 1.6), 16.0) if ncols > 1 else min(0.16 * n_layers + 2, 16)
    h = 0.24 * n_levels + (1.3 if ncols > 1 else 0.9)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig, placed = _panels(groups or [(None, [None])], ncols, w, h)
        if not groups:
            _empty(fig, placed[0][2], "no per-layer density in these runs")
            return fig
        image = None
        several_blocks = len(groups) > 1
        last_row = {block: ax for block, _, ax in placed}  # the last panel of each block
        for block, (method, t), ax in placed:
            recs = _in_block(pruned, block)
            several_t = recs["retrain_epochs"].nunique() > 1
            recs = recs[(recs["method"] == method) & (recs["retrain_epochs"] == t)]
            grid = recs.pivot_table(
                index="level", columns=["layer_index", "layer"], values="layer_density_mean"
            )
            names = [name for _, name in grid.columns]
            comp = recs.groupby("level")["compression"].mean()
            values = 100 * grid.to_numpy()
            image = ax.imshow(
                values, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest"
            )
            ax.set_yticks(range(len(grid.index)), [f"{comp[lv]:.3g}×" for lv in grid.index])
            ax.set_ylabel("compression")
            if ncols > 1 or ax is last_row[block]:
                ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 4 else 0)
                ax.set_xlabel("layer (network order)")
            else:
                ax.set_xticks(range(len(names)), [])
            if values.size <= 120:
                for (i, j), v in np.ndenumerate(values):
                    if not np.isnan(v):
                        dark = norm(v) < 0.6
                        ax.text(
                            j,
                            i,
                            f"{v:.0f}" if v >= 9.95 else f"{v:.1f}",
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="white" if dark else "black",
                        )
            title = method_label(method) + (f" (longest t = {fmt_t(t)})" if several_t else "")
            ax.set_title(f"{block_title(block)}: {title}" if several_blocks else title)
        fig.suptitle(
            "Weights remaining per layer (%) at every pruning level"
            + ("" if several_blocks else f"\n{block_title(groups[0][0])}"),
            fontsize=10.5,
        )
        if image is not None:
            log = isinstance(norm, LogNorm)
            bar = fig.colorbar(
                image,
                ax=[ax for _, _, ax in placed],
                shrink=min(1.0, 6 / len(placed)) if ncols == 1 else 0.9,
                aspect=25,
                label="weights remaining (%)" + (", log scale" if log else ""),
            )
            if log:
                ticks = [v for v in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if v >= norm.vmin]
                bar.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
                bar.ax.minorticks_off()
    return fig
