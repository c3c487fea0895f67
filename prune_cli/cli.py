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

from prune_cli.config import CONF_DIR, ConfigError, register, validate
from prune_cli.store import config_hash

log = logging.getLogger("prune_cli")


def _run_id(*, _root_: DictConfig) -> str:
    return config_hash(_root_)[:10]


OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
register()


def one_line(e: BaseException) -> str:
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
            return f"{str(e).splitlines()[0].rstrip('.')}: {one_line(cause)}"
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
    if not args.multirun:
        return [cli], name, args.config_dir, False
    sweep_params = _compose(
        name, args.config_dir, [o for o in cli if not _is_sweep(parser, o)], True
    )
    params = [f"{k}={v}" for k, v in (sweep_params.hydra.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + cli), None)
    return [job for batch in batches for job in batch], name, args.config_dir, True


def _is_sweep(parser, override: str) -> bool:
    return parser.parse_overrides([override])[0].is_sweep_override()


def _compose(name: str, config_dir: str | None, overrides: list[str], hydra_cfg: bool = False):
    from hydra import compose, initialize_config_dir

    if config_dir:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=hydra_cfg)


_COMPOSE_LOCK = threading.Lock()  # Hydra's compose API keeps global state


def _importable(key: str, target: str) -> None:
    from hydra._internal.utils import _locate

    try:
        _locate(target)
    except Exception as e:  # noqa: BLE001 - any import failure is the same user error
        cause = e.__cause__ or e
        raise ConfigError(f"{key}={target}: cannot be imported ({one_line(cause)})") from e


def _check_filter_plan(cfg: DictConfig) -> None:
    """Plan L1 filter pruning on a fresh model: ratios that empty a layer, or skip entries that
    name no layer, fail now rather than after the dense training."""
    from hydra.utils import instantiate

    from prune_cli.structured import plan_l1_filter

    model = instantiate(cfg.model.net)
    p = cfg.pruning
    plan_l1_filter(model, list(p.stage_ratios), list(p.skip), list(cfg.dataset.input_shape))


def prevalidate(argv: list[str]) -> str | None:
    """Compose and validate every job of ``argv``; the first problem as one line, or None."""
    try:
        planned = _jobs(argv)
        if planned is None:
            return None
        jobs, name, config_dir, multirun = planned
        located: set[str] = set()
        for job in jobs:
            cfg = _compose(name, config_dir, job, hydra_cfg=not multirun)
            validate(cfg)
            if not multirun:
                # before Hydra writes <run dir>/.hydra/: refuse another config's run directory
                from prune_cli.runner import check_run_dir

                check_run_dir(Path(cfg.hydra.run.dir), config_hash(cfg))
            for key in ("model.net", "dataset.loader"):
                target = OmegaConf.select(cfg, f"{key}._target_")
                if target and target not in located:
                    _importable(f"{key}._target_", target)
                    located.add(target)
            if cfg.pruning.criterion == "l1_filter":
                _check_filter_plan(cfg)
    except Exception as e:  # noqa: BLE001 - every failure here is reported as one line
        return one_line(e)
    return None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task function: validate, then run the experiment in Hydra's output directory."""
    from prune_cli.data import DataError
    from prune_cli.runner import run
    from prune_cli.store import CorruptFileError
    from prune_cli.train import DivergenceError

    hc = HydraConfig.get()
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) > 0:
        logging.getLogger("prune_cli").setLevel(logging.WARNING)  # rank 0 speaks for the run
    try:
        validate(cfg)
        rows = run(cfg, Path(hc.runtime.output_dir))
    except (ConfigError, DataError, CorruptFileError, DivergenceError) as e:
        if hc.mode == RunMode.MULTIRUN:
            raise
        print(f"prune-run: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    return rows[-1]["acc"] if rows else None


def main() -> None:
    """Console entry point of ``prune-run``."""
    # like `python -m`: modules of the current directory (a user's own models) can be targets
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    problem = prevalidate(sys.argv[1:])
    if problem is not None:
        print(f"prune-run: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
