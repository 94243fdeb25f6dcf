"""Ctrl-C ends a command at any moment, with exit code 130 and one line, never an ignored exception.

Python's own SIGINT handler raises ``KeyboardInterrupt`` in whatever Python code the main thread runs at
that moment. During start-up that is often a garbage-collection callback (JAX registers one) or a
finalizer, where an exception is "ignored": Python prints it with a traceback and the run goes on. The
handler here raises only in ordinary code: when the signal lands in a gc callback or a ``__del__``, it is
delivered again a moment later, and a ``KeyboardInterrupt`` that still ends up unraisable (a weakref
callback, say) is delivered again the same way.

``stop_on_ctrl_c()`` is the first call of ``python -m jaxft.main``, before absl or jax is imported: until
the error boundary is entered, nothing is open, so a Ctrl-C exits at once. Inside ``ctrl_c_raises()`` (the
error boundary) it raises ``KeyboardInterrupt``, which the boundary turns into exit code 130. Standard
library only, so importing it imports nothing heavy.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_INTERRUPTED = 130
REDELIVERY_DELAY_S = 0.05  # long enough for a gc callback or finalizer to return

_exit_at_once = False  # between stop_on_ctrl_c() and the error boundary


def stop_on_ctrl_c() -> None:
    """From now on a Ctrl-C exits with code 130 (at once until ``ctrl_c_raises`` is entered)."""
    global _exit_at_once
    _exit_at_once = True
    _install()


@contextlib.contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """Within: Ctrl-C raises ``KeyboardInterrupt``, in ordinary code only (never inside a gc callback or
    a finalizer). The previous handler is put back on the way out."""
    global _exit_at_once
    before_mode, before_handler = _exit_at_once, _install()
    _exit_at_once = False
    try:
        yield
    finally:
        _exit_at_once = before_mode
        if before_handler is not None:
            signal.signal(signal.SIGINT, before_handler)


def interrupt(frame: FrameType | None) -> None:
    """Stop this command because of a Ctrl-C that arrived while ``frame`` ran (the second Ctrl-C of the
    training loop calls this too): raise ``KeyboardInterrupt`` there, or deliver the signal again soon
    when ``frame`` is inside a gc callback or a finalizer, where the exception would be ignored."""
    if _exit_at_once:  # nothing is open yet: no state to save
        print("error: interrupted", file=sys.stderr, flush=True)
        exit_interrupted()
    if _in_finalizer(frame):
        deliver_again_soon()
        return
    raise KeyboardInterrupt


def exit_interrupted() -> None:
    """End the process with exit code 130 after the ``atexit`` handlers (they release the workdir lock),
    skipping the interpreter's teardown: interrupted while XLA still compiled on its own threads, that
    teardown crashed with SIGSEGV in most runs (Ctrl-C 9-12 s into ``lm:smoke`` on a 2-core CPU)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def deliver_again_soon() -> None:
    """SIGINT again, to whichever handler is installed by then, after ``REDELIVERY_DELAY_S``."""
    timer = threading.Timer(REDELIVERY_DELAY_S, _thread.interrupt_main, args=(signal.SIGINT,))
    timer.daemon = True
    timer.start()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    interrupt(frame)


def _install():
    """Our SIGINT handler and unraisable hook (once); the handler it replaced, or None when it was ours
    already or this is not the main thread (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if not isinstance(sys.unraisablehook, _RedeliverInterrupts):
        sys.unraisablehook = _RedeliverInterrupts(sys.unraisablehook)
    previous = signal.getsignal(signal.SIGINT)
    if previous is _on_sigint:
        return None
    signal.signal(signal.SIGINT, _on_sigint)
    return previous


class _RedeliverInterrupts:
    """``sys.unraisablehook``: a swallowed ``KeyboardInterrupt`` is delivered again (and not printed);
    everything else goes to the hook it wraps."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def __call__(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            deliver_again_soon()
            return
        self.wrapped(unraisable)


def _in_finalizer(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside a gc callback or a ``__del__`` (its own code or a function it calls)."""
    callbacks = {code for cb in gc.callbacks
                 if (code := getattr(getattr(cb, "__func__", cb), "__code__", None)) is not None}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
