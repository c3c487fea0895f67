"""The one typed schema of a run and the semantic checks made before anything starts.

The YAML files under ``conf/`` hold every default; the dataclasses here only say which keys
exist and what type they have (``MISSING``: every group file sets it; ``None`` or empty: an
optional key that most files leave out). Hydra merges each YAML into its typed node, so an
unknown key or a wrong type is rejected at composition. :func:`validate` adds the checks that types
cannot express and raises :class:`ConfigError` with one line naming the key. Checks that need torch
objects (the device, the model against the data) are in :mod:`prune_cli.checks`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = next(
    (
        p
        for p in (Path(__file__).parent / "conf", Path(__file__).parent.parent / "conf")
        if p.is_dir()
    ),
    Path(__file__).parent / "conf",
)
"""``conf/`` of a source checkout, or the copy an installed wheel carries inside the package."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line and names the key."""


MAX_EPOCHS = 10_000
"""Upper bound of ``train.epochs`` and of the retraining length ``t`` of one level (a typo such
as ``train.epochs=100000000`` would otherwise run for years)."""
MAX_LEVELS = 1_000
"""Upper bound of the number of pruning levels (given or derived from rate and sparsity)."""
SEED_LIMIT = 2**53
"""Seeds are integers in ``[0, 2^53)``: level ``l`` seeds a generator with ``seed * 1000 + l``
(below torch's 2^64) and the seed stays exact wherever results are read as floats."""


@dataclass
class ScheduleConf:
    kind: str = MISSING  # step | constant | linear | cosine
    milestones: list[float] = MISSING
    gamma: float = MISSING
    warmup_epochs: float = MISSING


@dataclass
class TrainConf:
    name: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    # if set, the LR applied is lr * batch_size / lr_reference_batch (linear scaling, Goyal et al.)
    lr_reference_batch: int | None = None
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING
    schedule: ScheduleConf = MISSING
    eval_batch_size: int = MISSING
    snapshot_epochs: list[int] = MISSING
    precision: str = MISSING  # fp32 | bf16
    channels_last: bool = MISSING
    compile: bool = MISSING


@dataclass
class MethodConf:
    name: str = MISSING
    retrain_epochs: float | None = MISSING
    warmup_fraction: float = MISSING
    eta_min_ratio: float = MISSING
    budget_epochs: float | None = MISSING


@dataclass
class PruningConf:
    name: str = MISSING
    criterion: str = MISSING
    rate: float | None = MISSING
    levels: int | None = MISSING
    target_sparsity: float | None = MISSING
    one_shot: bool = MISSING
    # structured L1 filter pruning: one ratio per stage, conv names kept whole
    stage_ratios: list[float] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)


@dataclass
class ModelConf:
    name: str = MISSING
    net: Any = MISSING
    prune_exclude: list[str] = MISSING


@dataclass
class DatasetConf:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    num_classes: int = MISSING
    input_shape: list[int] = MISSING
    augment: bool = MISSING
    loader: Any = MISSING


@dataclass
class Config:
    model: ModelConf = MISSING
    dataset: DatasetConf = MISSING
    train: TrainConf = MISSING
    method: MethodConf = MISSING
    pruning: PruningConf = MISSING
    seed: int = MISSING
    device: str = MISSING
    threads: int | None = MISSING
    deterministic: bool = MISSING
    cache_dir: str = MISSING
    progress: bool = MISSING
    rerun: bool = MISSING
    # experiment trackers (the `logger` group): name -> {_target_: a prune_cli.loggers class,
    # its settings}; empty: only metrics.csv (see prune_cli/loggers.py)
    logger: dict[str, Any] = field(default_factory=dict)
    # test accuracy after every N-th epoch of each phase and after its last (0: only per level)
    eval_every: int = MISSING
    # per-step loss and LR reach the loggers as the mean loss of every N optimizer steps
    log_every_n_steps: int = MISSING


def register() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="prune_cli_schema", node=Config)


def epochs_reached(epochs: int, candidates: list[int]) -> list[int]:
    """``${epochs_reached:${train.epochs},[...]}``: the candidate epochs a dense run of
    ``epochs`` epochs reaches. A recipe lists its snapshot epochs this way so that a run shorter
    than the recipe keeps those it reaches; an epoch beyond ``train.epochs`` given directly in
    ``train.snapshot_epochs`` is an error (see :func:`validate`)."""
    return [e for e in candidates if e <= epochs]


# registered on import: every composition, and every reader of a saved unresolved config, needs it
OmegaConf.register_new_resolver("epochs_reached", epochs_reached, replace=True)


# ----------------------------------------------------------------------------------------------
# Derived quantities every part of the run agrees on
# ----------------------------------------------------------------------------------------------


def retrain_epochs(cfg: DictConfig) -> float:
    """``t``: the method's retraining length, ``(B − T) / L`` under a budget, else ``T``."""
    m = cfg.method
    if m.budget_epochs is not None:
        return (m.budget_epochs - cfg.train.epochs) / level_plan(cfg)[0]
    return float(cfg.train.epochs if m.retrain_epochs is None else m.retrain_epochs)


