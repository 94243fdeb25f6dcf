"""Learning-rate schedules, the grouped AdamW optimizer, gradient accumulation and EMA.

Everything is an optax building block, so the train step only sees one
``optax.GradientTransformation``::

    clip_by_global_norm(max_grad_norm)          # on the whole gradient
    -> partition by group:                      # one AdamW per parameter group
         inject_hyperparams(adamw)(schedule scaled to the group's lr,
                                   weight_decay, mask=decay mask)

Gradient accumulation is *not* ``optax.MultiSteps``. MultiSteps averages the k
micro-batch gradients with equal weights, which is wrong for a token-mean loss
whenever micro-batches hold different numbers of target tokens (padding,
packing, prompt masking): the exact gradient of the large batch is
``sum_i grad(loss_sum_i) / sum_i weight_sum_i``, and the divisor is only known
once all k micro-batches are seen. The step therefore accumulates *sums* over
micro-batches (``jaxft.train.step``) and hands the optimizer one exact
gradient; the optimizer state also stays free of an extra gradient buffer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jaxft.settings import OptimSettings, ScheduleSettings, defaults_dict, parse_optim, parse_schedule
from jaxft.train.task import no_decay_rank1

PyTree = Any
GroupFn = Callable[[tuple[str, ...], Any], str]
NoDecayFn = Callable[[tuple[str, ...], Any], bool]

SCHEDULES = ("constant", "linear", "warmup_cosine", "cosine_restarts")
GROUP_OVERRIDES = ("lr", "peak_lr", "weight_decay")


def default_config() -> ConfigDict:
    """The optimizer section of a training config, with its defaults (``jaxft.settings.OptimSettings``)."""
    return ConfigDict(defaults_dict(OptimSettings))


# ----------------------------------------------------------------------------- schedules


def make_schedule(cfg: ScheduleSettings | ConfigDict, where: str = "optim.schedule") -> optax.Schedule:
    """A step -> learning-rate function.

    Every schedule warms up linearly from 0 at step 0 to ``peak_lr`` at
    ``warmup_steps`` (none when 0). After that:

    * ``constant``: ``peak_lr``.
    * ``linear``: straight line to ``end_lr_ratio * peak_lr`` at ``total_steps``.
    * ``warmup_cosine``: half cosine to ``end_lr_ratio * peak_lr`` at ``total_steps``.
    * ``cosine_restarts``: cosine cycles of ``restart_period`` steps (or
      ``num_cycles`` equal cycles filling ``total_steps - warmup_steps``),
      each restarting at ``peak_lr`` and ending at ``end_lr_ratio * peak_lr``.

    Past ``total_steps`` the final value is held.
    """
    if not isinstance(cfg, ScheduleSettings):
        cfg = parse_schedule(cfg, where)
    if cfg.name not in SCHEDULES:
        raise ValueError(f"{where}.name={cfg.name!r} is not a known schedule; choose one of {', '.join(SCHEDULES)}")
    peak, warmup = cfg.peak_lr, cfg.warmup_steps
    if peak < 0 or warmup < 0:
        raise ValueError(f"{where}: peak_lr and warmup_steps must be >= 0, got {peak} and {warmup}")
    if cfg.name == "constant":
        return _with_warmup(optax.constant_schedule(peak), peak, warmup)

    total = cfg.total_steps
    if total <= warmup:
        raise ValueError(f"{where}.total_steps={total} must exceed warmup_steps={warmup}")
    ratio = cfg.end_lr_ratio
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{where}.end_lr_ratio={ratio} must be within [0, 1]")
    end, decay_steps = peak * ratio, total - warmup

    if cfg.name == "linear":
        return _with_warmup(optax.linear_schedule(peak, end, decay_steps), peak, warmup)
    if cfg.name == "warmup_cosine":
        return _with_warmup(optax.cosine_decay_schedule(peak, decay_steps, alpha=ratio), peak, warmup)
    return _with_warmup(_cosine_cycles(cfg, peak, ratio, decay_steps, where), peak, warmup)


def _cosine_cycles(cfg: ScheduleSettings, peak: float, ratio: float, span: int, where: str) -> optax.Schedule:
    period, cycles, mult = cfg.restart_period, cfg.num_cycles, cfg.restart_mult
    if (period > 0) == (cycles > 0):
        raise ValueError(f"{where}: cosine_restarts needs exactly one of restart_period or num_cycles (> 0); "
                         f"got restart_period={period}, num_cycles={cycles}")
    if mult < 1 or (mult > 1 and cycles):
        raise ValueError(f"{where}.restart_mult={mult} must be >= 1, and > 1 only with restart_period")
    if cycles:
        period = -(-span // cycles)
    periods = []  # restart_period * restart_mult**i until the span is covered
    while sum(periods) < span:
        periods.append(period * mult ** len(periods))
    ends = [sum(periods[:i + 1]) for i in range(len(periods) - 1)]
    return optax.join_schedules([optax.cosine_decay_schedule(peak, p, alpha=ratio) for p in periods], ends)


def _with_warmup(schedule: optax.Schedule, peak: float, warmup: int) -> optax.Schedule:
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), schedule], [warmup])


# ----------------------------------------------------------------------------- groups and masks


def path_names(keypath) -> tuple[str, ...]:
    """A jax key path as plain strings: dict keys, attribute names, sequence indices."""
    names = []
    for key in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def single_group(path: tuple[str, ...], leaf: Any) -> str:
    """The group_fn for one optimizer over all trainable leaves."""
    return "default"


def param_groups(tree: PyTree, group_fn: GroupFn) -> PyTree:
    """A tree of group names (one per leaf) from ``group_fn(path_names, leaf)``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: str(group_fn(path_names(p), x)), tree)


