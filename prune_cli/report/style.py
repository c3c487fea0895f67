"""How every figure and table looks: the one registry of methods (label, colour, marker) and
the matplotlib style.

Every figure and table of ``prune-report`` and ``prune-schedules`` reads it, so a method looks
the same everywhere. The registry's order is the order of rows, columns and legends.
"""

from __future__ import annotations

from typing import NamedTuple


class MethodStyle(NamedTuple):
    label: str  # the paper's name
    color: str  # colour-blind-safe where possible; FT blue, WR green, LRW red as in Renda et al.
    marker: str
    linestyle: str = "-"


METHODS: dict[str, MethodStyle] = {
    "ft": MethodStyle("FT", "#1f77b4", "o"),
    "wr": MethodStyle("WR", "#2ca02c", "s"),
    "lrw": MethodStyle("LRW", "#d62728", "^"),
    "slr": MethodStyle("SLR", "#9467bd", "v"),
    "clr": MethodStyle("CLR", "#8c564b", "D"),
    "llr": MethodStyle("LLR", "#e377c2", "P"),
    "allr": MethodStyle("ALLR", "#ff7f0e", "X"),
    "bimp": MethodStyle("BIMP", "#17becf", "*"),
}
"""Config name -> how the method is drawn and named (unknown names get a grey fallback)."""


# How each published reference's curves are drawn: always in the method's colour, hollow
# markers, a dash pattern per paper (the legend names the paper).
REFERENCE_LINESTYLES: dict[str, str] = {
    "renda2020": "--",
    "lehua2021": "-.",
    "zimmer2023": ":",
}


def reference_linestyle(name: str) -> str:
    return REFERENCE_LINESTYLES.get(name, "--")


def method_style(method: str) -> MethodStyle:
    return METHODS.get(method, MethodStyle(method.upper(), "#7f7f7f", "o"))


def method_label(method: str) -> str:
    return method_style(method).label


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: registry order, unknown methods last by name."""
    order = list(METHODS)
    return (order.index(method) if method in order else len(order), method)


# Matplotlib settings of every figure (used as ``matplotlib.rc_context(STYLE)``).
STYLE = {
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
    # Publishers reject Type 3 fonts; keep SVG text as text.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
}