def level_plan(cfg: DictConfig) -> tuple[int, float]:
    """``(L, s)``: the number of pruning levels and the fraction of remaining weights each prunes."""
    p = cfg.pruning
    if p.criterion == "l1_filter":
        return int(p.levels or 1), 0.0
    if p.one_shot:
        return 1, float(p.target_sparsity)
    if p.rate is None:
        return int(p.levels), 1.0 - (1.0 - p.target_sparsity) ** (1.0 / p.levels)
    if p.levels is not None:
        return int(p.levels), float(p.rate)
    # the fewest levels of rate s whose density reaches 1 - S (tolerant to float rounding)
    levels = math.log(1.0 - p.target_sparsity) / math.log(1.0 - p.rate)
    return max(1, math.ceil(levels - 1e-9)), float(p.rate)


# ----------------------------------------------------------------------------------------------
# Semantic checks
# ----------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


_TYPED = {
    "": Config,
    "model": ModelConf,
    "dataset": DatasetConf,
    "train": TrainConf,
    "train.schedule": ScheduleConf,
    "method": MethodConf,
    "pruning": PruningConf,
}


def _check_known_keys(cfg: DictConfig) -> None:
    """``+key=value`` can add keys the schema lacks; refuse them (a typo would be ignored)."""
    from dataclasses import fields

    for path, schema in _TYPED.items():
        node = cfg if not path else OmegaConf.select(cfg, path)
        known = {f.name for f in fields(schema)} | {"hydra"}
        for key in node:
            full = f"{path}.{key}" if path else str(key)
            _check(key in known, f"{full}: unknown key (not in {schema.__name__})")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the key) if ``cfg`` cannot run."""
    from prune_cli.schedules import METHODS  # local: keeps config importable without torch

    _check_known_keys(cfg)
    tr, m, p = cfg.train, cfg.method, cfg.pruning
    _check(tr.epochs > 0, f"train.epochs={tr.epochs}: must be > 0")
    _check(tr.epochs <= MAX_EPOCHS, f"train.epochs={tr.epochs}: must be <= {MAX_EPOCHS}")
    _check(tr.batch_size > 0, f"train.batch_size={tr.batch_size}: must be > 0")
    _check(tr.lr > 0, f"train.lr={tr.lr}: must be > 0")
    _check(0 <= tr.momentum < 1, f"train.momentum={tr.momentum}: must be in [0, 1)")
    _check(tr.weight_decay >= 0, f"train.weight_decay={tr.weight_decay}: must be >= 0")
    _check(tr.eval_batch_size > 0, f"train.eval_batch_size={tr.eval_batch_size}: must be > 0")
    _check(
        tr.schedule.kind in ("step", "constant", "linear", "cosine"),
        f"train.schedule.kind={tr.schedule.kind}: expected step, constant, linear or cosine",
    )
    _check(
        0 <= tr.schedule.warmup_epochs < tr.epochs,
        f"train.schedule.warmup_epochs={tr.schedule.warmup_epochs}: must be in [0, train.epochs)",
    )
    _check(
        tr.precision in ("fp32", "bf16"), f"train.precision={tr.precision}: expected fp32 or bf16"
    )
    _check(tr.schedule.gamma > 0, f"train.schedule.gamma={tr.schedule.gamma}: must be > 0")
    _check_milestones(list(tr.schedule.milestones))
    _check(
        tr.lr_reference_batch is None or tr.lr_reference_batch > 0,
        f"train.lr_reference_batch={tr.lr_reference_batch}: must be > 0 (or null: no LR scaling)",
    )
    for e in tr.snapshot_epochs:
        _check(e >= 0, f"train.snapshot_epochs: {e} is negative")
        _check(
            e <= tr.epochs,
            f"train.snapshot_epochs: {e} is beyond train.epochs={tr.epochs} (no such dense"
            " epoch to keep)",
        )
    _check(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: must be >= 1")
    _check(0 <= cfg.seed < SEED_LIMIT, f"seed={cfg.seed}: must be an integer in [0, 2^53)")
    _check_device(str(cfg.device))
    _check(str(cfg.cache_dir).strip() != "", "cache_dir: empty; name a directory")
    if "hydra" in cfg:  # a single run composed with Hydra's own config (prevalidation)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
        _check(
            run_dir is None or str(run_dir).strip() != "",
            "hydra.run.dir: empty; name the run directory (or leave the default)",
        )

    _check(m.name in METHODS, f"method.name={m.name}: unknown; choose from {', '.join(METHODS)}")
    _check(
        0 <= m.warmup_fraction < 1,
        f"method.warmup_fraction={m.warmup_fraction}: must be in [0, 1)",
    )
    _check(0 < m.eta_min_ratio < 1, f"method.eta_min_ratio={m.eta_min_ratio}: must be in (0, 1)")

    _check(
        p.criterion in ("global_magnitude", "layerwise_magnitude", "random", "l1_filter"),
        f"pruning.criterion={p.criterion}: expected global_magnitude, layerwise_magnitude, random"
        " or l1_filter",
    )
    if p.criterion == "l1_filter":
        _check(len(p.stage_ratios) > 0, "pruning.stage_ratios: l1_filter needs one ratio per stage")
        for r in p.stage_ratios:
            _check(0 <= r < 1, f"pruning.stage_ratios: {r} is outside [0, 1)")
        _check(p.levels is None or p.levels >= 1, f"pruning.levels={p.levels}: must be >= 1")
    else:
        _check_unstructured(p)
    _check_level_count(p, level_plan(cfg)[0])

    if m.budget_epochs is not None:
        _check(
            m.budget_epochs > tr.epochs,
            f"method.budget_epochs={m.budget_epochs}: the budget must exceed the dense phase"
            f" train.epochs={tr.epochs}",
        )
        _check(
            m.retrain_epochs is None,
            "method.retrain_epochs: set either a budget (method.budget_epochs) or t, not both",
        )
    t = retrain_epochs(cfg)
    _check(t > 0, f"method.retrain_epochs={t}: must be > 0")
    _check(
        t <= MAX_EPOCHS,
        f"method.retrain_epochs={t:g}: must be <= {MAX_EPOCHS}"
        + (" (derived from method.budget_epochs)" if m.budget_epochs is not None else ""),
    )
    if m.name == "wr":
        _check(
            float(tr.epochs - t).is_integer(),
            f"method.retrain_epochs={t:g}: wr rewinds to dense epoch T - t, which must be a whole"
            " epoch",
        )
    if m.name in ("wr", "lrw"):
        _check(
            t <= tr.epochs,
            f"method.retrain_epochs={t:g}: {m.name} replays the last t epochs of training, so t"
            f" must be <= train.epochs={tr.epochs}",
        )


_DEVICE = re.compile(r"(cpu|cuda|mps)(:(\d+))?")


def _check_device(device: str) -> None:
    """The form of ``device``; whether this machine has it is :mod:`prune_cli.checks`' concern."""
    match = _DEVICE.fullmatch(device)
    _check(
        device == "auto" or match is not None,
        f"device={device}: expected auto, cpu, cuda, cuda:N or mps",
    )
    if match and match[1] in ("cpu", "mps"):
        _check(
            match[3] is None or int(match[3]) == 0,
            f"device={device}: {match[1]} has no index other than 0 (write {match[1]})",
        )


