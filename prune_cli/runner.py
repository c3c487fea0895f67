"""One run, top to bottom: build, dense (cached), then the prune → retrain levels.

Everything the run produces lands in its run directory:

- ``config.yaml`` (composed config) and ``run.json`` (its hash; guards the directory)
- ``results.jsonl``: one row per level (level 0 = the dense model), appended atomically
- ``summary.txt``: the per-level table that is printed at the end
- ``checkpoints/level_<k>.pt`` (plain state_dict, zeros where pruned) + ``level_<k>_masks.pt``
- ``lr_level_<k>.csv``: the per-step LR each phase applied (level 0 = dense training)
- ``train_state.pt``: the in-progress level, for resuming
- ``metrics.csv``: one row per epoch of every phase; the loggers' files (``tensorboard/``,
  ``wandb/``, ``tracking.json``), see :mod:`prune_cli.loggers`
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import Timeout
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from prune_cli import distributed, schedules
from prune_cli.checks import check_device
from prune_cli.config import ConfigError, level_plan, retrain_epochs
from prune_cli.costs import count_flops, param_counts, remaining_flops
from prune_cli.data import build_data
from prune_cli.distributed import PREEMPTION, Dist
from prune_cli.loggers import HISTORY_FILE, Tracker
from prune_cli.pruning import Masks, prunable_parameters
from prune_cli.rundir import (
    RunBusyError,
    RunLock,
    check_results,
    clear_failure,
    is_complete,
)
from prune_cli.store import (
    CorruptFileError,
    DenseCache,
    append_row,
    config_hash,
    dense_hash,
    dense_spec,
    load_torch,
    remove_orphan_temps,
    save_torch,
    write_rows,
    write_text,
)
from prune_cli.structured import apply_channel_removal, measure_inference, structured_level
from prune_cli.train import Phase, evaluate, train_phase, write_lr_log

log = logging.getLogger("prune_cli")


@dataclass
class Built:
    """What a run trains: the model, its masks, the data, and the derived constants."""

    model: nn.Module
    forward: nn.Module
    masks: Masks
    data: object
    device: torch.device
    steps_per_epoch: int
    eta: schedules.Schedule
    eta_max: float
    eta_last: float
    dense_flops: dict
    dist: Dist
    dense_prunable: int
    cfg: DictConfig
    # prunable weights of each layer of the dense network (the denominator of layer densities)
    dense_layers: dict[str, int] = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return list(self.cfg.dataset.input_shape)

    def wrap(self) -> None:
        """(Re)build the masks and the forward module for the model's current parameters (after
        structured pruning they are new tensors of new shapes)."""
        cfg, d = self.cfg, self.dist
        self.masks = Masks(prunable_parameters(self.model, list(cfg.model.prune_exclude)))
        forward = self.model
        if d.active:
            ids = [self.device] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        self.forward = torch.compile(forward) if cfg.train.compile else forward

    def fresh_model(self) -> nn.Module:
        """A new instance of the configured architecture on the run's device."""
        return make_model(self.cfg, self.device)


def make_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    """The configured architecture on ``device`` (channels-last if the recipe asks)."""
    try:
        model = instantiate(cfg.model.net)
    except Exception as e:  # noqa: BLE001 - instantiate wraps import and argument errors alike
        raise ConfigError(f"model.net: cannot build {cfg.model.net.get('_target_')}: {e}") from e
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_weights(model: nn.Module, path: Path, device: torch.device) -> None:
    """``model.load_state_dict`` of the file at ``path``; a file of another architecture is
    one line naming it."""
    try:
        model.load_state_dict(load_torch(path, device))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(f"{path}: not a state of this model ({first})") from e


def resolve_device(name: str) -> torch.device:
    """``auto`` = the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)  # a SLURM job's node is only known here
    return torch.device(name)


def base_lr(cfg: DictConfig) -> float:
    """The recipe's peak LR, scaled linearly with the batch when the recipe names a reference."""
    tr = cfg.train
    if tr.lr_reference_batch:
        return tr.lr * tr.batch_size / tr.lr_reference_batch
    return tr.lr


