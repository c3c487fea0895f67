"""Reading run directories and summarising them over seeds (pandas).

A run's ``results.jsonl`` has one row per level. Rows are grouped by ``GROUP_KEYS`` and density
(three significant digits) and summarised over seeds; the accuracy change of a row is its metric
minus the dense (level 0) ``acc`` of the same run, in percentage points. Each row's training
budget (``budget_epochs``, ``budget_images``) is what its run spent up to that level: the dense
training plus every level's retraining, counted for every run, also where runs share their
dense model.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prune_cli.report.style import method_rank

BLOCK_KEYS = ("model", "dataset", "pruning", "criterion", "one_shot")
GROUP_KEYS = (*BLOCK_KEYS, "method", "retrain_epochs", "level")
METRICS = ("acc", "acc_after_prune")
STATS = ("mean", "std", "median", "min", "max")
BUDGET_COLUMNS = ("budget_epochs", "budget_images")
# Per reference NAME, references.match_reference adds the columns reference_NAME_FIELD.
REFERENCE_FIELDS = ("acc", "std", "delta_pp", "compression", "t", "cell")
# The first component of these module names is a network's classifier: drawn after the body.
HEAD_NAMES = ("fc", "classifier", "head", "linear", "output", "out", "logits")


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
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d}: no such directory")
        files = sorted(d.rglob("results.jsonl"))
        if not files:
            raise ReportError(f"{d}: no results.jsonl found in this directory or below it")
        found |= dict.fromkeys(f.resolve() for f in files)
    return list(found)


def failed_runs(dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """Runs under ``dirs`` that stopped on an error (their ``failed.json``), with the error."""
    from prune_cli.rundir import FAILED_NAME, read_failure

    found = sorted({p.parent for d in dirs for p in Path(d).rglob(FAILED_NAME)})
    return [(d, (read_failure(d) or {}).get("error", "?")) for d in found]


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


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def add_budget(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each with what its run spent on training up to its level (new dicts).

    ``budget_epochs``: the dense epochs (level 0's ``epochs``) plus the retrain epochs of every
    level up to this one; ``budget_images``: the same in images (``images_seen``). A run is its
    ``run`` (else ``config_hash``); its dense training counts in full for it, also when other
    runs share that dense model. NaN where a term is unknown (a row without ``epochs`` or
    ``images_seen``, a missing level).
    """
    rows = [dict(r) for r in rows]
    by_run: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r.get("run", r.get("config_hash")), []).append(r)
    for run_rows in by_run.values():
        epochs = images = math.nan
        previous = None
        for r in sorted(run_rows, key=lambda r: int(r["level"])):
            level = int(r["level"])
            if level == 0:
                epochs, images = _number(r.get("epochs")), _number(r.get("images_seen"))
            elif previous is not None and level == previous + 1:
                epochs += _number(r.get("retrain_epochs"))
                images += _number(r.get("images_seen"))
            else:
                epochs = images = math.nan
            r["budget_epochs"], r["budget_images"], previous = epochs, images, level
    return rows


def rows_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a frame with normalised keys and their budget (``add_budget``), one row per
    measurement.

    Runs that differ only in retraining share their dense model: its level-0 row is one
    measurement (per seed), however many runs repeat it; otherwise a run (config hash) is one.
    """
    df = pd.DataFrame(add_budget(rows))
    optional = ("seed", "dense_acc", "dense_cache", "config_hash", "compression", "wall_s")
    for col in (*optional, "run", "images_seen", *METRICS):
        if col not in df:
            df[col] = None
    df["one_shot"] = df["one_shot"].astype(bool)
    df["retrain_epochs"] = pd.to_numeric(df["retrain_epochs"]).fillna(0.0).astype(float)
    df["level"] = df["level"].astype(int)
    df["density"] = df["density"].astype(float)
    for col in ("compression", "wall_s", "images_seen", *BUDGET_COLUMNS):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    # Three significant digits of density keep runs of different pruning rates apart.
    df["density_key"] = df["density"].map(lambda d: float(f"{d:.3g}"))
    dense = (df["level"] == 0) & df["dense_cache"].notna()
    run = df["config_hash"].where(df["config_hash"].notna(), df["run"])
    df["identity"] = ("dense " + df["dense_cache"].astype(str)).where(dense, "run " + run)
    df["identity"] += " seed " + df["seed"].astype(str)
    return df.drop_duplicates([*GROUP_KEYS, "density_key", "identity"], keep="last")


def aggregate(rows: Iterable[dict[str, Any]], metric: str = "acc") -> pd.DataFrame:
    """One record per group of ``GROUP_KEYS`` (and density), summarised over seeds.

    A record holds the group keys, ``n`` (rows with a value of ``metric``), ``seeds``, the
    ``STATS`` of ``metric`` (``{metric}_mean`` ...; std with n − 1, NaN for one value) and of the
    accuracy change in percentage points (``delta_pp_mean`` ...: 100 · (metric − dense acc of
    the same run)), the means of density, compression, wall_s and images_seen, and the mean
    training budget up to the level (``budget_epochs``, ``budget_images``). Records are sorted
    by block, method (registry order), t, level. Reference columns come with matching.
    """
    df = rows_frame(rows)
    df["value"] = pd.to_numeric(df[metric], errors="coerce")
    df["delta_pp"] = 100.0 * (df["value"] - pd.to_numeric(df["dense_acc"], errors="coerce"))
    g = df.groupby([*GROUP_KEYS, "density_key"], sort=False, dropna=False)
    mixed = int(g["seed"].agg(lambda s: s.duplicated().any()).sum())
    if mixed:
        print(
            f"prune-report: warning: {mixed} group(s) pool runs of the same seed that differ in "
            "settings the report does not group by (e.g. lr); their statistics mix them",
            file=sys.stderr,
        )
    out = pd.concat(
        [
            g[["density", "compression"]].mean(),
            g["value"].count().rename("n"),
            g["seed"].agg(lambda s: " ".join(sorted({str(x) for x in s}))).rename("seeds"),
            g["value"].agg(list(STATS)).add_prefix(f"{metric}_"),
            g["delta_pp"].agg(list(STATS)).add_prefix("delta_pp_"),
            g[["wall_s", "images_seen"]].mean().add_suffix("_mean"),
            g[list(BUDGET_COLUMNS)].mean(),
        ],
        axis=1,
    ).reset_index()
    out["metric"] = metric
    return sort_records(out[csv_columns(metric)])


def sort_records(df: pd.DataFrame, *extra: str) -> pd.DataFrame:
    """Block (as text), method in registry order, t, level, density descending, ``extra``."""
    keys = pd.DataFrame({k: df[k].astype(str) for k in BLOCK_KEYS})
    keys["_method"] = df["method"].map(method_rank)
    keys["_t"], keys["_level"], keys["_d"] = df["retrain_epochs"], df["level"], -df["density"]
    for col in extra:
        keys[f"_{col}"] = df[col]
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def csv_columns(metric: str) -> list[str]:
    """The columns of ``report.csv`` for ``metric``, in order (before any reference's)."""
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
        *BUDGET_COLUMNS,
    ]


