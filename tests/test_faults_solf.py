"""SOLF under faults: the whole job SIGKILLed mid-append and mid-write, pool workers killed (once,
and every time on one poison scan), and two shards measuring at the same moment.

Each faulty run, after at most one plain rerun, must give outputs byte-equal to one uninterrupted
run (cleaned labels, dataset.json, decisions.csv, summary.json and the other report tables), keep
every record logged before the fault, and leave no temporary or partial file behind. Each fault
is counted in the summary table (faults_report.record_fault).

Faults that kill the main process run SOLF in a subprocess started as ``python
tests/test_faults_solf.py FAULT -- SOLF_ARGS`` in its own session, so that the injected
``killpg`` takes down SOLF and its workers, never pytest. Worker faults run in-process: the pool
forks pytest, and the injected function kills only the worker it runs in.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from faults_report import record_fault
from swinbob.files import stale_temp_files
from swinbob.data.phantoms import write_cohort
from swinbob.solf import pipeline
from swinbob.solf.cases import measure_case
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.store import ShardLog

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
NUM_CASES = 8
SOLF_FLAGS = ("--no_figure", "--log_level", "WARNING", "--min_population", "4", "--val_fraction", "0.25")
PYTEST_PID = os.getpid()
"""The process that imported this module first: injected faults never kill it."""


# ----------------------------------------------------------------------------------------------
# Fault injection (used in worker processes and by the subprocess runner at the end)
# ----------------------------------------------------------------------------------------------

def _kill_this_worker() -> None:
    """SIGKILL the calling process, unless it is pytest itself (then the test is wrong)."""
    if os.getpid() == PYTEST_PID:
        raise AssertionError("fault injection would kill pytest: the scan ran in-process")
    os.kill(os.getpid(), signal.SIGKILL)


def _first_time(marker: str) -> bool:
    """True once per ``marker`` file across processes (the file records that the fault fired)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def dying_measure(task, case_id: str, marker: str | None):
    """``measure_case`` that kills its worker on ``case_id`` (once if ``marker``, else always)."""
    if task.case_id == case_id and (marker is None or _first_time(marker)):
        _kill_this_worker()
    return measure_case(task)


def dying_replace_factory(real_replace, case_name: str, marker: str):
    """``os.replace`` that kills its (worker) process once, just before renaming ``case_name``'s
    fully written temporary file onto its final name."""
    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == case_name and os.getpid() != PYTEST_PID and _first_time(marker):
            _kill_this_worker()
        return real_replace(src, dst, *args, **kwargs)
    return replace


def _kill_job() -> None:
    """SIGKILL the whole SOLF job: this process group (the runner is its leader)."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


def run_with_fault(fault: str, argv: list[str]) -> int:
    """Run SOLF with ``fault`` installed; the runner must lead its own process group.

    ``tear_append:N``: the N-th shard-log append writes half its line, then the job is killed.
    ``kill_before_replace:NAME``: the job is killed when a worker is about to move the finished
    temporary file of output ``NAME`` onto its final name.
    """
    if os.getpgrp() != os.getpid():
        raise SystemExit("run the fault runner with start_new_session=True (it kills its process group)")
    kind, _, arg = fault.partition(":")
    if kind == "tear_append":
        real_append, count = ShardLog.append, [0]

        def append(self, record):
            count[0] += 1
            if count[0] == int(arg):
                line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
                self._handle.write(line[: len(line) // 2])
                self._handle.flush()
                _kill_job()
            real_append(self, record)
        ShardLog.append = append
    elif kind == "kill_before_replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == arg:
                _kill_job()
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace  # inherited by the forked pool workers, which do the cleaning
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    return organ_filtering_entry(argv)


# ----------------------------------------------------------------------------------------------
# Runs and their outputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_cohort")
    write_cohort("ukbob", root, NUM_CASES, shape=(40, 40, 48), seed=11)
    return root


def _scenario(folder: Path, cohort: Path) -> Path:
    """A run folder whose ``labels``/``images`` link to the cohort, so that every scenario's
    dataset.json holds the same relative paths and can be compared byte for byte."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels").symlink_to(cohort / "labelsTr", target_is_directory=True)
    (folder / "images").symlink_to(cohort / "imagesTr", target_is_directory=True)
    return folder


