"""``prune-schedules``: plot the LR every retraining method would use, before spending GPU time.

``prune-schedules [--out FILE] [--d1 D] [OVERRIDES...]`` composes the same config as
``prune-run OVERRIDES`` and draws, for one level of ``t`` epochs, the per-step LR of every
method (as Figure 2 of Zimmer et al. 2023), beside the original schedule. Methods whose
schedules coincide (FT, WR and LRW often do, WR and LRW always) are drawn as one line in their
colours, dashed in turn, and named together in the legend. The format follows ``--out``'s suffix
(.png, .pdf, .svg).
"""

from __future__ import annotations

import argparse
import math
import sys

from prune_cli import schedules
from prune_cli.config import retrain_epochs, validate
from prune_cli.report.style import METHODS

# the seven schedules (BIMP is ALLR under a budget), named and coloured as in prune-report
LABELS = {m: s.label for m, s in METHODS.items() if m != "bimp"}


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


def coinciding(data: dict) -> list[list[str]]:
    """The methods of ``data`` grouped by identical per-step LR (registry order within a group)."""
    groups: list[list[str]] = []
    for name in LABELS:
        ys = data[name][1]
        for group in groups:
            other = data[group[0]][1]
            if len(other) == len(ys) and all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(other, ys)
            ):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def plot(data: dict, cfg, d1: float):
    """The figure: the original schedule (left) and one retraining level of every method."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D

    from prune_cli.report.style import STYLE

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12, 4.4), layout="constrained")
        a0, a1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
        xs, ys = data["original"]
        a0.plot(xs, ys, color="black")
        T, t = cfg.train.epochs, retrain_epochs(cfg)
        a0.axvspan(max(0, T - t), T, color="0.85", alpha=0.6, lw=0, label="replayed by WR and LRW")
        a0.set(
            title=f"original schedule ({cfg.train.name}, T={T} epochs)",
            xlabel="epoch",
            ylabel="learning rate (log scale)",
        )
        a0.set_yscale("log")
        a0.legend(loc="upper right")
        handles, labels = [], []
        for group in coinciding(data):
            xs, ys = data[group[0]]
            n = len(group)
            # One line per member, dashed in turn, so every colour of a shared curve shows.
            parts = [
                a1.plot(
                    xs,
                    ys,
                    color=METHODS[name].color,
                    lw=1.8,
                    ls=(k * 4.0, (4.0, 4.0 * (n - 1))) if n > 1 else "-",
                )[0]
                for k, name in enumerate(group)
            ]
            # In the legend: the members' colours side by side, solid.
            handles.append(tuple(Line2D([], [], color=p.get_color(), lw=2.4) for p in parts))
            labels.append(" = ".join(LABELS[name] for name in group))
        a1.set(
            title=f"one retraining level: t={t:g} epochs (ALLR d1={d1:g})",
            xlabel="retraining epoch",
            ylabel="learning rate (log scale)",
        )
        a1.set_yscale("log")
        a1.legend(
            handles,
            labels,
            ncol=2,
            handler_map={tuple: HandlerTuple(ndivide=None, pad=0)},
            handlelength=3.2,
            title="A = B: one schedule (WR also rewinds the weights)",
            title_fontsize=7.5,
        )
    return fig


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    from prune_cli.cli import _compose, one_line

    ap = argparse.ArgumentParser(prog="prune-schedules", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        default="schedules.png",
        help="figure to write, .png, .pdf or .svg (default: %(default)s)",
    )
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
    plot(data, cfg, args.d1).savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
