"""The paper presets (conf/method/*_lehua2021.yaml, *_zimmer2023.yaml) against the authors' code.

For every method under each paper's option set, three schedules must agree to 1e-9 at every
optimizer step: ours (prune_cli.schedules with the preset's options), the authors' code rebuilt
with PyTorch's scheduler classes (prune_cli.authors), and the formula written out again below
from /work/shared/reference/{lehua2021,zimmer2023}/settings.md (§3 and §1/§2/§7).
"""

from __future__ import annotations

import math
from functools import cache

import pytest
from conftest import compose

from prune_cli import authors as A
from prune_cli import schedules as S

SPE = 23  # steps per epoch
TOL = 1e-9


# Two short step recipes: T epochs, LR, x0.1 at the milestones.
RECIPES = {10: (0.1, [5, 8]), 20: (0.1, [10, 15])}


def recipe_lr(T: int, x: float) -> float:
    lr, ms = RECIPES[T]
    return lr * 0.1 ** sum(1 for m in ms if x >= m)


def dense(T: int) -> list[float]:
    return [recipe_lr(T, i / SPE) for i in range(T * SPE)]


@cache
def preset(name: str) -> dict:
    """The Context options of a preset, composed from the real conf/ (the authors' values)."""
    return S.options(compose(f"method={name}").method)


def ours(method: str, paper: str, T: int, t: float, d1_all: float = 0.0, **kw):
    lr, ms = RECIPES[T]
    eta = S.step_schedule(lr, ms)
    orig = dense(T)
    c = S.Context(
        eta=eta,
        T=T,
        t=t,
        eta_max=max(orig),
        eta_last=orig[-1],
        s=0.2,
        d1=0.01,  # the prunable-weights d1: must not be what Zimmer's presets read
        d1_all=d1_all,
        steps_per_epoch=SPE,
        **{**preset(f"{method}_{paper}"), **kw},
    )
    p = S.plan(method, c)
    steps = round(t * SPE)
    mom = None if p.momentum is None else S.per_step(p.momentum, steps, SPE)
    return S.per_step(p.lr, steps, SPE), mom


def close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    assert worst <= TOL, worst


# ----------------------------------------------------------------------------------------------
# Le & Hua 2021, written out from settings.md §3
# ----------------------------------------------------------------------------------------------


