"""Runs that survive: SIGKILL at any point then the same command, preemption through submitit,
torn or corrupt files on resume, divergence, and the mask invariant of every method.

The kills are real: the real `prune-run` in a subprocess, frozen (SIGSTOP) the moment the files
of the run dir / dense cache show the point we want, checked frozen, then SIGKILLed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
import torch
from conftest import QUIET, compose, run_inprocess
from kills import kill_when
from torch.optim.optimizer import register_optimizer_step_post_hook

from prune_cli import runner
from prune_cli.cli import error_line as one_line
from prune_cli.distributed import PREEMPTION
from prune_cli.store import CorruptFileError, append_row, read_rows, save_torch, write_rows
from prune_cli.train import DivergenceError

# LeNet-300-100 on digits, 2 levels of LRW; batches of 16 make each phase last long enough
# (~90 steps per epoch) for the test to catch it in the act.
RUN = [
    "experiment=quickstart",
    "train.epochs=6",
    "train.batch_size=16",
    "train.schedule.milestones=[3,5]",
    "pruning.levels=2",
]
COMPARED = ("level", "acc", "acc_after_prune", "density", "nonzero_params", "images_seen")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny runs are faster single-threaded


def prune_run(cwd: Path, cache: Path, *args: str, multirun: bool = False) -> list[str]:
    sweep = ["-m"] if multirun else []
    return [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *sweep,
        *QUIET,
        f"runtime.cache_dir={cache}",
        *RUN,
        *args,
    ]


def start(cwd: Path, run_dir: Path, cache: Path, *args: str) -> subprocess.Popen:
    return procs.Popen(
        prune_run(cwd, cache, f"hydra.run.dir={run_dir}", *args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "PRUNE_CLI_DATA": str(cwd / "data")},
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def run_cli(cwd: Path, run_dir: Path, cache: Path, *args: str) -> tuple[int, str, str]:
    return finish(start(cwd, run_dir, cache, *args))


def rows_of(run_dir: Path) -> list[dict]:
    try:
        return read_rows(run_dir / "results.jsonl")
    except Exception:  # noqa: BLE001 - the run writes atomically; never half a file
        pytest.fail(f"{run_dir}/results.jsonl is torn")


def mtime(path: Path) -> int:
    """Modification time in ns, -1 for a file that is not (or no longer) there."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def assert_same_results(ref: Path, run: Path) -> None:
    """Same rows (what a run reports) and bit-identical checkpoints and LR logs."""
    a, b = rows_of(ref), rows_of(run)
    assert [{k: r.get(k) for k in COMPARED} for r in b] == [
        {k: r.get(k) for k in COMPARED} for r in a
    ]
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == names
    for name in names:
        assert_same_state(
            torch.load(ref / "checkpoints" / name), torch.load(run / "checkpoints" / name), name
        )
    for lr in sorted(ref.glob("lr_level_*.csv")):
        assert (run / lr.name).read_text() == lr.read_text(), lr.name


def assert_same_state(x, y, where: str) -> None:
    """Bit-identical tensors in the same nesting (a state_dict, a pruner's state: {"masks": ...})."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), f"{where} differs"
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            assert_same_state(x[k], y[k], f"{where}: {k}")
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert x == y, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted run (its run dir and its dense cache), in this process with one thread
    like the subprocesses (CPU results are bit-identical across processes, not thread counts)."""
    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_inprocess(root / "run", *RUN)
    finally:
        torch.set_num_threads(threads)
    return root / "run", root / "cache"


