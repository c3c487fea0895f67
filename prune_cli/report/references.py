"""Published results shipped with the package (``prune_cli/reference/NAME``) and their matching.

``--reference renda2020`` adds, to every aggregated record that a published cell matches, the
cell's median test accuracy and its change vs the paper's dense baseline: the table's reference
columns and the figures' dashed curves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from prune_cli.report.aggregation import ReportError

REFERENCE_PACKAGE = "prune_cli"
REFERENCE_DIR = "reference"
# How a figure legend and a table header name each reference.
CITATIONS = {"renda2020": "Renda et al."}

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


@dataclass(frozen=True)
class Reference:
    """Published per-cell medians (``cells``) and dense accuracies by network (``dense``)."""

    name: str
    cells: list[dict[str, Any]]
    dense: dict[str, float]

    @property
    def citation(self) -> str:
        return CITATIONS.get(self.name, self.name)


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
        cells = pd.read_csv(f, dtype={"iterative": str})
    cells["iterative"] = cells["iterative"] == "True"
    with (root / "dense_baselines.csv").open(newline="") as f:
        dense = pd.read_csv(f).set_index("network")["mean"].astype(float).to_dict()
    return Reference(name, cells.to_dict("records"), dense)


def match_reference(records: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """``records`` with the ``reference*`` columns of every pruned record a published cell matches.

    A record matches a cell when its model (and dataset), method, criterion, one-shot flag and
    retrain epochs map onto the cell's and the densities agree within ``DENSITY_RTOL``. Columns:
    ``reference`` (the name), ``reference_acc`` (the cell's median), ``reference_delta_pp``
    (100 · (median − the reference's dense mean for that network)) and ``reference_compression``
    (1 / the cell's density). Records without a match keep empty (NaN) columns.
    """
    index: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in reference.cells:
        index[(c["network"], c["prune_method"], c["iterative"], c["retrain_method"])].append(c)
    out = records.copy()
    for i, rec in records.iterrows():
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
                out.loc[i, "reference"] = reference.name
                out.loc[i, "reference_acc"] = c["test_median"]
                out.loc[i, "reference_delta_pp"] = 100.0 * (
                    c["test_median"] - reference.dense[net[0]]
                )
                out.loc[i, "reference_compression"] = 1.0 / c["density"]
                break
    return out
