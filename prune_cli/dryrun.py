"""``prune-run --dry-run ...``: what a command or sweep will cost, before anything runs.

Every job of the command is composed as prune-run would run it (the points of a ``-m`` sweep,
the config's own ``hydra.sweeper.params`` included) and listed with its run directory, whether
that directory already holds the run (complete: skipped; partial: resumes after its last
level), the dense model it needs (from the cache, or which job of the command trains it: one
training per dense model and command), and what it will spend:

- epochs: the dense ``T`` (only the job that trains the dense model) and ``t`` per level still
  to run; images: the count the run records as ``images_seen`` (a phase of ``t`` epochs is
  ``max(1, round(t * steps_per_epoch))`` optimizer steps of full batches, except the last
  batch of every epoch, which holds the rest of the training set);
- FLOPs in the rows' convention (multiply-accumulates of conv and linear layers, as in the
  pruning papers): ``3 x forward MACs per image x images`` (the backward pass costs about two
  forwards). A level's forward MACs are the dense ones with every prunable layer scaled by the
  level's density (theoretical for masked pruning: the kernels still run dense) or, for
  structured pruning, those of the smaller network (exact);
- wall time: images / the images/s that a short throughput probe measures (a few timed
  training steps at the recipe's batch size on the run's device, after warm-up, one probe per
  network, batch and device), plus the evaluations (test set once after dense training and
  twice per level, at three times the training rate).

Nothing is trained or written: no run directory, no cache entry, no ``.hydra``. Training
set sizes come from building the data on the CPU where that is cheap and writes nothing
(bundled digits, synthetic data, an ImageNet folder that is there); the official CIFAR and MNIST
sets (and an absent ImageNet) count with their known sizes.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from prune_cli.config import n_levels as levels_of
from prune_cli.config import retrain_epochs
from prune_cli.data.base import global_steps
from prune_cli.errors import ConfigError
from prune_cli.store import DenseCache, config_hash, dense_hash

PROBE_WARMUP = 2
"""Untimed training steps before the probe's clock starts (allocation, kernel selection); more,
up to 0.2 s, for a network whose steps take milliseconds."""
PROBE_STEPS = (5, 200)
"""Timed steps of a probe: at least 5 (0.5 s for fast steps), at most 200..."""
PROBE_SECONDS = 5.0
"""...and no more once this many seconds have passed (a slow network: at least 2 steps)."""
EVAL_SPEEDUP = 3.0
"""Evaluation images per second relative to training (a forward without the backward)."""

# training and test set sizes of the official datasets, for loaders whose files are not read
KNOWN_SIZES = {
    "prune_cli.data.cifar.load_cifar10": ("CIFAR-10", 50_000, 10_000),
    "prune_cli.data.cifar.load_cifar100": ("CIFAR-100", 50_000, 10_000),
    "prune_cli.data.mnist.load_mnist": ("MNIST", 60_000, 10_000),
}
IMAGENET = "prune_cli.data.imagenet.load_imagenet"
IMAGENET_SIZES = (1_281_167, 50_000)  # ILSVRC-2012 train / val


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass
class DataSize:
    n_train: int
    n_test: int
    source: str  # how the sizes were found


@dataclass
class Probe:
    """A measured training throughput (images/s), or why there is none."""

    label: str
    images_per_s: float | None
    steps: int = 0
    error: str | None = None
    warmup: int = 0
    skipped: bool = False  # not measured (the device is elsewhere)


@dataclass
class Phase:
    """One training phase of a job: the dense training or one level's retraining."""

    name: str  # "dense" or "level k"
    epochs: float
    steps: int
    images: int
    macs_per_image: int  # forward MACs of one example during this phase
    theoretical: bool  # MACs scaled by density (masked pruning)
    probe: Probe | None = None
    evals: int = 0  # test-set evaluations after the phase

    @property
    def flops(self) -> int:
        return 3 * self.macs_per_image * self.images