def original_schedule(cfg: DictConfig) -> schedules.Schedule:
    """The dense run's LR schedule ``eta(x)``."""
    tr = cfg.train
    s = tr.schedule
    return schedules.original_schedule(
        s.kind, base_lr(cfg), tr.epochs, s.milestones, s.gamma, s.warmup_epochs
    )


def level_context(
    cfg: DictConfig, eta: schedules.Schedule, eta_max: float, eta_last: float, s: float, d1: float
) -> schedules.Context:
    """What the configured retraining method sees at a level with prune statistics ``s``, ``d1``."""
    return schedules.Context(
        eta=eta,
        T=cfg.train.epochs,
        t=retrain_epochs(cfg),
        eta_max=eta_max,
        eta_last=eta_last,
        s=s,
        d1=d1,
        warmup_fraction=cfg.method.warmup_fraction,
        eta_min_ratio=cfg.method.eta_min_ratio,
    )


def build(cfg: DictConfig) -> Built:
    """Data on the device, the model (seeded init) and its all-ones masks; under torchrun or
    SLURM tasks, the process group and the DDP-wrapped forward."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.init(device)
    if d.active and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = build_data(
        cfg.dataset.loader,
        device,
        augment=cfg.dataset.augment,
        rank=d.rank,
        world_size=d.world_size,
        channels_last=cfg.train.channels_last,
    )
    if data.num_classes != cfg.dataset.num_classes:
        raise ConfigError(
            f"dataset.num_classes={cfg.dataset.num_classes}: the data has {data.num_classes} classes"
        )
    if list(data.input_shape) != list(cfg.dataset.input_shape):
        raise ConfigError(
            f"dataset.input_shape={list(cfg.dataset.input_shape)}: the data's inputs are"
            f" {list(data.input_shape)}"
        )
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, device)
    if d.active:
        # same initial weights on every rank (DDP also broadcasts them, this makes it explicit)
        distributed.broadcast_tensors(d, list(model.state_dict().values()))
    spe = data.steps_per_epoch(cfg.train.batch_size)
    eta = original_schedule(cfg)
    total = cfg.train.epochs * spe
    lrs = schedules.per_step(eta, total, spe)
    b = Built(
        model=model,
        forward=model,
        masks=None,
        data=data,
        device=device,
        steps_per_epoch=spe,
        eta=eta,
        eta_max=max(lrs),
        eta_last=lrs[-1],
        dense_flops=count_flops(model, list(cfg.dataset.input_shape)),
        dist=d,
        dense_prunable=0,
        cfg=cfg,
    )
    b.wrap()
    b.dense_prunable = b.masks.total()
    b.dense_layers = {n.rsplit(".", 1)[0]: m.numel() for n, m in b.masks.masks.items()}
    return b


# ----------------------------------------------------------------------------------------------
# Dense phase
# ----------------------------------------------------------------------------------------------


def rewind_epochs(cfg: DictConfig) -> list[int]:
    """Dense epochs this run reads from the cache: WR's rewind point ``T − t`` (none otherwise)."""
    if cfg.method.name == "wr":
        return [int(round(cfg.train.epochs - retrain_epochs(cfg)))]
    return []


def keep_epochs(cfg: DictConfig) -> list[int]:
    """Snapshots saved when this run trains the dense model: its own, the configured ones, and
    epoch 0 (free, and WR's rewind point at t = T), so that sibling jobs find theirs."""
    kept = {0, *(int(e) for e in cfg.train.snapshot_epochs), *rewind_epochs(cfg)}
    return sorted(e for e in kept if e <= cfg.train.epochs)


class MissingSnapshotError(ConfigError):
    """A complete dense cache entry lacks the snapshot that weight rewinding needs."""


def missing_snapshots(cfg: DictConfig, cache: DenseCache, meta: dict | None) -> list[int]:
    """Rewind epochs this run needs that a complete entry does not have (none if incomplete)."""
    if meta is None:
        return []
    return [e for e in rewind_epochs(cfg) if not cache.snapshot_path(e).exists()]


def missing_snapshot_error(cfg: DictConfig, cache: DenseCache, missing: list[int]) -> str:
    kept = sorted(e for e in range(cfg.train.epochs + 1) if cache.snapshot_path(e).exists())
    return (
        f"method.retrain_epochs={retrain_epochs(cfg):g}: weight rewinding needs the dense"
        f" model of epoch {', '.join(map(str, missing))}, but the cached dense model {cache.dir}"
        f" kept only epochs {kept}; run the same sweep's WR jobs together with the job that"
        f" trains it, or delete {cache.dir} (when no run reads it) to retrain it with the snapshot"
    )


