"""Checks of one job that need torch objects, made before anything starts.

:func:`prune_cli.config.validate` checks what the config alone can tell; :func:`check_job` adds
what needs this machine or the model itself: that the device exists here, that the model can be
built and takes the dataset's input, and that the pruning plan leaves at least one weight. Each
problem is a :class:`ConfigError`, one line naming the key.

Models are built once per distinct model config in a process (on the CPU, under a forked RNG so
that nothing else's random stream moves), so checking a grid of many jobs costs one build and
one forward pass of a dummy batch of two per architecture and input shape.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import ConfigError, first_line

_DUMMY_BATCH = 2


_PLANS: set[str] = set()


def check_job(cfg: DictConfig, *, here: bool | None = None) -> None:
    """Raise :class:`ConfigError` (one line, naming the key) if ``cfg`` cannot run.

    ``cfg`` has passed :func:`prune_cli.config.validate`. ``here``: whether the job runs on this
    machine, so that its device must exist here; None: judged from ``hydra.launcher`` when
    ``cfg`` carries Hydra's config, else assumed. A launcher that runs jobs elsewhere (SLURM)
    needs ``here=False``: a login node without a GPU must not refuse ``device=cuda``.
    """
    if here is None:
        here = runs_here(OmegaConf.select(cfg, "hydra.launcher._target_"))
    if here:
        check_device(str(cfg.runtime.device))
    checked_model(cfg)
    check_pruning(cfg)


# ----------------------------------------------------------------------------------------------
# This machine
# ----------------------------------------------------------------------------------------------


def runs_here(launcher_target: str | None) -> bool:
    """Whether a Hydra launcher (its ``_target_``) runs jobs on this machine."""
    return not launcher_target or "slurm" not in launcher_target.lower()


def check_device(device: str) -> None:
    """``device`` exists on this machine (``auto`` always does)."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"runtime.device={device}: no CUDA device is available (use runtime.device=cpu)"
            )
        if index and int(index) >= count:
            raise ConfigError(
                f"runtime.device={device}: this machine has {count} CUDA device"
                f"{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"runtime.device={device}: MPS is not available here (use runtime.device=cpu)"
            )


# ----------------------------------------------------------------------------------------------
# The model against the data
# ----------------------------------------------------------------------------------------------


def _model_key(cfg: DictConfig) -> str:
    return json.dumps(
        [
            OmegaConf.to_container(cfg.model.net, resolve=True),
            list(cfg.model.prune_exclude),
            list(cfg.dataset.input_shape),
            int(cfg.dataset.num_classes),
        ],
        sort_keys=True,
        default=str,
    )


def build_model(cfg: DictConfig):
    """A fresh instance of ``model.net`` on the CPU (one line naming the key if it cannot be
    built); the global RNG is left as it was."""
    import torch

    from prune_cli.models import build_model as build

    with torch.random.fork_rng(devices=[]):
        return build(cfg.model.net)


_MODELS: dict[str, object] = {}


def checked_model(cfg: DictConfig):
    """The model of ``cfg``, built once per distinct model config and checked then: it takes a
    dummy batch of ``dataset.input_shape`` and answers ``dataset.num_classes`` logits, and
    ``model.prune_exclude`` names its layers. The later checks only read it (traces, counts)."""
    key = _model_key(cfg)
    if key in _MODELS:
        return _MODELS[key]
    import torch

    from prune_cli.pruning import prunable_parameters

    model = build_model(cfg)
    shape = [int(d) for d in cfg.dataset.input_shape]
    classes = int(cfg.dataset.num_classes)
    where = f"model={cfg.model.name} on dataset={cfg.dataset.name}"
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = model.eval()(torch.randn(_DUMMY_BATCH, *shape))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the input does not fit
        raise ConfigError(
            f"{where}: the model cannot take inputs of dataset.input_shape={shape}"
            f" ({type(e).__name__}: {first_line(e)})"
        ) from e
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != [_DUMMY_BATCH, classes]:
        raise ConfigError(
            f"{where}: the model answers {got} for a batch of {_DUMMY_BATCH} inputs of"
            f" dataset.input_shape={shape}, not [{_DUMMY_BATCH}, {classes}]"
            f" (dataset.num_classes={classes} logits per input)"
        )
    prunable_parameters(model, list(cfg.model.prune_exclude))
    _MODELS[key] = model
    return model


# ----------------------------------------------------------------------------------------------
# Pruning plans
# ----------------------------------------------------------------------------------------------


def check_pruning(cfg: DictConfig) -> None:
    """Build the pruner and let it check its plan on a fresh model (a density that leaves less
    than one weight, stage ratios that empty a layer, skip entries that name no layer), once
    per distinct (model, pruning) pair: errors now rather than after the dense training."""
    from prune_cli.pruning import Network, build_pruner

    pruner = build_pruner(cfg.pruning)
    carried = OmegaConf.select(cfg, "method.optimizer_state", default="fresh")
    if pruner.reshapes and carried != "fresh":
        raise ConfigError(
            f"method.optimizer_state={carried}: pruning={pruner.name} cuts channels out of the"
            " network, so no optimizer state fits the smaller one; use method.optimizer_state=fresh"
        )
    node = OmegaConf.to_container(cfg.pruning, resolve=True)
    key = json.dumps([_model_key(cfg), node], sort_keys=True, default=str)
    if key in _PLANS:
        return
    model = checked_model(cfg)
    shape = [int(d) for d in cfg.dataset.input_shape]
    net = Network(model, shape, lambda: build_model(cfg), list(cfg.model.prune_exclude))
    pruner.check(net)
    _PLANS.add(key)
