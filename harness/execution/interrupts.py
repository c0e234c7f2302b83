"""Stopping a command on Ctrl-C, SIGTERM or SIGHUP, at a point where stopping is safe.

Outside a Ray Tune run each of these signals raises KeyboardInterrupt where the main thread is, as Ctrl-C does in
any Python program: every `finally` runs, the servers a command started stop with all their workers, and
harness/cli.py turns it into exit 130 ("finished nodes are kept").

Inside `Tuner.fit()` an exception raised at an arbitrary point can land in Ray's own bookkeeping (an actor half
started, a lock held) and leave the driver unable to exit: CI once saw `harness run` hang for over 120 s after a
SIGTERM. So while a Tune run is in progress (`graceful()`), the first signal only records the request; Tune's
stopper (`requested()`, read at every step of its loop, about every 0.1 s) then stops every trial, Tune saves its
state and stops its actors, and the KeyboardInterrupt is raised once `fit()` has returned. A second signal raises at
once, for a run that will not stop.

Where `install()` has run (every `harness` command), Tune's own Ctrl-C handler is switched off
(TUNE_DISABLE_SIGINT_HANDLER) so that all three signals take this one path; left on, it also stays installed after
`fit()` returns, where a later Ctrl-C would do nothing. Code that calls the orchestrator without `install()` (a
notebook) keeps Tune's handler.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_requested: str | None = None  # the name of the signal that asked a Tune run to stop
_graceful = False  # a Tune run is in progress: the first signal asks it to stop instead of raising


def install() -> Callable[[], None]:
    """Route Ctrl-C, SIGTERM and SIGHUP through `_on_signal`; returns what puts the previous handlers back.
    Off the main thread (a notebook's worker) signals cannot be handled there: nothing is changed."""
    global _requested
    _requested = None
    try:
        previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    except ValueError:
        previous = {}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def requested() -> str | None:
    """The signal that asked the Tune run in progress to stop, or None."""
    return _requested


@contextmanager
def graceful() -> Iterator[None]:
    """Around `Tuner.fit()`: a signal asks the run to stop (see `requested`) instead of raising inside Ray; on
    leaving, a requested stop raises KeyboardInterrupt, also in place of an error the stop itself caused."""
    global _graceful
    if signal.getsignal(signal.SIGINT) is _on_signal:  # ours is installed: Tune's own would take Ctrl-C from it
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous, _graceful = _graceful, True
    try:
        yield
    except Exception:
        if _requested:
            raise KeyboardInterrupt(_take()) from None
        raise
    finally:
        _graceful = previous
    if _requested:
        raise KeyboardInterrupt(_take())


def _take() -> str | None:
    """The request, consumed: it belonged to the Tune run that has now ended."""
    global _requested
    name, _requested = _requested, None
    return name


def _on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
    global _requested
    name = signal.Signals(signum).name
    if _graceful and _requested is None:
        _requested = name
        # os.write, not print: the main thread may be inside a write to stderr, and print would then fail with
        # "reentrant call"
        os.write(2, f"harness: {name}: stopping the trials in progress (send it again to stop at once)\n".encode())
        return
    raise KeyboardInterrupt(name)
