"""Every kind of pruner survives a kill: random filter and Taylor-FO-BN filter pruning (channels
cut out of a CIFAR ResNet-20), Li et al.'s ResNet-34-A preset (debug=tiny) and GMP (a mask
schedule that prunes during the retraining).

For each: one uninterrupted reference run (in this process, like the CLI's task: composed,
``apply_debug``, validated, run), then the real ``prune-run`` in a subprocess, frozen (SIGSTOP)
at the instant its files show the retraining of level 1 saved mid-phase (``train_state.pt``
written, level 1 not recorded), SIGKILLed, and the same command again. The rows and every
checkpoint and LR log must be bit-identical to the reference's. The dense model comes from the
cache the reference filled (the kill under test is in the pruned level).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch
from conftest import compose
from kills import kill_when

from prune_cli.config import apply_debug, validate
from prune_cli.store import read_rows

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _logger_key() -> str:
    text = (ROOT / "conf" / "config.yaml").read_text()
    m = re.search(r"^\s*-\s*(logger@[\w.]+)\s*:", text, re.M)
    return m[1] if m else "logger"


COMMON = [
    "runtime.progress=false",
    "runtime.device=cpu",
    "runtime.threads=1",
    "runtime.eval_every=0",
    f"{_logger_key()}=none",
]
NO_TIMING = "pruning.measure_inference=false"  # the speed measurement of a channel pruner
# resnet20 at debug=tiny, 96 images in batches of 16: 6 steps per epoch, 2 epochs per phase
RESNET20 = [
    "model=resnet20",
    "method=lrw",
    "debug=tiny",
    "debug.n_train=96",
    "debug.retrain_epochs=2",
    NO_TIMING,
]
CASES = {
    "random_filter": [*RESNET20, "pruning=random_filter"],
    "taylor_fo_bn": [*RESNET20, "pruning=taylor_fo_bn"],
    "l1_filter_resnet34_a": [
        "model=resnet34",
        "pruning=l1_filter_resnet34_a",
        "method=lrw",
        "debug=tiny",
        "debug.n_train=32",
        "debug.retrain_epochs=2",
        NO_TIMING,
    ],
    # LeNet-300-100 on digits: 90 steps per epoch, 2 epochs of LRW; the cubic ramp runs to step
    # 135 of 180, so the kill at an epoch end (step 90) lands in the middle of it
    "gmp": [
        "model=lenet300_100",
        "pruning=gmp",
        "method=lrw",
        "train.epochs=2",
        "train.batch_size=16",
        "pruning.every=4",
    ],
}
COMPARED = (
    "level",
    "acc",
    "acc_after_prune",
    "density",
    "nonzero_params",
    "total_params",
    "prunable_alive",
    "flops",
    "images_seen",
    "layer_density",
    "criterion",
    "pruning",
)


def same(a, b) -> bool:
    """Equal, tensors bit for bit, through dicts and lists."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def run_reference(run_dir: Path, cache: Path, args: list[str]) -> list[dict]:
    """The uninterrupted run, in this process, as the CLI's task runs it."""
    from prune_cli.runner import run

    cfg = compose(*COMMON, f"runtime.cache_dir={cache}", *args)
    apply_debug(cfg)
    validate(cfg)
    threads = torch.get_num_threads()
    try:
        return run(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)


def start(cwd: Path, run_dir: Path, cache: Path, args: list[str]) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *COMMON,
        f"runtime.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *args,
    ]
    return procs.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def rows_of(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    return read_rows(path) if path.exists() else []


def assert_same_results(ref: Path, run: Path) -> None:
    a, b = rows_of(ref), rows_of(run)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert {k: y.get(k) for k in COMPARED} == {k: x.get(k) for k in COMPARED}
        assert same(y.get("prune"), x.get("prune")), (x.get("prune"), y.get("prune"))
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == names
    assert "level_01_pruning.pt" in names
    for name in names:
        x = torch.load(ref / "checkpoints" / name)
        y = torch.load(run / "checkpoints" / name)
        assert same(x, y), f"{name} differs"
    lrs = sorted(p.name for p in ref.glob("lr_level_*.csv"))
    assert lrs == ["lr_level_0.csv", "lr_level_1.csv"]
    for name in lrs:
        assert (run / name).read_text() == (ref / name).read_text(), name


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One directory whose ``cache/`` the runs of this module share (resnet20's dense model is
    trained once for random_filter and taylor_fo_bn)."""
    return tmp_path_factory.mktemp("pruners_resume")


# GMP (the gradual pruner: the kill lands mid-ramp) in every suite run; all four with -m slow
@pytest.mark.parametrize(
    "case", [c if c == "gmp" else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
)
def test_killed_in_a_pruned_level_then_same_command_gives_identical_results(root, case):
    args = CASES[case]
    cache, ref, run = root / "cache", root / f"{case}-reference", root / f"{case}-run"
    reference = run_reference(ref, cache, args)
    assert [r["level"] for r in reference] == [0, 1]
    assert reference[1]["density"] < 1.0

    state = run / "train_state.pt"
    proc = start(root, run, cache, args)
    kill_when(
        proc,
        lambda: state.exists() and len(rows_of(run)) == 1,
        "the retraining of level 1 saved its state",
    )
    saved = torch.load(state, weights_only=False)
    steps = len((ref / "lr_level_1.csv").read_text().splitlines()) - 1
    assert saved["phase"] == "level_01" and 0 < saved["step"] < steps, (saved["step"], steps)

    proc = start(root, run, cache, args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "level_01: resuming at step" in out + err, out + err
    assert not state.exists()
    assert_same_results(ref, run)
