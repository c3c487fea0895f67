"""Published results shipped with the package (``prune_cli/reference/NAME``) and their matching.

Every reference is a folder: the paper's files as published (with their provenance columns), a
README naming the source, and ``reference.json`` (``citation``: how legends and table headers
name the paper; ``paper``; ``reader``; ``files``). A reader turns the files into published
``Cell``s of one format, in this package's vocabulary: model, dataset, method, pruning preset
or criterion, one-shot flag, density and retrain epochs where the paper gives them, the top-1
accuracy as a fraction (NaN where the value could not be retrieved). ``reader: cells`` reads a
``cells.csv`` already in that format (``CELL_COLUMNS``), so a paper can be added without code.

``--reference NAME[,NAME...]`` or ``all`` adds, per reference, the ``reference_<name>_*``
columns (``REFERENCE_FIELDS``) to every aggregated record a published cell matches: the
table's reference columns, the figures' dashed curves and the list of cells without a
published counterpart.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from prune_cli.report.aggregation import (
    BLOCK_KEYS,
    ReportError,
    reference_column,
    reference_names,
)
from prune_cli.report.style import method_label, method_rank

if TYPE_CHECKING:
    from importlib.abc import Traversable

REFERENCE_PACKAGE = "prune_cli"
REFERENCE_DIR = "reference"
MANIFEST = "reference.json"
ALL = "all"
# Densities in the papers are rounded (Renda et al.: 4 digits for one-shot cells); ours to one
# weight.
DENSITY_RTOL = 0.02
NOT_RETRIEVED = "NOT RETRIEVED"


@dataclass(frozen=True)
class Cell:
    """One published number, in this package's vocabulary; None: the paper does not say (any
    value matches), except ``method`` None: a method this package does not run (never matches).

    ``acc``, ``acc_std`` and ``dense_acc`` are fractions (papers print %): NaN when the paper
    gives none or the value could not be retrieved. ``compression`` is the published one
    (1 / density, or from the parameter reduction); ``label`` names the cell as the paper does,
    with its source.
    """

    model: str
    dataset: str
    method: str | None
    pruning: str | None = None
    criterion: str | None = None
    one_shot: bool | None = None
    density: float | None = None
    retrain_epochs: float | None = None
    acc: float = math.nan
    acc_std: float = math.nan
    dense_acc: float = math.nan
    compression: float = math.nan
    label: str = ""

    def matches(self, rec) -> bool:
        """Whether the aggregated record ``rec`` (a pruned level) is this published cell."""
        return (
            (self.pruning is None or self.pruning == rec["pruning"])
            and (self.criterion is None or self.criterion == criterion_of(rec))
            and (self.one_shot is None or self.one_shot == bool(rec["one_shot"]))
            and (
                self.retrain_epochs is None
                or math.isclose(self.retrain_epochs, rec["retrain_epochs"], rel_tol=1e-6)
            )
            and (
                self.density is None
                or math.isclose(self.density, rec["density"], rel_tol=DENSITY_RTOL)
            )
        )


def criterion_of(rec) -> str:
    """The criterion label of a record, as its rows write it (``global_magnitude``, ...)."""
    return str(rec["criterion"])


@dataclass(frozen=True)
class Reference:
    """A paper's published cells; ``dense``: its dense accuracies by the paper's network name
    (where it publishes them apart from the cells)."""

    name: str
    citation: str
    paper: str
    cells: list[Cell]
    dense: dict[str, float] = field(default_factory=dict)

    @property
    def retrievable(self) -> bool:
        """Whether any published value could be retrieved (else the cells only say what the
        paper has)."""
        return any(not math.isnan(c.acc) for c in self.cells)


# ----------------------------------------------------------------------------------------------
# The shipped references
# ----------------------------------------------------------------------------------------------


def _root() -> Traversable:
    return resources.files(REFERENCE_PACKAGE) / REFERENCE_DIR


def available_references() -> list[str]:
    """Names accepted by ``--reference`` (folders of packaged reference data with a manifest)."""
    return sorted(p.name for p in _root().iterdir() if (p / MANIFEST).is_file())


def reference_names_of(spec: str) -> list[str]:
    """The names of ``--reference``: one name, a comma list, or ``all`` (each once, in order).

    Raises ReportError naming an unknown or empty name.
    """
    known = available_references()
    names: list[str] = []
    for part in spec.split(","):
        name = part.strip()
        if name == ALL:
            names += known
        elif name not in known:
            raise ReportError(
                f"unknown reference {name!r} in --reference {spec!r} "
                f"(available: {', '.join(known) or 'none'}, or {ALL})"
            )
        else:
            names.append(name)
    return list(dict.fromkeys(names))


def load_references(spec: str) -> list[Reference]:
    """The packaged references that ``spec`` names (see ``reference_names_of``)."""
    return [load_reference(name) for name in reference_names_of(spec)]


@cache
def load_reference(name: str) -> Reference:
    """The packaged reference ``name`` (read with importlib.resources, so wheels work too).

    Raises ReportError for an unknown name.
    """
    known = available_references()
    if name not in known:
        raise ReportError(f"unknown reference {name!r} (available: {', '.join(known) or 'none'})")
    return read_reference(_root() / name)


def read_reference(folder: Traversable | Path) -> Reference:
    """The reference of a folder with a ``reference.json`` manifest (see the module).

    Raises ReportError naming the folder when the manifest is unreadable or names an unknown
    reader.
    """
    folder_name = Path(str(folder)).name
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        reader = READERS[manifest["reader"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{folder}: unreadable {MANIFEST} ({type(e).__name__}: {e})") from None
    name = manifest.get("name", folder_name)
    cells, dense = reader(folder)
    return Reference(name, manifest.get("citation", name), manifest.get("paper", ""), cells, dense)


@cache
def citation(name: str) -> str:
    """How a legend and a table header name the reference ``name`` (its manifest's citation)."""
    try:
        return json.loads((_root() / name / MANIFEST).read_text()).get("citation", name)
    except (OSError, ValueError):
        return name


def _csv(folder: Traversable | Path, file: str) -> pd.DataFrame:
    with (folder / file).open(newline="") as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def _num(text: str) -> float:
    """A published number (``''`` or ``'-'``: NaN)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# Renda et al. 2020 ----------------------------------------------------------------------------

# Our model names -> Renda et al.'s `network`, with the dataset that network was trained on.
RENDA_NETWORKS = {
    "resnet20": ("resnet20", "cifar10"),
    "resnet56": ("resnet56", "cifar10"),
    "resnet110": ("resnet110", "cifar10"),
    "vgg16_nofc": ("vgg16_nofc", "cifar10"),
    "resnet50": ("resnet50", "imagenet"),
}
RENDA_METHODS = {"ft": "finetune", "wr": "lottery", "lrw": "lr_finetune"}
# Only the unstructured cells: Renda's Structured-A/B cells are their own rescaled L1-filter
# variants at five densities each, not Li et al.'s presets, and their density is not ours.
RENDA_CRITERIA = {"global_magnitude": "Unstructured"}


def _read_renda(folder) -> tuple[list[Cell], dict[str, float]]:
    dense = {
        r["network"]: float(r["mean"])
        for r in _csv(folder, "dense_baselines.csv").to_dict("records")
    }
    networks = {net: (ours, data) for ours, (net, data) in RENDA_NETWORKS.items()}
    methods = {theirs: ours for ours, theirs in RENDA_METHODS.items()}
    criteria = {theirs: ours for ours, theirs in RENDA_CRITERIA.items()}
    cells = []
    for r in _csv(folder, "cells_median.csv").to_dict("records"):
        if r["network"] not in networks or r["prune_method"] not in criteria:
            continue
        model, dataset = networks[r["network"]]
        iterative = r["iterative"] == "True"
        density, t = float(r["density"]), float(r["retrain_epochs"])
        cells.append(
            Cell(
                model,
                dataset,
                methods.get(r["retrain_method"]),
                criterion=criteria[r["prune_method"]],
                one_shot=not iterative,
                density=density,
                retrain_epochs=t,
                acc=float(r["test_median"]),
                dense_acc=dense.get(r["network"], math.nan),
                compression=1.0 / density,
                label=(
                    f"{r['network']} {r['prune_method']} "
                    f"{'iterative' if iterative else 'one-shot'} {r['retrain_method']}, "
                    f"density {density:.4g}, t = {t:g}: median of {r['n']} trials"
                ),
            )
        )
    return cells, dense


# Le & Hua 2021 ---------------------------------------------------------------------------------

PAPER_METHODS = {"FT": "ft", "LRW": "lrw", "SLR": "slr", "CLR": "clr", "LLR": "llr", "ALLR": "allr"}
PAPER_DATASETS = {"ImageNet": "imagenet", "CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}


def paper_model(network: str) -> str:
    """A paper's network name as our model name: ``ResNet-50`` -> ``resnet50``."""
    return re.sub(r"\(.*?\)|[^a-z0-9]", "", network.lower())


def lehua_preset(model: str, config: str) -> str | None:
    """Our pruning preset name for a Le & Hua configuration, None when there is none.

    ``Taylor-FO-BN-72%`` -> ``taylor_fo_bn_resnet50_72``; ``res18prune.py -v E (...)`` ->
    ``l1_filter_resnet18_e``; ``residual_prune.py -v DCP30 (...)`` -> ``l1_filter_resnet50_dcp30``.
    """
    taylor = re.fullmatch(r"Taylor-FO-BN-(\d+)%", config.strip())
    if taylor:
        return f"taylor_fo_bn_{model}_{taylor[1]}"
    pfec = re.search(r"-v\s+(\w+)", config)
    return f"l1_filter_{model}_{pfec[1].lower()}" if pfec else None


def _read_lehua(folder) -> tuple[list[Cell], dict[str, float]]:
    cells = []
    for file in ("imagenet_taylor_ft_vs_clr.csv", "imagenet_pfec_clr_vs_dcp.csv"):
        for r in _csv(folder, file).to_dict("records"):
            model = paper_model(r["network"])
            config = r.get("pruning_config") or r.get("nptm_config") or ""
            method = PAPER_METHODS.get(r["retrain_method"].strip())
            # DCP rows are another pruning method (quoted by Le & Hua): kept, never matched.
            preset = lehua_preset(model, config) if method else None
            params = _num(r["params_reduction_pct"])
            what = config or r["pruning_method"]
            cells.append(
                Cell(
                    model,
                    PAPER_DATASETS.get(r["dataset"], r["dataset"].lower()),
                    method if preset else None,
                    pruning=preset,
                    criterion="l1_filter" if preset and preset.startswith("l1_filter") else None,
                    retrain_epochs=_num(r["retrain_epochs"]) if r["retrain_epochs"] else None,
                    acc=_num(r["top1_mean"]) / 100.0,
                    acc_std=_num(r["top1_std"]) / 100.0,
                    dense_acc=_num(r["unpruned_top1"]) / 100.0,
                    compression=1.0 / (1.0 - params / 100.0),
                    label=f"{r['network']} {what}, {r['retrain_method']} ({r['source']}; {file})",
                )
            )
    return cells, {}


# Zimmer et al. 2023 ----------------------------------------------------------------------------

# The methods and one-shot flag of each published table (by the start of its `table_id`). Table
# 1's columns are "the different learning rate translation schemes"; the blog names these six.
ZIMMER_TABLES = {
    "blog Table 1": (("ft", "lrw", "slr", "clr", "llr", "allr"), True),
    "blog Table 2": (("bimp",), False),
}


def _read_zimmer(folder) -> tuple[list[Cell], dict[str, float]]:
    cells = []
    for r in _csv(folder, "published_tables_index.csv").to_dict("records"):
        table = next((v for k, v in ZIMMER_TABLES.items() if r["table_id"].startswith(k)), None)
        if table is None:
            continue
        methods, one_shot = table
        budget = re.match(r"\s*([\d.]+(?:\s*,\s*[\d.]+)*)\s*epochs", r["retrain_budget"])
        ts = [float(t) for t in budget[1].split(",")] if budget else [None]
        status = "NOT RETRIEVED" if r["values_status"].startswith(NOT_RETRIEVED) else ""
        for sparsity in (float(s) for s in r["sparsities_pct"].split(",")):
            for method in methods:
                for t in ts:
                    when = f", t = {t:g}" if t is not None else ""
                    cells.append(
                        Cell(
                            paper_model(r["network"]),
                            PAPER_DATASETS.get(r["dataset"], r["dataset"].lower()),
                            method,
                            criterion="global_magnitude",
                            one_shot=one_shot,
                            density=1.0 - sparsity / 100.0,
                            retrain_epochs=t,
                            compression=1.0 / (1.0 - sparsity / 100.0),
                            label=(
                                f"{r['table_id']}: {sparsity:g}% sparsity, "
                                f"{method_label(method)}{when} ({status or r['values_status']})"
                            ),
                        )
                    )
    return cells, {}


# A paper in the common format -------------------------------------------------------------------

CELL_COLUMNS = (
    "model",
    "dataset",
    "method",
    "pruning",
    "criterion",
    "one_shot",
    "density",
    "retrain_epochs",
    "top1_pct",
    "top1_std_pct",
    "dense_top1_pct",
    "compression",
    "label",
)
"""``reader: cells``: the columns of ``cells.csv``; empty: not stated (matches any value)."""


def _read_cells(folder) -> tuple[list[Cell], dict[str, float]]:
    frame = _csv(folder, "cells.csv")
    missing = [c for c in CELL_COLUMNS if c not in frame]
    if missing:
        raise ReportError(f"{folder}/cells.csv: lacks the column(s) {', '.join(missing)}")

    def opt(text: str, kind=float):
        return kind(text) if text != "" else None

    cells = []
    for r in frame.to_dict("records"):
        density = opt(r["density"])
        compression = _num(r["compression"])
        cells.append(
            Cell(
                r["model"],
                r["dataset"],
                r["method"] or None,
                pruning=r["pruning"] or None,
                criterion=r["criterion"] or None,
                one_shot=opt(r["one_shot"], lambda s: s.strip().lower() in ("true", "1")),
                density=density,
                retrain_epochs=opt(r["retrain_epochs"]),
                acc=_num(r["top1_pct"]) / 100.0,
                acc_std=_num(r["top1_std_pct"]) / 100.0,
                dense_acc=_num(r["dense_top1_pct"]) / 100.0,
                compression=compression
                if not math.isnan(compression) or density is None
                else 1.0 / density,
                label=r["label"],
            )
        )
    return cells, {}


READERS = {
    "renda2020": _read_renda,
    "lehua2021": _read_lehua,
    "zimmer2023": _read_zimmer,
    "cells": _read_cells,
}


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------


def match_reference(records: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """``records`` with the ``reference_<name>_*`` columns of ``reference`` filled in.

    A pruned record matches a published cell when its model, dataset and method are the cell's
    and its pruning preset, criterion, one-shot flag, retrain epochs and density (within
    ``DENSITY_RTOL``) agree wherever the cell states them; a cell that states t wins over one
    that does not, then the nearest density. Columns (``REFERENCE_FIELDS``): ``_acc`` (the
    published value, a fraction; NaN for a cell whose value could not be retrieved), ``_std``,
    ``_delta_pp`` (100 · (value − the paper's dense accuracy)), ``_compression`` (the
    published one), ``_t`` (the cell's t, NaN when the paper does not give it) and ``_cell``
    (the paper's name of the cell; empty: no published counterpart). Level 0 never matches.
    """
    index: dict[tuple, list[Cell]] = defaultdict(list)
    for c in reference.cells:
        if c.method is not None:
            index[(c.model, c.dataset, c.method)].append(c)
    values: dict[str, list[Any]] = {f: [] for f in ("acc", "std", "delta_pp", "compression", "t")}
    labels: list[str] = []
    for rec in records.to_dict("records"):
        found = None
        if rec["level"] > 0:
            candidates = [
                c
                for c in index.get((rec["model"], rec["dataset"], rec["method"]), [])
                if c.matches(rec)
            ]
            if candidates:
                found = min(candidates, key=lambda c: _closeness(c, rec))
        if found is None:
            for v in values.values():
                v.append(math.nan)
            labels.append("")
            continue
        values["acc"].append(found.acc)
        values["std"].append(found.acc_std)
        values["delta_pp"].append(100.0 * (found.acc - found.dense_acc))
        values["compression"].append(found.compression)
        values["t"].append(math.nan if found.retrain_epochs is None else found.retrain_epochs)
        labels.append(found.label or reference.name)
    out = records.copy()
    for f, v in values.items():
        out[reference_column(reference.name, f)] = pd.Series(v, index=out.index, dtype=float)
    out[reference_column(reference.name, "cell")] = pd.Series(labels, index=out.index, dtype=str)
    return out


def _closeness(cell: Cell, rec) -> tuple:
    d = 0.0 if cell.density is None else abs(math.log(cell.density / rec["density"]))
    return (cell.retrain_epochs is None, d)


def match_references(records: pd.DataFrame, references: list[Reference]) -> pd.DataFrame:
    """``records`` matched against each of ``references`` (see ``match_reference``)."""
    for reference in references:
        records = match_reference(records, reference)
    return records


# ----------------------------------------------------------------------------------------------
# What matched and what did not
# ----------------------------------------------------------------------------------------------


def _levels_text(levels: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``levels 1-3, 5``."""
    runs: list[list[int]] = []
    for lv in sorted(set(levels)):
        if runs and lv == runs[-1][-1] + 1:
            runs[-1].append(lv)
        else:
            runs.append([lv])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs]
    return ("levels " if len(levels) > 1 else "level ") + ", ".join(parts)


def _block_text(block: tuple) -> str:
    model, dataset, pruning, criterion, one_shot = block
    how = "one-shot" if one_shot else "iterative"
    return f"{model} on {dataset}, {how} {pruning}" + (
        f" ({criterion})" if criterion not in (pruning, "") else ""
    )


def reference_summary(records: pd.DataFrame) -> list[str]:
    """Per reference in ``records``: how many pruned cells a published cell matched, whether
    the paper's values could be retrieved, and the lines ``cells with no published
    counterpart in <paper>: ...`` (per block: method, t and levels)."""
    lines = []
    pruned = records[records["level"] > 0]
    for name in reference_names(records):
        cite = citation(name)
        cell = pruned[reference_column(name, "cell")].fillna("").astype(str)
        matched = cell != ""
        valued = matched & pruned[reference_column(name, "acc")].notna()
        head = f"{cite} ({name}): {int(matched.sum())} of {len(pruned)} cells matched"
        if int(valued.sum()) != int(matched.sum()):
            head += f", {int((matched & ~valued).sum())} of them without a retrievable value (n/r)"
        if not _retrievable(name):
            head += "; the paper's published values could not be retrieved (see its README)"
        lines.append(head)
        missing = pruned[~matched]
        for block, recs in missing.groupby(list(BLOCK_KEYS), sort=False):
            # per method, the t with the same levels together: "FT t=10, 30 (levels 1-17)"
            parts: dict[tuple[str, str], list[float]] = defaultdict(list)
            for (method, t), r in recs.groupby(["method", "retrain_epochs"], sort=True):
                parts[(method, _levels_text(list(r["level"])))].append(t)
            text = "; ".join(
                f"{method_label(m)} t={', '.join(f'{t:g}' for t in ts)} ({levels})"
                for (m, levels), ts in sorted(
                    parts.items(), key=lambda kv: (method_rank(kv[0][0]), kv[1][0])
                )
            )
            lines.append(
                f"  cells with no published counterpart in {cite} ({name}): "
                f"{_block_text(tuple(block))}: {text}"
            )
    return lines


def _retrievable(name: str) -> bool:
    try:
        return load_reference(name).retrievable
    except ReportError:  # a report.csv from a reference this install does not ship
        return True
