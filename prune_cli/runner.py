"""One run, top to bottom: build, dense (cached), then the prune → retrain levels.

Everything the run produces lands in its run directory:

- ``config.yaml`` (composed config) and ``run.json`` (its hash; guards the directory)
- ``results.jsonl``: one row per level (level 0 = the dense model), appended atomically
- ``summary.txt``: the per-level table that is printed at the end
- ``checkpoints/level_<k>.pt`` (plain state_dict, zeros where pruned) + ``level_<k>_pruning.pt``
  (the pruner's state: masks, or the channel plans of levels 1..k)
- ``lr_level_<k>.csv``: the per-step LR each phase applied (level 0 = dense training)
- ``train_state.pt``: the in-progress level, for resuming
- ``metrics.csv``: one row per epoch of every phase; the loggers' files (``tensorboard/``,
  ``wandb/``, ``tracking.json``), see :mod:`prune_cli.loggers`
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from prune_cli import distributed, schedules
from prune_cli.checks import check_device
from prune_cli.config import apply_debug, level_epochs, n_levels, retrain_epochs
from prune_cli.costs import count_flops, param_counts
from prune_cli.data import build_data
from prune_cli.distributed import PREEMPTION, Dist
from prune_cli.errors import ConfigError, CorruptFileError, first_line
from prune_cli.loggers import HISTORY_FILE, Tracker
from prune_cli.models import build_model
from prune_cli.pruning import Network, Pruner, build_pruner
from prune_cli.rundir import (
    check_results,
    check_run_dir,
    claim_run_dir,
    clear_failure,
    held,
    is_complete,
)
from prune_cli.store import (
    DenseCache,
    append_row,
    config_hash,
    dense_spec,
    load_torch,
    remove_orphan_temps,
    save_torch,
    write_rows,
    write_text,
)
from prune_cli.train import Phase, evaluate, train_phase, write_lr_log

log = logging.getLogger("prune_cli")


@dataclass
class Built:
    """What a run trains: the model, its pruner, the data, and the derived constants."""

    model: nn.Module
    forward: nn.Module
    pruner: Pruner
    data: object
    device: torch.device
    steps_per_epoch: int
    eta: schedules.Schedule
    eta_max: float
    eta_last: float
    dense_flops: dict
    dist: Dist
    cfg: DictConfig
    # prunable weights of each layer of the dense network (the denominator of layer densities)
    dense_layers: dict[str, int] = field(default_factory=dict)
    # the optimizer state the last phase ended with (method.optimizer_state=keep carries it on)
    optimizer_state: dict | None = None
    _wrapped: list[int] = field(default_factory=list)

    @property
    def input_shape(self) -> list[int]:
        return list(self.cfg.dataset.input_shape)

    @property
    def writer(self) -> bool:
        return self.dist.writer

    def wrap(self) -> None:
        """(Re)build the forward module (DDP, compile) when the model's parameters are new
        tensors (after channels are cut out); nothing to do after masking."""
        ids = [id(p) for p in self.model.parameters()]
        if ids == self._wrapped:
            return
        rt, forward = self.cfg.runtime, self.model
        if self.dist.active:
            devices = [self.device] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=devices)
        self.forward = torch.compile(forward) if rt.compile else forward
        self._wrapped = ids

    def evaluate(self, split: str = "test") -> float:
        rt = self.cfg.runtime
        return evaluate(self.model, self.data, rt.eval_batch_size, self.cfg.train.precision, split)


def make_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    """The configured architecture on ``device`` (channels-last if the runtime asks)."""
    model = build_model(cfg.model.net).to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_weights(model: nn.Module, path: Path, device: torch.device) -> None:
    """``model.load_state_dict`` of the file at ``path``; a file of another architecture is
    one line naming it."""
    try:
        model.load_state_dict(load_torch(path, device))
    except RuntimeError as e:
        raise CorruptFileError(f"{path}: not a state of this model ({first_line(e)})") from e


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


def build(cfg: DictConfig) -> Built:
    """Data on the device, the model (seeded init) and its pruner; under torchrun or SLURM
    tasks, the process group and the DDP-wrapped forward."""
    rt = cfg.runtime
    device = resolve_device(rt.device)
    if rt.threads:
        torch.set_num_threads(rt.threads)
    d = distributed.init(device)
    if d.active and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ds = cfg.dataset
    data = build_data(
        ds.loader,
        device,
        augment=ds.augment,
        rank=d.rank,
        world_size=d.world_size,
        channels_last=rt.channels_last,
        workers=rt.workers,
        val_fraction=ds.val_fraction,
        split=ds.split,
        split_seed=ds.split_seed,
    )
    if data.num_classes != ds.num_classes:
        raise ConfigError(
            f"dataset.num_classes={ds.num_classes}: the data has {data.num_classes} classes"
        )
    if list(data.input_shape) != list(ds.input_shape):
        raise ConfigError(
            f"dataset.input_shape={list(ds.input_shape)}: the data's inputs are"
            f" {list(data.input_shape)}"
        )
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, device)
    if d.active:
        # same initial weights on every rank (DDP also broadcasts them, this makes it explicit)
        distributed.broadcast_tensors(d, list(model.state_dict().values()))
    spe = data.steps_per_epoch(cfg.train.batch_size)
    eta = original_schedule(cfg)
    lrs = schedules.per_step(eta, cfg.train.epochs * spe, spe)
    pruner = build_pruner(cfg.pruning)

    def batches(n: int):
        """``n`` training batches for gradient-based criteria (a fixed data order)."""
        return itertools.islice(data.train_batches(cfg.train.batch_size, cfg.seed), n)

    pruner.attach(
        Network(
            model=model,
            input_shape=list(ds.input_shape),
            make_model=lambda: make_model(cfg, device),
            exclude=list(cfg.model.prune_exclude),
            batches=batches,
        )
    )
    b = Built(
        model=model,
        forward=model,
        pruner=pruner,
        data=data,
        device=device,
        steps_per_epoch=spe,
        eta=eta,
        eta_max=max(lrs),
        eta_last=lrs[-1],
        dense_flops=count_flops(model, list(ds.input_shape)),
        dist=d,
        cfg=cfg,
        dense_layers={n.rsplit(".", 1)[0]: m.numel() for n, m in pruner.masks.masks.items()},
    )
    b.wrap()
    return b


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Run the whole experiment of ``cfg`` in ``run_dir``; return its rows.

    The run holds ``run_dir``'s lock throughout (under DDP: rank 0); a directory held by another
    live process is refused with :class:`RunBusyError`.
    """
    run_dir, chash = Path(run_dir), config_hash(apply_debug(cfg))
    check_run_dir(run_dir, chash)
    d = distributed.init(resolve_device(cfg.runtime.device))
    busy = held(run_dir, d.writer, lambda x: distributed.broadcast(d, x))
    with busy, Tracker(cfg, run_dir, chash, enabled=d.writer) as tracker:
        levels = n_levels(cfg)
        if d.writer:
            remove_orphan_temps(run_dir)
        rows = [] if cfg.runtime.rerun else check_results(run_dir, chash, levels)
        if is_complete(rows, levels):
            return _complete(run_dir, chash, rows)
        b = build(cfg)
        _start(cfg, b, run_dir, chash)
        tracker.start(b.steps_per_epoch)
        cache = DenseCache.of(cfg)
        # a resumed run without weight rewinding needs nothing of the dense model
        meta = dense(cfg, b, cache, tracker) if not rows or rewind_epochs(cfg) else None
        if rows:
            resume(b, run_dir, rows[-1]["level"])
        else:
            rows.append(dense_level(cfg, b, run_dir, chash, cache, meta, tracker))
        shown = _level_bar(cfg, b, len(rows), levels)
        lengths = list(zip(level_epochs(cfg), level_steps(cfg, b.steps_per_epoch)))
        for level in range(len(rows), levels + 1):
            t, steps = lengths[level - 1]
            rows.append(prune_and_retrain(cfg, b, level, t, steps, run_dir, chash, cache, tracker))
            shown.update()
            shown.set_postfix(density=f"{rows[-1]['density']:.3f}", acc=f"{rows[-1]['acc']:.4f}")
        shown.close()
        check_budget(cfg, b, rows)
        if b.writer:
            write_text(run_dir / "summary.txt", table(rows) + "\n")
            print(table(rows))
        return rows


