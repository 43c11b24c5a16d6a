"""Stop on SIGTERM or SIGINT at the next safe point instead of dying mid-step.

Cluster schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM some time before they kill
a job; Ctrl-C sends SIGINT. While :func:`stop_on_signals` is active the handler only records the
signal; the training loop looks at the record between steps, where the state is consistent,
saves a resumable checkpoint and exits. A second signal of the same kind has its default effect
(Ctrl-C twice aborts at once, as users expect); checkpoints are written atomically, so even
then no torn file is left.

The upstream-style ``--distributed`` launcher is a parent process of the ranks; a signal sent to
it alone (``kill <pid>``, a scheduler signalling the main process only) would not reach them.
While :func:`forward_stop_signals` is active, its first SIGTERM or SIGINT is passed on to the
ranks as :data:`FORWARDED_STOP`, a signal of its own: ranks may get the original signal directly
as well (Ctrl-C reaches the whole foreground process group, SLURM signals every process of a job
step), and a forwarded copy of it would count as their second one and abort them mid-save.
:data:`FORWARDED_STOP` only ever requests a stop, however often it comes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_INTERRUPTED = 4
"""Exit status of a command stopped by SIGTERM/SIGINT (training, evaluation and SOLF alike)."""
FORWARDED_STOP = signal.SIGUSR1
"""What the ``--distributed`` launcher sends its ranks when it receives SIGTERM or SIGINT."""
_DEFAULT_ACTION = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
_NAMES = {FORWARDED_STOP: "SIGTERM/SIGINT forwarded by the --distributed launcher"}
_Handler = Callable[[int, FrameType | None], None]
log = logging.getLogger(__name__)


class StopRequest:
    """The first stop signal received while :func:`stop_on_signals` (or
    :func:`forward_stop_signals`) is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGTERM``, ``SIGINT``, what :data:`FORWARDED_STOP` stands for (or ``no signal``)."""
        if self.signum is None:
            return "no signal"
        return _NAMES.get(self.signum, signal.Signals(self.signum).name)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the first signal; the next SIGTERM or SIGINT of the kind
        just received gets its default action. :data:`FORWARDED_STOP` never escalates."""
        if self.signum is None:
            self.signum = signum
        if signum in _DEFAULT_ACTION:
            signal.signal(signum, _DEFAULT_ACTION[signum])


@contextlib.contextmanager
def _handling(signums: Iterable[int], handler: _Handler) -> Iterator[None]:
    """Install ``handler`` for ``signums`` and restore the previous handlers after.

    Python runs signal handlers in the main thread only; elsewhere (a test runner's thread)
    nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


_early_stop = threading.Event()


def _remember_forwarded_stop(signum: int, frame: FrameType | None) -> None:
    _early_stop.set()


@contextlib.contextmanager
def remember_forwarded_stops() -> Iterator[None]:
    """In a spawned rank: keep a :data:`FORWARDED_STOP` that arrives outside :func:`stop_on_signals`
    (during set-up or the data check, or after training) instead of letting its default action
    kill the process. A :func:`stop_on_signals` entered later starts with the stop recorded, so
    training stops after its first step with ``last.pt`` saved; after training it changes nothing.
    """
    _early_stop.clear()
    try:
        with _handling((FORWARDED_STOP,), _remember_forwarded_stop):
            yield
    finally:
        _early_stop.clear()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Record SIGTERM, SIGINT and :data:`FORWARDED_STOP` in the yielded :class:`StopRequest`;
    restore the handlers after. A forwarded stop kept by :func:`remember_forwarded_stops` counts.

    Outside the main thread the request is yielded without handlers and never set.
    """
    request = StopRequest()
    with _handling((*STOP_SIGNALS, FORWARDED_STOP), request.handle):
        if _early_stop.is_set():
            request.handle(FORWARDED_STOP, None)
        yield request


@contextlib.contextmanager
def forward_stop_signals(living: Callable[[], Iterable[int]]) -> Iterator[StopRequest]:
    """Pass the first SIGTERM or SIGINT on as :data:`FORWARDED_STOP` to the processes ``living()``
    lists (the ranks still running); restore the handlers after.

    The yielded :class:`StopRequest` records that signal; a second one of the same kind gets its
    default action (kills this process, or raises :class:`KeyboardInterrupt`). Outside the main
    thread nothing is forwarded.
    """
    request = StopRequest()

    def forward(signum: int, frame: FrameType | None) -> None:
        first = not request.requested
        request.handle(signum, frame)
        if first:
            pids = list(living())
            log.warning("%s received: asking %d rank(s) to stop (in training: after the current step, saving last.pt; "
                        "send it again to abort)", request.name, len(pids))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, FORWARDED_STOP)

    with _handling(STOP_SIGNALS, forward):
        yield request