def lehua_formula(method: str, T: int, t: int) -> tuple[list[float], list[float] | None]:
    lr, ms = RECIPES[T]
    last = lr * 0.1 ** len(ms)
    n = t * SPE
    if method == "ft":  # constant last LR of the original training
        return [last] * n, None
    if method == "lrw":  # the original schedule of the last t epochs, stepped per epoch
        return [recipe_lr(T, T - t + i // SPE) for i in range(n)], None
    if method == "slr":
        # int(0.1 t) epochs of cosine warm-up 0.001 -> 0.1, then x0.1 at post-warm-up epochs
        # int(m/T * 0.9 * t); stepped per epoch
        w = int(0.1 * t)
        drops = [int(m / T * 0.9 * t) for m in ms]
        out = []
        for i in range(n):
            e = i // SPE
            if e < w:
                out.append(lr + (0.001 - lr) / 2 * (1 + math.cos(math.pi * e / w)))
            else:
                out.append(lr * 0.1 ** sum(1 for d in drops if e - w >= d))
        return out, None
    # CLR: OneCycleLR(max_lr=0.1, div 100, final_div 100, pct_start 0.1), cos, per iteration;
    # momentum 0.95 -> 0.85 -> 0.95
    lo0, hi, lo1 = lr / 100, lr, lr / 100 / 100
    peak = 0.1 * n - 1
    lrs, moms = [], []
    for k in range(n):
        if k <= peak:
            p = k / peak
            lrs.append(hi + (lo0 - hi) / 2 * (1 + math.cos(math.pi * p)))
            moms.append(0.85 + (0.95 - 0.85) / 2 * (1 + math.cos(math.pi * p)))
        else:
            p = (k - peak) / (n - 1 - peak)
            lrs.append(lo1 + (hi - lo1) / 2 * (1 + math.cos(math.pi * p)))
            moms.append(0.95 + (0.85 - 0.95) / 2 * (1 + math.cos(math.pi * p)))
    return lrs, moms


LEHUA_CASES = [
    (m, T, t)
    for T, ts in ((10, (10, 7, 4)), (20, (10, 13, 20)))
    for t in ts
    for m in A.LEHUA_METHODS
    if not (m == "slr" and t < 10)  # their WarmupLR divides by int(0.1 t)
]


@pytest.mark.parametrize("method,T,t", LEHUA_CASES)
def test_lehua_presets_equal_their_code_and_formula(method, T, t):
    lr, ms = RECIPES[T]
    mine, mine_m = ours(method, "lehua2021", T, t)
    theirs, theirs_m = A.lehua_schedule(method, t, SPE, T=T, lr=lr, milestones=ms)
    formula, formula_m = lehua_formula(method, T, t)
    close(theirs, formula)
    close(mine, formula)
    if method == "clr":
        close(theirs_m, formula_m)
        close(mine_m, formula_m)
    else:
        assert mine_m is None and theirs_m is None and formula_m is None


def test_lehua_slr_needs_ten_epochs_as_their_code():
    with pytest.raises(ValueError, match="t >= 10"):
        A.lehua_schedule("slr", 9, SPE, T=10, lr=0.1, milestones=[5, 8])
    mine, _ = ours("slr", "lehua2021", 10, 9)  # ours: no warm-up, the compressed recipe
    assert mine[0] == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# Zimmer et al. 2023, written out from settings.md §1, §2 and §7
# ----------------------------------------------------------------------------------------------


def zimmer_formula(
    method: str, orig: list[float], T: int, t: int, d1: float, warmup_iters: int = 0
) -> list[float]:
    n = t * SPE
    max_lr, min_lr = max(orig), min(orig[warmup_iters:])
    if method == "ft":
        return [min_lr] * n
    if method == "lrw":
        return orig[len(orig) - n :]
    w = int(0.1 * n)  # 10 % warm-up in whole iterations
    r = n - w
    if method in ("allr", "bimp"):  # d = clip(d1, t/T, 1), T the dense run's epochs (BIMP: T0)
        target = min(max(d1 * max_lr, min(t / T, 1.0) * max_lr), max_lr)
    else:
        target = max_lr
    replaced = [lr if i >= warmup_iters else max_lr for i, lr in enumerate(orig)]
    out = []
    for i in range(n):
        if i < w:  # half cosine from 0 (CosineAnnealingLR from LR 0 to eta_min = target)
            out.append(target * (1 - math.cos(math.pi * i / w)) / 2)
            continue
        j = i - w  # the main schedule follows the warm-up without a gap (torch 1.10)
        if method == "slr":
            out.append(replaced[int(j * (len(orig) / r))])
        elif method == "clr":
            out.append(min_lr + (target - min_lr) * (1 + math.cos(math.pi * j / r)) / 2)
        else:
            out.append(target * (1 - j / r))
    return out


ZIMMER_CASES = [
    (m, T, t) for T, ts in ((10, (10, 7, 4, 1)), (20, (13,))) for t in ts for m in A.ZIMMER_METHODS
]


@pytest.mark.parametrize("method,T,t", ZIMMER_CASES)
@pytest.mark.parametrize("d1", [0.05, 0.6])
def test_zimmer_presets_equal_their_code_and_formula(method, T, t, d1):
    orig = dense(T)
    mine, mine_m = ours(method, "zimmer2023", T, t, d1_all=d1)
    theirs, theirs_m = A.zimmer_schedule(method, t, SPE, original=orig, d1=d1)
    formula = zimmer_formula(method, orig, T, t, d1)
    close(theirs, formula)
    close(mine, formula)
    assert mine_m is None and theirs_m is None


@pytest.mark.parametrize("method", ["slr", "clr", "ft"])
def test_zimmer_original_warmup_is_replaced_and_ignored(method):
    """A recipe with its own warm-up (linear, 2 epochs, then linear to 0 as BIMP's dense
    phase): SLR replaces it by maxLR, FT and CLR's minLR ignore it."""
    T, t = 10, 7
    eta = S.linear_schedule(0.1, T, warmup_epochs=2)
    orig = S.per_step(eta, T * SPE, SPE)
    c = S.Context(
        eta=eta,
        T=T,
        t=t,
        eta_max=max(orig),
        eta_last=orig[-1],
        steps_per_epoch=SPE,
        **preset(f"{method}_zimmer2023"),
    )
    mine = S.per_step(S.plan(method, c).lr, t * SPE, SPE)
    theirs, _ = A.zimmer_schedule(method, t, SPE, original=orig, original_warmup_epochs=2)
    close(theirs, zimmer_formula(method, orig, T, t, 0.0, warmup_iters=2 * SPE))
    close(mine, theirs)


def test_bimp_d2_uses_the_dense_phase_and_each_levels_whole_epochs():
    """BIMP_zimmer2023 with B = 21, T0 = 10, L = 3: levels of 3, 3, 5 epochs; d2 = t / T0."""
    from prune_cli.config import level_epochs

    cfg = compose(
        "experiment=bimp",
        "method=bimp_zimmer2023",
        "train.epochs=10",
        "method.budget_epochs=21",
        "pruning.levels=3",
    )
    ts = level_epochs(cfg)
    assert ts == [3.0, 3.0, 5.0]
    orig = dense(10)
    for t in ts:
        mine, _ = ours("bimp", "zimmer2023", cfg.train.epochs, t, d1_all=0.0)
        theirs, _ = A.zimmer_schedule("bimp", int(t), SPE, original=orig, d1=0.0)
        close(mine, theirs)
        # d1 = 0: the warm-up peak is d2 * maxLR with d2 = t / T0
        assert max(mine) == pytest.approx(t / 10 * 0.1)


def test_installed_sequential_lr_would_differ():
    """settings.md §7: torch >= 1.13's SequentialLR starts the main schedule a step late; the
    authors ran 1.10–1.12, which prune_cli.authors reproduces. Shown on CLR: torch's own
    SequentialLR repeats the target LR and overshoots it by a hair."""
    import warnings

    import torch

    n, w = 230, 23
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=w, eta_min=0.1)
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n - w, eta_min=0.001)
        main.base_lrs = [0.1]
        seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[w + 1])
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            seq.step()
    ref, _ = A.zimmer_schedule("clr", 10, SPE, original=dense(10))
    assert max(abs(a - b) for a, b in zip(lrs, ref)) > 1e-6


def test_authors_reject_what_their_code_cannot_run():
    with pytest.raises(ValueError, match="whole epochs"):
        A.zimmer_schedule("clr", 2.5, SPE, original=dense(10))
    with pytest.raises(ValueError, match="Zimmer et al.'s code has"):
        A.zimmer_schedule("wr", 2, SPE, original=dense(10))
    with pytest.raises(ValueError, match="Le & Hua's code has"):
        A.lehua_schedule("llr", 2, SPE, T=10, lr=0.1, milestones=[5, 8])
    with pytest.raises(ValueError, match="expected lehua2021 or zimmer2023"):
        A.authors_schedule(
            "renda2020", "ft", 2, SPE, T=10, lr=0.1, milestones=[], gamma=0.1, original=[]
        )