@dataclass
class Job:
    index: int  # 1-based
    overrides: list[str]
    label: str
    run_dir: Path | None
    run_dir_note: str
    status: str  # new | complete | partial | rerun | refused | busy
    status_note: str
    dense_key: str
    dense_note: str  # "trains it", "cache", "job k trains it", "not needed"
    trains_dense: bool
    phases: list[Phase] = field(default_factory=list)
    n_test: int = 0
    device: str = "cpu"

    @property
    def epochs(self) -> float:
        return sum(p.epochs for p in self.phases)

    @property
    def images(self) -> int:
        return sum(p.images for p in self.phases)

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.phases)

    def wall_s(self) -> float | None:
        total = 0.0
        for p in self.phases:
            if p.images == 0:
                continue
            if p.probe is None or p.probe.images_per_s is None:
                return None
            rate = p.probe.images_per_s
            total += p.images / rate + p.evals * self.n_test / (EVAL_SPEEDUP * rate)
        return total


@dataclass
class Dense:
    key: str
    cache_dir: str
    status: str  # cache | train | resume | unused
    trainer: int | None  # job index that trains it
    users: list[int] = field(default_factory=list)
    epochs: int = 0
    images: int = 0


@dataclass
class Plan:
    multirun: bool
    sweep_dir: str | None
    jobs: list[Job]
    dense: dict[tuple[str, str], Dense]
    probes: list[Probe]
    notes: list[str]


# ----------------------------------------------------------------------------------------------
# Composing the jobs
# ----------------------------------------------------------------------------------------------


def _labels(jobs: list[list[str]], multirun: bool) -> list[str]:
    """What tells the jobs apart: the overrides whose value differs between jobs of a sweep,
    all command-line overrides of a single run."""
    if not multirun:
        return [" ".join(jobs[0]) or "(defaults)"]
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    varying = {k for k, v in values.items() if len(v) > 1}
    out = []
    for job in jobs:
        picked = [o for o in job if o.partition("=")[0] in varying]
        out.append(" ".join(picked) or "(one job)")
    return out


def _run_dir(
    cfg: DictConfig, multirun: bool, num: int, sweep_dir: str | None
) -> tuple[Path | None, str]:
    """The job's run directory as Hydra will name it (``hydra.job.num`` = ``num``; a sweep's
    directory is resolved once, ``sweep_dir``, as Hydra does), and a note."""
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    raw = OmegaConf.to_container(node, resolve=False)
    with open_dict(cfg):
        cfg.hydra.job.num = num
        cfg.hydra.job.id = str(num)
        if sweep_dir is not None:
            cfg.hydra.sweep.dir = sweep_dir
    note = ""
    if "${now:" in str(raw.get("dir")):
        note = "named with the time the " + ("sweep" if multirun else "run") + " starts"
    try:
        if multirun:
            return Path(str(node.dir)) / str(node.subdir), note
        return Path(str(node.dir)), note
    except Exception as e:  # noqa: BLE001 - a pattern that needs Hydra's runtime values
        from prune_cli.cli import error_line

        return None, f"named by Hydra at launch ({error_line(e)})"


def _status(cfg: DictConfig, run_dir: Path | None, n_levels: int) -> tuple[str, str, int]:
    """``(status, note, levels done)`` of the job's run directory."""
    from prune_cli.cli import error_line
    from prune_cli.rundir import check_results, check_run_dir, is_busy, is_complete, read_failure

    if run_dir is None or not run_dir.exists():
        return "new", "", 0
    holder = is_busy(run_dir)
    if holder is not None:
        return "busy", f"in use by another prune-run ({holder}): this job would not run", -1
    chash = config_hash(cfg)
    try:
        check_run_dir(run_dir, chash)
        rows = check_results(run_dir, chash, n_levels)
    except Exception as e:  # noqa: BLE001 - the real run stops on it: say so, plan nothing
        return "refused", error_line(e), -1
    if cfg.runtime.rerun:
        return "rerun", "runtime.rerun=true: recomputes every level", 0
    failed = read_failure(run_dir)
    why = f"; it failed before: {failed.get('error')}" if failed else ""
    if is_complete(rows, n_levels):
        return "complete", "skipped (runtime.rerun=true recomputes it)", len(rows)
    if rows:
        done = len(rows) - 1
        return "partial", f"resumes after level {done} of {n_levels}{why}", len(rows)
    return "new", f"the directory exists without results{why}", 0


