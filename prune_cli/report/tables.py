"""The comparison table of a report as plain text (console), Markdown and LaTeX.

One table per (model, dataset, pruning, criterion, one-shot) block: a row per (retrain epochs t,
level), a column per method, cells ``mean ± std (change vs dense)`` of the metric in percent over
seeds; with references, a column per paper beside each method it covers: the published value
(and its change vs that paper's dense model), ``n/r`` where the paper has the cell but its value
could not be retrieved. All three formats come from the same cells, so their numbers are the
CSV's rounded to 2 decimals. Below the tables (console and Markdown): per paper how many cells
matched and which have no published counterpart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from tabulate import tabulate

from prune_cli.report.aggregation import BLOCK_KEYS, reference_column, reference_names
from prune_cli.report.references import citation, reference_summary
from prune_cli.report.style import method_label, method_rank

METRIC_NAMES = {"acc": "test accuracy", "acc_after_prune": "accuracy right after pruning"}
# A table cell of a published cell whose value could not be retrieved.
NOT_RETRIEVED = "n/r"


@dataclass
class Table:
    """One block's table: numbers, not yet formatted."""

    block: tuple
    metric: str
    n: tuple[int, int]  # fewest and most seeds behind a cell
    columns: list[tuple[str, str]]  # (kind, method): kind "run" (ours) or a reference name
    rows: list[dict] = field(default_factory=list)  # t, level, density, compression, cells


def block_title(block: tuple) -> str:
    model, dataset, pruning, criterion, one_shot = block
    how = "one-shot" if one_shot else "iterative"
    extra = f" [{pruning}]" if pruning not in (criterion, "one_shot") else ""
    return f"{model} on {dataset}: {how} {criterion.replace('_', ' ')}{extra}"


def fmt_t(t: float) -> str:
    return f"{t:g}"


def build_tables(records: pd.DataFrame) -> list[Table]:
    """The tables of aggregated ``records`` (with or without reference columns)."""
    if records.empty:
        return []
    metric = records["metric"].iloc[0]
    names = reference_names(records)
    tables = []
    for block, recs in records.groupby(list(BLOCK_KEYS), sort=False):
        ours = sorted(set(recs["method"]), key=method_rank)
        columns: list[tuple[str, str]] = []
        for m in ours:
            columns.append(("run", m))
            mine = recs[recs["method"] == m]
            columns += [(n, m) for n in names if _matched(mine, n).any()]
        n = recs["n"][recs["n"] > 0]  # level 0 has no acc_after_prune
        table = Table(
            tuple(block), metric, (int(n.min()), int(n.max())) if len(n) else (0, 0), columns
        )
        # All methods share the dense model: level 0 is one row whatever t was swept.
        t = recs["retrain_epochs"].where(recs["level"] > 0, 0.0)
        for (_, level, _), row in recs.groupby(
            [t, recs["level"], recs["density"].round(3)], sort=True
        ):
            first = row.iloc[0]
            cells = {}
            for _, rec in row.iterrows():
                cells[("run", rec["method"])] = (
                    rec[f"{metric}_mean"],
                    rec[f"{metric}_std"],
                    rec["delta_pp_mean"] if level > 0 else math.nan,
                )
                for name in names:
                    matched = rec[reference_column(name, "cell")]
                    if not isinstance(matched, str) or not matched:
                        continue
                    acc = rec[reference_column(name, "acc")]
                    cells[(name, rec["method"])] = (
                        (
                            acc,
                            rec[reference_column(name, "std")],
                            rec[reference_column(name, "delta_pp")],
                        )
                        if pd.notna(acc)
                        else NOT_RETRIEVED
                    )
            table.rows.append(
                {
                    "t": first["retrain_epochs"] if level > 0 else math.nan,
                    "level": int(level),
                    "density": first["density"],
                    "compression": first["compression"],
                    "cells": cells,
                    "best": _best(cells) if level > 0 else set(),
                }
            )
        # Rows in order of t then level; level 0 first.
        table.rows.sort(key=lambda r: (r["level"] > 0, _nan_last(r["t"]), r["level"]))
        tables.append(table)
    return tables


def _matched(records: pd.DataFrame, name: str) -> pd.Series:
    """Which ``records`` a published cell of reference ``name`` matched."""
    return records[reference_column(name, "cell")].fillna("").astype(str) != ""


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _best(cells: dict) -> set:
    """Our columns with the highest mean at 2 decimals (ties all), when two or more compete."""
    ours = {k: round(100 * v[0], 2) for k, v in cells.items() if k[0] == "run" and pd.notna(v[0])}
    if len(ours) < 2:
        return set()
    top = max(ours.values())
    return {k for k, v in ours.items() if v == top}


def _header(col: tuple[str, str]) -> str:
    kind, method = col
    label = method_label(method)
    return label if kind == "run" else f"{label} ({citation(kind)})"


def _n_text(n: tuple[int, int], latex: bool = False) -> str:
    if n[0] == n[1]:
        return f"$n = {n[1]}$" if latex else f"n = {n[1]}"
    return f"$n \\le {n[1]}$" if latex else f"n ≤ {n[1]}"


