"""Training under faults: SIGKILL at a random moment and inside a checkpoint write, SIGTERM and
SIGINT (saved, resumable), a SIGTERM sent to the ``--distributed`` launcher only (forwarded to its
ranks), a full disk, a damaged ``last.pt``, NaN inputs and NaN weights, and bad image data that
only a full read finds.

Every run is the same tiny job (BTCV phantoms, feature_size 12, ROI 32x32x64, 2 epochs of 2 steps,
``--deterministic``), so that each faulty run, once resumed, must end with exactly the weights,
optimizer state and counters of one uninterrupted run (:func:`reference`). Each fault lands in the
summary table (faults_report.record_fault); ``data lost`` counts what differs from that run
(tensors, counters) or, for runs that must stop, the good checkpoints that changed. The
``--distributed`` run (2 gloo ranks, many epochs so that it is still training when signalled) is
only checked to stop with a loadable, resumable ``last.pt``: 2 ranks do not train like 1.

Faults that kill or signal the trainer run it in a subprocess started as ``python
tests/test_faults_train.py FAULT TRAIN_ARGS``: the fault is installed there by patching, so the
library carries no test hooks. Resumes run in-process (``swinbob.train.cli.main``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.checkpoint as checkpoint
import swinbob.train.engine as train
import swinbob.train.cli as train_cli
from faults_report import record_fault, record_input, refused
from swinbob.checkpoint import CheckpointError, load_checkpoint
from swinbob.runtime.distributed import exit_status
from swinbob.files import stale_temp_files
from swinbob.runtime.interrupt import FORWARDED_STOP, forward_stop_signals, remember_forwarded_stops, stop_on_signals
from swinbob.data.phantoms import write_cohort
from swinbob.train.state import load_resume_checkpoint
from tiny import TINY_TRAIN_FLAGS

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 2, 2
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------
# Fault injection in the subprocess (the runner at the end of this file)
# ----------------------------------------------------------------------------------------------

def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth_call(n: int):
    """A counter that answers True on its ``n``-th call only."""
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n
    return hit


def install_fault(fault: str) -> None:
    """Patch the trainer in this (runner) process.

    ``signal:NAME:N``: this process sends itself signal NAME as training step N begins;
    ``tear_save:N``: the N-th write of ``last.pt`` stops half-way (torn temporary file), SIGKILL;
    ``kill_after_rotate:N``: SIGKILL on the N-th save between keeping ``last.prev.pt`` and
    renaming the new ``last.pt`` into place.
    """
    kind, _, arg = fault.partition(":")
    if kind == "signal":
        name, n = arg.split(":")
        hit, real_step = _nth_call(int(n)), train.train_step

        def step(*args, **kwargs):
            if hit():
                os.kill(os.getpid(), getattr(signal, name))
            return real_step(*args, **kwargs)
        train.train_step = step
    elif kind == "tear_save":
        hit, real_save = _nth_call(int(arg)), torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if Path(f).name.startswith(".last.pt.") and hit():
                os.truncate(f, os.path.getsize(f) // 2)
                _kill_self()
        torch.save = save
    elif kind == "kill_after_rotate":
        hit, real_keep = _nth_call(int(arg)), checkpoint.keep_previous

        def keep(path, previous):
            real_keep(path, previous)
            if hit():
                _kill_self()
        checkpoint.keep_previous = keep
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three BTCV phantoms, all for training: no validation keeps every run short."""
    return write_cohort("btcv", tmp_path_factory.mktemp("train_faults"), 3, shape=(40, 40, 32), val_fraction=0).parent


def _args(cohort: Path, logdir: Path, *extra: str) -> list[str]:
    return [f"--json_list={cohort / 'dataset.json'}", f"--data_dir={cohort}", f"--logdir={logdir}", "--workers=0",
            "--num_samples=1", f"--max_epochs={EPOCHS}", f"--max_steps_per_epoch={STEPS}", "--warmup_epochs=1",
            "--optim_lr=1e-3", "--deterministic", *TINY_TRAIN_FLAGS, *extra]


