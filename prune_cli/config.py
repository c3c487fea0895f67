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
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from prune_cli.errors import ConfigError

CONF_DIR = next(
    (
        p
        for p in (Path(__file__).parent / "conf", Path(__file__).parent.parent / "conf")
        if p.is_dir()
    ),
    Path(__file__).parent / "conf",
)
"""``conf/`` of a source checkout, or the copy an installed wheel carries inside the package."""


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
    snapshot_epochs: list[int] = MISSING
    precision: str = MISSING  # fp32 | bf16
    # which model a phase returns: final (null: the last epoch's) | best_val (the epoch of best
    # accuracy on the validation split, which dataset.val_fraction holds out)
    select: str | None = None


@dataclass
class MethodConf:
    # The retraining method (prune_cli/schedules.py). Unlike the other groups, every option but
    # `name` has its default here: the textbook method; a method YAML states only what differs,
    # and a paper preset (method=clr_lehua2021, slr_zimmer2023, ...) the authors' values. Each
    # option is explained in schedules.Context; the choices of a string option are in
    # schedules.CHOICES, the first being the default.
    name: str = MISSING
    # t in epochs; null = T (train.epochs)
    retrain_epochs: float | None = None
    # a total budget B (BIMP): dense phase T0 = train.epochs, then B - T0 split over the levels
    budget_epochs: float | None = None
    # even: (B - T0) / L each | whole: (B - T0) // L each, the remainder on the last (Zimmer)
    budget_split: str = "even"
    warmup_fraction: float = 0.0
    warmup_shape: str = "linear"  # linear | cosine
    warmup_start: float | None = None  # factor of the warm-up's peak; null: 0 (CLR: its end)
    rounding: str = "none"  # none | step | epoch: the warm-up length (and SLR's compression)
    granularity: str = "step"  # step | epoch: a new LR every step or every epoch
    endpoint: bool = False  # the schedule ends at the last step (torch OneCycleLR)
    eta_min_ratio: float = 0.001  # CLR's end LR / eta_max (clr_end=ratio)
    clr_peak: float = 1.0  # CLR's peak LR / eta_max
    clr_end: str = "ratio"  # ratio | last: eta_min_ratio * eta_max, or eta_last
    clr_anneal: str = "cosine"  # cosine | linear
    cycle_momentum: bool = False  # CLR: momentum max -> base -> max, inversely to the LR
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    original_warmup: str = "replay"  # replay | peak: SLR's handling of the recipe's warm-up
    d1_scope: str = "prunable"  # prunable | all: ALLR's d1 over prunable or all parameters
    # fresh: a new optimizer per level | keep: one optimizer for all levels, its momentum
    # buffers carried from level to level, level 1 fresh (Zimmer) | rewind: WR restores the
    # dense optimizer state of epoch T - t with the weights (Renda)
    optimizer_state: str = "fresh"


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
    # held out of the training set for validation (null or 0: none, all of it trains)
    val_fraction: float | None = None
    split: str | None = None  # stratified (null) | random (torch random_split's indices)
    split_seed: int | None = None  # the split's generator seed (null: 0)


@dataclass
class RuntimeConf:
    """How a run executes, never what it computes: nothing here is hashed, so changing any of
    it keeps the run directory and the dense model (see ``conf/config.yaml`` for each key)."""

    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    cache_dir: str = ".prune-cache"
    rerun: bool = False
    # data-loader worker processes (loaders that take `workers`, such as ImageNet's)
    workers: int = 8
    compile: bool = False
    channels_last: bool = False
    eval_batch_size: int = 1000
    # experiment trackers (the `logger` group): name -> {_target_: a prune_cli.loggers class,
    # its settings}; empty: only metrics.csv (see prune_cli/loggers.py)
    logger: dict[str, Any] = field(default_factory=dict)
    # test accuracy after every N-th epoch of each phase and after its last (0: only per level)
    eval_every: int = 1
    # per-step loss and LR reach the loggers as the mean loss of every N optimizer steps
    log_every_n_steps: int = 10


@dataclass
class DebugConf:
    """``debug=tiny``: any experiment shrunk to seconds on a CPU (see :func:`apply_debug`)."""

    epochs: int = 2
    retrain_epochs: float = 1.0
    levels: int = 2
    n_train: int = 48
    n_test: int = 16
    batch_size: int = 16
    num_classes: int = 10
    max_side: int = 64


@dataclass
class Config:
    model: ModelConf = MISSING
    dataset: DatasetConf = MISSING
    train: TrainConf = MISSING
    method: MethodConf = MISSING
    # a pruner (`_target_`, e.g. prune_cli.pruning.MaskPruner) with its criterion and options;
    # checked by building it (prune_cli.pruning.build_pruner)
    pruning: Any = MISSING
    seed: int = MISSING
    deterministic: bool = MISSING
    runtime: RuntimeConf = field(default_factory=RuntimeConf)
    # debug=tiny: shrink the experiment (hashed: it changes what is computed)
    debug: DebugConf | None = None


