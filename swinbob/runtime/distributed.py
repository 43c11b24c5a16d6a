"""Process groups: single process, ``torchrun``, or upstream-style ``--distributed`` spawning.

Three ways in, one :func:`init_distributed`:

* ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; we join with ``env://``.
* ``--distributed`` without torchrun spawns one process per visible GPU (``--world_size`` nodes
  of them, ``--rank`` this node's index, ``--dist-url`` the rendezvous, as upstream), or on a
  machine without GPUs ``--world_size`` CPU processes (gloo), which is how the tests run DDP.
* otherwise a single process.

The *local* rank picks the GPU; the global rank never is a CUDA index (an upstream multi-node bug).

A SIGTERM or SIGINT sent to the ``--distributed`` launcher alone reaches its ranks as
:data:`~swinbob.runtime.interrupt.FORWARDED_STOP` (see :mod:`swinbob.runtime.interrupt`): during training every
rank stops after the current step with ``last.pt`` saved, as if each had been signalled; a stop
forwarded during set-up takes effect after the first step, one after training changes nothing.
torchrun's agent passes signals on to its workers itself.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swinbob.runtime.interrupt import forward_stop_signals, remember_forwarded_stops
from swinbob.runtime.devices import select_device

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
EXIT_GRACE_S = 10.0
"""After a rank exits non-zero, how long the others get to finish on their own (after a stop
they all exit alike) before they are terminated (after a crash they may wait in a collective)."""
P = TypeVar("P")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global rank, rank on its node, number of processes, device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or any launcher setting its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def _device_for(device_name: str | None, local_rank: int) -> torch.device:
    device = select_device(device_name, local_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(
    device_name: str | None = None,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
    init_method: str = "env://",
    backend: str | None = None,
) -> DistContext:
    """Join the process group (if there is one) and return this process's :class:`DistContext`.

    Ranks default to torchrun's variables. NCCL is used on GPUs, gloo on the CPU, unless
    ``backend`` says otherwise. With one process no group is created.
    """
    if rank is None and launched_by_torchrun():
        rank, local_rank, world_size = (int(os.environ[name]) for name in TORCHRUN_VARS)
    rank, local_rank, world_size = rank or 0, local_rank or 0, world_size or 1
    device = _device_for(device_name, local_rank)
    if world_size == 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        device_id=device if backend == "nccl" else None,
    )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes_per_node(world_size: int, device_name: str | None) -> tuple[int, int]:
    """(processes on this node, processes in total) for the spawn path."""
    wants_gpu = device_name is None or torch.device(device_name).type == "cuda"
    if wants_gpu and torch.cuda.is_available():
        per_node = torch.cuda.device_count()
        return per_node, per_node * world_size  # upstream: --world_size counts nodes on GPUs
    if world_size < 2:
        raise SystemExit("error: --distributed on the CPU needs --world_size >= 2 (the number of processes)")
    return world_size, world_size


def _run(worker: Callable[[DistContext, P], int], ctx: DistContext, payload: P) -> int:
    try:
        return worker(ctx, payload)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned(local_rank: int, worker: Callable[[DistContext, P], int], payload: P, per_node: int,
             total: int, node_rank: int, url: str, backend: str | None, device_name: str | None) -> None:
    if not torch.cuda.is_available():
        # CPU processes share the cores; without this each one starts a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    with remember_forwarded_stops():
        ctx = init_distributed(device_name, node_rank * per_node + local_rank, local_rank, total, url, backend)
        code = _run(worker, ctx, payload)
    if code:
        sys.exit(code)


def launch(
    worker: Callable[[DistContext, P], int],
    payload: P,
    distributed: bool = False,
    world_size: int = 1,
    node_rank: int = 0,
    dist_url: str | None = None,
    backend: str | None = None,
    device_name: str | None = None,
) -> int:
    """Run ``worker(ctx, payload)`` in every process of the job and return an exit code.

    ``payload`` must be picklable for the spawn path. A worker returning non-zero (e.g. after
    reporting a bad datalist) makes the whole job return that code; exceptions propagate. While
    the spawned ranks run, this process forwards a stop signal to them (:func:`_join`).
    """
    if launched_by_torchrun():
        return _run(worker, init_distributed(device_name, backend=backend), payload)
    if not distributed:
        return _run(worker, init_distributed(device_name), payload)
    per_node, total = _processes_per_node(world_size, device_name)
    if dist_url is None:
        if total != per_node:
            raise SystemExit("error: multi-node --distributed needs --dist-url tcp://<node 0 address>:<port>")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    log.info("spawning %d process(es) on this node, %d in total, rendezvous %s", per_node, total, dist_url)
    args = (worker, payload, per_node, total, node_rank, dist_url, backend, device_name)
    return _join(mp.spawn(_spawned, args=args, nprocs=per_node, join=False))


def _living_pids(ranks: mp.ProcessContext) -> list[int]:
    # A rank whose exit code is unknown has not been reaped yet, so its pid cannot have been reused.
    return [process.pid for process in ranks.processes if process.exitcode is None]


def _join(ranks: mp.ProcessContext) -> int:
    """Wait for the spawned ranks, passing a SIGTERM or SIGINT on to them; return the exit code:
    0, or that of the first rank to exit non-zero (4 after a stop)."""
    try:
        with forward_stop_signals(lambda: _living_pids(ranks)):
            while not ranks.join(grace_period=EXIT_GRACE_S):
                pass
    except mp.ProcessExitedException as exc:
        return exit_status(exc.exit_code)
    return 0


def exit_status(exit_code: int | None) -> int:
    """A rank's exit code as a shell exit status: a death by signal N (code -N) is 128 + N."""
    if exit_code is None or exit_code == 0:
        return 1
    return 128 - exit_code if exit_code < 0 else exit_code


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered

