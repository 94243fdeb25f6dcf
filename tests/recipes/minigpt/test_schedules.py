"""The reference's learning-rate schedules (numpy transcriptions) against jaxft's optax schedules."""

import math

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxft.train.optim import make_schedule


def reference_warmup_cosine(step, base_lr, warmup, total_steps, min_lr):
    if step < warmup:
        return base_lr * float(step + 1) / max(1, warmup)
    t = (step - warmup) / max(1, total_steps - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def reference_cosine_restarts(step, base_lr, warmup, min_lr, t0, t_mult):
    if step < warmup:
        return base_lr * float(step + 1) / max(1, warmup)
    t = step - warmup
    ti = t0
    while t >= ti:
        t -= ti
        ti = int(ti * t_mult)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / ti))


def _ours(**kw):
    cfg = ConfigDict(dict(name="warmup_cosine", peak_lr=3e-4, warmup_steps=1000, total_steps=10000,
                          end_lr_ratio=0.1, restart_period=0, num_cycles=0, restart_mult=1))
    cfg.update(kw)
    return make_schedule(cfg)


def test_warmup_cosine_matches_reference():
    schedule = _ours()
    steps = np.arange(0, 10000, 7)
    ours = np.asarray([float(schedule(s)) for s in steps])
    ref = np.asarray([reference_warmup_cosine(s, 3e-4, 1000, 10000, 3e-5) for s in steps])
    after = steps >= 1000
    np.testing.assert_allclose(ours[after], ref[after], rtol=2e-5)
    # warmup: jaxft ramps from 0 at step 0, the reference from peak/warmup -- one step apart
    np.testing.assert_allclose(ours[~after][1:], [reference_warmup_cosine(s - 1, 3e-4, 1000, 10000, 3e-5)
                                                  for s in steps[~after][1:]], rtol=2e-5)


def test_cosine_restarts_with_growing_periods_matches_reference():
    schedule = _ours(name="cosine_restarts", restart_period=2000, restart_mult=2, total_steps=1000 + 14000)
    steps = np.arange(1000, 15000, 5)
    ours = np.asarray([float(schedule(s)) for s in steps])
    ref = np.asarray([reference_cosine_restarts(s, 3e-4, 1000, 3e-5, 2000, 2) for s in steps])
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-10)
    # restarts at warmup + 2000, + 6000 (2000 + 4000), + 14000 (+ 8000): back to the peak
    for restart in (3000, 7000):
        assert float(schedule(restart)) == pytest.approx(3e-4) and float(schedule(restart - 1)) < 3.1e-5


def test_restart_mult_needs_a_period():
    with pytest.raises(ValueError, match="restart_mult"):
        _ours(name="cosine_restarts", num_cycles=3, restart_mult=2)