def _complete(run_dir: Path, chash: str, rows: list[dict]) -> list[dict]:
    claim_run_dir(run_dir, chash)
    clear_failure(run_dir)
    log.info(
        "%s: complete (%d levels); nothing to do (runtime.rerun=true to recompute)",
        run_dir,
        len(rows) - 1,
    )
    print(table(rows))
    return rows


def _start(cfg: DictConfig, b: Built, run_dir: Path, chash: str) -> None:
    """Claim the run directory (writer) and arm the preemption handler."""
    if b.writer:
        claim_run_dir(run_dir, chash)
        clear_failure(run_dir)
        if cfg.runtime.rerun:
            write_rows(run_dir / "results.jsonl", [])
            (run_dir / "train_state.pt").unlink(missing_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    distributed.barrier(b.dist)
    PREEMPTION.install()


def _level_bar(cfg: DictConfig, b: Built, first: int, levels: int):
    return tqdm(
        total=levels,
        initial=first - 1,
        desc="levels",
        unit="lvl",
        disable=None if cfg.runtime.progress and b.writer else True,
        dynamic_ncols=True,
    )


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


def dense(cfg: DictConfig, b: Built, cache: DenseCache, tracker: Tracker | None = None) -> dict:
    """The dense model in ``b.model``, from the cache or trained into it (see
    :meth:`DenseCache.obtain`); its cache record."""
    d = b.dist
    meta = cache.obtain(
        lambda: train_dense(cfg, b, cache, keep_epochs(cfg), tracker),
        keep=keep_epochs(cfg),
        need=rewind_epochs(cfg),
        steps_per_epoch=b.steps_per_epoch,
        need_key=f"method.retrain_epochs={retrain_epochs(cfg):g}",
        writer=d.writer,
        broadcast=lambda x: distributed.broadcast(d, x),
        barrier=lambda: distributed.barrier(d),
    )
    load_weights(b.model, cache.final_path(), b.device)
    return meta


def train_dense(
    cfg: DictConfig,
    b: Built,
    cache: DenseCache,
    snapshots: list[int],
    tracker: Tracker | None = None,
) -> None:
    """Train the dense model into ``cache`` with the snapshots that weight rewinding needs."""
    log.info("training the dense model (%d epochs) into %s", cfg.train.epochs, cache.dir)
    writer = b.writer
    phase = Phase("dense", b.eta, cfg.train.epochs * b.steps_per_epoch, b.steps_per_epoch, cfg.seed)

    def snapshot(epoch: int, optimizer: torch.optim.Optimizer) -> None:
        # requests of jobs started after this training began are honoured up to their epoch; the
        # optimizer's state goes with the weights (method.optimizer_state=rewind restores both)
        if writer and (epoch in snapshots or epoch in cache.wanted()):
            save_torch(optimizer.state_dict(), cache.optimizer_path(epoch))
            save_torch(b.model.state_dict(), cache.snapshot_path(epoch))

    res = _train(
        cfg,
        b,
        phase,
        state_path=cache.state_path(),
        tracker=tracker,
        level=0,
        on_epoch_end=snapshot,
        # the records also go to the cache entry, for the runs that reuse this dense model
        history=cache.dir / HISTORY_FILE,
    )
    acc = b.evaluate()
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
            "snapshots": cache.kept(),
            "val_acc": res.val_acc,
            "best_epoch": res.best_epoch,
            "spec": dense_spec(cfg),
            "train_loss": res.train_loss,
        }
    )
    cache.state_path().unlink(missing_ok=True)
    log.info("dense model: accuracy %.4f after %d epochs", acc, cfg.train.epochs)


