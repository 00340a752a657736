"""What Ctrl-C (SIGINT) and SIGTERM mean while `dlp` runs, in one place.

Ctrl-C ends a run KILLED: a KeyboardInterrupt reaches whoever owns the MLflow run (tracking.ending_run). The
libraries that take SIGINT over are given it back here: Lightning turns Ctrl-C into sys.exit(1) and ignores it
from then on, Ray Train's TorchTrainer.fit and Ray Tune install handlers of their own. SIGTERM exits through
sys.exit, so atexit handlers (Ray's shutdown of a cluster this process started) still run.

Handlers can only be set from the main thread; elsewhere (a Tune trial's thread) these are no-ops.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def restore_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again (after Lightning, interrupted once, set it to be ignored)."""
    if _main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def keeping_ctrl_c() -> Iterator[None]:
    """A SIGINT handler installed inside the block (TorchTrainer.fit installs its own) is undone when it ends."""
    if not _main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def graceful_ctrl_c(on_first: Callable[[], None]) -> Iterator[threading.Event]:
    """The first Ctrl-C calls `on_first()` (a graceful stop) and sets the event yielded; a second one raises
    KeyboardInterrupt at once. The previous handler comes back when the block ends."""
    interrupted = threading.Event()
    if not _main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where Ctrl-C's KeyboardInterrupt would be."""


_terminated = threading.Event()


def _raise_terminated(signum, frame) -> None:
    if _terminated.is_set():   # once is enough: the run is being ended KILLED
        return
    _terminated.set()
    raise Terminated()


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in the main thread (a no-op elsewhere)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def keeping_sigterm() -> Iterator[None]:
    """The SIGTERM handler set before the block (ray.init replaces it with a sys.exit) is back when it ends."""
    handler = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    try:
        yield
    finally:
        if handler not in (None, signal.SIG_DFL):   # else Ray's stays: it exits through atexit
            signal.signal(signal.SIGTERM, handler)


def terminated() -> bool:
    """Whether the KeyboardInterrupt being handled came from SIGTERM (Lightning re-raises its own)."""
    return _terminated.is_set()
