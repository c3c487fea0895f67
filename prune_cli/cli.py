"""``prune-run``: the Hydra main.

Before Hydra starts anything, every job of the command (each point of a ``-m`` sweep, the
config's own ``hydra.sweeper.params`` included) is composed and validated, so bad input gives
one line naming the key and exit status 2 with nothing started.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from prune_cli.checks import check_job
from prune_cli.config import CONF_DIR, apply_debug, register, validate
from prune_cli.errors import ConfigError
from prune_cli.loggers import check_loggers
from prune_cli.store import config_hash

log = logging.getLogger("prune_cli")


def _run_id(*, _root_: DictConfig) -> str:
    # Hydra names the run directory before the task applies debug=tiny: hash what will run
    if _root_.get("debug") is not None:
        import copy

        _root_ = apply_debug(copy.deepcopy(_root_))
    return config_hash(_root_)[:10]


OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
register()


def error_line(e: BaseException) -> str:
    """A one-line message for a configuration, composition or data error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException):
        first = str(e).strip().splitlines()[0]
        opts = getattr(e, "options", None)
        return f"{first}; available: {', '.join(opts)}" if opts else first
    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
        return f"{key}: {msg}" if key else msg
    if isinstance(e, ConfigCompositionException) and e.__cause__ is not None:
        cause = e.__cause__
        if isinstance(cause, OmegaConfBaseException):
            return f"{str(e).splitlines()[0].rstrip('.')}: {error_line(cause)}"
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return text or type(e).__name__


