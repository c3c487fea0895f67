"""``prune-schedules``: plot the LR every retraining method would use, before spending GPU time.

``prune-schedules [--out FILE] [--d1 D] [OVERRIDES...]`` composes the same config as
``prune-run OVERRIDES`` and draws, for one level of ``t`` epochs, the per-step LR of every
method (as Figure 2 of Zimmer et al. 2023), beside the original schedule. Methods whose
schedules coincide (FT, WR and LRW often do, WR and LRW always) are drawn as one line in their
colours, dashed in turn, and named together in the legend. The format follows ``--out``'s suffix
(.png, .pdf, .svg).

``prune-schedules --authors lehua2021|zimmer2023 [OVERRIDES...]`` draws instead, for every
method of that paper, the per-step LR of its preset (``method=<method>_<paper>``) beside the
authors' own schedule for the same recipe and ``t``, rebuilt with PyTorch's schedulers by
:mod:`prune_cli.authors`, with the largest difference between the two in each panel's title.
"""

from __future__ import annotations

import argparse
import math
import sys

from prune_cli import authors, schedules
from prune_cli.config import level_epochs, retrain_epochs, validate
from prune_cli.report.style import METHODS

# the seven schedules (BIMP is ALLR under a budget), named and coloured as in prune-report
LABELS = {m: s.label for m, s in METHODS.items() if m != "bimp"}


def level_context(
    cfg, eta, eta_max: float, eta_last: float, s: float, d1: float, steps_per_epoch: int
) -> schedules.Context:
    """The first level's :class:`~prune_cli.schedules.Context` under ``cfg`` (``d1`` stands for
    both ``d1`` and ``d1_all``)."""
    return schedules.level_context(
        cfg.method,
        eta=eta,
        T=cfg.train.epochs,
        t=level_epochs(cfg)[0],
        eta_max=eta_max,
        eta_last=eta_last,
        steps_per_epoch=steps_per_epoch,
        stats={"s": s, "d1": d1, "d1_all": d1},
    )


def curves(overrides: list[str], steps_per_epoch: int, d1: float, s: float) -> dict:
    """(epochs, LRs) per step of one level for every method under the recipe and ``t`` that
    ``prune-run OVERRIDES`` would use; each method with its own config (e.g. CLR's warm-up)."""
    from prune_cli.cli import _compose
    from prune_cli.runner import original_schedule

    base = _compose("config", None, overrides)
    eta, T = original_schedule(base), base.train.epochs
    dense = schedules.per_step(eta, T * steps_per_epoch, steps_per_epoch)
    out = {"original": ([i / steps_per_epoch for i in range(len(dense))], dense)}
    for name in LABELS:
        extra = [f"method={name}"]
        if name in ("wr", "lrw") and retrain_epochs(base) > T:
            extra.append(f"method.retrain_epochs={T}")  # they replay at most the whole schedule
        cfg = _compose("config", None, [*overrides, *extra])
        ctx = level_context(cfg, eta, max(dense), dense[-1], s, d1, steps_per_epoch)
        steps = max(1, round(ctx.t * steps_per_epoch))
        plan = schedules.plan(name, ctx)
        xs = [i / steps_per_epoch for i in range(steps)]
        out[name] = (xs, schedules.per_step(plan.lr, steps, steps_per_epoch))
    return out