def dense(cfg: DictConfig, b: Built, tracker: Tracker | None = None) -> tuple[dict, DenseCache]:
    """Load the dense model from the cache, or train it there (one job trains, others wait).

    A complete entry is never retrained in place: one that lacks this run's rewind snapshot is
    an error (:class:`MissingSnapshotError`). Under DDP all ranks train together; rank 0 holds
    the lock and writes the cache entry.
    """
    cache = DenseCache(Path(cfg.cache_dir), dense_hash(cfg))
    d = b.dist
    meta = distributed.broadcast(d, cache.meta() if d.writer else None)
    if meta is None:
        lock = cache.lock() if d.writer else None
        if lock is not None:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("dense model %s is being trained by another job; waiting", cache.key[:10])
                lock.acquire()
        try:
            meta = cache.meta() if d.writer else None
            if distributed.broadcast(d, meta is None if d.writer else None):
                if d.writer:
                    remove_orphan_temps(cache.dir)
                    _drop_state_without_snapshots(cfg, b, cache)
                train_dense(cfg, b, cache, keep_epochs(cfg), tracker)
        finally:
            if lock is not None:
                lock.release()
    else:
        log.info("dense model %s from the cache (%s)", cache.key[:10], cache.dir)
    distributed.barrier(d)
    meta = cache.meta()
    missing = missing_snapshots(cfg, cache, meta)
    if missing:
        raise MissingSnapshotError(missing_snapshot_error(cfg, cache, missing))
    load_weights(b.model, cache.final_path(), b.device)
    return meta, cache


def _drop_state_without_snapshots(cfg: DictConfig, b: Built, cache: DenseCache) -> None:
    """An interrupted dense training resumed past an epoch that this run (or its sweep) needs a
    snapshot of, which the interrupted job did not keep: start that training over."""
    state = cache.state_path()
    if not state.exists():
        return
    saved = load_torch(state)
    if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
        raise CorruptFileError(
            f"{state}: not a training state; delete it to start that training over"
        )
    done = saved["step"] // b.steps_per_epoch
    keep = set(keep_epochs(cfg)) | cache.wanted()
    lost = sorted(e for e in keep if e <= done and not cache.snapshot_path(e).exists())
    if lost:
        log.info(
            "dense model %s: the interrupted training did not keep epochs %s; starting it over",
            cache.key[:10],
            lost,
        )
        state.unlink()


def train_dense(
    cfg: DictConfig,
    b: Built,
    cache: DenseCache,
    snapshots: list[int],
    tracker: Tracker | None = None,
) -> None:
    """Train the dense model into ``cache`` with the snapshots that weight rewinding needs."""
    log.info("training the dense model (%d epochs) into %s", cfg.train.epochs, cache.dir)
    writer = b.dist.writer
    phase = Phase("dense", b.eta, cfg.train.epochs * b.steps_per_epoch, b.steps_per_epoch, cfg.seed)

    def snapshot(epoch: int) -> None:
        # requests of jobs started after this training began are honoured up to their epoch
        if writer and (epoch in snapshots or epoch in cache.wanted()):
            save_torch(b.model.state_dict(), cache.snapshot_path(epoch))

    res = train_phase(
        b.model,
        b.data,
        phase,
        cfg.train,
        None,
        forward=b.forward,
        state_path=cache.state_path(),
        on_epoch_end=snapshot,
        progress=cfg.progress and writer,
        world_size=b.dist.world_size,
        writer=writer,
        # the records also go to the cache entry, for the runs that reuse this dense model
        track=tracker.phase(0, phase, cache.dir / HISTORY_FILE) if tracker else None,
    )
    acc = evaluate(b.model, b.data, cfg.train.eval_batch_size, cfg.train.precision)
    if not writer:
        return
    save_torch(b.model.state_dict(), cache.final_path())
    write_lr_log(cache.dir / "lr.csv", res.lr_log, b.steps_per_epoch)
    cache.commit(
        {
            "acc": acc,
            "epochs": cfg.train.epochs,
            "images_seen": res.images_seen,
            "wall_s": res.wall_s,
            # a phase resumed past an epoch could not save it: record only what exists
            "snapshots": [
                e for e in range(cfg.train.epochs + 1) if cache.snapshot_path(e).exists()
            ],
            "spec": dense_spec(cfg),
            "train_loss": res.train_loss,
        }
    )
    cache.state_path().unlink(missing_ok=True)
    log.info("dense model: accuracy %.4f after %d epochs", acc, cfg.train.epochs)


