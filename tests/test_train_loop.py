"""The training loop's options: best-validation model selection (also across a resume), the
per-step momentum schedule, optimizer-state carry-over and the pruner's per-step hook."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.optim.optimizer import register_optimizer_step_pre_hook

from prune_cli.config import ConfigError
from prune_cli.data import build_data
from prune_cli.distributed import PREEMPTION
from prune_cli.models.lenet import LeNet300100
from prune_cli.train import Phase, evaluate, train_phase

torch.set_num_threads(1)

BATCH = 128


@pytest.fixture(scope="module")
def digits():
    """Digits with a fifth of the training set held out: 1149 train (9 steps), 288 val."""
    return build_data(
        {"_target_": "prune_cli.data.digits.load_digits"}, "cpu", augment=False, val_fraction=0.2
    )


def recipe(**over):
    base = dict(
        batch_size=BATCH,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=False,
        precision="fp32",
        select="best_val",
    )
    return OmegaConf.create({**base, **over})


def lenet(seed: int = 0) -> LeNet300100:
    torch.manual_seed(seed)
    return LeNet300100([1, 8, 8], 10)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def spiky(x: float) -> float:
    """4 good epochs, then an LR that wrecks the model (so the best epoch is not the last)."""
    return 0.05 if x < 4 else 0.6


def phase(data, epochs: float = 6, lr=spiky, **kw) -> Phase:
    spe = data.steps_per_epoch(BATCH)
    return Phase("level_01", lr, round(epochs * spe), spe, 0, **kw)


class Counter:
    """A pruner that counts its steps (and re-applies nothing): checks the hook's calls and
    that its state travels with the phase's."""

    def __init__(self):
        self.steps: list[int] = []

    def after_step(self, step: int) -> None:
        self.steps.append(step)

    def state_dict(self):
        return {"steps": list(self.steps)}

    def load_state_dict(self, state, source=None):
        self.steps = list(state["steps"])


# ---------------------------------------------------------------- model selection


def test_best_val_returns_the_best_epoch_and_its_test_accuracy(digits):
    model = lenet()
    per_epoch: list[tuple[float, dict]] = []

    def record(epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch:
            per_epoch.append((evaluate(model, digits, 500, split="val"), weights(model)))

    res = train_phase(model, digits, phase(digits), recipe(), on_epoch_end=record, progress=False)
    accs = [a for a, _ in per_epoch]
    best = accs.index(max(accs))  # the first of equals
    assert len(accs) == 6 and best + 1 < 6 and accs[-1] < accs[best]  # not vacuous
    assert res.best_epoch == best + 1 and res.val_acc == accs[best]
    assert same(weights(model), per_epoch[best][1])
    fresh = lenet(1)
    fresh.load_state_dict(per_epoch[best][1])
    assert evaluate(model, digits, 500) == evaluate(fresh, digits, 500)
    assert evaluate(model, digits, 500, split="val") == res.val_acc


def test_final_keeps_the_last_epoch_and_reports_its_val_accuracy(digits):
    model = lenet()
    res = train_phase(model, digits, phase(digits), recipe(select="final"), progress=False)
    assert res.best_epoch is None
    assert res.val_acc == evaluate(model, digits, 500, split="val")
    again = lenet()
    other = train_phase(again, digits, phase(digits), recipe(select=None), progress=False)
    assert same(weights(model), weights(again)) and other.val_acc == res.val_acc
    no_val = build_data({"_target_": "prune_cli.data.digits.load_digits"}, "cpu", augment=False)
    plain = train_phase(lenet(), no_val, phase(no_val, 1), recipe(select=None), progress=False)
    assert plain.val_acc is None and plain.best_epoch is None


def test_best_val_without_a_split_is_a_config_error():
    no_val = build_data({"_target_": "prune_cli.data.digits.load_digits"}, "cpu", augment=False)
    with pytest.raises(ConfigError, match=r"^train.select=best_val: needs a validation split"):
        train_phase(lenet(), no_val, phase(no_val, 1), recipe(), progress=False)
    with pytest.raises(ConfigError, match=r"^train.select=last: expected final or best_val"):
        train_phase(lenet(), no_val, phase(no_val, 1), recipe(select="last"), progress=False)


@pytest.fixture
def preemption():
    """Undo a simulated preemption (a new process, in real life)."""
    yield
    PREEMPTION.requested, PREEMPTION._previous = False, None
    PREEMPTION._received, PREEMPTION._honoring = None, False


class PreemptAt(Counter):
    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if step == self.at:
            PREEMPTION.requested = True  # as the signal handler does


@pytest.mark.parametrize("at", [23, 45], ids=["mid-epoch", "last-step-of-an-epoch"])
def test_resumed_best_val_phase_equals_an_uninterrupted_one(digits, tmp_path, preemption, at):
    p = phase(digits)  # 9 steps per epoch, 54 in all
    ref_model, ref_pruner = lenet(), Counter()
    ref = train_phase(ref_model, digits, p, recipe(), ref_pruner, progress=False)
    assert ref.best_epoch in (3, 4)  # after the mid-epoch interruption, before the wreck

    state = tmp_path / "state.pt"
    with pytest.raises(SystemExit, match="preempted"):
        train_phase(lenet(), digits, p, recipe(), PreemptAt(at), state_path=state, progress=False)
    saved = torch.load(state, weights_only=True)
    if at == 45:  # the end of epoch 5 (its validation, the best so far) is saved, then it stops
        assert saved["step"] == 45 and saved["best_epoch"] == ref.best_epoch
    else:
        assert saved["step"] == at and saved["best_epoch"] in (1, 2)
    PREEMPTION.requested, PREEMPTION._honoring = False, False

    model, pruner = lenet(5), Counter()  # other weights: all of it comes from the state
    res = train_phase(model, digits, p, recipe(), pruner, state_path=state, progress=False)
    assert same(weights(model), weights(ref_model))
    assert (res.val_acc, res.best_epoch, res.lr_log) == (ref.val_acc, ref.best_epoch, ref.lr_log)
    assert res.train_loss == ref.train_loss and res.images_seen == ref.images_seen
    assert same(res.optimizer_state["state"][0], ref.optimizer_state["state"][0])
    assert pruner.steps == ref_pruner.steps == list(range(1, p.steps + 1))

    # the state saved after the last step: nothing is trained, the best is restored again
    again = train_phase(lenet(6), digits, p, recipe(), Counter(), state_path=state, progress=False)
    assert (again.val_acc, again.best_epoch) == (ref.val_acc, ref.best_epoch)


# ---------------------------------------------------------------- momentum schedule


def test_momentum_schedule_is_set_before_every_step(digits):
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["momentum"])
    )
    try:

        def cycle(x: float) -> float:  # OneCycleLR's 0.95 → 0.85 → 0.95 shape
            return 0.9 + 0.05 * math.cos(math.pi * x)

        p = phase(digits, 2, lambda x: 0.01, momentum=cycle)
        train_phase(lenet(), digits, p, recipe(select="final"), progress=False)
        assert seen == [cycle(s / p.steps_per_epoch) for s in range(p.steps)]
        seen.clear()
        plain = dataclasses.replace(p, momentum=None)
        train_phase(lenet(), digits, plain, recipe(momentum=0.5, select="final"), progress=False)
        assert seen == [0.5] * p.steps
    finally:
        handle.remove()