def _train(cohort: Path, logdir: Path, *extra: str) -> int:
    return train_cli.main(_args(cohort, logdir, *extra), default_task="btcv")


def _subprocess(fault: str, cohort: Path, logdir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, fault, *_args(cohort, logdir, *extra)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run_with_fault(fault: str, cohort: Path, logdir: Path) -> tuple[int, str]:
    job = _subprocess(fault, cohort, logdir)
    _, stderr = job.communicate(timeout=300)
    return job.returncode, stderr


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> Path:
    """The logdir of one uninterrupted run: ``last.pt`` after epoch 2, ``last.prev.pt`` after epoch 1."""
    logdir = tmp_path_factory.mktemp("reference") / "run"
    assert _train(cohort, logdir) == 0
    return logdir


def _differences(logdir: Path, reference: Path) -> list[str]:
    """What differs between the final ``last.pt`` of ``logdir`` and the uninterrupted run's."""
    ours, straight = load_checkpoint(logdir / "last.pt"), load_checkpoint(reference / "last.pt")
    found = [key for key in ("epoch", "global_step", "skipped_steps", "epoch_step") if ours.get(key) != straight.get(key)]
    found += [name for name, tensor in straight["model"].items() if not torch.allclose(ours["model"][name], tensor, rtol=0, atol=1e-6)]
    found += [f"optimizer state {index}" for index, state in straight["optimizer"]["state"].items()
              if not torch.allclose(ours["optimizer"]["state"][index]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6)]
    if not torch.equal(ours["rng"][0]["torch"], straight["rng"][0]["torch"]):
        found.append("torch RNG state")
    return found


# ----------------------------------------------------------------------------------------------
# Signals: SIGTERM mid-epoch, SIGINT at the end of an epoch
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "at_step", "stopped", "epoch", "epoch_step"), [
    ("SIGTERM", 1, "after step 1/2 of epoch 1", 0, 1),  # mid-epoch: the step index is saved and skipped on resume
    ("SIGINT", 2, "after epoch 1", 1, 0),  # during an epoch's last step: the epoch finishes, then the run stops
])
def test_a_stop_signal_saves_a_resumable_checkpoint_and_the_resumed_run_equals_one_run(
        cohort, reference, tmp_path, caplog, name, at_step, stopped, epoch, epoch_step):
    logdir = tmp_path / "run"
    status, stderr = _run_with_fault(f"signal:{name}:{at_step}", cohort, logdir)
    assert status == train.EXIT_INTERRUPTED, stderr[-3000:]
    assert f"{name} received: stopped {stopped}" in stderr and "continue with --resume (exit code 4)" in stderr
    saved = load_checkpoint(logdir / "last.pt")
    assert (saved["epoch"], saved["epoch_step"], saved["global_step"]) == (epoch, epoch_step, at_step)

    caplog.set_level(logging.INFO, logger="swinbob")
    assert _train(cohort, logdir, "--resume") == 0
    assert f"after epoch {epoch} + {epoch_step} step(s)" in caplog.text
    differences = _differences(logdir, reference)
    record_fault(f"training sent {name} during step {at_step}/{EPOCHS * STEPS}: saved, exit 4, resumed",
                 survived=not differences, data_lost=len(differences))
    assert differences == []


# ----------------------------------------------------------------------------------------------
# SIGKILL: at a random moment, and inside the checkpoint write
# ----------------------------------------------------------------------------------------------