# ----------------------------------------------------------------------------------------------
# Rows and the table
# ----------------------------------------------------------------------------------------------


def base_row(cfg: DictConfig, b: Built, level: int, chash: str, flops: int | None = None) -> dict:
    """The columns every row has; ``flops`` of a structurally pruned (smaller) network, which
    its prune statistics already counted, else the dense MACs scaled by the layer densities."""
    counts = param_counts(b.model, b.masks.masks)
    dense_total = b.dense_flops["total"]
    if flops is None:
        flops = remaining_flops(b.dense_flops, b.masks.layer_density())
    density = b.masks.alive() / b.dense_prunable
    alive = {n.rsplit(".", 1)[0]: int(m.count_nonzero()) for n, m in b.masks.masks.items()}
    return {
        "level": level,
        "density": density,
        "compression": 1.0 / density,
        "nonzero_params": counts["nonzero_params"],
        "total_params": counts["total_params"],
        "prunable_params": b.dense_prunable,
        "prunable_alive": b.masks.alive(),
        "dense_flops": dense_total,
        "flops": flops,
        "theoretical_speedup": dense_total / max(flops, 1),
        # remaining fraction of each layer's dense weights (masked or removed channels)
        "layer_density": {k: alive.get(k, 0) / n for k, n in b.dense_layers.items()},
        "layers": list(b.dense_layers),  # network order (the row's dict keys are sorted)
        "layer_params": list(b.dense_layers.values()),
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "pruning": cfg.pruning.name,
        "criterion": cfg.pruning.criterion,
        "one_shot": bool(cfg.pruning.one_shot),
        "seed": cfg.seed,
        "config_hash": chash,
    }


COLUMNS = [
    ("level", "{:>5}"),
    ("density", "{:>8.4f}"),
    ("compression", "{:>7.2f}x"),
    ("nonzero_params", "{:>10}"),
    ("acc_after_prune", "{:>9}"),
    ("acc", "{:>7.4f}"),
    ("retrain_epochs", "{:>7g}"),
    ("wall_s", "{:>8.1f}"),
]