def test_momentum_schedule_changes_the_training(digits):
    p = phase(digits, 1, lambda x: 0.05)
    fixed, cycled = lenet(), lenet()
    train_phase(fixed, digits, p, recipe(momentum=0.9, select="final"), progress=False)
    q = dataclasses.replace(p, momentum=lambda x: 0.9)
    constant = lenet()
    train_phase(constant, digits, q, recipe(momentum=0.0, select="final"), progress=False)
    assert same(weights(fixed), weights(constant))  # momentum 0.9 from the schedule = the recipe's
    r = dataclasses.replace(p, momentum=lambda x: 0.5)
    train_phase(cycled, digits, r, recipe(momentum=0.9, select="final"), progress=False)
    assert not same(weights(fixed), weights(cycled))


# ---------------------------------------------------------------- optimizer state carry-over


@dataclasses.dataclass
class Continued(Phase):
    """A phase whose epochs draw the data order of another phase's later epochs."""

    offset: int = 0

    def epoch_seed(self, epoch: int) -> int:
        return Phase.epoch_seed(self, epoch + self.offset)


def test_optimizer_state_round_trip(digits):
    spe = digits.steps_per_epoch(BATCH)
    cfg = recipe(select="final")
    whole = lenet()
    train_phase(whole, digits, Phase("p", lambda x: 0.05, 2 * spe, spe, 0), cfg, progress=False)

    split, cold = lenet(), lenet()
    first = train_phase(split, digits, Phase("p", lambda x: 0.05, spe, spe, 0), cfg, progress=False)
    state = first.optimizer_state
    tensors = [v for s in state["state"].values() for v in s.values()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    cold.load_state_dict(split.state_dict())
    second = Continued("p", lambda x: 0.05, spe, spe, 0, offset=1)
    train_phase(split, digits, second, cfg, optimizer_state=state, progress=False)
    assert same(weights(split), weights(whole))  # momentum buffers carried over: one phase
    train_phase(cold, digits, second, cfg, progress=False)
    assert not same(weights(cold), weights(whole))  # without them, another result

    # the buffers come over, the hyperparameters stay this phase's recipe
    res = train_phase(
        lenet(),
        digits,
        second,
        recipe(select="final", momentum=0.5, weight_decay=0.0),
        optimizer_state=state,
        progress=False,
    )
    group = res.optimizer_state["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.0)