def copy_of(reference: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(reference[0], run)
    shutil.copytree(reference[1], cache)
    return run, cache


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------
# SIGKILL, then the same command
# ----------------------------------------------------------------------------------------------


def test_sigkill_at_each_point_then_same_command_gives_identical_results(reference, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    state = run / "train_state.pt"

    def dense_state() -> bool:
        return any(cache.glob("dense/*/train_state.pt")) and not any(
            cache.glob("dense/*/meta.json")
        )

    # 1. during dense training (epochs done, state in the cache, entry not committed)
    kill_when(start(tmp_path, run, cache), dense_state, "dense training")
    assert not (run / "results.jsonl").exists()
    # 2. right after pruning level 1: dense row written, no retraining epoch finished yet
    kill_when(
        start(tmp_path, run, cache),
        lambda: len(rows_of(run)) == 1 and not state.exists(),
        "the prune of level 1",
    )
    assert len(rows_of(run)) == 1

    # 3. in the middle of retraining level 2 (its state saved at an epoch end)
    def level_2_state() -> bool:
        # newer than the row of level 1 (level 1's own final state is removed just after it)
        return len(rows_of(run)) == 2 and mtime(state) > mtime(run / "results.jsonl")

    kill_when(start(tmp_path, run, cache), level_2_state, "the retraining of level 2")

    rc, out, err = run_cli(tmp_path, run, cache)
    assert rc == 0, out + err
    assert "resuming" in out and "level_02: resuming at step" in out, out
    assert not state.exists()
    assert_same_results(reference[0], run)


def test_a_kill_while_writing_leaves_the_old_or_the_new_file(tmp_path):
    """The write primitives (every file of a run goes through them) under SIGKILL."""
    ckpt, rows = tmp_path / "level_01.pt", tmp_path / "results.jsonl"
    payload = torch.arange(200_000, dtype=torch.float32)  # made before forking
    rng = random.Random(0)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:  # the writer: rewrite both files forever, each version self-describing
            try:
                i = len(read_rows(rows))
                while True:
                    save_torch({"version": i, "x": payload + i}, ckpt)
                    append_row(rows, {"i": i, "pad": "x" * 4000})
                    i += 1
            finally:
                os._exit(0)
        while not rows.exists():
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = [r["i"] for r in read_rows(rows)]
        assert got == list(range(len(got)))
        state = torch.load(ckpt)
        assert torch.equal(state["x"], payload + state["version"])
        assert state["version"] in (len(got) - 1, len(got))


# ----------------------------------------------------------------------------------------------
# Preemption: SIGUSR2 to a submitit job
# ----------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's task in /proc")
def test_preempted_submitit_job_is_requeued_and_resumes(reference, tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = procs.Popen(
        prune_run(
            tmp_path,
            cache,
            "launcher=submitit_local",
            "hydra.sweeper.params.method=lrw",
            f"hydra.sweep.dir={sweep}",
            multirun=True,
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "PRUNE_CLI_DATA": str(tmp_path / "data")},
    )

    # the job's task: the child of its controller, whose pid is the local executor's job id
    tasks: list[int] = []
    while proc.poll() is None and not tasks:
        jobs = [p for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]
        tasks = children(int(jobs[0].name)) if jobs else []
        time.sleep(0.01)
    assert proc.poll() is None and len(tasks) == 1, finish(proc)
    job = jobs[0]

    # signal it in the middle of an epoch of level 1 (a state saved, the level not recorded): a
    # signal during an epoch's end is honoured with that epoch's state, so the test waits for
    # two saves of level 1's state and signals half an epoch after the second
    def level_1_state() -> Path | None:
        states = list(sweep.glob("*/*/train_state.pt"))
        return states[0] if states and len(rows_of(states[0].parent)) == 1 else None

    state = None
    while proc.poll() is None and (state := level_1_state()) is None:
        time.sleep(0.002)
    assert state is not None, finish(proc)
    first = mtime(state)
    while proc.poll() is None and mtime(state) in (first, -1):
        time.sleep(0.002)
    epoch_ns = mtime(state) - first
    time.sleep(epoch_ns / 2e9)
    os.kill(tasks[0], signal.SIGUSR2)
    rc, out, err = finish(proc)
    assert rc == 0, out + err
    log = (job / f"{job.name}_0_log.out").read_text()
    assert "Requeued job" in log  # submitit's own handler ran after ours had saved the state
    # the requeued job continued level 1 from the step after the signal: not from scratch, and
    # not from the state of the epoch end
    resumed = [ln for ln in log.splitlines() if "level_01: resuming at step" in ln]
    assert len(resumed) == 1
    step = int(resumed[0].split("at step ")[1].split()[0])
    lr_log = (reference[0] / "lr_level_1.csv").read_text().splitlines()[1:]
    steps_per_epoch = sum(float(line.split(",")[1]) < 1 for line in lr_log)
    assert step > steps_per_epoch and step % steps_per_epoch != 0
    assert (sweep / "report.csv").exists()
    (run,) = sweep.glob("*/*/results.jsonl")
    assert_same_results(reference[0], run.parent)


# ----------------------------------------------------------------------------------------------
# Torn and corrupt files found on resume; divergence
# ----------------------------------------------------------------------------------------------


def _drop_level_2(run: Path, cache: Path) -> None:
    """The run as it was when killed during the retraining of level 2 (before its state)."""
    write_rows(run / "results.jsonl", rows_of(run)[:2])
    for name in ("checkpoints/level_02.pt", "checkpoints/level_02_pruning.pt", "lr_level_2.csv"):
        (run / name).unlink()


def _level_checkpoint(run: Path, cache: Path) -> Path:
    _drop_level_2(run, cache)
    truncate(run / "checkpoints" / "level_01.pt")
    return run / "checkpoints" / "level_01.pt"


def _level_pruning(run: Path, cache: Path) -> Path:
    _drop_level_2(run, cache)
    truncate(run / "checkpoints" / "level_01_pruning.pt")
    return run / "checkpoints" / "level_01_pruning.pt"


def _train_state(run: Path, cache: Path) -> Path:
    _drop_level_2(run, cache)
    shutil.copyfile(run / "checkpoints" / "level_01.pt", run / "train_state.pt")
    truncate(run / "train_state.pt")
    return run / "train_state.pt"


def _dense_state(run: Path, cache: Path) -> Path:
    shutil.rmtree(run)  # a fresh run, whose dense model was being trained when it was killed
    (entry,) = cache.glob("dense/*")
    (entry / "meta.json").unlink()
    shutil.copyfile(entry / "final.pt", entry / "train_state.pt")
    truncate(entry / "train_state.pt")
    return entry / "train_state.pt"


def _dense_final(run: Path, cache: Path) -> Path:
    shutil.rmtree(run)
    (final,) = cache.glob("dense/*/final.pt")
    truncate(final)
    return final


def _dense_meta(run: Path, cache: Path) -> Path:
    shutil.rmtree(run)
    (meta,) = cache.glob("dense/*/meta.json")
    truncate(meta)
    return meta


def _results(run: Path, cache: Path) -> Path:
    path = run / "results.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    return path


CORRUPT = {
    "level checkpoint": _level_checkpoint,
    "level pruning state": _level_pruning,
    "train_state.pt": _train_state,
    "dense train_state.pt": _dense_state,
    "dense final.pt": _dense_final,
    "dense meta.json": _dense_meta,
    "results.jsonl": _results,
}


def files(*dirs: Path) -> dict[Path, bytes]:
    """What a failed start must leave as it was (Hydra's own log and config copies aside)."""
    return {
        p: p.read_bytes()
        for d in dirs
        for p in d.rglob("*")
        if p.is_file() and p.name not in ("run.log", "config.yaml") and ".hydra" not in p.parts
    }


@pytest.mark.parametrize("damage", list(CORRUPT.values()), ids=list(CORRUPT))
def test_torn_file_on_resume_is_an_error_naming_it(reference, tmp_path, damage):
    run, cache = copy_of(reference, tmp_path)
    bad = damage(run, cache)
    before = files(run, cache)
    with pytest.raises(CorruptFileError) as e:
        run_inprocess(run, *RUN)
    line = one_line(e.value)
    assert str(bad) in line and "\n" not in line
    # never a silent restart: nothing that was there is rewritten, no level is recorded
    assert files(run, cache) == {**files(run, cache), **before}
    assert not any(cache.glob("dense/*/.*.tmp"))


def test_divergence_in_a_retraining_keeps_the_levels_written(reference, tmp_path):
    # No setting makes only a retraining diverge (every method's LR is bounded by the dense
    # schedule's), so the run resumes after level 1 from weights blown up by 1e30.
    run, cache = copy_of(reference, tmp_path)
    _drop_level_2(run, cache)
    ckpt = run / "checkpoints" / "level_01.pt"
    save_torch({k: v * 1e30 for k, v in torch.load(ckpt).items()}, ckpt)
    before = files(run, cache)
    with pytest.raises(DivergenceError) as e:
        run_inprocess(run, *RUN)
    line = one_line(e.value)
    assert "level_02, epoch 1" in line and "diverged" in line and "\n" not in line
    assert files(run, cache) == {**files(run, cache), **before}
    assert len(rows_of(run)) == 2 and not (run / "checkpoints" / "level_02.pt").exists()


@pytest.fixture(scope="module")
def cli_failures(reference, tmp_path_factory) -> dict[str, tuple]:
    """Failures through the real CLI, started together: (exit, stdout, stderr, dirs, before)."""
    started = {}
    for name, damage, args in [
        ("torn level checkpoint", _level_checkpoint, ()),
        ("dense divergence", None, ("train.lr=1e20",)),
    ]:
        tmp = tmp_path_factory.mktemp("cli")
        if damage is None:
            run, cache, bad = tmp / "run", tmp / "cache", None
        else:
            run, cache = copy_of(reference, tmp)
            bad = damage(run, cache)
        before = files(tmp)
        started[name] = (start(tmp, run, cache, *args), run, cache, bad, before)
    return {
        name: (*finish(proc), run, cache, bad, before)
        for name, (proc, run, cache, bad, before) in started.items()
    }


def one_error_line(rc: int, out: str, err: str) -> str:
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-run: error:"), err
    return lines[0]


def test_torn_file_through_the_cli_exits_2_with_one_line(cli_failures):
    rc, out, err, run, cache, bad, before = cli_failures["torn level checkpoint"]
    assert str(bad) in one_error_line(rc, out, err)
    assert files(run.parent) == {**files(run.parent), **before}


def test_divergent_dense_training_stops_with_one_line(cli_failures):
    rc, out, err, run, cache, _, _ = cli_failures["dense divergence"]
    line = one_error_line(rc, out, err)
    assert "dense, epoch 1" in line and "diverged" in line
    assert not (run / "results.jsonl").exists() and not any(cache.glob("dense/*/meta.json"))


# ----------------------------------------------------------------------------------------------
# The mask invariant: after every optimizer step of every method, pruned weights are exactly 0
# ----------------------------------------------------------------------------------------------

TINY = [
    "experiment=quickstart",
    "train.epochs=3",
    "train.batch_size=128",
    "train.schedule.milestones=[1,2]",
    "train.momentum=0.9",
    "train.weight_decay=5e-4",
    "pruning.levels=2",
]


class MaskWatch:
    """Checks the masks of every model the runner builds at each forward (i.e. after every
    optimizer step and the masks' re-application), and counts the steps that, before the
    re-application, had moved pruned weights (so that the check is not vacuous)."""

    def __init__(self, preempt_at: int | None = None):
        self.checked = self.violations = self.moved = self.level_steps = 0
        self.built: list[runner.Built] = []
        self.preempt_at = preempt_at
        self.handle = register_optimizer_step_post_hook(self._after_step)
        self.real_build = runner.build
        runner.build = self._build

    def stop(self) -> None:
        runner.build = self.real_build
        self.handle.remove()

    def _build(self, cfg):
        b = self.real_build(cfg)
        self.built.append(b)
        b.model.register_forward_pre_hook(lambda m, a: self._check(b))
        return b

    def _check(self, b) -> None:
        self.checked += 1
        self.violations += b.pruner.masks.violations()

    def _after_step(self, opt, args, kwargs) -> None:
        b = self.built[-1]
        if b.pruner.masks.density() < 1:
            self.level_steps += 1
            self.moved += b.pruner.masks.violations() > 0
            if self.level_steps == self.preempt_at:
                PREEMPTION.requested = True  # as the SIGUSR2 handler does


@pytest.fixture
def watch():
    """``watch(...)`` starts a :class:`MaskWatch`; the fixture stops it and undoes preemption."""
    handler = signal.getsignal(signal.SIGUSR2)
    started: list[MaskWatch] = []

    def make(**kw) -> MaskWatch:
        started.append(MaskWatch(**kw))
        return started[-1]

    yield make
    for w in reversed(started):
        w.stop()
    signal.signal(signal.SIGUSR2, handler)
    PREEMPTION.requested, PREEMPTION._previous = False, None


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A directory whose `cache/` holds the dense models the mask tests share."""
    return tmp_path_factory.mktemp("masks")


METHODS = [
    ["method=ft"],
    ["method=wr"],
    ["method=lrw"],
    ["method=slr"],
    ["method=clr"],
    ["method=llr"],
    ["method=allr"],
    ["method=bimp", "method.budget_epochs=5"],
    ["method=lrw", "train.precision=bf16"],
    ["method=llr", "train.nesterov=true", "pruning=layerwise_magnitude"],
]


@pytest.mark.parametrize("extra", METHODS, ids=[" ".join(m) for m in METHODS])
def test_pruned_weights_stay_zero_after_every_step(watch, shared, extra):
    w = watch()
    name = "-".join(e.replace("=", "_") for e in extra)
    rows = run_inprocess(shared / name, *TINY, *extra)
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert w.checked > 0 and w.level_steps > 0
    assert w.violations == 0
    assert w.moved > 0  # without the re-application, the optimizer would revive pruned weights


def test_preempted_mid_epoch_resumes_exactly_and_keeps_the_masks(watch, shared):
    ref = run_inprocess(shared / "uninterrupted", *TINY)
    w = watch(preempt_at=15)  # level 1 has 12 steps per epoch: inside its 2nd epoch
    with pytest.raises(SystemExit, match="preempted"):
        run_inprocess(shared / "preempted", *TINY)
    w.stop()
    state = torch.load(shared / "preempted" / "train_state.pt", weights_only=False)
    assert (state["phase"], state["step"]) == ("level_01", 15)
    PREEMPTION.requested = False  # a new process, in real life
    w2 = watch()
    rows = run_inprocess(shared / "preempted", *TINY)
    assert w.violations == w2.violations == 0 and w2.checked > 0
    assert [{k: r.get(k) for k in COMPARED} for r in rows] == [
        {k: r.get(k) for k in COMPARED} for r in ref
    ]
    assert_same_results(shared / "uninterrupted", shared / "preempted")


def test_a_state_saved_after_the_last_step_trains_no_more(tmp_path):
    # killed after a phase's last step was saved but before its level was recorded
    from prune_cli.train import Phase, train_phase

    cfg = compose(*TINY, *QUIET)
    b = runner.build(cfg)
    spe = b.steps_per_epoch
    phase = Phase("level_01", lambda x: 0.01, int(2.5 * spe), spe, 0)  # t = 2.5 epochs
    first = train_phase(b.model, b.data, phase, cfg.train, b.pruner, state_path=tmp_path / "s.pt")
    weights = {k: v.clone() for k, v in b.model.state_dict().items()}
    again = train_phase(b.model, b.data, phase, cfg.train, b.pruner, state_path=tmp_path / "s.pt")
    assert len(first.lr_log) == len(again.lr_log) == phase.steps
    assert all(torch.equal(weights[k], v) for k, v in b.model.state_dict().items())
    assert again.images_seen == first.images_seen
