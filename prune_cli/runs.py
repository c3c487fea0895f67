"""``prune-runs``: the run directories under some directories, with their status, and how two
runs' configurations differ.

::

    prune-runs [DIR ...] [--status failed,partial] [--json]
    prune-runs diff RUN_A RUN_B

A run directory is one holding ``run.json``, ``results.jsonl``, ``failed.json``,
``record.json`` or Hydra's ``.hydra/``. Its status is judged from its content, as ``prune-run``
judges it when it resumes:

- ``running``: a live process holds its lock;
- ``failed``: it stopped on an error (``failed.json``);
- ``corrupt``: ``results.jsonl`` is not a consistent run (the one-line reason is shown);
- ``complete``: every level is done;
- ``partial``: stopped before the end (killed, interrupted): the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PROG = "prune-runs"
STATUSES = ("complete", "partial", "running", "failed", "corrupt")
DEFAULT_DIRS = ("outputs", "multirun")
MARKERS = ("run.json", "results.jsonl", "failed.json", "record.json", ".hydra")
COLOURS = {
    "complete": "32",
    "partial": "33",
    "running": "36",
    "failed": "31",
    "corrupt": "1;31",
}


class RunsError(Exception):
    """Bad input: one line, exit status 2."""


@dataclass
class RunInfo:
    path: str  # as found under the directory given
    method: str | None
    model: str | None
    dataset: str | None
    status: str
    levels_done: int | None  # pruning levels finished (not counting level 0, the dense
    # model); None when results.jsonl is corrupt
    levels_total: int | None
    acc: float | None  # the last finished level's accuracy
    mtime: float  # the newest file in the directory
    detail: str | None = None  # failed / corrupt: why; running: who holds it

    @property
    def model_data(self) -> str:
        if self.model is None and self.dataset is None:
            return "?"
        return f"{self.model or '?'}-{self.dataset or '?'}"

    @property
    def levels(self) -> str:
        done = "?" if self.levels_done is None else str(self.levels_done)
        total = "?" if self.levels_total is None else str(self.levels_total)
        return f"{done}/{total}"


# ----------------------------------------------------------------------------------------------
# Finding and judging runs
# ----------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in MARKERS)


def find_runs(dirs: Iterable[Path]) -> list[Path]:
    """Every run directory under ``dirs`` (a run's own subfolders are not searched), sorted."""
    found: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise RunsError(f"{d}: no such directory")
        for top, subdirs, _files in os.walk(d):
            here = Path(top)
            if is_run_dir(here):
                found[here] = None
                subdirs.clear()
                continue
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
    return sorted(found, key=lambda p: str(p))


def load_config(run_dir: Path) -> DictConfig | None:
    """The run's composed config: ``config.yaml`` (resolved), else Hydra's ``.hydra/config.yaml``
    (written when the job started); None if neither can be read."""
    for name in ("config.yaml", ".hydra/config.yaml"):
        path = run_dir / name
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception:  # noqa: BLE001 - a torn or foreign file: try the next one
                continue
            if isinstance(cfg, DictConfig):
                return cfg
    return None


def _select(cfg: DictConfig | None, key: str) -> Any:
    if cfg is None:
        return None
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # noqa: BLE001 - an interpolation that only resolves inside Hydra
        return None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode())
    except (OSError, ValueError):
        return None


def _newest_mtime(run_dir: Path) -> float:
    newest = 0.0
    try:
        with os.scandir(run_dir) as entries:
            for e in entries:
                try:
                    newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    except OSError:
        pass
    return newest or (run_dir.stat().st_mtime if run_dir.exists() else 0.0)


