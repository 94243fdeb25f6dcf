"""The ``jaxft`` console script: takes over Ctrl-C before absl or jax is imported, then dispatches
(``jaxft train ...`` or ``jaxft <recipe> <verb> ...``, see :func:`jaxft.main.run`)."""

from jaxft.interrupts import stop_on_ctrl_c


def run() -> None:
    stop_on_ctrl_c()
    from jaxft.main import run as dispatch

    dispatch()