def _train(
    cfg: DictConfig,
    b: Built,
    phase: Phase,
    *,
    state_path: Path,
    tracker: Tracker | None,
    level: int,
    pruner: Pruner | None = None,
    optimizer: dict | None = None,
    on_epoch_end=None,
    history: Path | None = None,
):
    """One training phase of this run (dense or a level's retraining)."""
    return train_phase(
        b.model,
        b.data,
        phase,
        cfg.train,
        pruner,
        forward=b.forward,
        state_path=state_path,
        on_epoch_end=on_epoch_end,
        progress=cfg.runtime.progress and b.writer,
        world_size=b.dist.world_size,
        writer=b.writer,
        eval_batch_size=cfg.runtime.eval_batch_size,
        optimizer_state=optimizer,
        track=tracker.phase(level, phase, history) if tracker else None,
    )


def dense_level(
    cfg: DictConfig, b: Built, run_dir: Path, chash: str, cache: DenseCache, meta: dict, tracker
) -> dict:
    """Level 0: the dense model's row and files in this run directory."""
    row = base_row(cfg, b, 0, chash) | {
        "acc_after_prune": None,
        "acc": meta["acc"],
        "retrain_epochs": 0,
        "epochs": meta["epochs"],
        "images_seen": meta["images_seen"],
        "wall_s": meta["wall_s"],
        "val_acc": meta.get("val_acc"),
        "best_epoch": meta.get("best_epoch"),
        "dense_cache": cache.key,
    }
    if b.writer:
        shutil.copyfile(cache.dir / "lr.csv", run_dir / "lr_level_0.csv")
        _save_level(b, run_dir, 0)
        tracker.replay(cache.dir / HISTORY_FILE)  # a dense model trained by another job
        tracker.summary(0, row)
        append_row(run_dir / "results.jsonl", row)
    return row