def run_info(run_dir: Path) -> RunInfo:
    """Identity, status and progress of one run directory (reads only; takes no lock)."""
    from prune_cli.config import n_levels as levels_of
    from prune_cli.errors import CorruptFileError
    from prune_cli.rundir import (
        IncompleteRunError,
        check_results,
        is_busy,
        read_failure,
        run_format,
    )
    from prune_cli.store import config_hash

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    record = _json_file(run_dir / "record.json")
    record = record if isinstance(record, dict) else {}

    n_levels: int | None = None
    if cfg is not None:
        try:
            n_levels = levels_of(cfg)
        except Exception:  # noqa: BLE001 - an incomplete or foreign config
            n_levels = None
    if n_levels is None and isinstance(record.get("levels"), int):
        n_levels = record["levels"]

    rows: list[dict] = []
    corrupt: str | None = None
    marker = run_dir / "run.json"
    chash: str | None = None
    if marker.exists():
        data = _json_file(marker)
        if isinstance(data, dict) and isinstance(data.get("config_hash"), str):
            chash = data["config_hash"]
        else:
            corrupt = f"{marker}: unreadable (it names the configuration of this directory)"
    elif cfg is not None:
        try:
            chash = config_hash(cfg)
        except Exception:  # noqa: BLE001
            chash = None
    if corrupt is None and (run_dir / "results.jsonl").exists():
        if chash is None:
            corrupt = f"{run_dir}: results.jsonl but no run.json or config.yaml to check it by"
        else:
            try:
                rows = check_results(
                    run_dir, chash, 10**9 if n_levels is None else n_levels, run_format(run_dir)
                )
            except (IncompleteRunError, CorruptFileError) as e:
                corrupt = str(e).strip().splitlines()[0]

    first = rows[0] if rows else {}
    method = _select(cfg, "method.name") or record.get("method") or first.get("method")
    model = _select(cfg, "model.name") or record.get("model") or first.get("model")
    dataset = _select(cfg, "dataset.name") or record.get("dataset") or first.get("dataset")

    holder = is_busy(run_dir)
    failure = read_failure(run_dir)
    detail = None
    if holder is not None:
        status = "running"
        doing = "dense model" if not rows else f"level {len(rows)}"
        detail = f"{holder}; {doing} in progress"
    elif failure is not None:
        status = "failed"
        detail = str(failure.get("error") or failure.get("type") or "unknown error")
    elif corrupt is not None:
        status, detail = "corrupt", corrupt
    elif n_levels is not None and len(rows) == n_levels + 1:
        status = "complete"
    else:
        status = "partial"
    acc = rows[-1].get("acc") if rows else None
    return RunInfo(
        path=str(run_dir),
        method=None if method is None else str(method),
        model=None if model is None else str(model),
        dataset=None if dataset is None else str(dataset),
        status=status,
        levels_done=None if corrupt is not None else max(len(rows) - 1, 0),
        levels_total=n_levels,
        acc=acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None,
        mtime=_newest_mtime(run_dir),
        detail=detail,
    )


def list_runs(dirs: Iterable[Path]) -> list[RunInfo]:
    return [run_info(d) for d in find_runs(dirs)]


# ----------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------


def _when(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime)) if mtime else "-"


def _paint(text: str, status: str, colour: bool) -> str:
    return f"\033[{COLOURS[status]}m{text}\033[0m" if colour and status in COLOURS else text