def _wait_for(path: Path, job: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, f"the run ended before {path.name} appeared: {job.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigkill_at_a_random_moment_leaves_a_loadable_last_pt_and_resume_equals_one_run(cohort, reference, tmp_path):
    logdir = tmp_path / "run"
    job = _subprocess("none", cohort, logdir)
    _wait_for(logdir / "last.pt", job)  # epoch 1 is saved; epoch 2 (steps and its save) follows
    delay = random.Random(os.getpid()).uniform(0.0, 2.5)
    time.sleep(delay)
    job.kill()
    job.communicate(timeout=60)
    assert job.returncode == -signal.SIGKILL, "the run finished before the kill"
    survivor = load_checkpoint(logdir / "last.pt")  # whatever the moment, the newest file loads
    assert survivor["epoch"] in (1, 2) and survivor["epoch_step"] == 0

    assert _train(cohort, logdir, "--resume") == 0
    assert stale_temp_files(logdir) == []
    differences = _differences(logdir, reference)
    record_fault(f"training SIGKILLed {delay:.1f} s after epoch 1's checkpoint, resumed (from epoch {survivor['epoch']})",
                 survived=not differences, data_lost=len(differences))
    assert differences == []


@pytest.mark.parametrize(("fault", "moment"), [
    ("tear_save:2", "half-way through writing last.pt"),
    ("kill_after_rotate:2", "between keeping last.prev.pt and renaming the new last.pt"),
])
def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_last_pt_and_resume_equals_one_run(
        cohort, reference, tmp_path, caplog, fault, moment):
    logdir = tmp_path / "run"
    status, stderr = _run_with_fault(fault, cohort, logdir)
    assert status == -signal.SIGKILL, stderr[-3000:]
    assert load_checkpoint(logdir / "last.pt")["epoch"] == 1  # epoch 2's file never replaced it
    assert [p.name.startswith(".last.pt.") for p in stale_temp_files(logdir)] == [True]  # the unfinished write

    caplog.set_level(logging.INFO, logger="swinbob")
    assert _train(cohort, logdir, "--resume") == 0
    assert "removed 1 temporary file(s)" in caplog.text and stale_temp_files(logdir) == []
    differences = _differences(logdir, reference)
    record_fault(f"training SIGKILLed {moment} (epoch 2), resumed from epoch 1",
                 survived=not differences, data_lost=len(differences))
    assert differences == []


def test_a_full_disk_during_a_checkpoint_write_stops_the_run_with_the_previous_last_pt_intact(
        cohort, tmp_path, monkeypatch, caplog):
    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        saves.append(Path(f).name)
        if len(saves) == 2:
            os.truncate(f, os.path.getsize(f) // 3)
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    logdir = tmp_path / "run"
    status = _train(cohort, logdir, "--max_steps_per_epoch=1")
    message = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    kept = load_checkpoint(logdir / "last.pt")["epoch"] == 1 and stale_temp_files(logdir) == []
    record_fault("disk full half-way through writing last.pt (epoch 2): clear stop, epoch 1 kept",
                 survived=status == train.EXIT_DIVERGED and kept)
    assert status == train.EXIT_DIVERGED and kept
    assert f"could not write checkpoint {logdir / 'last.pt'} ([Errno 28] No space left on device)" in message


# ----------------------------------------------------------------------------------------------
# A damaged last.pt
# ----------------------------------------------------------------------------------------------

def _copy(reference: Path, logdir: Path) -> Path:
    shutil.copytree(reference, logdir)
    return logdir


def test_a_truncated_last_pt_resumes_from_last_prev_pt_with_a_warning_naming_both(cohort, reference, tmp_path, caplog):
    logdir = _copy(reference, tmp_path / "run")
    last = logdir / "last.pt"
    os.truncate(last, last.stat().st_size // 2)
    caplog.set_level(logging.INFO, logger="swinbob")
    assert _train(cohort, logdir, "--resume") == 0
    warning = next(r.getMessage() for r in caplog.records if "previous checkpoint" in r.getMessage())
    assert f"{last} is truncated or corrupt" in warning and f"{logdir / 'last.prev.pt'} instead (after epoch 1" in warning
    assert load_checkpoint(logdir / "last.prev.pt")["epoch"] == 1  # the broken file did not replace it
    differences = _differences(logdir, reference)  # epoch 2 redone from epoch 1: the same result
    record_fault("last.pt truncated after it was written: resumed from last.prev.pt",
                 survived=not differences, data_lost=len(differences))
    assert differences == []


def test_unreadable_last_and_previous_checkpoints_stop_with_a_message_naming_both(cohort, reference, tmp_path, caplog):
    logdir = _copy(reference, tmp_path / "run")
    (logdir / "last.pt").write_bytes(b"")
    (logdir / "last.prev.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    before = {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file()}
    assert _train(cohort, logdir, "--resume") == train.EXIT_DIVERGED
    message = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert f"{logdir / 'last.pt'} is empty" in message and f"{logdir / 'last.prev.pt'} is truncated or corrupt" in message
    after = {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file() and p.name in before}
    record_input("checkpoints", "empty last.pt and corrupt last.prev.pt -> train --resume", refused(message, strip=logdir))
    assert after == before


def test_without_hard_links_the_previous_checkpoint_is_kept_by_a_copy(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})

    def no_links(*args, **kwargs):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(os, "link", no_links)
    checkpoint.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)}, keep_previous_file=True)
    kept = load_checkpoint(tmp_path / "last.prev.pt")
    survived = kept["epoch"] == 1 and load_checkpoint(path)["epoch"] == 2 and stale_temp_files(tmp_path) == []
    record_fault("file system without hard links: last.prev.pt kept by an atomic copy", survived=survived)
    assert survived