def decay_mask(tree: PyTree, no_decay: NoDecayFn) -> PyTree:
    """A bool tree: True where weight decay applies (``no_decay(path_names, leaf)`` is false)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: not no_decay(path_names(p), x), tree)


# ----------------------------------------------------------------------------- the optimizer


def _group_overrides(opt_cfg: OptimSettings, real_groups: list[str]) -> dict[str, Mapping[str, Any]]:
    configured = opt_cfg.groups
    unknown = sorted(set(configured) - set(real_groups))
    if unknown:
        raise ValueError(f"optim.groups names {unknown}, but the trainable parameters form the groups "
                         f"{real_groups}")
    for name, overrides in configured.items():
        bad = sorted(set(overrides) - set(GROUP_OVERRIDES))
        if bad:
            raise ValueError(f"optim.groups.{name}: unknown keys {bad}; allowed: {list(GROUP_OVERRIDES)}")
        if "lr" in overrides and "peak_lr" in overrides:
            raise ValueError(f"optim.groups.{name}: give lr or peak_lr, not both")
    return configured


def make_optimizer(opt_cfg: OptimSettings | ConfigDict, trainable: PyTree, group_fn: GroupFn = single_group,
                   no_decay: NoDecayFn = no_decay_rank1) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW per parameter group.

    Each group's schedule is ``opt_cfg.schedule`` with ``peak_lr`` replaced by
    the group's ``lr``/``peak_lr`` override, so warmup and decay keep their
    shape and only the scale changes. ``trainable`` may hold arrays or
    ``jax.ShapeDtypeStruct``; only paths and shapes are read. ``no_decay(path, leaf)`` names the
    leaves without weight decay (the recipe knows its trees; the default spares scalars and vectors).
    """
    if not isinstance(opt_cfg, OptimSettings):
        opt_cfg = parse_optim(opt_cfg)
    labels = param_groups(trainable, group_fn)
    real_groups = sorted(set(jax.tree.leaves(labels)))
    if not real_groups:
        raise ValueError("make_optimizer: the trainable tree has no leaves; nothing would be trained")
    overrides = _group_overrides(opt_cfg, real_groups)

    def mask_fn(params):
        return decay_mask(params, no_decay)

    transforms = {}
    for group in real_groups:
        override = overrides.get(group, {})
        lr = override.get("lr", override.get("peak_lr"))
        schedule_cfg = opt_cfg.schedule if lr is None else dataclasses.replace(opt_cfg.schedule, peak_lr=float(lr))
        where = "optim.schedule" if lr is None else f"optim.groups.{group} (with optim.schedule)"
        # inject_hyperparams keeps each group's current lr in the state, for logging;
        # float32 so a bf16 model does not round its learning rate.
        transforms[group] = optax.inject_hyperparams(optax.adamw, static_args=("mask",),
                                                     hyperparam_dtype=jnp.float32)(
            learning_rate=make_schedule(schedule_cfg, where),
            b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
            weight_decay=float(override.get("weight_decay", opt_cfg.weight_decay)),
            mask=mask_fn)

    # Labels are recomputed from each tree optax passes, so params and grads need
    # not share object identity with `trainable`.
    grouped = optax.partition(transforms, lambda tree: param_groups(tree, group_fn))
    if opt_cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt_cfg.max_grad_norm), grouped)
    return grouped


def current_learning_rates(opt_state: Any) -> dict[str, jax.Array]:
    """Learning rate each group used in its last update (its first one before any update).

    Works on the state of ``make_optimizer`` inside or outside jit; values are
    float32 scalars.
    """
    partitions = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.PartitionState))
                  if isinstance(s, optax.PartitionState)]
    if len(partitions) != 1:
        raise ValueError("current_learning_rates: opt_state does not come from make_optimizer")
    rates = {}
    for group, masked in partitions[0].inner_states.items():
        inner = masked.inner_state if hasattr(masked, "inner_state") else masked
        rates[group] = inner.hyperparams["learning_rate"]
    return rates


# ----------------------------------------------------------------------------- EMA


def ema_update(ema: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    """``ema <- decay * ema + (1 - decay) * params``, leaf-wise, in the EMA's dtype."""
    def mix(e, p):
        return (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype)

    return jax.tree.map(mix, ema, params)