def apply_debug(cfg: DictConfig) -> DictConfig:
    """With a ``debug`` node, shrink ``cfg`` in place to a run of seconds that keeps its shape:
    the same model, method, pruner and schedule kinds, on synthetic data of the dataset's input
    shape (sides capped at ``max_side``) and at most ``num_classes`` classes; ``train.epochs``
    epochs with the milestones scaled alike; each level's t capped (a budget becomes the dense
    epochs plus ``retrain_epochs`` per level); at most ``levels`` levels. Idempotent; returns
    ``cfg``. Like the lightning-hydra-template's debug configs, but applied in one place so that
    a budget, a rewind point or a level count stays consistent whatever the preset sets."""
    d = cfg.get("debug")
    if d is None:
        return cfg
    with open_dict(cfg):
        ds, tr, m, p = cfg.dataset, cfg.train, cfg.method, cfg.pruning
        shape = [int(ds.input_shape[0]), *(min(int(x), d.max_side) for x in ds.input_shape[1:])]
        ds.input_shape = shape
        ds.num_classes = min(int(ds.num_classes), d.num_classes)
        ds.download = False
        ds.loader = {
            "_target_": "prune_cli.data.synthetic.load_synthetic",
            "n_train": d.n_train,
            "n_test": d.n_test,
            "num_classes": ds.num_classes,
            "shape": shape,
            "seed": 0,
        }
        scale = d.epochs / tr.epochs
        if scale < 1:
            ms = sorted({max(1e-3, float(x) * scale) for x in tr.schedule.milestones})
            tr.schedule.milestones = ms
            tr.schedule.warmup_epochs = float(tr.schedule.warmup_epochs) * scale
            tr.epochs = d.epochs
        tr.batch_size = min(int(tr.batch_size), d.batch_size)
        tr.lr_reference_batch = None
        tr.snapshot_epochs = [e for e in tr.snapshot_epochs if e <= tr.epochs]
        if isinstance(p, DictConfig) and p.get("levels") is not None and p.levels > d.levels:
            if p.get("rate") is not None and p.get("target_sparsity") is not None:
                p.target_sparsity = None
            p.levels = d.levels
        elif isinstance(p, DictConfig) and p.get("levels") is None and p.get("rate") is not None:
            p.levels, p.target_sparsity = d.levels, None
        if isinstance(p, DictConfig) and "measure_inference" in p:
            p.measure_inference = False  # timing a network is no part of a smoke run
        levels = int(p.get("levels") or 1) if isinstance(p, DictConfig) else 1
        t = min(float(d.retrain_epochs), float(tr.epochs))
        if m.budget_epochs is not None:
            m.budget_epochs = tr.epochs + t * levels
        elif m.retrain_epochs is None or float(m.retrain_epochs) > t:
            m.retrain_epochs = t
    return cfg


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
        return (m.budget_epochs - cfg.train.epochs) / n_levels(cfg)
    return float(cfg.train.epochs if m.retrain_epochs is None else m.retrain_epochs)