def reference_column(name: str, field: str) -> str:
    """The column of reference ``name``'s ``field`` (one of ``REFERENCE_FIELDS``)."""
    return f"reference_{name}_{field}"


def reference_names(records: pd.DataFrame) -> list[str]:
    """The references whose columns ``records`` carry, in column order."""
    head, tail = "reference_", "_cell"
    return [
        c[len(head) : -len(tail)]
        for c in records.columns
        if c.startswith(head) and c.endswith(tail)
    ]


def block_of(rec) -> tuple:
    """The (model, dataset, pruning, criterion, one_shot) of a record: one table, one panel."""
    return tuple(rec[k] for k in BLOCK_KEYS)


# ----------------------------------------------------------------------------------------------
# Per-layer density
# ----------------------------------------------------------------------------------------------


def layer_order(names: Iterable[str]) -> list[str]:
    """Layer names in network order, guessed from their names.

    Rows store ``layer_density`` as a JSON object whose keys are written sorted, so their order
    is not the network's. A row's ``layers`` list, where present, is used instead. The guess:
    numbers compared as numbers (``layer1.10`` after ``layer1.9``), the classifier (``fc``,
    ``classifier``, ...) last, else alphabetical.
    """
    return sorted(names, key=_layer_key)


def _layer_key(name: str) -> tuple:
    head = name.split(".")[0] in HEAD_NAMES
    parts = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]
    return (head, parts)


def _network_order(row: dict[str, Any]) -> list[tuple[str, float]]:
    """(layer, density) of a row in network order: its ``layers`` list, else ``layer_order``."""
    density = row["layer_density"]
    given = row.get("layers")
    order = [n for n in given if n in density] if isinstance(given, list) else []
    order += layer_order(n for n in density if n not in order)
    return [(n, float(density[n])) for n in order]


def layer_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per-layer density over seeds: one record per group (as ``aggregate``) and layer.

    Columns: the group keys, ``density`` and ``compression`` (means of the whole network),
    ``layer_index`` (network order), ``layer``, ``n``, ``layer_density_mean``, ``_std``,
    ``_min``, ``_max``. Empty when no row has ``layer_density``.
    """
    df = rows_frame(rows)
    cols = [*GROUP_KEYS, "density", "compression", "layer_index", "layer", "n"]
    stats = [f"layer_density_{k}" for k in ("mean", "std", "min", "max")]
    if "layer_density" not in df:
        return pd.DataFrame(columns=cols + stats)
    df = df[df["layer_density"].map(lambda v: isinstance(v, dict) and bool(v))]
    if df.empty:
        return pd.DataFrame(columns=cols + stats)
    keys = (*GROUP_KEYS, "density_key", "density", "compression")
    long = [
        {**{k: row[k] for k in keys}, "layer_index": i, "layer": name, "value": value}
        for row in df.to_dict("records")
        for i, (name, value) in enumerate(_network_order(row))
    ]
    long_df = pd.DataFrame(long)
    g = long_df.groupby([*GROUP_KEYS, "density_key", "layer_index", "layer"], sort=False)
    out = pd.concat(
        [
            g[["density", "compression"]].mean(),
            g["value"].count().rename("n"),
            g["value"].agg(["mean", "std", "min", "max"]).add_prefix("layer_density_"),
        ],
        axis=1,
    ).reset_index()
    return sort_records(out[cols + stats], "layer_index")


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


def write_csv(records: pd.DataFrame, path: Path) -> Path:
    """Write ``records`` to ``path``; NaN is written as an empty cell, floats in full."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.to_csv(path, index=False, na_rep="")
    return path


_STRINGS = ("model", "dataset", "pruning", "criterion", "method", "seeds", "metric", "layer")


def _is_string(col: str) -> bool:
    return col in _STRINGS or (col.startswith("reference_") and col.endswith("_cell"))


def read_csv(path: Path) -> pd.DataFrame:
    """The records of a ``report.csv`` (or ``layer_density.csv``) with their types restored."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in df.columns:
        if _is_string(col):
            continue
        if col == "one_shot":
            df[col] = df[col].astype(str) == "True"
        elif col in ("level", "n", "layer_index"):
            df[col] = df[col].astype(int)
        else:
            df[col] = pd.to_numeric(df[col].replace("", math.nan)).astype(float)
    return df