def test_a_damaged_checkpoint_without_a_previous_one_is_an_error_that_says_so(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"\x80\x02}q\x00.")  # a pickle, not a torch zip archive
    with pytest.raises(CheckpointError, match="no previous checkpoint .*last.prev.pt to fall back to"):
        load_resume_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# Numerics: NaN inputs, persistent NaN, NaN weights
# ----------------------------------------------------------------------------------------------

def _poisoning_step(monkeypatch, steps: set[int], what: str = "image") -> list[int]:
    """Make ``train.train_step`` poison its batch (``image``: a NaN voxel after loading) or the
    model (``weights``: a NaN weight after the step) on the given 1-based step calls."""
    real_step, calls = train.train_step, []

    def step(model, batch, *args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] in steps and what == "image":
            batch["image"][0, 0, 5, 5, 5] = float("nan")
        result = real_step(model, batch, *args, **kwargs)
        if calls[-1] in steps and what == "weights":
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        return result
    monkeypatch.setattr(train, "train_step", step)
    return calls


def test_a_nan_batch_is_skipped_counted_and_training_goes_on(cohort, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="swinbob")
    calls = _poisoning_step(monkeypatch, {2})
    assert _train(cohort, tmp_path / "run", "--max_epochs=1") == 0
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert "epoch 1 step 2: non-finite loss, update skipped (1 in a row, 1 in total)" in caplog.text
    survived = last["skipped_steps"] == 1 and last["global_step"] == len(calls) - 1
    record_fault("NaN voxel injected into a loaded training batch: step skipped and counted",
                 survived=survived and all(torch.isfinite(t).all() for t in last["model"].values()))
    assert survived


def _resume_for_one_more_epoch(cohort, reference, logdir) -> tuple[int, dict[str, bytes]]:
    """Resume a copy of the reference run into a third epoch; return the status and the files before."""
    _copy(reference, logdir)
    before = {name: (logdir / name).read_bytes() for name in ("last.pt", "last.prev.pt")}
    return _train(cohort, logdir, "--resume", f"--max_epochs={EPOCHS + 1}", "--nan_patience=2"), before


