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
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from prune_cli.config import ConfigError, level_plan

_DUMMY_BATCH = 2


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know of a model config: its prunable weights."""

    prunable: int
    """Number of prunable weights (conv and linear, minus ``model.prune_exclude``)."""
    smallest: tuple[str, int]
    """The prunable tensor with the fewest weights, and that number."""


_FACTS: dict[str, ModelFacts] = {}
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
        check_device(str(cfg.device))
    facts = model_facts(cfg)
    if cfg.pruning.criterion == "l1_filter":
        check_filter_plan(cfg)
    else:
        check_density(cfg, facts)


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
            raise ConfigError(f"device={device}: no CUDA device is available (use device=cpu)")
        if index and int(index) >= count:
            raise ConfigError(
                f"device={device}: this machine has {count} CUDA device"
                f"{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device={device}: MPS is not available here (use device=cpu)")


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
    """A fresh instance of ``model.net`` on the CPU; one line naming the key if it cannot be
    imported or built. The global RNG is left as it was."""
    import torch
    from hydra._internal.utils import _locate
    from hydra.utils import instantiate

    target = OmegaConf.select(cfg, "model.net._target_")
    try:
        _locate(target)
    except Exception as e:  # noqa: BLE001 - any import failure is the same user error
        cause = e.__cause__ or e
        raise ConfigError(
            f"model.net._target_={target}: cannot be imported ({_first_line(cause)})"
        ) from e
    try:
        with torch.random.fork_rng(devices=[]):
            return instantiate(cfg.model.net)
    except Exception as e:  # noqa: BLE001 - instantiate wraps argument errors and the model's own
        cause = e.__cause__ or e
        raise ConfigError(f"model.net: cannot build {target} ({_first_line(cause)})") from e


def model_facts(cfg: DictConfig) -> ModelFacts:
    """Build the model once per distinct model config, check that it takes a dummy batch of
    ``dataset.input_shape`` and answers ``dataset.num_classes`` logits, and count its prunable
    weights (which also checks ``model.prune_exclude``)."""
    key = _model_key(cfg)
    if key not in _FACTS:
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
                f" ({type(e).__name__}: {_first_line(e)})"
            ) from e
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != [_DUMMY_BATCH, classes]:
            raise ConfigError(
                f"{where}: the model answers {got} for a batch of {_DUMMY_BATCH} inputs of"
                f" dataset.input_shape={shape}, not [{_DUMMY_BATCH}, {classes}]"
                f" (dataset.num_classes={classes} logits per input)"
            )
        params = prunable_parameters(model, list(cfg.model.prune_exclude))
        name, weight = min(params.items(), key=lambda kv: kv[1].numel())
        _FACTS[key] = ModelFacts(
            prunable=sum(p.numel() for p in params.values()),
            smallest=(name.removesuffix(".weight"), weight.numel()),
        )
    return _FACTS[key]


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


# ----------------------------------------------------------------------------------------------
# Pruning plans
# ----------------------------------------------------------------------------------------------


def check_density(cfg: DictConfig, facts: ModelFacts) -> None:
    """Unstructured pruning keeps at least one weight: the final density times the number of
    prunable weights (of the smallest tensor, for layerwise pruning) is at least 1."""
    p = cfg.pruning
    levels, rate = level_plan(cfg)
    density = (1.0 - rate) ** levels
    if p.one_shot:
        plan = f"pruning.target_sparsity={p.target_sparsity}"
    elif p.rate is None:
        plan = f"pruning.levels={p.levels} to pruning.target_sparsity={p.target_sparsity}"
    else:
        plan = f"pruning.levels={levels} of pruning.rate={p.rate}"
    if p.criterion == "layerwise_magnitude":
        name, n = facts.smallest
        if density * n < 1:
            raise ConfigError(
                f"{plan}: density {density:.3g} leaves less than one weight of layer {name}"
                f" ({n} weights; layerwise pruning prunes every layer alike)"
            )
    elif density * facts.prunable < 1:
        raise ConfigError(
            f"{plan}: density {density:.3g} leaves less than one of the {facts.prunable}"
            f" prunable weights of model={cfg.model.name}"
        )


def check_filter_plan(cfg: DictConfig) -> None:
    """Plan L1 filter pruning on a fresh model: ratios that empty a layer, or skip entries that
    name no layer, fail now rather than after the dense training (once per distinct plan)."""
    from prune_cli.structured import plan_l1_filter

    p = cfg.pruning
    key = json.dumps([_model_key(cfg), list(p.stage_ratios), list(p.skip)], default=str)
    if key in _PLANS:
        return
    model = build_model(cfg)
    plan_l1_filter(model, list(p.stage_ratios), list(p.skip), list(cfg.dataset.input_shape))
    _PLANS.add(key)
