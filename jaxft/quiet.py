"""Silence start-up messages a user can do nothing about, and only those.

``silence_startup_noise()`` is called before jax or transformers are imported. It drops:

- jax's "Unable to initialize backend 'tpu'" (logged while probing for a TPU on every
  host that is not one; a real TPU failure raises instead of logging this line),
- transformers' "PyTorch was not found" advice (jaxft never uses PyTorch models).

It filters those exact messages on the loggers that emit them, so every other warning of
jax and transformers still shows.
"""

from __future__ import annotations

import logging

# (logger name, message prefix) of each dropped message.
NOISE: tuple[tuple[str, str], ...] = (
    ("jax._src.xla_bridge", "Unable to initialize backend 'tpu'"),
    ("transformers", "PyTorch was not found"),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def silence_startup_noise() -> None:
    """Install the filters (idempotent). Logger filters are not inherited, so each goes on
    the exact logger that emits its message; ``logging.getLogger`` returns that same object
    when the library creates it later."""
    for name, prefix in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