def authors_curves(
    overrides: list[str], paper: str, steps_per_epoch: int, d1: float, s: float
) -> dict:
    """For every method of ``paper``: the epochs of each step, our per-step LRs under its preset
    ``method=<method>_<paper>`` and the authors' (``ours``, ``theirs``), and the same for the
    momentum (``None`` where it stays the recipe's). BIMP only when ``OVERRIDES`` set a budget."""
    from prune_cli.cli import _compose
    from prune_cli.runner import original_schedule

    if paper not in authors.PAPERS:
        raise ValueError(f"--authors={paper}: expected {' or '.join(authors.PAPERS)}")
    base = _compose("config", None, overrides)
    eta, T = original_schedule(base), base.train.epochs
    spe = steps_per_epoch
    dense = schedules.per_step(eta, T * spe, spe)
    tr = base.train.schedule
    if paper == "lehua2021" and tr.kind not in ("step", "constant"):
        raise ValueError(f"train.schedule.kind={tr.kind}: Le & Hua's code assumes a step recipe")
    out = {}
    for name in authors.PAPERS[paper]:
        if name == "bimp" and base.method.budget_epochs is None:
            continue
        extra = [f"method={name}_{paper}"]
        if name == "lrw" and retrain_epochs(base) > T:
            extra.append(f"method.retrain_epochs={T}")  # it replays at most the whole schedule
        cfg = _compose("config", None, [*overrides, *extra])
        validate(cfg)
        ctx = level_context(cfg, eta, max(dense), dense[-1], s, d1, spe)
        if not float(ctx.t).is_integer():
            raise ValueError(
                f"method.retrain_epochs={ctx.t:g}: the authors' code runs whole epochs"
            )
        plan = schedules.plan(name, ctx)
        t = int(ctx.t)
        theirs, their_m = authors.authors_schedule(
            paper,
            name,
            t,
            spe,
            T=T,
            lr=eta.lr,
            milestones=list(tr.milestones),
            gamma=tr.gamma,
            original=dense,
            original_warmup_epochs=int(tr.warmup_epochs),
            d1=d1,
        )
        steps = t * spe
        out[name] = {
            "xs": [i / spe for i in range(steps)],
            "ours": schedules.per_step(plan.lr, steps, spe),
            "theirs": theirs,
            "ours_momentum": None
            if plan.momentum is None
            else schedules.per_step(plan.momentum, steps, spe),
            "theirs_momentum": their_m,
            "t": ctx.t,
        }
    return out


def max_difference(a: list[float] | None, b: list[float] | None) -> float:
    """The largest absolute difference of two per-step lists (inf if only one is given or
    their lengths differ)."""
    if a is None and b is None:
        return 0.0
    if a is None or b is None or len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def plot_authors(data: dict, cfg, paper: str):
    """One panel per method: our preset's LR (its report colour) and the authors' (dashed)."""
    import matplotlib
    from matplotlib.figure import Figure

    from prune_cli.report.style import STYLE

    names = list(data)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    who = {"lehua2021": "Le & Hua 2021", "zimmer2023": "Zimmer et al. 2023"}[paper]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4 * cols, 2.9 * rows + 0.4), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, names):
            d = data[name]
            ax.plot(d["xs"], d["ours"], color=METHODS[name].color, lw=2.2, label=f"{name}_{paper}")
            ax.plot(d["xs"], d["theirs"], color="black", lw=1.0, ls="--", label="authors' code")
            title = (
                f"{METHODS[name].label}: max |ΔLR| = {max_difference(d['ours'], d['theirs']):.1e}"
            )
            if d["ours_momentum"] is not None or d["theirs_momentum"] is not None:
                dm = max_difference(d["ours_momentum"], d["theirs_momentum"])
                title += f"\nmomentum cycled: max |Δ| = {dm:.1e}"
            ax.set(title=title, xlabel="retraining epoch", ylabel="learning rate (log scale)")
            ax.set_yscale("log")
            ax.legend(loc="lower left", fontsize=7)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        fig.suptitle(
            f"presets *_{paper} vs {who}'s code ({cfg.train.name}, T={cfg.train.epochs},"
            f" t={data[names[0]]['t']:g} epochs)"
        )
    return fig


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
    from prune_cli.cli import _compose, error_line

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
    ap.add_argument(
        "--authors",
        choices=sorted(authors.PAPERS),
        help="draw each method's preset <method>_<paper> beside that paper's own code instead",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides, as for prune-run")
    args = ap.parse_args(argv)
    try:
        cfg = _compose("config", None, args.overrides)
        validate(cfg)
        if args.authors:
            data = authors_curves(
                args.overrides, args.authors, args.steps_per_epoch, args.d1, args.rate
            )
        else:
            data = curves(args.overrides, args.steps_per_epoch, args.d1, args.rate)
    except Exception as e:  # noqa: BLE001 - one line, as prune-run
        print(f"prune-schedules: error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    fig = plot_authors(data, cfg, args.authors) if args.authors else plot(data, cfg, args.d1)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