@pytest.mark.parametrize("steps, what, fault, error", [
    (set(range(1, 100)), "image", "NaN in every training batch (persistent): run stops, checkpoints untouched",
     "2 consecutive non-finite losses (--nan_patience 2)"),
    ({1}, "weights", "a weight turned NaN by an optimizer step: nothing saved, run stops",
     "weights became NaN/Inf in epoch 3; kept the previous last.pt"),
], ids=["persistent_nan_batches", "nan_weights"])
def test_a_diverged_run_stops_and_leaves_the_last_good_checkpoints_byte_equal(
        cohort, reference, tmp_path, monkeypatch, caplog, steps, what, fault, error):
    _poisoning_step(monkeypatch, steps, what=what)
    status, before = _resume_for_one_more_epoch(cohort, reference, tmp_path / "run")
    message = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    unchanged = [name for name, data in before.items() if (tmp_path / "run" / name).read_bytes() == data]
    record_fault(fault, survived=status == train.EXIT_DIVERGED and len(unchanged) == 2, data_lost=2 - len(unchanged))
    assert status == train.EXIT_DIVERGED and error in message
    assert unchanged == ["last.pt", "last.prev.pt"]


# ----------------------------------------------------------------------------------------------
# Image data that only a full read finds, listed before training starts
# ----------------------------------------------------------------------------------------------

