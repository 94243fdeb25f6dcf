"""The engine's config sections as frozen dataclasses, parsed once from the ml_collections ConfigDict.

Each field's default here is the only default of its key: ``jaxft.config.base_config()`` writes these
defaults into the ConfigDict a recipe config starts from, and ``parse_settings`` fills a missing key with
the same value. Parsing is the only place that casts; a value of the wrong type is refused with its
dotted key. Recipe sections (``model``, ``data``, ``lora``, ...) stay in the ConfigDict; the engine
(``jaxft.train``) reads only what is parsed here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from jaxft.errors import ConfigError

log = logging.getLogger("jaxft")

DEFAULT_STEPS = 100  # train.steps, and the schedule's total_steps that follows it


@dataclasses.dataclass(frozen=True)
class ScheduleSettings:
    name: str = "warmup_cosine"  # constant | linear | warmup_cosine | cosine_restarts
    peak_lr: float = 2e-4
    warmup_steps: int = 0
    total_steps: int = DEFAULT_STEPS  # base_config ties it to train.steps
    end_lr_ratio: float = 0.0  # final lr = end_lr_ratio * peak_lr
    warmup_ratio: float = 0.0  # > 0: warmup_steps = ceil(warmup_ratio * total_steps)
    restart_period: int = 0  # cosine_restarts: steps per cycle, or
    num_cycles: int = 0  # cosine_restarts: cycles in total_steps - warmup_steps
    restart_mult: int = 1  # cosine_restarts: each cycle this many times longer than the one before (T_mult)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    schedule: ScheduleSettings = ScheduleSettings()
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    groups: dict = dataclasses.field(default_factory=dict)  # group name -> overrides (lr, peak_lr, weight_decay)
    accum_steps: int = 1
    ema_decay: float = 0.0  # > 0 keeps an EMA of the trainable params
    eval_with_ema: bool = False


@dataclasses.dataclass(frozen=True)
class EarlyStoppingSettings:
    metric: str = "loss"  # the eval metric that picks the best checkpoint ("" : none)
    mode: str = "min"  # min | max
    patience: int = 0  # evals without improvement before stopping; 0: never


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = DEFAULT_STEPS
    epochs: float = 0.0  # > 0: steps = ceil(epochs * train records / batch_size), once the task is built
    batch_size: int = 8
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4  # 0: all
    eval_at_start: bool = False  # eval (and samples) before the first step: a "before" reference
    early_stopping: EarlyStoppingSettings = EarlyStoppingSettings()
    max_skipped_updates: int = 10  # stop (exit != 0, no export) after this many non-finite updates in a row


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    dir: str = ""  # default: <workdir>/checkpoints; gs:// URLs work
    every: int = 50
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    shape: dict = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    rules: dict = dataclasses.field(default_factory=dict)  # logical axis -> mesh axis overrides, e.g. {"embed": "fsdp"}


@dataclasses.dataclass(frozen=True)
class LossSettings:
    chunk_size: int = 1024  # tokens per logits chunk; 0 materialises full logits


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    source: str = "best"  # best | last: which checkpoint's params the export is made from
    hub_repo: str = ""  # USER/NAME: also upload the export to the Hugging Face hub


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "jaxft"


@dataclasses.dataclass(frozen=True)
class Settings:
    recipe: str = ""
    seed: int = 0
    train: TrainSettings = TrainSettings()
    # A training run warms up and keeps a tenth of the peak; an optimizer built on its own does neither.
    optim: OptimSettings = OptimSettings(schedule=ScheduleSettings(warmup_steps=10, end_lr_ratio=0.1))
    checkpoint: CheckpointSettings = CheckpointSettings()
    mesh: MeshSettings = MeshSettings()
    loss: LossSettings = LossSettings()
    export: ExportSettings = ExportSettings()
    logging: LoggingSettings = LoggingSettings()

    def with_train_records(self, count: int | None) -> Settings:
        """``train.epochs`` > 0 turned into ``train.steps`` (and the schedule's span and warmup) now that
        the task knows how many training records it has."""
        if self.train.epochs <= 0:
            return self
        if count is None:
            raise ConfigError("config key 'train.epochs' is set, but this recipe does not count its training "
                              "records: set train.steps instead")
        steps = max(1, math.ceil(self.train.epochs * count / self.train.batch_size))
        schedule = _resolve_warmup(dataclasses.replace(self.optim.schedule, total_steps=steps))
        return dataclasses.replace(self, train=dataclasses.replace(self.train, steps=steps),
                                   optim=dataclasses.replace(self.optim, schedule=schedule))


def resolve_epochs(config: Any, settings: Settings, train_records: int | None) -> Settings:
    """``settings.with_train_records``, also written back into ``config`` (so its saved copy and its reader
    see the steps the run takes)."""
    resolved = settings.with_train_records(train_records)
    if resolved is settings:
        return settings
    log.info("train.epochs=%s over %d train records at batch %d: train.steps=%d", settings.train.epochs,
             train_records, settings.train.batch_size, resolved.train.steps)
    config.train.steps = resolved.train.steps
    config.optim.schedule.total_steps = resolved.optim.schedule.total_steps
    config.optim.schedule.warmup_steps = resolved.optim.schedule.warmup_steps
    return resolved


def _resolve_warmup(schedule: ScheduleSettings) -> ScheduleSettings:
    if schedule.warmup_ratio <= 0:
        return schedule
    return dataclasses.replace(schedule, warmup_steps=math.ceil(schedule.warmup_ratio * schedule.total_steps))


# ----------------------------------------------------------------------------- parsing

_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}


def _cast(value: Any, kind: type, key: str) -> Any:
    """``value`` as ``kind``; anything that would need a guess (a bool as a number, "3" as an int) is refused."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is dict and hasattr(value, "items"):
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in value.items()}
    raise ConfigError(f"config key '{key}' must be {_KINDS[kind]}, got {value!r}")


