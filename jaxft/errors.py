"""One error boundary for ``jaxft.main`` and every recipe CLI: known failures become one line.

A user who mistypes a path, feeds a malformed file or points at a damaged checkpoint gets
``error: <what and where>`` on stderr and exit code 2, not a traceback; Ctrl-C exits 130.
Anything else is a bug in jaxft and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from jaxft.interrupts import EXIT_INTERRUPTED, ctrl_c_raises


class ConfigError(ValueError):
    """A config (a training config or a checkpoint's config.json) jaxft cannot use; the message names the key."""


EXIT_ERROR = 2


def known_failures() -> tuple[type[BaseException], ...]:
    """Exception classes that describe bad input or a bad environment rather than a bug."""
    classes: list[type[BaseException]] = [ValueError, OSError, KeyError, UnicodeError]
    try:
        from safetensors import SafetensorError

        classes.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(classes)


def one_line(err: BaseException) -> str:
    """The message of an exception on one line (KeyError quotes its key; others as they read)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {err.strerror or text}"
    return " ".join(text.split()) or type(err).__name__


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def cli_boundary(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a ``main(argv) -> exit code``: known failures print one line and return 2; Ctrl-C returns 130,
    wherever it lands (``jaxft.interrupts``)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            with ctrl_c_raises():
                return main(*args, **kwargs)
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)
        except known_failures() as err:
            return fail(one_line(err))

    return wrapped