def format_listing(runs: Sequence[RunInfo], colour: bool = False) -> str:
    """One aligned line per run (run, method, model-data, status, levels, acc, when)."""
    header = ("RUN", "METHOD", "MODEL-DATA", "STATUS", "LEVELS", "ACC", "WHEN")
    table = [
        (
            r.path,
            r.method or "?",
            r.model_data,
            r.status,
            r.levels,
            "-" if r.acc is None else f"{r.acc:.4f}",
            _when(r.mtime),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    right = {4, 5}  # numbers

    def line(cells: Sequence[str], status: str | None = None) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            if i == 3 and status is not None:
                text = _paint(text, status, colour)
            out.append(text)
        return "  ".join(out).rstrip()

    lines = [line(header)]
    lines += [line(cells, r.status) for cells, r in zip(table, runs)]
    return "\n".join(lines)


def format_details(runs: Sequence[RunInfo]) -> str:
    """Why each failed or corrupt run stopped, and who holds each running one."""
    lines = []
    for status in ("failed", "corrupt", "running"):
        these = [r for r in runs if r.status == status and r.detail]
        if these:
            lines.append(f"{status}:")
            lines += [f"  {r.path}: {r.detail}" for r in these]
    return "\n".join(lines)


def summary(runs: Sequence[RunInfo], shown: int | None = None, wanted: Sequence[str] = ()) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    text = f"{len(runs)} run{'s' if len(runs) != 1 else ''}" + (f": {parts}" if parts else "")
    if shown is not None and wanted:
        text = f"showing {shown} ({', '.join(wanted)}) of {text}"
    return text


def _colour_wanted(stream) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _statuses(text: str) -> list[str]:
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise RunsError(
            f"--status {text}: unknown status {', '.join(bad) or '(none)'};"
            f" choose from {', '.join(STATUSES)}"
        )
    return wanted


def cmd_list(dirs: Sequence[str], status: str | None, as_json: bool) -> int:
    wanted = _statuses(status) if status is not None else []
    if dirs:
        paths = [Path(d) for d in dirs]
    else:
        paths = [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
        if not paths:
            raise RunsError(
                f"no {' or '.join(d + '/' for d in DEFAULT_DIRS)} here; name the directories"
                f" to list: {PROG} DIR [DIR ...]"
            )
    runs = list_runs(paths)
    shown = [r for r in runs if not wanted or r.status in wanted]
    if as_json:
        for r in shown:
            row = asdict(r) | {"when": _when(r.mtime)}
            print(json.dumps(row, sort_keys=True))
        return 0
    if not runs:
        print(f"no runs under {', '.join(str(p) for p in paths)}")
        return 0
    if shown:
        print(format_listing(shown, colour=_colour_wanted(sys.stdout)))
        details = format_details(shown)
        if details:
            print(details)
    print(summary(runs, len(shown), wanted))
    return 0


# ----------------------------------------------------------------------------------------------
# Diff
# ----------------------------------------------------------------------------------------------


def _config_of(arg: str) -> tuple[DictConfig, str]:
    path = Path(arg)
    if path.is_file():
        try:
            cfg = OmegaConf.load(path)
        except Exception as e:  # noqa: BLE001 - any YAML problem is the same user error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RunsError(f"{path}: not a readable config ({first})") from None
        if not isinstance(cfg, DictConfig):
            raise RunsError(f"{path}: not a config (a YAML mapping)")
        return cfg, str(path)
    if not path.is_dir():
        raise RunsError(f"{path}: no such run directory or config file")
    cfg = load_config(path)
    if cfg is None:
        raise RunsError(f"{path}: no readable config.yaml (not a run directory?)")
    return cfg, str(path)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The config as ``{dotted.key: value}`` (lists and empty mappings are values)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra resolves: compare it as text
        data = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(data, "")
    return out


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def config_diff(a: DictConfig, b: DictConfig) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` for every dotted key whose values differ."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [
        (k, fa.get(k, _ABSENT), fb.get(k, _ABSENT))
        for k in keys
        if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)
    ]


def _hash(fn, cfg: DictConfig) -> str | None:
    try:
        return fn(cfg)
    except Exception:  # noqa: BLE001 - an incomplete config has no hash
        return None


def format_diff(a: DictConfig, b: DictConfig, name_a: str, name_b: str) -> str:
    from prune_cli.store import config_hash, dense_hash

    lines = [f"A: {name_a}", f"B: {name_b}"]
    diff = config_diff(a, b)
    if not diff:
        lines.append("the configs are identical")
    else:
        lines.append(f"{len(diff)} config key{'s' if len(diff) != 1 else ''} differ:")
        table = [("key", "A", "B")] + [(k, _show(va), _show(vb)) for k, va, vb in diff]
        w0 = max(len(r[0]) for r in table)
        w1 = max(len(r[1]) for r in table)
        lines += [f"  {k.ljust(w0)}  {va.ljust(w1)}  {vb}".rstrip() for k, va, vb in table]
    for label, fn, same_note, diff_note in (
        ("run hash", config_hash, "the same run", "different runs"),
        (
            "dense hash",
            dense_hash,
            "they share one dense model",
            "they train separate dense models",
        ),
    ):
        ha, hb = _hash(fn, a), _hash(fn, b)
        if ha is None or hb is None:
            lines.append(f"{label}: unknown (a config is incomplete)")
        elif ha == hb:
            lines.append(f"{label}: same ({ha[:10]}): {same_note}")
        else:
            lines.append(f"{label}: differs (A {ha[:10]}, B {hb[:10]}): {diff_note}")
    return "\n".join(lines)


def cmd_diff(run_a: str, run_b: str) -> int:
    a, name_a = _config_of(run_a)
    b, name_b = _config_of(run_b)
    print(format_diff(a, b, name_a, name_b))
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _parser(prog: str, **kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, **kw)

    def error(message: str):  # one line, not argparse's usage block
        raise RunsError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``prune-runs``: list run directories, or diff two runs' configs; 2 on bad input."""
    if hasattr(signal, "SIGPIPE"):  # `prune-runs | head` ends quietly, as a Unix tool does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "diff":
            parser = _parser(
                f"{PROG} diff",
                description="The config keys (dotted paths) in which two runs differ, and"
                " whether their run and dense-model hashes differ.",
            )
            parser.add_argument("run_a", metavar="RUN_A", help="run directory or config.yaml")
            parser.add_argument("run_b", metavar="RUN_B", help="run directory or config.yaml")
            args = parser.parse_args(argv[1:])
            return cmd_diff(args.run_a, args.run_b)
        parser = _parser(
            PROG,
            description="List the prune-run run directories under DIRs (default: outputs and"
            " multirun) with their status: complete, partial (resumable), running, failed,"
            " corrupt.",
            epilog=f"{PROG} diff RUN_A RUN_B: the config keys in which two runs differ.",
        )
        parser.add_argument("dirs", nargs="*", metavar="DIR", help="directories to search")
        parser.add_argument(
            "--status",
            metavar="S[,S]",
            help=f"show only runs with these statuses ({', '.join(STATUSES)})",
        )
        parser.add_argument("--json", action="store_true", help="one JSON object per run")
        args = parser.parse_args(argv)
        return cmd_list(args.dirs, args.status, args.json)
    except RunsError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
