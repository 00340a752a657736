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
import sys
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


def exit_on_sigterm() -> None:
    """SIGTERM exits through sys.exit, so atexit handlers run, unless a handler is set already. ray.init sets the
    same from the main thread only: a cluster started in a background thread needs it set here."""
    if _main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