def _caption(table: Table, latex: bool = False) -> str:
    pm = "$\\pm$" if latex else "±"
    metric = METRIC_NAMES.get(table.metric, table.metric)
    text = (
        f"{metric} in %, mean {pm} std over seeds ({_n_text(table.n, latex)}); "
        "in parentheses the change vs the dense model in percentage points; "
        "t: retraining epochs per level"
    )
    papers = {kind for kind, _ in table.columns if kind != "run"}
    if papers:
        median = (
            f" ({citation('renda2020')}: the median over trials)" if "renda2020" in papers else ""
        )
        text += f"; reference columns: the published value{median} and its change vs that paper's dense model"
    if any(v == NOT_RETRIEVED for r in table.rows for v in r["cells"].values()):
        text += f"; {NOT_RETRIEVED}: the paper has this cell, its value could not be retrieved"
    return text


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def signed(x: float) -> str:
    """``x`` with its sign and 2 decimals, never ``-0.00``."""
    return f"{round(x, 2) + 0.0:+.2f}"


def _cell(values: tuple | None, fmt: str, bold: bool = False) -> str:
    """``mean ± std (delta)`` in percent; ``fmt`` is text, markdown or latex."""
    if isinstance(values, str):
        return values
    if values is None or pd.isna(values[0]):
        return "-" if fmt != "latex" else "--"
    mean, std, delta = values
    if fmt == "latex":
        num = f"\\mathbf{{{100 * mean:.2f}}}" if bold else f"{100 * mean:.2f}"
        text = f"${num}" + (f" \\pm {100 * std:.2f}$" if pd.notna(std) else "$")
        if pd.notna(delta):
            text += f" (${signed(delta)}$)"
        return text
    text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if pd.notna(std) else "")
    if fmt == "markdown" and bold:
        text = f"**{text}**"
    if pd.notna(delta):
        text += f" ({signed(delta)})"
    return text


def _rows(table: Table, fmt: str) -> tuple[list[str], list[list[str]]]:
    x = {"text": "x", "markdown": "×", "latex": "$\\times$"}[fmt]
    # The compression is 1 / density (the CSV has both); one of them keeps the table narrow.
    head = ["t", "level", "compression", *map(_header, table.columns)]
    body = []
    for r in table.rows:
        t = "-" if math.isnan(r["t"]) else fmt_t(r["t"])
        body.append(
            [
                "--" if fmt == "latex" and t == "-" else t,
                str(r["level"]),
                f"{r['compression']:.2f}{x}",
                *(_cell(r["cells"].get(c), fmt, c in r["best"]) for c in table.columns),
            ]
        )
    return head, body


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def to_text(tables: list[Table]) -> str:
    """The console table: a title line per block, then an aligned plain table."""
    if not tables:
        return "(no results)\n"
    out = []
    for table in tables:
        head, body = _rows(table, "text")
        out += [block_title(table.block), _caption(table)]
        out.append(tabulate(body, head, tablefmt="simple", disable_numparse=True, stralign="right"))
        out.append("")
    return "\n".join(out)


def references_text(records: pd.DataFrame) -> str:
    """The console's lines on the references of ``records`` (empty without references)."""
    lines = reference_summary(records)
    if not lines:
        return ""
    return "".join(f"{line}\n" for line in ["published references:", *lines])


def to_markdown(tables: list[Table], references: list[str] = ()) -> str:
    """Markdown (pipe tables, read by GitHub and pandoc): per block a heading, the caption and
    the table, the best mean of a row in bold; then ``references`` (``reference_summary``'s
    lines) as a list."""
    out = ["# prune-report", ""]
    for table in tables:
        head, body = _rows(table, "markdown")
        out += [f"## {block_title(table.block)}", "", _caption(table) + "; best in bold.", ""]
        table_md = tabulate(
            body, head, tablefmt="pipe", disable_numparse=True, colalign=["right"] * len(head)
        )
        out += [table_md, ""]
    if references:
        out += ["## Published references", ""]
        out += [f"{'  ' if line.startswith(' ') else ''}- {line.strip()}" for line in references]
        out.append("")
    return "\n".join(out)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def to_latex(tables: list[Table]) -> str:
    """A booktabs ``table`` per block, with caption and label; best in bold."""
    out = [
        "% prune-report tables; needs \\usepackage{booktabs} (and graphicx for \\resizebox)",
        "",
    ]
    for table in tables:
        head, body = _rows(table, "latex")
        label = "tab:" + "-".join(str(v) for v in table.block[:3]).replace("_", "-")
        title = latex_escape(block_title(table.block))
        caption = _caption(table, latex=True).replace("%", "\\%") + "; best in bold."
        wide = len(table.columns) >= 3  # wider than a column of text: scaled to fit
        out += [
            "\\begin{table}[t]",
            "  \\centering",
            "  \\small",
            f"  \\caption{{{title}: {caption}}}",
            f"  \\label{{{label}}}",
        ]
        if wide:
            out.append("  \\resizebox{\\linewidth}{!}{%")
        out.append(f"  \\begin{{tabular}}{{rrr{'r' * len(table.columns)}}}")
        out.append("    \\toprule")
        out.append("    " + " & ".join(latex_escape(h) for h in head) + " \\\\")
        out.append("    \\midrule")
        previous_t = None
        for cells in body:
            if previous_t is not None and cells[0] != previous_t:
                out.append("    \\midrule")
            previous_t = cells[0]
            out.append("    " + " & ".join(cells) + " \\\\")
        out.append("    \\bottomrule")
        out.append("  \\end{tabular}" + ("}" if wide else ""))
        out += ["\\end{table}", ""]
    return "\n".join(out)