def _args(folder: Path, *extra: str) -> list[str]:
    return ["--input_dir", str(folder / "labels"), "--image_dir", str(folder / "images"),
            "--output_dir", str(folder / "out"), *SOLF_FLAGS, *extra]


def _subprocess(fault: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, __file__, fault, *args], cwd=REPO, env=env, start_new_session=True,
                          capture_output=True, text=True, timeout=300)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output a user relies on, by relative path (the resume state in features/ excluded)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "features"}


def _logged(out: Path) -> list[dict]:
    """Complete records of the shard logs (a torn last line is not a record)."""
    records = []
    for path in sorted((out / "features").glob("shard-*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                records.append(json.loads(line))
    return records


def _differences(out: Path, reference: dict[str, bytes]) -> list[str]:
    outputs = _outputs(out)
    return sorted(name for name in set(outputs) | set(reference) if outputs.get(name) != reference.get(name))


def _temporaries(out: Path) -> list[Path]:
    return [p for folder in (out, out / "labelsTr", out / "report", out / "features") for p in stale_temp_files(folder)]


def _partial_niftis(out: Path) -> list[str]:
    """Cleaned labels under their final name whose data cannot be read in full."""
    broken = []
    for path in sorted((out / "labelsTr").glob("*.nii.gz")):
        if path.name.startswith("."):  # pathlib's * matches dot-files: a temporary, not a final name
            continue
        try:
            np.asanyarray(nib.load(path).dataobj)
        except Exception:  # noqa: BLE001 - any failure means a partial file
            broken.append(path.name)
    return broken


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of one uninterrupted run, one process."""
    folder = _scenario(tmp_path_factory.mktemp("faults_reference"), cohort)
    assert organ_filtering_entry(_args(folder, "--workers", "1")) == 0
    outputs = _outputs(folder / "out")
    assert {"dataset.json", "report/decisions.csv", "report/summary.json"} <= set(outputs)
    assert sum(name.startswith("labelsTr/") for name in outputs) >= NUM_CASES - 1
    assert json.loads(outputs["report/failures.json"]) == []
    return outputs


# ----------------------------------------------------------------------------------------------
# The whole job killed
# ----------------------------------------------------------------------------------------------

def test_job_killed_mid_append_keeps_every_logged_scan_and_a_rerun_equals_one_run(cohort, reference, tmp_path):
    folder = _scenario(tmp_path, cohort)
    killed = _subprocess("tear_append:4", _args(folder, "--workers", "2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = _logged(folder / "out")
    log = folder / "out" / "features" / "shard-00000-of-00001.jsonl"
    assert len(before) == 3 and not log.read_bytes().endswith(b"\n")  # three records and a torn fourth
    assert not (folder / "out" / "dataset.json").exists()

    assert organ_filtering_entry(_args(folder, "--workers", "2")) == 0
    after = _logged(folder / "out")
    kept = [r for r in before if r in after]
    differences = _differences(folder / "out", reference)
    record_fault("SOLF job SIGKILLed mid-append (torn log line), then rerun", survived=not differences,
                 data_lost=len(before) - len(kept) + len(differences))
    assert len(kept) == len(before) and len(after) == NUM_CASES  # nothing lost, nothing measured twice
    assert differences == [] and _temporaries(folder / "out") == []


def test_job_killed_while_writing_a_cleaned_label_leaves_no_partial_file(cohort, reference, tmp_path):
    folder = _scenario(tmp_path, cohort)
    killed = _subprocess("kill_before_replace:ukbob_0003.nii.gz", _args(folder, "--workers", "2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    out = folder / "out"
    assert not (out / "labelsTr" / "ukbob_0003.nii.gz").exists()
    assert [p.name for p in _temporaries(out)], "the kill did not land mid-write"  # its complete temporary file
    partial = _partial_niftis(out)
    assert partial == []  # every final name holds a whole NIfTI

    assert organ_filtering_entry(_args(folder, "--workers", "2")) == 0
    differences = _differences(out, reference)
    record_fault("SOLF job SIGKILLed between writing and renaming a cleaned label, then rerun",
                 survived=not differences, data_lost=len(differences) + len(partial))
    assert differences == [] and _temporaries(out) == []


# ----------------------------------------------------------------------------------------------
# Pool workers killed
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["features", "cleaning"])
def test_a_worker_killed_once_is_retried_and_the_run_equals_one_run(cohort, reference, tmp_path, monkeypatch, stage):
    folder = _scenario(tmp_path, cohort)
    marker = str(tmp_path / "fault_fired")
    if stage == "features":
        monkeypatch.setattr(pipeline, "measure_case", functools.partial(dying_measure, case_id="ukbob_0002", marker=marker))
    else:
        monkeypatch.setattr(os, "replace", dying_replace_factory(os.replace, "ukbob_0002.nii.gz", marker))
    status = organ_filtering_entry(_args(folder, "--workers", "2"))
    monkeypatch.undo()
    assert os.path.exists(marker), "the worker was not killed"
    differences = _differences(folder / "out", reference)
    record_fault(f"SOLF pool worker SIGKILLed once during {stage} (no rerun)", survived=status == 0 and not differences,
                 data_lost=len(differences))
    assert status == 0 and differences == [] and _temporaries(folder / "out") == []
    assert len(_logged(folder / "out")) == NUM_CASES


def test_a_scan_that_kills_every_worker_is_recorded_as_failed_and_the_rest_is_kept(cohort, tmp_path, monkeypatch):
    folder = _scenario(tmp_path, cohort)
    monkeypatch.setattr(pipeline, "measure_case", functools.partial(dying_measure, case_id="ukbob_0005", marker=None))
    status = organ_filtering_entry(_args(folder, "--workers", "2"))
    out = folder / "out"
    failures = json.loads((out / "report" / "failures.json").read_text())
    summary = json.loads((out / "report" / "summary.json").read_text())
    listed = json.loads((out / "dataset.json").read_text())
    names = {Path(e["label"]).name for e in listed["training"] + listed["validation"]}
    survived = status == 0 and summary["scans"]["measured"] == NUM_CASES - 1
    record_fault("SOLF poison scan kills its worker on every try (out-of-memory stand-in)", survived=survived,
                 data_lost=NUM_CASES - 1 - summary["scans"]["measured"])
    assert survived and [f["case_id"] for f in failures] == ["ukbob_0005"]
    assert "worker process died" in failures[0]["reason"] and "ukbob_0005.nii.gz" in failures[0]["reason"]
    assert "ukbob_0005.nii.gz" not in names and len(names) + summary["scans"]["excluded"] == NUM_CASES - 1
    lines = len(_logged(out))
    assert organ_filtering_entry(_args(folder, "--workers", "2")) == 0  # recorded: not retried forever
    assert len(_logged(out)) == lines


# ----------------------------------------------------------------------------------------------
# Shards at the same time
# ----------------------------------------------------------------------------------------------

def test_two_shards_measuring_at_once_then_decide_equal_one_run(cohort, reference, tmp_path):
    folder = _scenario(tmp_path, cohort)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [subprocess.Popen([sys.executable, __file__, "none", *_args(folder, "--workers", "1", "--stage", "features",
                                                                        "--num_shards", "2", "--shard_id", str(shard))],
                             cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for shard in (0, 1)]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    shard_logs = sorted(p.name for p in (folder / "out" / "features").glob("shard-*.jsonl"))
    assert shard_logs == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    assert organ_filtering_entry(_args(folder, "--workers", "1", "--stage", "decide")) == 0
    differences = _differences(folder / "out", reference)
    record_fault("two SOLF shards measuring concurrently, then one decide", survived=not differences,
                 data_lost=len(differences) + NUM_CASES - len(_logged(folder / "out")))
    assert differences == [] and len(_logged(folder / "out")) == NUM_CASES


if __name__ == "__main__":  # the fault runner: python tests/test_faults_solf.py FAULT SOLF_ARGS...
    sys.exit(run_with_fault(sys.argv[1], sys.argv[2:]))
