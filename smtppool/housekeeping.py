"""The housekeeper: a daemon thread that runs a pool's periodic chores.

It closes connections idle past ``idle_timeout`` and ends waits past ``pool_timeout``,
by calling the chores it was given every ``interval`` seconds.  It starts at the first
need (a dial, or a connection going idle), holds its pool only weakly so that an
unclosed pool can still be freed, and stops when the pool closes.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

__all__ = ["Housekeeper"]


class Housekeeper:
    """Calls ``chores`` (a bound method, held weakly) every ``interval`` seconds."""

    def __init__(self, chores: Callable[[], None], interval: float, log: logging.Logger) -> None:
        self._chores = weakref.WeakMethod(chores)
        self._interval = interval
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread, once; never after :meth:`stop`.  The caller serialises
        calls (the pool holds its lock)."""
        if self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(
            target=_keep_house,
            args=(self._chores, self._stop, self._interval, self._log),
            name="smtppool-housekeeper",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the thread and wait up to ``timeout`` for it (not from the thread itself)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _keep_house(
    chores_ref: weakref.WeakMethod[Callable[[], None]],
    stop: threading.Event,
    interval: float,
    log: logging.Logger,
) -> None:
    while not stop.wait(interval):
        chores = chores_ref()
        if chores is None:  # the pool was freed
            return
        try:
            chores()
        except Exception:
            log.exception("pool housekeeping failed")
        del chores