def _jobs(argv: list[str]) -> tuple[list[list[str]], str, str | None, bool] | None:
    """The override list of every job ``argv`` would run, its config name, config dir and
    whether it is a multirun; None for informational commands (``--help``, ``--cfg``, ...),
    which Hydra handles itself."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = get_args_parser()

    def error(message: str):  # argparse would print its usage (many lines) and exit
        raise ConfigError(f"command line: {message} (overrides go after -m/--multirun)")

    parser.error = error
    args = parser.parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.cfg:
        return None
    if getattr(args, "experimental_rerun", None):
        return None
    name = args.config_name or "config"
    parser = OverridesParser.create()
    cli = list(args.overrides)

    def parse(text: str):  # one line naming the key, not the grammar's list of expected tokens
        from hydra.errors import OverrideParseException

        try:
            return parser.parse_overrides([text])[0]
        except OverrideParseException as e:
            key = text.split("=", 1)[0].lstrip("+~") or text
            lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
            lines = [x for x in lines if not x.startswith(("Error parsing", "See https"))]
            why = (lines[0] if lines else "a syntax error").split(" expecting ")[0]
            value = text.split("=", 1)[-1]
            empty = value.startswith(",") or value.endswith(",") or ",," in value
            hint = "; a sweep lists values as a,b,c: one is empty" if empty else ""
            raise ConfigError(f"{key}: cannot parse the override '{text}' ({why}){hint}") from e

    parsed = [parse(o) for o in cli]
    if not args.multirun:
        return [cli], name, args.config_dir, False
    sweep_params = _compose(
        name, args.config_dir, [o for o in cli if not _is_sweep(parser, o)], True
    )
    for key in ("dir", "subdir"):
        raw = OmegaConf.to_container(sweep_params.hydra.sweep, resolve=False).get(key)
        if raw is None or not str(raw).strip():
            raise ConfigError(f"hydra.sweep.{key}: empty; name the sweep's directory")
    params = [f"{k}={v}" for k, v in (sweep_params.hydra.sweeper.get("params") or {}).items()]
    parsed = [parse(o) for o in params] + parsed
    final: dict[str, object] = {}  # a later override of a key replaces an earlier one
    for override in parsed:
        final[override.get_key_element()] = override
    for key, override in final.items():
        if override.is_sweep_override() and override.is_discrete_sweep():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # noqa: BLE001 - glob() needs Hydra's loader: Hydra judges it
                continue
            if not values:
                raise ConfigError(
                    f"{key}: the sweep '{override.input_line}' has no values, so the command"
                    " would run no job"
                )
    batches = BasicSweeper.split_arguments(parsed, None)
    return [job for batch in batches for job in batch], name, args.config_dir, True


def _is_sweep(parser, override: str) -> bool:
    return parser.parse_overrides([override])[0].is_sweep_override()


def _compose(
    name: str,
    config_dir: str | None,
    overrides: list[str],
    hydra_cfg: bool = False,
    debug: bool = True,
):
    from hydra import compose, initialize_config_dir

    if config_dir:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=hydra_cfg)
    return apply_debug(cfg) if debug else cfg


def _compose_jobs(name: str, config_dir: str | None, jobs: list[list[str]]):
    """The config of each job of a sweep (without Hydra's node), as `_compose` gives it, in
    order; without composing each job from the YAML files.

    Hydra composes a config in two steps: the config-group choices (``method=lrw``) select the
    files of the defaults list, whose merge is the base config; the value overrides
    (``seed=3``) are then applied to it by ``ConfigLoaderImpl._apply_overrides_to_config``.
    Jobs that differ only in values share the first step here: each distinct set of the other
    overrides is composed once by Hydra, and each job's values applied to a copy by that same
    function of Hydra's. The first job of each set is also composed whole and must come out
    identical, else that set's jobs are composed whole; so is any job whose values fail, to
    fail with Hydra's own message. A sweep of a thousand jobs is checked in seconds, not
    minutes."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    roots = [CONF_DIR, *([Path(config_dir)] if config_dir else [])]

    def is_value(o) -> bool:  # a plain key=value that no config group is named by
        key = o.key_or_group
        return (
            not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
            and not isinstance(o.value(), dict)
            and not any((r / key.replace(".", "/")).exists() for r in roots)
            and not any((r / key).exists() for r in roots)
        )

    def with_values(base: DictConfig, values: list) -> DictConfig | None:
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            return apply_debug(cfg)
        except Exception:  # noqa: BLE001 - composed whole, the job fails with Hydra's message
            return None

    bases: dict[tuple[str, ...], DictConfig | None] = {}
    for job in jobs:
        values, rest = [], []
        for o in parser.parse_overrides(list(job)):
            (values if is_value(o) else rest).append(o)
        key = tuple(o.input_line for o in rest)
        if key not in bases:
            base = _compose(name, config_dir, list(key), debug=False)
            whole = _compose(name, config_dir, list(job))
            fast = with_values(base, values)
            bases[key] = base if fast is not None and _same(fast, whole) else None
            yield whole
            continue
        fast = None if bases[key] is None else with_values(bases[key], values)
        yield fast if fast is not None else _compose(name, config_dir, list(job))


def _same(a: DictConfig, b: DictConfig) -> bool:
    return OmegaConf.is_struct(a) == OmegaConf.is_struct(b) and OmegaConf.to_container(
        a, resolve=False
    ) == OmegaConf.to_container(b, resolve=False)


_COMPOSE_LOCK = threading.Lock()  # Hydra's compose API keeps global state


def _importable(key: str, target: str) -> None:
    from prune_cli.errors import import_object

    try:
        import_object(target)
    except ImportError as e:
        raise ConfigError(f"{key}={target}: cannot be imported ({e})") from e


def prevalidate(argv: list[str], dry_run: bool = False) -> str | None:
    """Compose and validate every job of ``argv``; the first problem as one line, or None.
    ``dry_run``: check only, record nothing (no snapshot requests in the dense cache)."""
    try:
        planned = _jobs(argv)
        if planned is None:
            return None
        jobs, name, config_dir, multirun = planned
        located: set[str] = set()
        snapshots: list[DictConfig] = []
        here = None  # a single run: judged from its own hydra.launcher
        if multirun:  # the launcher decides where the jobs' devices must exist (SLURM: not here)
            from prune_cli.checks import runs_here

            hydra_cfg = _compose(name, config_dir, [o for o in jobs[0]], True) if jobs else None
            here = runs_here(OmegaConf.select(hydra_cfg, "hydra.launcher._target_"))
        composed = (
            _compose_jobs(name, config_dir, jobs)
            if multirun
            else (_compose(name, config_dir, job, hydra_cfg=True) for job in jobs)
        )
        for cfg in composed:
            validate(cfg)
            check_loggers(cfg)
            if not multirun:
                # before Hydra writes <run dir>/.hydra/: refuse another config's run directory
                from prune_cli.rundir import check_run_dir

                check_run_dir(Path(cfg.hydra.run.dir), config_hash(cfg))
                _check_not_busy(Path(cfg.hydra.run.dir))
                _check_writable("hydra.run.dir", Path(cfg.hydra.run.dir))
            _check_writable("runtime.cache_dir", Path(cfg.runtime.cache_dir))
            for key in ("model.net", "dataset.loader", "pruning", "pruning.criterion"):
                target = OmegaConf.select(cfg, f"{key}._target_")
                if target and target not in located:
                    _importable(f"{key}._target_", target)
                    located.add(target)
            check_job(cfg, here=here)
            snapshots.append(cfg)
        _request_snapshots(snapshots, record=not dry_run)
    except Exception as e:  # noqa: BLE001 - every failure here is reported as one line
        return error_line(e)
    return None


def _check_writable(key: str, path: Path) -> None:
    """The directory ``path`` exists or can be made, and can be written (checked, not made)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{key}={path}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(p) else "permission denied"
        raise ConfigError(f"{key}={path}: {p} cannot be written ({why})")


def _read_only(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_not_busy(run_dir: Path) -> None:
    from prune_cli.rundir import RunBusyError, is_busy

    holder = is_busy(run_dir)
    if holder is not None:
        raise RunBusyError(
            f"{run_dir}: in use by another prune-run ({holder}); wait for it to end, or stop it,"
            " then run the same command again"
        )


def _request_snapshots(cfgs: list[DictConfig], record: bool = True) -> None:
    """One dense training per sweep: every WR job's rewind epoch is asked of the dense cache
    entry before any job starts, so the job that trains it keeps them all; a complete entry that
    lacks one is refused now, not after other jobs ran."""
    from prune_cli.config import retrain_epochs
    from prune_cli.errors import MissingSnapshotError
    from prune_cli.runner import rewind_epochs
    from prune_cli.store import DenseCache, dense_hash

    wanted: dict[tuple[str, str], tuple[DenseCache, set[int]]] = {}
    for cfg in cfgs:
        epochs = rewind_epochs(cfg)
        if not epochs:
            continue
        cache = (
            DenseCache.of(cfg)
            if record
            else DenseCache(Path(cfg.runtime.cache_dir), dense_hash(cfg))
        )
        missing = cache.missing(epochs) if cache.meta() is not None else []
        if missing:
            raise MissingSnapshotError(
                cache.missing_error(missing, f"method.retrain_epochs={retrain_epochs(cfg):g}")
            )
        entry = wanted.setdefault((cfg.runtime.cache_dir, cache.key), (cache, set()))
        entry[1].update(epochs)
    if not record:  # a dry run: checked, nothing written
        return
    for cache, epochs in wanted.values():
        if cache.meta() is None:
            cache.request(sorted(epochs))


def failure_line(e: BaseException) -> str:
    """One line for an error that stops a run: a file system error names the file."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror} (files already written are intact; fix this and run the same command again to resume)"
    if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
        return f"out of memory ({error_line(e)}); try a smaller train.batch_size or fewer parallel jobs"
    return error_line(e)


INTERRUPTED = (
    "prune-run: interrupted; everything finished so far is kept: run the same command again to"
    " resume"
)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task function: validate, then run the experiment in Hydra's output directory.

    A single run reports a failure as one line and exit status 2. Inside a sweep a failing job
    records why (``failed.json`` in its run directory, its outcome in the sweep directory) and
    returns, so that the remaining jobs run and the sweep ends with its report and a summary.
    """
    import traceback

    from prune_cli.callbacks import write_outcome
    from prune_cli.data import DataError
    from prune_cli.errors import CorruptFileError
    from prune_cli.record import hydra_sources, recording
    from prune_cli.rundir import RunBusyError, record_failure
    from prune_cli.runner import run
    from prune_cli.train import DivergenceError

    apply_debug(cfg)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) > 0:
        logging.getLogger("prune_cli").setLevel(logging.WARNING)  # rank 0 speaks for the run
    _announce(run_dir, hc.job.num if multirun else None)
    expected = (ConfigError, DataError, CorruptFileError, DivergenceError, OSError, MemoryError)
    outcome: dict = {"run_dir": str(run_dir), "status": "complete"}
    with recording(run_dir, cfg, **hydra_sources(hc)):
        try:
            validate(cfg)
            rows = run(cfg, run_dir)
            outcome["levels"] = len(rows) - 1
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)
        except RunBusyError as e:  # another process's directory: write nothing into it
            if not multirun:
                print(f"prune-run: error: {error_line(e)}", file=sys.stderr)
                sys.exit(2)
            outcome |= {"status": "busy", "error": error_line(e)}
            log.error("%s", error_line(e))
        except Exception as e:  # noqa: BLE001 - a sweep goes on; a single run reports and stops
            known = isinstance(e, expected) or type(e).__name__ == "OutOfMemoryError"
            if not multirun and not known:
                raise  # a bug: its traceback is what a report needs
            line = failure_line(e)
            detail = "" if known else traceback.format_exc()
            try:
                record_failure(run_dir, line, type(e).__name__, detail)
            except OSError:
                pass  # the directory itself is the problem (read-only, disk full): the line says so
            if not multirun:
                print(f"prune-run: error: {line}", file=sys.stderr)
                sys.exit(2)
            outcome |= {"status": "failed", "error": line, "type": type(e).__name__}
            log.error("job failed: %s%s", line, "" if known else "\n" + detail)
    if multirun:
        write_outcome(Path(hc.sweep.dir), hc.job.num, outcome)
    return outcome.get("status")


class _JobTag(logging.Filter):
    """Starts every log line of a sweep's job with its tag (``[job 2/6] ``)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.getMessage().startswith(self.tag):
            record.msg = self.tag + record.msg
        return True


def _announce(run_dir: Path, job: int | None) -> None:
    """The run directory first; in a sweep, every line tagged with ``job k/N``."""
    from prune_cli import console

    if job is not None:
        n = os.environ.get(SWEEP_JOBS_ENV)
        console.JOB_TAG = f"[job {job + 1}/{n}] " if n else f"[job {job + 1}] "
        logger = logging.getLogger("prune_cli")
        for f in [f for f in logger.filters if isinstance(f, _JobTag)]:
            logger.removeFilter(f)  # the basic launcher runs every job in this process
        logger.addFilter(_JobTag(console.JOB_TAG))
    log.info("run directory: %s", run_dir)


# how many jobs the sweep has, for "job k/N" in processes that launchers start
SWEEP_JOBS_ENV = "PRUNE_CLI_SWEEP_JOBS"


def main() -> None:
    """Console entry point of ``prune-run``."""
    from prune_cli.callbacks import SWEEP, sweep_summary

    # like `python -m`: modules of the current directory (a user's own models) can be targets
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = sys.argv[1:]
    dry = "--dry-run" in argv
    if dry:  # a flag of prune-run, not of Hydra: plan the command, run nothing
        argv = [a for a in argv if a != "--dry-run"]
        sys.argv = [sys.argv[0], *argv]  # (with --help, Hydra prints its help)
    try:
        problem = prevalidate(argv, dry_run=dry)
        if problem is not None:
            print(f"prune-run: error: {problem}", file=sys.stderr)
            sys.exit(2)
        if dry and _jobs(argv) is not None:
            from prune_cli.dryrun import dry_run

            sys.exit(dry_run(argv))
        planned = _jobs(sys.argv[1:])
        if planned is not None and planned[3]:
            SWEEP["jobs"] = len(planned[0])
            os.environ[SWEEP_JOBS_ENV] = str(len(planned[0]))
        hydra_main()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    if SWEEP.get("dir") is not None:
        text, ok = sweep_summary()
        print(text, file=sys.stdout if ok else sys.stderr, flush=True)
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