def _check_milestones(milestones: list[float]) -> None:
    """Step milestones: positive and increasing. One past ``train.epochs`` is allowed: the run
    follows its recipe's schedule and stops before it (a shortened recipe)."""
    for a, b in zip(milestones, milestones[1:]):
        _check(
            a < b,
            f"train.schedule.milestones={milestones}: must be increasing ({a} then {b})",
        )
    for e in milestones:
        _check(
            math.isfinite(e) and e > 0,
            f"train.schedule.milestones={milestones}: {e} is not a positive epoch",
        )


def _check_level_count(p: DictConfig, levels: int) -> None:
    if levels <= MAX_LEVELS:
        return
    if p.levels is not None:
        raise ConfigError(f"pruning.levels={p.levels}: must be <= {MAX_LEVELS}")
    raise ConfigError(
        f"pruning.rate={p.rate}: reaching pruning.target_sparsity={p.target_sparsity} takes"
        f" {levels} levels, more than {MAX_LEVELS}; choose a larger rate"
    )


def _check_unstructured(p: DictConfig) -> None:
    if p.rate is not None:
        _check(0 < p.rate < 1, f"pruning.rate={p.rate}: must be in (0, 1)")
    if p.levels is not None:
        _check(p.levels >= 1, f"pruning.levels={p.levels}: must be >= 1")
    if p.target_sparsity is not None:
        _check(
            0 < p.target_sparsity < 1,
            f"pruning.target_sparsity={p.target_sparsity}: must be in (0, 1)",
        )
    if p.one_shot:
        given = [f"pruning.{k}={p[k]}" for k in ("rate", "levels") if p[k] is not None]
        unset = " ".join(g.split("=")[0] + "=null" for g in given)
        target = "" if p.target_sparsity is not None else " and a pruning.target_sparsity"
        _check(
            not given,
            "pruning.one_shot=true prunes once, straight to pruning.target_sparsity, but"
            f" {' and '.join(given)} {'is' if len(given) == 1 else 'are'} set: add {unset}{target},"
            " or set pruning.one_shot=false",
        )
        _check(
            p.target_sparsity is not None,
            "pruning.target_sparsity: one-shot pruning needs a target sparsity",
        )
    else:
        given = [k for k in ("rate", "levels", "target_sparsity") if p[k] is not None]
        _check(
            len(given) == 2,
            "pruning: give exactly two of pruning.rate, pruning.levels, pruning.target_sparsity"
            f" (given: {', '.join(given) or 'none'})",
        )
