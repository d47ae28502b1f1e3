"""Ctrl-C during a run.

Python raises KeyboardInterrupt in whatever Python code runs when the signal lands, which may
be a callback whose exceptions are dropped (JAX's garbage-collection callback: "Exception
ignored in ..."), and the run would go on as if nothing had happened. So while a run computes
(`interruptible`), Ctrl-C is also noted, the dropped KeyboardInterrupt is not printed, and the
run stops at the next check (`raise_if_interrupted`): each `RunContext.progress` step, each
finished unit, before the results.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["checked", "interruptible", "raise_if_interrupted"]

T = TypeVar("T")

_interrupt = {"noted": False}


def raise_if_interrupted() -> None:
    """Raises `KeyboardInterrupt` when a Ctrl-C was noted during `interruptible`."""
    if _interrupt["noted"]:
        raise KeyboardInterrupt


def checked(iterable: Iterable[T]) -> Iterator[T]:
    """The items of `iterable`, with `raise_if_interrupted` before each."""
    for item in iterable:
        raise_if_interrupted()
        yield item


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Notes Ctrl-C for `raise_if_interrupted` during the block (main thread, default SIGINT
    handler only: a handler someone else installed is left alone)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        _interrupt["noted"] = True
        raise KeyboardInterrupt

    def on_unraisable(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    previous_hook = sys.unraisablehook
    _interrupt["noted"] = False
    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = on_unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook
        _interrupt["noted"] = False
