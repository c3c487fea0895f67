"""``prune-schedules``: plot the LR every retraining method would use, before spending GPU time.

``prune-schedules [--out FILE] [--d1 D] [OVERRIDES...]`` composes the same config as
``prune-run OVERRIDES`` and draws, for one level of ``t`` epochs, the per-step LR of every
method (as Figure 2 of Zimmer et al. 2023), beside the original schedule.
"""

from __future__ import annotations

import argparse
import sys

from prune_cli import schedules
from prune_cli.config import retrain_epochs, validate
from prune_cli.report import METHOD_LABELS

# the seven schedules (BIMP is ALLR under a budget)
LABELS = {m: label for m, label in METHOD_LABELS.items() if m != "bimp"}


def curves(overrides: list[str], steps_per_epoch: int, d1: float, s: float) -> dict:
    """(epochs, LRs) per step of one level for every method under the recipe and ``t`` that
    ``prune-run OVERRIDES`` would use; each method with its own config (e.g. CLR's warm-up)."""
    from prune_cli.cli import _compose
    from prune_cli.runner import level_context, original_schedule

    base = _compose("config", None, overrides)
    eta, T = original_schedule(base), base.train.epochs
    dense = schedules.per_step(eta, T * steps_per_epoch, steps_per_epoch)
    out = {"original": ([i / steps_per_epoch for i in range(len(dense))], dense)}
    for name in LABELS:
        extra = [f"method={name}"]
        if name in ("wr", "lrw") and retrain_epochs(base) > T:
            extra.append(f"method.retrain_epochs={T}")  # they replay at most the whole schedule
        cfg = _compose("config", None, [*overrides, *extra])
        t = retrain_epochs(cfg)
        steps = max(1, round(t * steps_per_epoch))
        plan = schedules.plan(name, level_context(cfg, eta, max(dense), dense[-1], s, d1))
        xs = [i / steps_per_epoch for i in range(steps)]
        out[name] = (xs, schedules.per_step(plan.lr, steps, steps_per_epoch))
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    from prune_cli.cli import _compose, one_line

    ap = argparse.ArgumentParser(prog="prune-schedules", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="schedules.png", help="PNG to write (default: %(default)s)")
    ap.add_argument(
        "--d1", type=float, default=0.0, help="ALLR's d1 for the plot (default: 0 = d2 wins)"
    )
    ap.add_argument(
        "--rate", type=float, default=0.2, help="prune rate s of the level (default: %(default)s)"
    )
    ap.add_argument(
        "--steps-per-epoch", type=int, default=20, help="resolution (default: %(default)s)"
    )
    ap.add_argument("overrides", nargs="*", help="config overrides, as for prune-run")
    args = ap.parse_args(argv)
    try:
        cfg = _compose("config", None, args.overrides)
        validate(cfg)
        data = curves(args.overrides, args.steps_per_epoch, args.d1, args.rate)
    except Exception as e:  # noqa: BLE001 - one line, as prune-run
        print(f"prune-schedules: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    xs, ys = data["original"]
    a0.plot(xs, ys, color="black")
    T, t = cfg.train.epochs, retrain_epochs(cfg)
    a0.axvspan(max(0, T - t), T, color="tab:orange", alpha=0.15, label="replayed by LRW/WR")
    a0.set(
        title=f"original schedule ({cfg.train.name}, T={T})", xlabel="epoch", ylabel="learning rate"
    )
    a0.set_yscale("log")
    a0.legend(loc="upper right")
    for name, label in LABELS.items():
        xs, ys = data[name]
        a1.plot(xs, ys, label=label, lw=1.6, ls="--" if name == "wr" else "-")
    a1.set(
        title=f"one retraining level: t={t:g} epochs (ALLR d1={args.d1:g})",
        xlabel="retraining epoch",
        ylabel="learning rate",
    )
    a1.set_yscale("log")
    a1.legend(ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