def table(rows: list[dict]) -> str:
    """The per-level table of a run, as printed at its end."""
    head = "level  density  compress     params  acc@prune     acc  epochs   wall_s"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, fmt in COLUMNS:
            v = r.get(key)
            if key == "acc_after_prune":
                cells.append(f"{v:>9.4f}" if v is not None else f"{'-':>9}")
            else:
                cells.append(fmt.format(v))
        lines.append("  ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, chash: str) -> None:
    """Refuse a run directory that holds another configuration's run (writes nothing)."""
    marker = Path(run_dir) / "run.json"
    if marker.exists():
        try:
            other = json.loads(marker.read_bytes().decode())["config_hash"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(
                f"{marker}: unreadable ({type(e).__name__}); it names the configuration this"
                " directory belongs to: delete it only if the directory holds this run"
            ) from None
        if other != chash:
            raise ConfigError(
                f"hydra.run.dir={run_dir}: holds another configuration's run"
                f" (hash {str(other)[:10]} != {chash[:10]}); choose another directory"
            )


def guard_run_dir(run_dir: Path, chash: str) -> None:
    """Refuse a run directory that holds another configuration's run; claim a new one."""
    check_run_dir(run_dir, chash)
    marker = run_dir / "run.json"
    if not marker.exists():
        write_text(marker, json.dumps({"config_hash": chash}) + "\n")


def prune_level(cfg: DictConfig, b: Built, level: int, s: float, gen, ckpt: Path) -> dict:
    """Prune one level: masks (unstructured) or channel removal (``l1_filter``); its statistics."""
    if cfg.pruning.criterion == "l1_filter":
        stats = structured_level(b.model, cfg.pruning, b.input_shape)
        plan = stats.pop("plan")
        if b.dist.writer:
            save_torch(plan, ckpt / f"level_{level:02d}_plan.pt")
        distributed.barrier(b.dist)
        b.wrap()
        return stats
    stats = b.masks.prune(s, cfg.pruning.criterion, gen)
    distributed.broadcast_tensors(b.dist, b.masks.tensors)  # identical masks on every rank
    b.masks.apply()
    return stats


def replay_plans(model: nn.Module, ckpt: Path, upto: int, input_shape: list[int]) -> bool:
    """Apply the channel removals of levels ``1..upto`` saved in ``ckpt`` to ``model``."""
    plans = [ckpt / f"level_{k:02d}_plan.pt" for k in range(1, upto + 1)]
    for path in plans:
        if path.exists():
            try:
                apply_channel_removal(model, load_torch(path), input_shape)
            except ValueError as e:
                raise CorruptFileError(f"{path}: not a channel plan of this model ({e})") from e
    return any(p.exists() for p in plans)


def rewind(b: Built, snapshot: Path, ckpt: Path, level: int) -> None:
    """Weight rewinding: the dense snapshot, made the current shape, with the current masks."""
    state = load_torch(snapshot, b.device)
    if b.cfg.pruning.criterion == "l1_filter":
        fresh = b.fresh_model()
        fresh.load_state_dict(state)
        replay_plans(fresh, ckpt, level, b.input_shape)
        state = fresh.state_dict()
    b.model.load_state_dict(state)
    b.masks.apply()


def inference_speed(b: Built, cache: DenseCache) -> dict:
    """Measured inference of the smaller network against the dense one, same device and process."""
    dense_model = b.fresh_model()
    load_weights(dense_model, cache.final_path(), b.device)
    return measure_inference(dense_model, b.model, b.input_shape, device=b.device)


def run(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Run the whole experiment of ``cfg`` in ``run_dir``; return its rows.

    The run holds ``run_dir``'s lock throughout (under DDP: rank 0); a directory held by another
    live process is refused with :class:`RunBusyError`.
    """
    run_dir = Path(run_dir)
    chash = config_hash(cfg)
    check_run_dir(run_dir, chash)
    d = distributed.init(resolve_device(cfg.device))
    lock = RunLock(run_dir)
    busy = None
    if d.writer:
        try:
            lock.acquire()
        except RunBusyError as e:
            busy = str(e)
    busy = distributed.broadcast(d, busy)
    if busy:
        raise RunBusyError(busy)
    try:
        with Tracker(cfg, run_dir, chash, enabled=d.writer) as tracker:
            return _run_held(cfg, run_dir, chash, tracker, d.writer)
    finally:
        lock.release()


def _run_held(
    cfg: DictConfig, run_dir: Path, chash: str, tracker: Tracker, writer: bool
) -> list[dict]:
    results = run_dir / "results.jsonl"
    n_levels, s = level_plan(cfg)
    t = retrain_epochs(cfg)
    if writer:
        remove_orphan_temps(run_dir)
    rows = [] if cfg.rerun else check_results(run_dir, chash, n_levels)
    if is_complete(rows, n_levels):
        guard_run_dir(run_dir, chash)
        clear_failure(run_dir)
        log.info(
            "%s: complete (%d levels); nothing to do (rerun=true to recompute)", run_dir, n_levels
        )
        print(table(rows))
        return rows
    b = build(cfg)
    writer = b.dist.writer
    if writer:
        guard_run_dir(run_dir, chash)
        clear_failure(run_dir)
        if cfg.rerun:
            write_rows(results, [])
            (run_dir / "train_state.pt").unlink(missing_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    distributed.barrier(b.dist)
    PREEMPTION.install()
    tracker.start(b.steps_per_epoch)
    ckpt = run_dir / "checkpoints"
    if rows and not rewind_epochs(cfg) and cfg.pruning.criterion != "l1_filter":
        # resuming: the levels need nothing of the dense model (even if the cache is gone)
        meta, cache = None, DenseCache(Path(cfg.cache_dir), dense_hash(cfg))
    else:
        meta, cache = dense(cfg, b, tracker)
    if not rows:
        row = base_row(cfg, b, 0, chash) | {
            "acc_after_prune": None,
            "acc": meta["acc"],
            "retrain_epochs": 0,
            "epochs": meta["epochs"],
            "images_seen": meta["images_seen"],
            "wall_s": meta["wall_s"],
            "dense_cache": cache.key,
        }
        if writer:
            shutil.copyfile(cache.dir / "lr.csv", run_dir / "lr_level_0.csv")
            save_torch(b.model.state_dict(), ckpt / "level_00.pt")
            save_torch(b.masks.state_dict(), ckpt / "level_00_masks.pt")
            tracker.replay(cache.dir / HISTORY_FILE)  # a dense model trained by another job
            tracker.summary(0, row)
            append_row(results, row)
        rows.append(row)
    else:
        last = rows[-1]["level"]
        if replay_plans(b.model, ckpt, last, b.input_shape):
            b.wrap()
        load_weights(b.model, ckpt / f"level_{last:02d}.pt", b.device)
        masks_path = ckpt / f"level_{last:02d}_masks.pt"
        b.masks.load_state_dict(load_torch(masks_path), source=masks_path)
        log.info("resuming %s after level %d", run_dir, last)

    gen = torch.Generator().manual_seed(cfg.seed)
    levels = tqdm(
        range(len(rows), n_levels + 1),
        desc="levels",
        initial=len(rows) - 1,
        total=n_levels,
        unit="lvl",
        disable=None if cfg.progress and writer else True,
        dynamic_ncols=True,
    )
    for level in levels:
        t0 = time.perf_counter()
        gen.manual_seed(cfg.seed * 1000 + level)
        stats = prune_level(cfg, b, level, s, gen, ckpt)
        acc_pruned = evaluate(b.model, b.data, cfg.train.eval_batch_size, cfg.train.precision)
        overhead = time.perf_counter() - t0
        ctx = level_context(cfg, b.eta, b.eta_max, b.eta_last, stats["s"], stats["d1"])
        plan = schedules.plan(cfg.method.name, ctx)
        if plan.start == "rewind":
            rewind(b, cache.snapshot_path(int(round(plan.params["rewind_epoch"]))), ckpt, level)
        phase = Phase(
            f"level_{level:02d}",
            plan.lr,
            max(1, round(t * b.steps_per_epoch)),
            b.steps_per_epoch,
            cfg.seed,
        )
        res = train_phase(
            b.model,
            b.data,
            phase,
            cfg.train,
            b.masks,
            forward=b.forward,
            state_path=run_dir / "train_state.pt",
            progress=cfg.progress and writer,
            world_size=b.dist.world_size,
            writer=writer,
            track=tracker.phase(level, phase),
        )
        t1 = time.perf_counter()
        acc = evaluate(b.model, b.data, cfg.train.eval_batch_size, cfg.train.precision)
        overhead += time.perf_counter() - t1
        if cfg.pruning.criterion == "l1_filter" and writer:
            stats["inference"] = inference_speed(b, cache)
        row = base_row(cfg, b, level, chash, stats.get("flops_after")) | {
            "acc_after_prune": acc_pruned,
            "acc": acc,
            "retrain_epochs": t,
            "images_seen": res.images_seen,
            "wall_s": res.wall_s + overhead,
            "prune": stats,
            **{k: v for k, v in plan.params.items()},
        }
        if writer:
            save_torch(b.model.state_dict(), ckpt / f"level_{level:02d}.pt")
            save_torch(b.masks.state_dict(), ckpt / f"level_{level:02d}_masks.pt")
            write_lr_log(run_dir / f"lr_level_{level}.csv", res.lr_log, b.steps_per_epoch)
            tracker.summary(level, row)
            append_row(results, row)
            (run_dir / "train_state.pt").unlink(missing_ok=True)
        rows.append(row)
        distributed.barrier(b.dist)
        levels.set_postfix(density=f"{row['density']:.3f}", acc=f"{acc:.4f}")
        log.info(
            "level %d: density %.4f, accuracy %.4f after pruning, %.4f after %g epochs of %s",
            level,
            row["density"],
            acc_pruned,
            acc,
            t,
            cfg.method.name,
        )
    levels.close()
    if writer:
        text = table(rows)
        write_text(run_dir / "summary.txt", text + "\n")
        print(text)
    return rows
