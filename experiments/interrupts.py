"""Ctrl-C and SIGTERM during a run.

Python raises KeyboardInterrupt in whatever Python code runs when the signal lands, which may
be a callback whose exceptions are dropped (JAX's garbage-collection callback: "Exception
ignored in ..."), and the run would go on as if nothing had happened. So while a run computes
(`interruptible`), Ctrl-C is also noted, the dropped KeyboardInterrupt is not printed, and the
run stops at the next check (`raise_if_interrupted`): each `RunContext.progress` step, each
finished unit, before the results.

SIGTERM (what a scheduler, `kill` or a container stop sends, to any process of a run) takes
the same path as Ctrl-C: a KeyboardInterrupt, so the run stops where Ctrl-C would stop it and
the command line prints how to resume it (`terminate_as_interrupt` covers a whole command,
`interruptible` a run). `last_signal` says which of the two stopped the last run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = [
    "checked",
    "interruptible",
    "last_signal",
    "raise_if_interrupted",
    "terminate_as_interrupt",
]

T = TypeVar("T")

# `noted`: the signal noted during the current `interruptible` block (None: none);
# `last`: the signal that interrupted the last run, kept after the block for the message
_interrupt: dict[str, str | None] = {"noted": None, "last": None}

_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def raise_if_interrupted() -> None:
    """Raises `KeyboardInterrupt` when a Ctrl-C or SIGTERM was noted during `interruptible`."""
    if _interrupt["noted"] is not None:
        raise KeyboardInterrupt(_interrupt["noted"])


def last_signal() -> str:
    """What interrupted the last run: "SIGTERM", else "Ctrl-C"."""
    return _interrupt["last"] or "Ctrl-C"


def checked(iterable: Iterable[T]) -> Iterator[T]:
    """The items of `iterable`, with `raise_if_interrupted` before each."""
    for item in iterable:
        raise_if_interrupted()
        yield item


def _sigterm_as_interrupt(signum, frame):
    _interrupt["last"] = "SIGTERM"
    raise KeyboardInterrupt("SIGTERM")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """During the block, SIGTERM raises `KeyboardInterrupt("SIGTERM")`, as Ctrl-C raises
    KeyboardInterrupt (main thread, default SIGTERM handling only: a handler someone else
    installed is left alone). The `kseq` command runs inside it, so a SIGTERM before or after
    the run proper also ends in the one-line message and exit status 130."""
    _interrupt["last"] = None
    if not _on_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Notes Ctrl-C and SIGTERM for `raise_if_interrupted` during the block (main thread;
    only signals left to their default handling, or SIGTERM to `terminate_as_interrupt`'s: a
    handler someone else installed is left alone)."""
    if not _on_main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous_term = signal.getsignal(signal.SIGTERM)
    take_term = previous_term in (signal.SIG_DFL, _sigterm_as_interrupt)

    def on_signal(signum, frame):
        name = _NAMES.get(signum, "Ctrl-C")
        _interrupt["noted"] = _interrupt["last"] = name
        raise KeyboardInterrupt(name)

    def on_unraisable(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    previous_hook = sys.unraisablehook
    _interrupt["noted"] = _interrupt["last"] = None
    signal.signal(signal.SIGINT, on_signal)
    if take_term:
        signal.signal(signal.SIGTERM, on_signal)
    sys.unraisablehook = on_unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if take_term:
            signal.signal(signal.SIGTERM, previous_term)
        sys.unraisablehook = previous_hook
        _interrupt["noted"] = None