# ----------------------------------------------------------------------------------------------
# Data, FLOPs and throughput
# ----------------------------------------------------------------------------------------------


def data_size(cfg: DictConfig) -> DataSize:
    """Training and test set sizes of the job's data, without downloading or writing; the
    training size is what is left after the validation split (``dataset.val_fraction``)."""
    size = _full_size(cfg)
    fraction = cfg.dataset.get("val_fraction") or 0.0
    if fraction:
        from prune_cli.data.base import holdout_size

        held = holdout_size(size.n_train, float(fraction))
        return DataSize(
            size.n_train - held, size.n_test, f"{size.source}; {held:,} held out for validation"
        )
    return size


def _full_size(cfg: DictConfig) -> DataSize:
    from prune_cli.data import DataError, build_data

    loader = cfg.dataset.loader
    target = str(loader.get("_target_", ""))
    if target in KNOWN_SIZES:
        name, n_train, n_test = KNOWN_SIZES[target]
        return DataSize(n_train, n_test, f"{name}'s official size (its files are not read)")
    if target == IMAGENET:
        root = Path(str(loader.root)).expanduser()
        if not ((root / "train").is_dir() and (root / "val").is_dir()):
            n_train, n_test = IMAGENET_SIZES
            return DataSize(n_train, n_test, f"ILSVRC-2012's size ({root} is not there)")
    plain = OmegaConf.to_container(loader, resolve=True)
    if "download" in plain:
        plain["download"] = False  # a dry run fetches nothing
    try:
        data = build_data(OmegaConf.create(plain), "cpu", augment=False)
    except DataError as e:
        raise DataError(f"cannot count the training images: {e}") from e
    return DataSize(int(data.n_train), int(data.n_test), "counted on the CPU")