def level_epochs(cfg: DictConfig) -> list[float]:
    """``t`` of every level 1..L. Without a budget, ``retrain_epochs`` each. Under a budget
    ``B`` with dense phase ``T0``: ``(B − T0) / L`` each (``method.budget_split=even``), or
    ``(B − T0) // L`` whole epochs each with the remainder on the last level (``whole``, Zimmer
    et al.'s ``n_epochs_to_split``: B = 21, T0 = 10, L = 3 gives [3, 3, 5]); the levels always
    sum to exactly ``B − T0``."""
    m, levels = cfg.method, n_levels(cfg)
    if m.budget_epochs is None:
        return [retrain_epochs(cfg)] * levels
    total = float(m.budget_epochs - cfg.train.epochs)
    if m.get("budget_split", "even") != "whole":
        return [total / levels] * levels
    each = float(total // levels)
    return [each] * (levels - 1) + [total - each * (levels - 1)]


def n_levels(cfg: DictConfig) -> int:
    """``L``: the number of pruning levels of the configured pruner."""
    from prune_cli.pruning import build_pruner  # local: keeps config importable without torch

    return build_pruner(cfg.pruning).levels


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
    "runtime": RuntimeConf,
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
    from prune_cli.schedules import CHOICES, METHODS  # local: config importable without torch

    _check_known_keys(cfg)
    tr, m, p = cfg.train, cfg.method, cfg.pruning
    _check(
        isinstance(p, DictConfig), "pruning: not a config node (pick one: pruning=global_magnitude)"
    )
    _check(tr.epochs > 0, f"train.epochs={tr.epochs}: must be > 0")
    _check(tr.epochs <= MAX_EPOCHS, f"train.epochs={tr.epochs}: must be <= {MAX_EPOCHS}")
    _check(tr.batch_size > 0, f"train.batch_size={tr.batch_size}: must be > 0")
    _check(tr.lr > 0, f"train.lr={tr.lr}: must be > 0")
    _check(0 <= tr.momentum < 1, f"train.momentum={tr.momentum}: must be in [0, 1)")
    _check(tr.weight_decay >= 0, f"train.weight_decay={tr.weight_decay}: must be >= 0")
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
    ds = cfg.dataset
    val_fraction, select = ds.get("val_fraction"), tr.get("select")
    _check(
        val_fraction is None or 0 <= val_fraction < 1,
        f"dataset.val_fraction={val_fraction}: must be in [0, 1)",
    )
    _check(
        ds.get("split") in (None, "stratified", "random"),
        f"dataset.split={ds.get('split')}: expected stratified or random",
    )
    _check(
        ds.get("split_seed") is None or 0 <= ds.split_seed < SEED_LIMIT,
        f"dataset.split_seed={ds.get('split_seed')}: must be an integer in [0, 2^53)",
    )
    _check(
        select in (None, "final", "best_val"),
        f"train.select={select}: expected final or best_val",
    )
    _check(
        select != "best_val" or bool(val_fraction),
        "train.select=best_val: needs a validation split; set dataset.val_fraction (e.g. 0.1)",
    )
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
    _check(0 <= cfg.seed < SEED_LIMIT, f"seed={cfg.seed}: must be an integer in [0, 2^53)")
    _check_runtime(cfg.runtime)
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
    for key, choices in CHOICES.items():
        _check(
            m[key] in choices,
            f"method.{key}={m[key]}: expected {', '.join(choices[:-1])} or {choices[-1]}",
        )
    _check(
        m.warmup_start is None or 0 <= m.warmup_start <= 1,
        f"method.warmup_start={m.warmup_start}: must be in [0, 1] (a factor of the peak LR)",
    )
    _check(m.clr_peak > 0, f"method.clr_peak={m.clr_peak}: must be > 0")
    _check(0 <= m.max_momentum < 1, f"method.max_momentum={m.max_momentum}: must be in [0, 1)")
    _check(
        0 <= m.base_momentum <= m.max_momentum,
        f"method.base_momentum={m.base_momentum}: must be in [0, method.max_momentum"
        f"={m.max_momentum}]",
    )
    _check(
        not m.cycle_momentum or m.name == "clr",
        f"method.cycle_momentum=true: only clr cycles the momentum, not {m.name}",
    )
    _check(
        m.optimizer_state != "rewind" or m.name == "wr",
        f"method.optimizer_state=rewind: only wr rewinds (the dense optimizer state of epoch"
        f" T - t), not {m.name}",
    )

    _check_level_count(p, n_levels(cfg))  # building the pruner checks its own options

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
        _check(
            m.budget_split != "whole" or level_epochs(cfg)[0] >= 1,
            f"method.budget_split=whole: method.budget_epochs={m.budget_epochs} leaves"
            f" {m.budget_epochs - tr.epochs:g} epochs after train.epochs={tr.epochs}, less than one"
            " whole epoch per level",
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


def _check_runtime(rt: DictConfig) -> None:
    _check(rt.threads is None or rt.threads >= 1, f"runtime.threads={rt.threads}: must be >= 1")
    _check_device(str(rt.device))
    _check(str(rt.cache_dir).strip() != "", "runtime.cache_dir: empty; name a directory")
    _check(rt.workers >= 0, f"runtime.workers={rt.workers}: must be >= 0")
    _check(rt.eval_batch_size > 0, f"runtime.eval_batch_size={rt.eval_batch_size}: must be > 0")
    _check(rt.eval_every >= 0, f"runtime.eval_every={rt.eval_every}: must be >= 0")
    _check(
        rt.log_every_n_steps >= 1,
        f"runtime.log_every_n_steps={rt.log_every_n_steps}: must be >= 1",
    )


def _check_device(device: str) -> None:
    """The form of ``device``; whether this machine has it is :mod:`prune_cli.checks`' concern."""
    match = _DEVICE.fullmatch(device)
    _check(
        device == "auto" or match is not None,
        f"runtime.device={device}: expected auto, cpu, cuda, cuda:N or mps",
    )
    if match and match[1] in ("cpu", "mps"):
        _check(
            match[3] is None or int(match[3]) == 0,
            f"runtime.device={device}: {match[1]} has no index other than 0 (write {match[1]})",
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
    if p.get("levels") is not None:
        raise ConfigError(f"pruning.levels={p.levels}: must be <= {MAX_LEVELS}")
    raise ConfigError(
        f"pruning.rate={p.get('rate')}: reaching pruning.target_sparsity={p.get('target_sparsity')} takes"
        f" {levels} levels, more than {MAX_LEVELS}; choose a larger rate"
    )