def parse_section(cls: type, node: Any, where: str, default: Any = None) -> Any:
    """The dataclass ``cls`` from the ConfigDict ``node`` (keys under the dotted ``where``); a key the
    node lacks keeps its value in ``default`` (``cls()``), keys ``cls`` does not name are left to their readers."""
    default = cls() if default is None else default
    if node is not None and not hasattr(node, "keys"):
        raise ConfigError(f"config key '{where}' must be a section, got {node!r}")
    values = {}
    for f, kind in _fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if node is None or f.name not in node or node[f.name] is None:
            continue
        if dataclasses.is_dataclass(kind):
            values[f.name] = parse_section(kind, node[f.name], key, getattr(default, f.name))
        else:
            values[f.name] = _cast(node[f.name], kind, key)
    return dataclasses.replace(default, **values)


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, hints[f.name]


def parse_schedule(node: Any, where: str = "optim.schedule") -> ScheduleSettings:
    return _resolve_warmup(parse_section(ScheduleSettings, node, where))


def parse_optim(node: Any, where: str = "optim") -> OptimSettings:
    return _optim_resolved(parse_section(OptimSettings, node, where))


def _optim_resolved(optim: OptimSettings) -> OptimSettings:
    return dataclasses.replace(optim, schedule=_resolve_warmup(optim.schedule))


def parse_settings(config: Any) -> Settings:
    """Every engine section of ``config``, typed; ``train.epochs`` waits for ``with_train_records``."""
    settings = parse_section(Settings, config, "")
    return dataclasses.replace(settings, optim=_optim_resolved(settings.optim))


def defaults_dict(cls: type) -> dict:
    """The defaults of a section as nested plain dicts (``Settings``: what ``base_config`` starts from)."""
    return dataclasses.asdict(cls())


# ----------------------------------------------------------------------------- checks


def _numbers(node: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every float in the config (also inside lists), with its dotted key."""
    if hasattr(node, "items"):
        for key, value in node.items():
            yield from _numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{prefix}[{i}]")
    elif isinstance(node, float):
        yield prefix, node


def _check_positive(settings: Settings) -> None:
    train = settings.train
    if train.steps <= 0:
        raise ConfigError(f"config key 'train.steps' must be positive, got {train.steps}")
    if train.batch_size <= 0:
        raise ConfigError(f"config key 'train.batch_size' must be positive, got {train.batch_size}")
    accum = settings.optim.accum_steps
    if accum <= 0 or train.batch_size % accum:
        raise ConfigError(f"config key 'optim.accum_steps'={accum} must divide train.batch_size={train.batch_size}")
    if train.max_skipped_updates < 0:
        raise ConfigError(f"config key 'train.max_skipped_updates' must be a whole number >= 0 (0: never stop), "
                          f"got {train.max_skipped_updates!r}")


def validate(config: Any) -> Settings:
    """Check ``config`` before anything is built or compiled; its engine sections, parsed (the mesh axes are
    checked by ``jaxft.train.validate``, which knows them)."""
    if not config.recipe:
        raise ConfigError("config key 'recipe' is empty")
    for key, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' is {value}: every number in the config must be finite")
    for key in ("train.steps", "train.batch_size", "optim.schedule.peak_lr", "checkpoint.every", "train.log_every"):
        _need(config, key)
    settings = parse_settings(config)
    _check_positive(settings)
    data = config.get("data")
    if isinstance(data, Mapping) or hasattr(data, "keys"):
        if "on_error" in data and data.on_error not in ("raise", "skip"):
            raise ConfigError(f"config key 'data.on_error'={data.on_error!r}: expected raise or skip")
    if settings.train.early_stopping.mode not in ("min", "max"):
        raise ConfigError("config key 'train.early_stopping.mode' must be 'min' or 'max'")
    return settings


def _need(config: Any, dotted: str) -> None:
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(f"config key '{dotted}' is missing")
        node = node[part]
