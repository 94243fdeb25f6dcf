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

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jaxft.train.task import no_decay_rank1

PyTree = Any
GroupFn = Callable[[tuple[str, ...], Any], str]
NoDecayFn = Callable[[tuple[str, ...], Any], bool]

SCHEDULES = ("constant", "linear", "warmup_cosine", "cosine_restarts")
GROUP_OVERRIDES = ("lr", "peak_lr", "weight_decay")


def default_config() -> ConfigDict:
    """The optimizer section of a training config, with every field ``make_optimizer`` reads."""
    return ConfigDict(dict(
        schedule=dict(
            name="warmup_cosine",  # one of SCHEDULES
            peak_lr=2e-4,
            warmup_steps=0,
            total_steps=1000,
            end_lr_ratio=0.0,  # final lr = end_lr_ratio * peak_lr
            restart_period=0,  # cosine_restarts: steps per cycle, or
            num_cycles=0,  # cosine_restarts: cycles in total_steps - warmup_steps
            restart_mult=1,  # cosine_restarts: each cycle this many times longer than the one before (T_mult)
        ),
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        max_grad_norm=1.0,  # 0 disables clipping
        groups={},  # group name -> overrides among GROUP_OVERRIDES
    ))


# ----------------------------------------------------------------------------- schedules


def _require(cfg: ConfigDict, key: str, where: str):
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{where}.{key} is required for schedule {cfg.get('name')!r}")
    return cfg[key]


def make_schedule(cfg: ConfigDict, where: str = "optim.schedule") -> optax.Schedule:
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
    name = cfg.get("name")
    if name not in SCHEDULES:
        raise ValueError(f"{where}.name={name!r} is not a known schedule; choose one of {', '.join(SCHEDULES)}")
    peak = float(_require(cfg, "peak_lr", where))
    warmup = int(cfg.get("warmup_steps", 0) or 0)
    if peak < 0 or warmup < 0:
        raise ValueError(f"{where}: peak_lr and warmup_steps must be >= 0, got {peak} and {warmup}")
    if name == "constant":
        return _with_warmup(optax.constant_schedule(peak), peak, warmup)

    total = int(_require(cfg, "total_steps", where))
    if total <= warmup:
        raise ValueError(f"{where}.total_steps={total} must exceed warmup_steps={warmup}")
    ratio = float(cfg.get("end_lr_ratio", 0.0) or 0.0)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{where}.end_lr_ratio={ratio} must be within [0, 1]")
    end, decay_steps = peak * ratio, total - warmup

    if name == "linear":
        return _with_warmup(optax.linear_schedule(peak, end, decay_steps), peak, warmup)
    if name == "warmup_cosine":
        return _with_warmup(optax.cosine_decay_schedule(peak, decay_steps, alpha=ratio), peak, warmup)
    return _with_warmup(_cosine_cycles(cfg, peak, ratio, decay_steps, where), peak, warmup)


def _cosine_cycles(cfg: ConfigDict, peak: float, ratio: float, span: int, where: str) -> optax.Schedule:
    period, cycles = int(cfg.get("restart_period", 0) or 0), int(cfg.get("num_cycles", 0) or 0)
    if (period > 0) == (cycles > 0):
        raise ValueError(f"{where}: cosine_restarts needs exactly one of restart_period or num_cycles (> 0); "
                         f"got restart_period={period}, num_cycles={cycles}")
    mult = int(cfg.get("restart_mult", 1) or 1)
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


def _group_overrides(opt_cfg: ConfigDict, real_groups: list[str]) -> dict[str, Mapping[str, Any]]:
    configured = dict(opt_cfg.get("groups") or {})
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


def make_optimizer(opt_cfg: ConfigDict, trainable: PyTree, group_fn: GroupFn = single_group,
                   no_decay: NoDecayFn = no_decay_rank1) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW per parameter group.

    Each group's schedule is ``opt_cfg.schedule`` with ``peak_lr`` replaced by
    the group's ``lr``/``peak_lr`` override, so warmup and decay keep their
    shape and only the scale changes. ``trainable`` may hold arrays or
    ``jax.ShapeDtypeStruct``; only paths and shapes are read. ``no_decay(path, leaf)`` names the
    leaves without weight decay (the recipe knows its trees; the default spares scalars and vectors).
    """
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
        schedule_cfg = ConfigDict(opt_cfg.schedule.to_dict())
        lr = override.get("lr", override.get("peak_lr"))
        if lr is not None:
            schedule_cfg.peak_lr = float(lr)
        where = "optim.schedule" if lr is None else f"optim.groups.{group} (with optim.schedule)"
        # inject_hyperparams keeps each group's current lr in the state, for logging;
        # float32 so a bf16 model does not round its learning rate.
        transforms[group] = optax.inject_hyperparams(optax.adamw, static_args=("mask",),
                                                     hyperparam_dtype=jnp.float32)(
            learning_rate=make_schedule(schedule_cfg, where),
            b1=float(opt_cfg.get("b1", 0.9)), b2=float(opt_cfg.get("b2", 0.999)),
            eps=float(opt_cfg.get("eps", 1e-8)),
            weight_decay=float(override.get("weight_decay", opt_cfg.get("weight_decay", 0.0))),
            mask=mask_fn)

    # Labels are recomputed from each tree optax passes, so params and grads need
    # not share object identity with `trainable`.
    grouped = optax.partition(transforms, lambda tree: param_groups(tree, group_fn))
    max_norm = float(opt_cfg.get("max_grad_norm", 0.0) or 0.0)
    if max_norm > 0:
        return optax.chain(optax.clip_by_global_norm(max_norm), grouped)
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
