"""The one place where jaxft meets APIs that differ between the JAX releases it supports (0.7.1 to 0.11).

Everything else imports these names instead of probing versions itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


@contextlib.contextmanager
def tpu_interpret_mode() -> Iterator[None]:
    """A context in which Pallas TPU kernels run interpreted on the CPU (the tests of the TPU kernels).

    Up to jax 0.10 this is Pallas' TPU interpreter (it simulates VMEM and DMAs). From 0.11 that
    interpreter's callbacks count as a data dependency inside ``flax.linen.scan`` ("broadcasted variable
    has a data dependency on the scan body"), so a kernel inside the decoder's layer scan cannot be
    traced; there the context selects Pallas' generic interpreter (the kernel as plain jax ops), through
    the same config value ``force_tpu_interpret_mode`` sets.
    """
    if JAX_VERSION < (0, 11):
        from jax.experimental.pallas import tpu as pltpu

        with pltpu.force_tpu_interpret_mode():
            yield
        return
    from jax._src import config as jax_config

    option = jax_config.pallas_tpu_interpret_mode_context_manager
    previous = option.swap_local(True)
    try:
        yield
    finally:
        option.set_local(previous)
