"""Multi-node training, proven on one machine: two ``torchrun --nnodes=2 --nproc_per_node=1``
launchers meet through a c10d rendezvous on localhost (gloo), train, rank 0 writes the checkpoint,
both launchers are SIGTERMed, and the resumed run ends with the weights of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from faults_report import record_fault
from swinbob.checkpoint import load_checkpoint
from swinbob.data.phantoms import write_cohort
from tiny import TINY_TRAIN_FLAGS

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
TRAIN = ("--task=btcv", *TINY_TRAIN_FLAGS, "--workers=0", "--num_samples=1", "--warmup_epochs=0", "--max_epochs=3",
         "--max_steps_per_epoch=2", "--val_every=10", "--optim_lr=1e-3", "--deterministic", "--device=cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("multinode"), 4, shape=(32, 32, 40)).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch_two_nodes(cohort: Path, logdir: Path, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents (one per "node") of one job, rendezvous at a fresh localhost port."""
    port, job = _free_port(), uuid.uuid4().hex[:8]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}", f"--rdzv_id={job}", "--max_restarts=0",
               "-m", "swinbob.train.cli", f"--json_list={cohort / 'dataset.json'}", f"--data_dir={cohort}",
               f"--logdir={logdir}", *TRAIN, *extra]
    return [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]


def _finish(nodes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    return [(node.wait(timeout=timeout), node.stdout.read()) for node in nodes]


def test_two_node_torchrun_sigterm_then_resume_equals_an_uninterrupted_two_node_run(cohort, tmp_path):
    straight = tmp_path / "straight"
    results = _finish(_launch_two_nodes(cohort, straight))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]

    logdir = tmp_path / "interrupted"
    nodes = _launch_two_nodes(cohort, logdir)
    deadline = time.monotonic() + 300
    while not (logdir / "last.pt").exists():  # epoch 1 saved by rank 0; two more epochs to go
        assert all(node.poll() is None for node in nodes), "a node ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    for node in nodes:
        node.send_signal(signal.SIGTERM)  # as a scheduler ends a job: every node's launcher
    outputs = _finish(nodes)
    stopped = load_checkpoint(logdir / "last.pt")
    assert all(code != 0 for code, _ in outputs), "the run finished before the SIGTERM"
    assert "received: stopped" in "".join(text for _, text in outputs)
    assert (stopped["epoch"], stopped["epoch_step"]) < (3, 0)
    assert {p.name for p in logdir.glob("*.pt")} <= {"last.pt", "last.prev.pt"}  # rank 0 alone wrote

    resumed = _finish(_launch_two_nodes(cohort, logdir, "--resume"))
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:] + resumed[1][1][-3000:]
    ours, reference = load_checkpoint(logdir / "last.pt"), load_checkpoint(straight / "last.pt")
    differences = [k for k in ("epoch", "global_step", "epoch_step") if ours.get(k) != reference.get(k)]
    differences += [name for name, tensor in reference["model"].items()
                    if not torch.allclose(ours["model"][name], tensor, rtol=0, atol=1e-6)]
    record_fault(f"2-node torchrun (c10d, gloo) SIGTERMed after epoch {stopped['epoch']} + {stopped['epoch_step']} "
                 "step(s), resumed", survived=not differences, data_lost=len(differences))
    assert differences == []
    assert len(ours["rng"]) == 2  # one RNG state per rank: both nodes took part
