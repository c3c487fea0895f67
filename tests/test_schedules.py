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


# ----------------------------------------------------------------------------------------------
# Method options (the authors' variants; tests/test_authors.py holds the presets to their code)
# ----------------------------------------------------------------------------------------------


def test_original_schedules_remember_their_recipe():
    eta = S.original_schedule("step", 0.1, 182, [136, 91], 0.1, 0)
    assert isinstance(eta, S.Recipe) and eta.milestones == (91.0, 136.0) and eta.lr == 0.1
    assert S.original_schedule("linear", 0.1, 100).epochs == 100
    assert eta(-1.0) == 0.1  # before the start (no warm-up): no division by zero


def test_textbook_defaults_are_unchanged():
    c = ctx(40)
    assert c.warmup_shape == "linear" and c.rounding == "none" and c.granularity == "step"
    assert not c.endpoint and not c.cycle_momentum and c.d1_scope == "prunable"
    assert all(S.plan(m, c).momentum is None for m in S.METHODS)


def test_options_picks_the_context_options_of_a_method_config():
    method = {"name": "clr", "retrain_epochs": 40, "warmup_shape": "cosine", "endpoint": True}
    assert S.options(method) == {"warmup_shape": "cosine", "endpoint": True}
    assert set(S.OPTIONS) <= {f for f in S.Context.__dataclass_fields__}
    assert set(S.CHOICES) - set(S.OPTIONS) == {"optimizer_state", "budget_split"}


def test_cosine_warmup_from_a_start_factor():
    t = 20
    p = S.llr(ctx(t, warmup_fraction=0.1, warmup_shape="cosine", warmup_start=0.01))
    assert p.lr(0) == pytest.approx(0.001)
    assert p.lr(1) == pytest.approx(0.001 + (0.1 - 0.001) * 0.5)  # half-way: the mean
    assert p.lr(0.5) == pytest.approx(0.1 + (0.001 - 0.1) / 2 * (1 + math.cos(math.pi / 4)))
    assert p.lr(2) == pytest.approx(0.1)


def test_rounding_of_the_warmup_length():
    # t = 7 epochs of 23 steps: 0.1 t = 0.7 epochs = 16.1 steps
    assert S.warmup_epochs(ctx(7, warmup_fraction=0.1)) == pytest.approx(0.7)
    assert S.warmup_epochs(ctx(7, warmup_fraction=0.1, rounding="step", steps_per_epoch=23)) == (
        16 / 23
    )
    assert S.warmup_epochs(ctx(17, warmup_fraction=0.1, rounding="epoch")) == 1.0
    assert S.warmup_epochs(ctx(7, warmup_fraction=0.1, rounding="epoch")) == 0.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        S.llr(ctx(7, warmup_fraction=0.1, rounding="step"))


def test_granularity_epoch_holds_each_epochs_first_lr():
    c = ctx(20, granularity="epoch")
    p = S.llr(c)
    assert p.lr(3.99) == p.lr(3.0) == pytest.approx(0.1 * (1 - 3 / 20))
    lrw = S.lrw(ctx(20, granularity="epoch"))
    assert lrw.lr(0.5) == pytest.approx(renda(162))


def test_endpoint_reaches_the_end_at_the_last_step():
    spe, t = 10, 20
    c = ctx(t, warmup_fraction=0.1, endpoint=True, steps_per_epoch=spe, eta_min_ratio=1e-4)
    p = S.clr(c)
    lrs = S.per_step(p.lr, t * spe, spe)
    assert lrs[0] == pytest.approx(1e-5)  # start = end LR by default
    assert lrs[19] == pytest.approx(0.1)  # peak at step 0.1 N - 1
    assert lrs[-1] == pytest.approx(1e-5)  # end value at the last step N - 1
    assert p.params["warmup_epochs"] == pytest.approx(1.9)


def test_clr_peak_end_anneal_and_momentum():
    t = 40
    opts = {"clr_end": "last", "clr_peak": 0.5, "clr_anneal": "linear", "cycle_momentum": True}
    p = S.clr(ctx(t, warmup_fraction=0.1, **opts))
    assert p.params["eta_min"] == 0.001  # eta_last
    assert p.lr(0) == pytest.approx(0.001) and p.lr(4) == pytest.approx(0.05)
    assert p.lr(22) == pytest.approx(0.001 + (0.05 - 0.001) / 2)  # linear decay, half-way
    m = p.momentum
    assert m(0) == pytest.approx(0.95) and m(2) == pytest.approx(0.9) and m(4) == 0.85
    assert m(22) == pytest.approx(0.9) and m(40) == pytest.approx(0.95)