def test_the_pre_training_check_reads_images_and_lists_nan_voxels_and_truncated_data(cohort, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    nan_image, truncated_image = sorted((data / "imagesTr").glob("*.nii.gz"))[:2]
    img = nib.load(nan_image)
    voxels = np.asanyarray(img.dataobj).astype(np.float32)
    voxels[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), nan_image)
    content = truncated_image.read_bytes()
    truncated_image.write_bytes(content[: len(content) * 2 // 3])  # the header promises no more than gzip can hold

    argv = _args(data, tmp_path / "run")
    assert train_cli.main(argv, default_task="btcv") == train.EXIT_BAD_DATA
    message = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "2 problem(s) found, nothing was trained" in message
    assert f"{nan_image}: image contains 1 NaN/Inf voxel(s)" in message
    assert f"{truncated_image}: data could not be read; the file is truncated" in message
    assert not (tmp_path / "run" / "last.pt").exists()
    for problem, image in (("NaN voxel", nan_image), ("gzip cut at 2/3", truncated_image)):
        line = next(line for line in message.splitlines() if str(image) in line)
        record_input("datalist check", f"image with a {problem} -> train pre-check (--data_check full)",
                     refused(line.strip(" -"), strip=data))


# ----------------------------------------------------------------------------------------------
# Signals sent to the --distributed launcher only: forwarded to the ranks
# ----------------------------------------------------------------------------------------------

FORWARDED = "SIGTERM/SIGINT forwarded by the --distributed launcher"


def _signal_self(signum: int) -> None:
    """Send ``signum`` to this process and give its Python handler the chance to run."""
    os.kill(os.getpid(), signum)
    time.sleep(0.2)  # the handler runs in the main thread at the next check; sleep is interrupted then


def test_a_forwarded_stop_is_recorded_with_a_readable_name_and_never_escalates():
    handled = (signal.SIGTERM, signal.SIGINT, FORWARDED_STOP)
    before = [signal.getsignal(signum) for signum in handled]
    with stop_on_signals() as request:
        _signal_self(FORWARDED_STOP)
        _signal_self(FORWARDED_STOP)  # a launcher forwarding twice: still a stop request, not an abort
        _signal_self(signal.SIGTERM)  # the rank signalled directly too (SLURM): its first SIGTERM
        assert request.name == FORWARDED and signal.getsignal(FORWARDED_STOP) == request.handle
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the next SIGTERM would kill
    assert [signal.getsignal(signum) for signum in handled] == before


def test_a_stop_forwarded_before_training_is_kept_for_it_and_forgotten_after():
    with remember_forwarded_stops():
        _signal_self(FORWARDED_STOP)  # during set-up: must neither kill the rank nor be lost
        with stop_on_signals() as request:
            assert request.requested and request.name == FORWARDED
        _signal_self(FORWARDED_STOP)  # after training: nothing happens
    with stop_on_signals() as request:  # a later run in the same process starts clean
        assert not request.requested


@pytest.mark.parametrize(("exit_code", "status"), [(4, 4), (-15, 143), (-9, 137), (None, 1)])
def test_a_rank_killed_by_a_signal_gives_the_shell_exit_status(exit_code, status):
    assert exit_status(exit_code) == status


_RANK = """
import signal, sys
signal.signal(signal.SIGUSR1, lambda signum, frame: print(signal.Signals(signum).name, flush=True))
print("ready", flush=True)
sys.stdin.read()
"""


def _previous_handler(signum: int, frame: object) -> None:
    raise AssertionError(f"signal {signum} reached the handler the forwarding should have replaced")


def test_the_launcher_forwards_its_first_stop_signal_once_and_a_second_sigint_aborts(caplog):
    """A child stands in for a rank; a SIGTERM then two SIGINTs reach the launcher (this process)."""
    rank = subprocess.Popen([sys.executable, "-c", _RANK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert rank.stdout.readline() == "ready\n"
    previous = {signum: signal.signal(signum, _previous_handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(KeyboardInterrupt), forward_stop_signals(lambda: [rank.pid]) as request:
            _signal_self(signal.SIGTERM)
            assert request.name == "SIGTERM" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            _signal_self(signal.SIGINT)  # the other kind: recorded, not forwarded again
            _signal_self(signal.SIGINT)  # the second of its kind: the default action
        restored = [signal.getsignal(signum) for signum in previous]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    received, _ = rank.communicate(timeout=30)
    record_fault("launcher got SIGTERM, then SIGINT twice: ranks asked to stop once, 2nd SIGINT aborts",
                 survived=received == "SIGUSR1\n" and restored == [_previous_handler] * 2)
    assert received == "SIGUSR1\n" and rank.returncode == 0
    assert restored == [_previous_handler] * 2
    assert "SIGTERM received: asking 1 rank(s) to stop (in training: after the current step, saving last.pt" in caplog.text


def test_sigterm_to_the_distributed_launcher_only_stops_every_rank_with_last_pt_saved(cohort, tmp_path, caplog):
    logdir = tmp_path / "run"
    job = _subprocess("none", cohort, logdir, "--distributed", "--world_size=2", "--device=cpu", "--max_epochs=50")
    _wait_for(logdir / "last.pt", job)  # saved by all ranks together: each one is inside the training loop
    job.send_signal(signal.SIGTERM)  # to the launcher only, as `kill <pid>` does
    _, stderr = job.communicate(timeout=120)
    saved = load_checkpoint(logdir / "last.pt")
    stopped = job.returncode == train.EXIT_INTERRUPTED and 1 <= saved["epoch"] < 50
    record_fault("SIGTERM to the --distributed launcher only (2 gloo ranks): forwarded, saved, exit 4",
                 survived=stopped)
    assert stopped, stderr[-3000:]
    assert "SIGTERM received: asking 2 rank(s) to stop (in training: after the current step, saving last.pt" in stderr
    assert f"{FORWARDED} received: stopped after " in stderr and "continue with --resume (exit code 4)" in stderr
    assert "Traceback" not in stderr and "Terminating process" not in stderr, stderr[-3000:]  # all ranks ended alike

    caplog.set_level(logging.INFO, logger="swinbob")  # one process finishes the stopped epoch
    assert _train(cohort, logdir, "--resume", f"--max_epochs={saved['epoch'] + 1}") == 0
    assert f"after epoch {saved['epoch']} + {saved['epoch_step']} step(s)" in caplog.text
    assert load_checkpoint(logdir / "last.pt")["epoch"] == saved["epoch"] + 1


if __name__ == "__main__":  # the fault runner: python tests/test_faults_train.py FAULT TRAIN_ARGS...
    install_fault(sys.argv[1])
    sys.exit(train_cli.main(sys.argv[2:], default_task="btcv"))
