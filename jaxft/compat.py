"""The one place where jaxft meets APIs that differ between the JAX releases it supports (0.6 to 0.11).

Everything else imports these names instead of probing versions itself.
"""

from __future__ import annotations

import contextlib

import jax

JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


def tpu_interpret_mode() -> contextlib.AbstractContextManager:
    """A context in which Pallas TPU kernels run interpreted on the CPU (tests of the TPU kernels)."""
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.force_tpu_interpret_mode()