def resume(b: Built, run_dir: Path, last: int) -> None:
    """Continue after level ``last``: its pruning state (channels cut, masks), then its weights."""
    ckpt = run_dir / "checkpoints"
    state = ckpt / f"level_{last:02d}_pruning.pt"
    b.pruner.load_state_dict(load_torch(state), source=state)
    b.wrap()
    load_weights(b.model, ckpt / f"level_{last:02d}.pt", b.device)
    b.pruner.masks.apply()
    kept = ckpt / f"level_{last:02d}_optimizer.pt"
    if b.cfg.method.optimizer_state == "keep" and kept.exists():
        b.optimizer_state = load_torch(kept)
    log.info("resuming %s after level %d", run_dir, last)


def _save_level(b: Built, run_dir: Path, level: int) -> None:
    ckpt = run_dir / "checkpoints"
    save_torch(b.model.state_dict(), ckpt / f"level_{level:02d}.pt")
    save_torch(b.pruner.state_dict(), ckpt / f"level_{level:02d}_pruning.pt")


# ----------------------------------------------------------------------------------------------
# A level
# ----------------------------------------------------------------------------------------------


def level_steps(cfg: DictConfig, steps_per_epoch: int) -> list[int]:
    """Optimizer steps of levels 1..L: each level's ``t`` (``config.level_epochs``) in steps,
    rounded on the running total, so that the levels of a budget spend exactly its steps (a
    fractional ``t`` rounded level by level could overspend it)."""
    out: list[int] = []
    done, total = 0, 0.0
    for t in level_epochs(cfg):
        total += t
        end = max(done + 1, round(total * steps_per_epoch))
        out.append(end - done)
        done = end
    return out