def test_slr_original_warmup_replayed_or_replaced():
    eta = S.step_schedule(0.1, [50], warmup_epochs=10)
    c = S.Context(eta=eta, T=100, t=10, eta_max=0.1, eta_last=0.01)
    assert S.slr(c).lr(0.5) == pytest.approx(0.05)  # replayed: 5 of its 10 warm-up epochs
    peak = S.slr(
        S.Context(eta=eta, T=100, t=10, eta_max=0.1, eta_last=0.01, original_warmup="peak")
    )
    assert peak.lr(0.5) == 0.1 and peak.lr(6) == pytest.approx(0.01)


def test_slr_epoch_rounding_floors_the_compressed_milestones():
    # t = 15: warm-up int(1.5) = 1 epoch; milestones at int(0.45 * 15) = 6, int(0.675 * 15) = 10
    # epochs after it (exact compression into the remaining 14 epochs would put them at 7, 10.5)
    eta = S.step_schedule(0.1, [80, 120])
    opts = {"warmup_fraction": 0.1, "rounding": "epoch", "granularity": "epoch"}
    p = S.slr(S.Context(eta=eta, T=160, t=15, eta_max=0.1, eta_last=0.001, **opts))
    assert [p.lr(e) for e in range(1, 15)] == pytest.approx([0.1] * 6 + [0.01] * 4 + [0.001] * 4)


def test_allr_d1_scope():
    c = ctx(20, s=0.2, d1=0.3, d1_all=0.4)
    assert S.allr(c).params["d"] == pytest.approx(0.3)
    assert S.allr(ctx(20, d1=0.3, d1_all=0.4, d1_scope="all")).params["d"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="d1_all"):
        S.allr(ctx(20, d1=0.3, d1_scope="all"))


# ----------------------------------------------------------------------------------------------
# The config side: the budget split and the options' checks
# ----------------------------------------------------------------------------------------------


def _bimp(*overrides: str):
    from conftest import compose

    return compose("experiment=bimp", "train.epochs=10", "method.budget_epochs=21", *overrides)


def test_bimp_budget_split_into_whole_epochs():
    from prune_cli.config import level_epochs, retrain_epochs

    cfg = _bimp("pruning.levels=3", "method.budget_split=whole")
    assert level_epochs(cfg) == [3.0, 3.0, 5.0]
    assert retrain_epochs(cfg) == pytest.approx(11 / 3)  # the mean, as before
    even = _bimp("pruning.levels=3")
    assert level_epochs(even) == pytest.approx([11 / 3] * 3)
    for levels in (1, 2, 4, 5, 11):
        ts = level_epochs(_bimp(f"pruning.levels={levels}", "method.budget_split=whole"))
        assert len(ts) == levels and sum(ts) == 11 and all(float(t).is_integer() for t in ts)
        assert ts[:-1] == [11 // levels] * (levels - 1)


def test_level_epochs_without_a_budget():
    from conftest import compose

    from prune_cli.config import level_epochs

    cfg = compose("method=clr_zimmer2023", "method.retrain_epochs=7", "pruning.levels=4")
    assert level_epochs(cfg) == [7.0] * 4


BAD = [
    (["method.warmup_shape=square"], "method.warmup_shape=square: expected linear or cosine"),
    (["method.rounding=half"], "method.rounding=half: expected none, step or epoch"),
    (["method.granularity=batch"], "method.granularity"),
    (["method.clr_end=zero"], "method.clr_end"),
    (["method.clr_anneal=exp"], "method.clr_anneal"),
    (["method.original_warmup=skip"], "method.original_warmup"),
    (["method.d1_scope=some"], "method.d1_scope"),
    (["method.optimizer_state=reset"], "method.optimizer_state=reset: expected fresh, keep or"),
    (["method.budget_split=odd"], "method.budget_split"),
    (["method.warmup_start=2"], "method.warmup_start=2"),
    (["method.clr_peak=0"], "method.clr_peak=0"),
    (["method.max_momentum=1.0"], "method.max_momentum"),
    (["method.base_momentum=0.99"], "method.base_momentum=0.99"),
    (["method=slr", "method.cycle_momentum=true"], "method.cycle_momentum=true: only clr"),
    (["method=lrw", "method.optimizer_state=rewind"], "method.optimizer_state=rewind: only wr"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_method_options_are_one_line_naming_the_key(overrides, message):
    from conftest import compose

    from prune_cli.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        validate(compose("method=clr", *overrides))
    assert "\n" not in str(e.value)


def test_whole_budget_split_needs_an_epoch_per_level():
    from prune_cli.config import ConfigError, validate

    validate(_bimp("pruning.levels=3", "method.budget_split=whole"))
    with pytest.raises(ConfigError, match="method.budget_split=whole"):
        validate(_bimp("pruning.levels=12", "method.budget_split=whole"))
    validate(_bimp("pruning.levels=12"))  # even: 11/12 epoch per level is allowed
    validate(_bimp("method=wr", "method.budget_epochs=null", "method.optimizer_state=rewind"))