def phase_images(epochs: float, n_train: int, batch_size: int) -> tuple[int, int]:
    """``(steps, images)`` of a training phase of ``epochs`` epochs, as train_phase counts them."""
    spe = global_steps(n_train, batch_size)
    steps = max(1, round(epochs * spe))
    return steps, (steps // spe) * n_train + (steps % spe) * batch_size


@dataclass
class Arch:
    """A network as trained at some phase: its forward MACs per image and a builder."""

    key: str
    macs: int
    build: Callable[[], nn.Module]


def _networks(cfg: DictConfig, n_levels: int) -> list[tuple[Arch, bool]]:
    """The network of the dense phase and of levels 1..L: ``(Arch, theoretical)`` each.

    The configured pruner prunes a freshly initialised model level by level (which weights or
    channels go does not matter for costs; gradient criteria score on random batches): a level
    whose network is physically smaller is measured as built, a masked one is ``theoretical``
    (the dense network's time, its MACs scaled by the layer densities)."""
    from prune_cli.costs import count_flops
    from prune_cli.pruning import Network, build_pruner
    from prune_cli.runner import make_model

    shape = [int(d) for d in cfg.dataset.input_shape]
    classes, bs = int(cfg.dataset.num_classes), int(cfg.train.batch_size)
    net_key = json.dumps(
        [OmegaConf.to_container(cfg.model.net, resolve=True), shape], sort_keys=True
    )
    pruning = OmegaConf.to_container(cfg.pruning, resolve=True)
    cpu = torch.device("cpu")
    torch.manual_seed(cfg.seed)

    def network(model: nn.Module) -> Network:
        def batches(n: int):
            gen = torch.Generator().manual_seed(cfg.seed)
            for _ in range(n):
                yield (
                    torch.randn(bs, *shape, generator=gen),
                    torch.randint(classes, (bs,), generator=gen),
                )

        return Network(
            model, shape, lambda: make_model(cfg, cpu), list(cfg.model.prune_exclude), batches
        )

    model = make_model(cfg, cpu)
    per_module = count_flops(model, shape)
    dense = Arch(net_key, per_module["total"], lambda: make_model(cfg, cpu))
    out = [(dense, False)]
    pruner = build_pruner(cfg.pruning)
    pruner.attach(network(model))
    for level in range(1, n_levels + 1):
        pruner.prune(level, torch.Generator().manual_seed(cfg.seed * 1000 + level))
        macs = int(pruner.flops(per_module))
        if count_flops(model, shape)["total"] == per_module["total"]:  # masked: same network
            out.append((Arch(net_key, macs, dense.build), True))
            continue
        state = copy.deepcopy(pruner.state_dict())

        def build(state: dict = state) -> nn.Module:
            again = build_pruner(cfg.pruning)
            small = make_model(cfg, cpu)
            again.attach(network(small))
            again.load_state_dict(state)
            return small

        key = json.dumps([net_key, pruning, level], sort_keys=True, default=str)
        out.append((Arch(key, macs, build), False))
    return out


def probe(arch: Arch, cfg: DictConfig, device: torch.device, label: str, num_classes: int) -> Probe:
    """Training images/s of ``arch`` at the recipe's batch size on ``device`` (random data)."""
    from prune_cli.cli import error_line
    from prune_cli.train import autocast, make_optimizer

    bs = int(cfg.train.batch_size)
    shape = [int(d) for d in cfg.dataset.input_shape]
    threads = torch.get_num_threads()
    try:
        if cfg.runtime.threads:
            torch.set_num_threads(int(cfg.runtime.threads))
        cuda = []
        if device.type == "cuda":
            cuda = [device.index if device.index is not None else torch.cuda.current_device()]
        # the probe's random weights and data leave every generator as it was
        with torch.random.fork_rng(devices=cuda):
            model = arch.build().to(device).train()
            fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            opt = make_optimizer(model, cfg.train)
            x = torch.randn(bs, *shape, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, num_classes, (bs,), device=device)

            def step() -> None:
                with autocast(device, cfg.train.precision):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def sync() -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            warm, t0 = 0, time.perf_counter()
            while warm < PROBE_WARMUP or (warm < 20 and time.perf_counter() - t0 < 0.2):
                step()
                sync()
                warm += 1
            steps, t0 = 0, time.perf_counter()
            least, most = PROBE_STEPS
            while steps < most:
                step()
                steps += 1
                elapsed = time.perf_counter() - t0
                if elapsed > PROBE_SECONDS and steps >= 2:
                    break
                if steps >= least and elapsed > 0.5:
                    break
            sync()
            elapsed = time.perf_counter() - t0
        return Probe(label, steps * bs / elapsed, steps, warmup=warm)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: the plan stands without a time
        return Probe(label, None, 0, error_line(e))
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------


def plan(argv: list[str], measure: Callable[..., Probe] | None = None) -> Plan | None:
    """The plan of ``prune-run ARGV`` (None for an informational command such as ``--help``).

    ``measure`` replaces :func:`probe` (tests); composition and the cache are only read.
    """
    from prune_cli.checks import runs_here
    from prune_cli.cli import _compose, _jobs
    from prune_cli.runner import resolve_device, rewind_epochs

    measure = measure or probe
    planned = _jobs(list(argv))
    if planned is None:
        return None
    all_overrides, name, config_dir, multirun = planned
    labels = _labels(all_overrides, multirun)
    jobs: list[Job] = []
    dense: dict[tuple[str, str], Dense] = {}
    sizes: dict[str, DataSize] = {}
    networks: dict[str, list[tuple[Arch, bool]]] = {}
    probes: dict[tuple, Probe] = {}
    notes: list[str] = []
    sweep_dir = None
    for i, (overrides, label) in enumerate(zip(all_overrides, labels)):
        cfg = _compose(name, config_dir, overrides, hydra_cfg=True)
        if multirun and sweep_dir is None:
            try:
                sweep_dir = str(cfg.hydra.sweep.dir)
            except Exception:  # noqa: BLE001 - shown as Hydra will name it
                sweep_dir = str(OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"])
        run_dir, dir_note = _run_dir(cfg, multirun, i, sweep_dir)
        if dir_note and f"run directories: {dir_note}" not in notes:
            notes.append(f"run directories: {dir_note}")
        n_levels = levels_of(cfg)
        t = retrain_epochs(cfg)
        status, status_note, rows = _status(cfg, run_dir, n_levels)
        runs = status not in ("complete", "refused", "busy")
        needs_dense = runs and (rows == 0 or bool(rewind_epochs(cfg)))

        key = dense_hash(cfg)
        entry = dense.get((str(cfg.runtime.cache_dir), key))
        if entry is None:
            cache = DenseCache(Path(cfg.runtime.cache_dir), key)
            if cache.meta() is not None:
                state = "cache"
            else:
                state = "resume" if cache.state_path().exists() else "train"
            entry = dense[(str(cfg.runtime.cache_dir), key)] = Dense(
                key, str(cfg.runtime.cache_dir), state, None
            )
        trains = False
        if needs_dense:
            entry.users.append(i + 1)
            if entry.status != "cache" and entry.trainer is None:
                entry.trainer, trains = i + 1, True
        if not needs_dense:
            dense_note = "not needed" if runs else "-"
        elif entry.status == "cache":
            dense_note = "cache"
        elif trains:
            dense_note = "trains it" + (" (resumes)" if entry.status == "resume" else "")
        else:
            dense_note = f"job {entry.trainer} trains it"

        here = runs_here(OmegaConf.select(cfg, "hydra.launcher._target_"))
        try:
            device = resolve_device(str(cfg.runtime.device))
        except ConfigError:
            if here:
                raise
            device = None  # e.g. device=cuda from a login node without a GPU: no probe
        job = Job(
            i + 1,
            list(overrides),
            label,
            run_dir,
            dir_note,
            status,
            status_note,
            key,
            dense_note,
            trains,
            device=str(device or cfg.runtime.device),
        )
        jobs.append(job)
        if not runs:
            continue
        data_key = json.dumps(OmegaConf.to_container(cfg.dataset.loader, resolve=True))
        if data_key not in sizes:
            sizes[data_key] = data_size(cfg)
            size = sizes[data_key]
            notes.append(
                f"data {cfg.dataset.name}: {size.n_train:,} training / {size.n_test:,} test"
                f" images, {size.source}"
            )
        size = sizes[data_key]
        job.n_test = size.n_test
        net_key = json.dumps(
            [
                OmegaConf.to_container(cfg.model, resolve=True),
                list(cfg.dataset.input_shape),
                OmegaConf.to_container(cfg.pruning, resolve=True),
                n_levels,
                cfg.seed,
            ],
            sort_keys=True,
            default=str,
        )
        if net_key not in networks:
            networks[net_key] = _networks(cfg, n_levels)
        nets = networks[net_key]
        bs = int(cfg.train.batch_size)
        if trains:
            epochs = int(cfg.train.epochs)
            steps, images = phase_images(epochs, size.n_train, bs)
            job.phases.append(Phase("dense", epochs, steps, images, nets[0][0].macs, False))
            job.phases[-1].evals = 1
            entry.epochs, entry.images = epochs, images
        first = 1 if status == "rerun" else max(rows, 1)
        for level in range(first, n_levels + 1):
            steps, images = phase_images(t, size.n_train, bs)
            arch, theoretical = nets[level]
            job.phases.append(
                Phase(f"level {level}", t, steps, images, arch.macs, theoretical, evals=2)
            )
        for phase in job.phases:
            arch = nets[0 if phase.name == "dense" else int(phase.name.split()[1])][0]
            pkey = (
                arch.key,
                bs,
                str(device),
                cfg.train.precision,
                bool(cfg.runtime.channels_last),
                cfg.runtime.threads,
            )
            if pkey not in probes:
                where = (
                    f"level {phase.name.split()[1]} network"
                    if arch.key != nets[0][0].key
                    else "network"
                )
                threads = (
                    f", {cfg.runtime.threads} thread{'s' if cfg.runtime.threads != 1 else ''}"
                    if cfg.runtime.threads
                    else ""
                )
                fmt = ", channels-last" if cfg.runtime.channels_last else ""
                what = (
                    f"{cfg.model.name} {where}, batch {bs}, {device or cfg.runtime.device}{threads},"
                    f" {cfg.train.precision}{fmt}"
                )
                if device is None:
                    why = f"runtime.device={cfg.runtime.device} is not on this machine, the jobs' nodes have it"
                    probes[pkey] = Probe(what, None, error=why, skipped=True)
                else:
                    classes = int(cfg.dataset.num_classes)
                    probes[pkey] = measure(arch, cfg, device, what, classes)
            phase.probe = probes[pkey]
        _job_notes(cfg, notes)
    return Plan(multirun, sweep_dir, jobs, dense, list(probes.values()), notes)


def _job_notes(cfg: DictConfig, notes: list[str]) -> None:
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "")
    if launcher and not launcher.endswith("BasicLauncher"):
        kind = launcher.rsplit(".", 1)[-1]
        at_once = OmegaConf.select(cfg, "hydra.launcher.n_jobs") or OmegaConf.select(
            cfg, "hydra.launcher.array_parallelism"
        )
        line = (
            f"launcher {kind}: the jobs run elsewhere or side by side"
            + (f" (up to {at_once} at once)" if at_once else "")
            + "; wall times add them up one after another, at the rate probed on this machine"
        )
        if line not in notes:
            notes.append(line)
        if str(cfg.runtime.device) == "auto" and "slurm" in launcher.lower():
            line = "device=auto: probed on this machine's device; the jobs' nodes pick their own"
            if line not in notes:
                notes.append(line)
    if cfg.runtime.compile:
        line = "runtime.compile=true: the probe ran eagerly (compiled training is usually faster)"
        if line not in notes:
            notes.append(line)


# ----------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------


def si(x: float, unit: str = "") -> str:
    """``1.23 G`` style: three significant digits and an SI prefix."""
    for prefix, scale in (
        ("E", 1e18),
        ("P", 1e15),
        ("T", 1e12),
        ("G", 1e9),
        ("M", 1e6),
        ("k", 1e3),
    ):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _epochs_text(job: Job) -> tuple[str, str, str]:
    dense = next((p for p in job.phases if p.name == "dense"), None)
    levels = [p for p in job.phases if p.name != "dense"]
    d = f"{dense.epochs:g}" if dense else "-"
    if not levels:
        return d, "-", "-"
    first, last = levels[0].name.split()[1], levels[-1].name.split()[1]
    span = first if first == last else f"{first}-{last}"
    t = levels[0].epochs
    return d, span, f"{len(levels)}x{t:g}={len(levels) * t:,g}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [
            r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c]) for c in range(len(r))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def render(p: Plan) -> str:
    """The plan as printed: jobs, dense models, probes, totals and how they were counted."""
    jobs = p.jobs
    to_train = [d for d in p.dense.values() if d.trainer is not None]
    cached = [d for d in p.dense.values() if d.status == "cache"]
    lines = [
        f"prune-run --dry-run: {len(jobs)} job{'s' if len(jobs) != 1 else ''},"
        f" {len(p.dense)} dense model{'s' if len(p.dense) != 1 else ''}"
        f" ({len(to_train)} to train, {len(cached)} from the cache);"
        " nothing is trained or written",
    ]
    if p.multirun:
        lines.append(f"sweep directory: {p.sweep_dir}")
    lines.append("")
    header = [
        "job",
        "overrides",
        "status",
        "dense model",
        "dense ep",
        "levels",
        "retrain ep",
        "images",
        "FLOPs",
        "est. wall",
        "run dir",
    ]
    rows = []
    for j in jobs:
        d, span, retrain = _epochs_text(j)
        runs = bool(j.phases)
        rows.append(
            [
                str(j.index),
                j.label,
                j.status,
                f"{j.dense_key[:10]} {j.dense_note}",
                d,
                span,
                retrain,
                f"{j.images:,}" if runs else "-",
                si(j.flops) if runs else "-",
                duration(j.wall_s()) if runs else "-",
                str(j.run_dir) if j.run_dir is not None else "(named at launch)",
            ]
        )
    lines += _table(header, rows, {0, 4, 7, 8, 9})
    remarks = [f"  job {j.index}: {j.status}, {j.status_note}" for j in jobs if j.status_note]
    if remarks:
        lines += ["", *remarks]

    lines += ["", "dense models:"]
    for d in p.dense.values():
        users = ", ".join(map(str, d.users)) or "none (nothing left to run needs it)"
        if d.status == "cache":
            how = "complete in the cache"
        elif d.trainer is not None:
            resume = ", resuming an interrupted training" if d.status == "resume" else ""
            how = f"trained by job {d.trainer}{resume}: {d.epochs} epochs, {d.images:,} images"
        else:
            how = "not in the cache; no job needs it"
        where = DenseCache(Path(d.cache_dir), d.key).dir
        lines.append(f"  {d.key[:10]}  {how}; used by jobs: {users}  ({where})")

    if p.probes:
        lines += ["", "throughput probe (random data, model compute only):"]
        for pr in p.probes:
            if pr.images_per_s is None:
                how = "not probed" if pr.skipped else "probe failed"
                lines.append(f"  {pr.label}: {how} ({pr.error}); no wall time")
            else:
                lines.append(
                    f"  {pr.label}: {pr.images_per_s:,.0f} images/s ({pr.steps} timed steps"
                    f" after {pr.warmup} warm-up)"
                )

    total_epochs = sum(j.epochs for j in jobs)
    total_images = sum(j.images for j in jobs)
    total_flops = sum(j.flops for j in jobs)
    walls = [j.wall_s() for j in jobs if j.phases]
    wall = None if any(w is None for w in walls) else sum(w for w in walls if w is not None)
    running = sum(1 for j in jobs if j.phases)
    lines += [
        "",
        f"total: {running} of {len(jobs)} jobs run, {len(to_train)} dense training"
        f"{'s' if len(to_train) != 1 else ''}; {total_epochs:,g} epochs, {total_images:,} images,"
        f" {si(total_flops, 'FLOPs')}, est. wall {duration(wall) if running else '0 s'}"
        " (one job after another)",
    ]
    theoretical = any(ph.theoretical for j in jobs for ph in j.phases)
    lines += [
        "",
        "how it is counted:",
        "  images = what the rows record as images_seen: a phase of t epochs is"
        " max(1, round(t x steps per epoch)) steps of batch_size images (an epoch's last batch:"
        " the rest of the training set)",
        "  FLOPs = 3 x forward MACs per image x images (forward + backward; MACs of conv and linear"
        " layers, the rows' convention)"
        + (
            "; masked levels: prunable layers' MACs x the level's density (theoretical: the"
            " kernels still compute the dense count)"
            if theoretical
            else ""
        ),
        f"  est. wall = images / probed images/s + test-set evaluations at {EVAL_SPEEDUP:g}x that"
        " rate (once after dense training, twice per level); data loading not included",
    ]
    lines += [f"  {n}" for n in p.notes]
    return "\n".join(lines)


def dry_run(argv: list[str]) -> int:
    """``prune-run --dry-run ARGV``: print the plan of the command; its exit status (0, or 2
    with one line on stderr when the plan cannot be made). Trains and writes nothing."""
    from prune_cli.cli import error_line

    try:
        p = plan(argv)
    except Exception as e:  # noqa: BLE001 - like prevalidation: one line, exit status 2
        print(f"prune-run: error: {error_line(e)}", file=sys.stderr)
        return 2
    if p is None:
        print("prune-run --dry-run: an informational command (--help, --cfg, ...) runs no job")
        return 0
    print(render(p), flush=True)
    return 0