def prune_and_retrain(
    cfg: DictConfig,
    b: Built,
    level: int,
    t: float,
    steps: int,
    run_dir: Path,
    chash: str,
    cache: DenseCache,
    tracker,
) -> dict:
    """Prune one level, retrain it ``t`` epochs (``steps`` optimizer steps) with the configured
    method, record and save it."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + level)
    stats = b.pruner.prune(level, gen, steps)
    distributed.broadcast_tensors(b.dist, b.pruner.masks.tensors)  # identical masks on all ranks
    b.pruner.masks.apply()
    b.wrap()
    acc_pruned = b.evaluate()
    ctx = schedules.level_context(
        cfg.method,
        eta=b.eta,
        T=cfg.train.epochs,
        t=t,
        eta_max=b.eta_max,
        eta_last=b.eta_last,
        steps_per_epoch=b.steps_per_epoch,
        stats=stats,
    )
    plan = schedules.plan(cfg.method.name, ctx)
    optimizer = b.optimizer_state if cfg.method.optimizer_state == "keep" else None
    if plan.start == "rewind":
        epoch = int(round(plan.params["rewind_epoch"]))
        b.pruner.rewind(load_torch(cache.snapshot_path(epoch), b.device))
        if cfg.method.optimizer_state == "rewind":
            path = cache.optimizer_path(epoch)
            if not path.exists():
                raise ConfigError(
                    f"method.optimizer_state=rewind: the dense model {cache.dir} has no optimizer"
                    f" state of epoch {epoch} (trained by an earlier prune-cli); delete it to"
                    " train it again, or use method.optimizer_state=fresh"
                )
            optimizer = load_torch(path)
    phase = Phase(
        f"level_{level:02d}", plan.lr, steps, b.steps_per_epoch, cfg.seed, momentum=plan.momentum
    )
    overhead = time.perf_counter() - t0
    res = _train(
        cfg,
        b,
        phase,
        state_path=run_dir / "train_state.pt",
        tracker=tracker,
        level=level,
        pruner=b.pruner,
        optimizer=optimizer,
    )
    b.optimizer_state = res.optimizer_state
    b.pruner.masks.apply()  # a best-validation epoch's weights, under the final masks
    t1 = time.perf_counter()
    acc = b.evaluate()
    row = base_row(cfg, b, level, chash) | {
        "acc_after_prune": acc_pruned,
        "acc": acc,
        "retrain_epochs": t,
        "retrain_steps": steps,
        "images_seen": res.images_seen,
        "val_acc": res.val_acc,
        "best_epoch": res.best_epoch,
        "wall_s": res.wall_s + overhead + time.perf_counter() - t1,
        "prune": stats,
        **plan.params,
    }
    if b.writer:
        _save_level(b, run_dir, level)
        if cfg.method.optimizer_state == "keep":
            save_torch(
                b.optimizer_state, run_dir / "checkpoints" / f"level_{level:02d}_optimizer.pt"
            )
        write_lr_log(
            run_dir / f"lr_level_{level}.csv", res.lr_log, b.steps_per_epoch, res.momentum_log
        )
        tracker.summary(level, row)
        append_row(run_dir / "results.jsonl", row)
        (run_dir / "train_state.pt").unlink(missing_ok=True)
    distributed.barrier(b.dist)
    log.info(
        "level %d: density %.4f, accuracy %.4f after pruning, %.4f after %g epochs of %s",
        level,
        row["density"],
        acc_pruned,
        acc,
        t,
        cfg.method.name,
    )
    return row


def check_budget(cfg: DictConfig, b: Built, rows: list[dict]) -> None:
    """Under a budget ``B``: the images the levels trained on are at most ``(B − T0)`` epochs of
    the training set (a run that spent more would compare unfairly; it cannot happen by
    :func:`level_steps`, and this says so for every run)."""
    budget = cfg.method.budget_epochs
    if budget is None:
        return
    allowed = (budget - cfg.train.epochs) * b.data.n_train
    spent = sum(r["images_seen"] for r in rows[1:])
    if spent > allowed + 1e-6:
        raise RuntimeError(
            f"method.budget_epochs={budget}: the levels trained on {spent} images, more than the"
            f" {allowed:.0f} of {budget - cfg.train.epochs:g} epochs after the dense phase"
        )
    log.info(
        "budget: the levels trained on %d of %.0f images (%.4f)", spent, allowed, spent / allowed
    )


# ----------------------------------------------------------------------------------------------
# Rows and the table
# ----------------------------------------------------------------------------------------------


def base_row(cfg: DictConfig, b: Built, level: int, chash: str) -> dict:
    """The columns every row has."""
    masks = b.pruner.masks
    counts = param_counts(b.model, masks.masks)
    dense_total = b.dense_flops["total"]
    flops = b.pruner.flops(b.dense_flops)
    prunable = sum(b.dense_layers.values())
    density = masks.alive() / prunable
    alive = {n.rsplit(".", 1)[0]: int(m.count_nonzero()) for n, m in masks.masks.items()}
    return {
        "level": level,
        "density": density,
        "compression": 1.0 / density,
        "nonzero_params": counts["nonzero_params"],
        "total_params": counts["total_params"],
        "prunable_params": prunable,
        "prunable_alive": masks.alive(),
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
        "pruning": b.pruner.name,
        "criterion": b.pruner.criterion_label,
        "one_shot": b.pruner.levels == 1,
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
