"""Stop on SIGTERM or SIGINT at the next safe point instead of dying mid-step.

Cluster schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM some time before they kill
a job; Ctrl-C sends SIGINT. While :func:`stop_on_signals` is active the handler only records the
signal; the training loop looks at the record between steps, where the state is consistent,
saves a resumable checkpoint and exits. A second signal of the same kind has its default effect
(Ctrl-C twice aborts at once, as users expect); checkpoints are written atomically, so even
then no torn file is left.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DEFAULT_ACTION = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}


class StopRequest:
    """The first stop signal received while :func:`stop_on_signals` is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGTERM``, ``SIGINT`` (or ``no signal``)."""
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the signal; the next one of its kind gets its default action."""
        self.signum = signum
        signal.signal(signum, _DEFAULT_ACTION[signum])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Record SIGTERM and SIGINT in the yielded :class:`StopRequest`; restore the handlers after.

    Python runs signal handlers in the main thread only; elsewhere (a test runner's thread) the
    request is yielded without handlers and never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, request.handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
