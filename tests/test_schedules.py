"""Every schedule against the formulas of DESIGN.md, written out again independently here."""

from __future__ import annotations

import math

import pytest

from prune_cli import schedules as S

T, LR = 182, 0.1


def renda(x: float) -> float:
    """The CIFAR ResNet recipe: 0.1, x0.1 at 91 and 136."""
    return 0.1 if x < 91 else (0.01 if x < 136 else 0.001)


def ctx(t: float, **kw) -> S.Context:
    eta = S.step_schedule(LR, [91, 136])
    return S.Context(eta=eta, T=T, t=t, eta_max=0.1, eta_last=0.001, **kw)


XS = [0.0, 0.5, 1.0, 9.99, 10.0, 45.0, 90.999, 91.0, 135.0, 136.0, 150.0, 181.99]


def test_step_schedule_matches_recipe():
    eta = S.step_schedule(LR, [91, 136])
    for x in XS + [182.0]:
        assert eta(x) == pytest.approx(renda(x))


def test_warmup_and_linear_and_cosine():
    eta = S.step_schedule(0.4, [30, 60, 80], warmup_epochs=5)
    assert eta(0) == 0 and eta(2.5) == pytest.approx(0.2) and eta(5) == pytest.approx(0.4)
    assert eta(30) == pytest.approx(0.04) and eta(85) == pytest.approx(0.0004)
    lin = S.linear_schedule(0.1, 100)
    assert lin(0) == 0.1 and lin(50) == pytest.approx(0.05) and lin(100) == 0.0
    cos = S.cosine_schedule(0.1, 100)
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.05) and cos(100) == 0.0
    assert S.constant_schedule(0.1)(39.9) == 0.1


@pytest.mark.parametrize("t", [10, 50, 90, 182])
def test_ft_lrw_wr(t):
    c = ctx(t)
    ft, lrw, wr = S.ft(c), S.lrw(c), S.wr(c)
    assert ft.start == "final" and lrw.start == "final" and wr.start == "rewind"
    assert wr.params["rewind_epoch"] == T - t
    for x in [v for v in XS if v < t]:
        assert ft.lr(x) == 0.001
        assert lrw.lr(x) == pytest.approx(renda(T - t + x))
        assert wr.lr(x) == pytest.approx(renda(T - t + x))


@pytest.mark.parametrize("t", [10, 40, 182])
def test_slr_compresses_whole_schedule(t):
    p = S.slr(ctx(t))
    for x in [v for v in XS if v < t]:
        assert p.lr(x) == pytest.approx(renda(x * T / t))


def test_clr_one_cycle():
    t = 40
    p = S.clr(ctx(t, warmup_fraction=0.1, eta_min_ratio=0.001))
    lo, hi = 1e-4, 0.1
    assert p.lr(0) == pytest.approx(lo)
    assert p.lr(2) == pytest.approx(lo + (hi - lo) * 0.5)
    assert p.lr(4) == pytest.approx(hi)
    assert p.lr(22) == pytest.approx(lo + 0.5 * (hi - lo))
    assert p.lr(40 - 1e-9) == pytest.approx(lo, abs=1e-9)


def test_llr_and_allr():
    t = 20
    p = S.llr(ctx(t))
    assert p.lr(0) == 0.1 and p.lr(10) == pytest.approx(0.05) and p.lr(19) == pytest.approx(0.005)
    # d1 larger than d2: start at d1 * eta_max
    p = S.allr(ctx(t, s=0.2, d1=0.3))
    assert p.params["d2"] == pytest.approx(t / T)
    assert p.params["d"] == pytest.approx(0.3) and p.lr(0) == pytest.approx(0.03)
    assert p.lr(10) == pytest.approx(0.015)
    # d2 wins when the prune changed little; d is capped at 1
    assert S.allr(ctx(t, d1=0.01)).params["d"] == pytest.approx(t / T)
    assert S.allr(ctx(t, d1=3.0)).params["d"] == 1.0


def test_warmup_option_of_restarting_family():
    t = 20
    p = S.llr(ctx(t, warmup_fraction=0.1))
    assert p.lr(0) == 0.0 and p.lr(1) == pytest.approx(0.05) and p.lr(2) == pytest.approx(0.1)
    # after warm-up: the linear decay compressed into the remaining 18 epochs
    assert p.lr(11) == pytest.approx(0.1 * (1 - (11 - 2) / 18))
    s = S.slr(ctx(t, warmup_fraction=0.1))
    assert s.lr(1) == pytest.approx(0.05) and s.lr(2) == pytest.approx(0.1)


def test_unknown_method():
    with pytest.raises(ValueError, match="method.name='bogus'"):
        S.plan("bogus", ctx(10))


def test_per_step_uses_fractional_epochs():
    lrs = S.per_step(S.lrw(ctx(2)).lr, steps=8, steps_per_epoch=4)
    assert lrs == [pytest.approx(renda(180 + i / 4)) for i in range(8)]
    assert all(math.isfinite(v) for v in lrs)
