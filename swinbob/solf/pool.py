"""SOLF's worker pool: scans measured or cleaned in parallel processes that survive a dying worker.

A worker killed by a signal (the out-of-memory killer) does not end the run: the scans it may
have held are retried alone in fresh processes, and one that kills its process again becomes a
failure record (tests/test_faults_solf.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm import tqdm

log = logging.getLogger("swinbob.solf")


def available_cpus() -> int:
    """CPUs this process may use (respects cgroup/affinity limits where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


WORKER_DIED = ("a worker process died twice while processing it (killed by a signal, e.g. by the out-of-memory "
               "killer); touch the file to have it measured again")


def _pool_results(function: Callable[[Any], Any], items: list, workers: int) -> Iterator[tuple[Any, Any, bool]]:
    """``(item, result, died)`` for every item, computed in a pool of ``workers`` processes.

    At most two items per worker are in flight, so that when a worker dies (``SIGKILL``, the
    out-of-memory killer) few items are suspects: the pool breaks, every in-flight item comes
    back with ``died=True`` (which one killed the worker is not known), and the items not yet
    started continue in a fresh pool.
    """
    queue = deque(items)
    while queue:
        suspects: list = []
        waiting = len(queue)
        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            running: dict = {}
            try:
                while queue or running:
                    while queue and len(running) < 2 * workers:
                        future = pool.submit(function, queue[0])  # raises if the pool broke: keep the item
                        running[future] = queue.popleft()
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        item = running.pop(future)
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            suspects.append(item)
                            continue
                        yield item, result, False
                    if suspects:
                        break
            except BrokenProcessPool:  # submit() into a pool that broke since the last wait()
                pass
            for future, item in running.items():  # a broken pool fails every pending future
                try:
                    yield item, future.result(), False
                except BrokenProcessPool:
                    suspects.append(item)
        if len(queue) == waiting:  # not even one item could be started: do not loop forever
            raise RuntimeError("the worker process pool broke before it could start any work")
        for item in suspects:
            yield item, None, True


def die_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker when the main process ends, however it ends.

    A ``SIGTERM`` to the main process alone (a job runner's ``terminate()``) kills it without
    shutting the pool down; its workers would be re-parented and wait forever on their queue,
    holding the caller's pipes open, so the caller hung. Linux delivers ``SIGTERM`` to a worker
    whose parent dies (``PR_SET_PDEATHSIG``); elsewhere the pool's own shutdown has to do.

    Ctrl-C reaches every process of the terminal's group: workers ignore ``SIGINT`` (each printed
    a ``KeyboardInterrupt`` traceback), the main process stops the run and shuts the pool down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _alone(function: Callable[[Any], Any], item: Any, lost: Callable[[Any], Any] | None) -> Any:
    """Retry an item whose worker died, alone in a fresh process; ``lost(item)`` if it dies again."""
    for _, result, died in _pool_results(function, [item], 1):
        if not died:
            return result
    if lost is None:
        raise RuntimeError(WORKER_DIED)
    return lost(item)


def parallel_map(function: Callable[[Any], Any], items: list, workers: int, desc: str,
                 lost: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Results of ``function`` over ``items`` as they complete, with a progress bar.

    ``workers`` <= 1 runs in this process (easy to debug); otherwise a process pool, since the
    work is numpy/scipy on whole volumes and decompression, which threads would serialise.
    A worker that dies does not end the run: the items it may have held are retried one at a
    time in fresh processes, and one that kills its process again yields ``lost(item)`` (a
    failure record), so one scan that exhausts the memory cannot block every later run.
    """
    bar = tqdm(total=len(items), desc=desc, unit="scan", disable=None)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield function(item)
                bar.update()
            return
        for item, result, died in _pool_results(function, items, workers):
            if died:
                log.warning("a worker process died; retrying its scan alone in a fresh process")
                result = _alone(function, item, lost)
            yield result
            bar.update()
    finally:
        bar.close()
